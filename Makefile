# ProtoLabel: `make run` sets up what is missing and starts the app; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENCLIPART := /usr/share/openclipart/png

.PHONY: install qt-libs run demo selftest test test-fast bench openclipart clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ProtoLabel needs Python 3.11, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) qt-libs

# Qt needs a few system libraries even offscreen (EGL, fontconfig, xkbcommon); Debian slim images lack some.
QT_LIBS := libegl1 libgl1 libfontconfig1 libxkbcommon0 libdbus-1-3 libglib2.0-0
qt-libs: $(STAMP)
	@QT_QPA_PLATFORM=offscreen $(PY) -c 'from PySide6.QtWidgets import QApplication; QApplication([])' 2>/dev/null || { \
	  echo "installing the system libraries Qt needs: $(QT_LIBS)"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(QT_LIBS); }

# Public-domain clip art used by the demo and the accuracy table (Debian/Ubuntu package, ~160 MB).
openclipart:
	@test -d $(OPENCLIPART) || { command -v apt-get >/dev/null && $(SUDO) apt-get update && $(SUDO) apt-get install -y openclipart-png; } || echo "openclipart-png could not be installed; the demo falls back to --root DIR"

# Opens the window (with no display, e.g. over ssh, run it with QT_QPA_PLATFORM=offscreen or use `make demo`).
run: install
	$(VENV)/bin/protolabel

# The headless demo on real clip art.
demo: install openclipart
	$(VENV)/bin/protolabel demo

selftest: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/protolabel --selftest

test: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

test-fast: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not slow"

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
