# ProtoLabel: `make run` sets up what is missing and starts the app; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENCLIPART := /usr/share/openclipart/png

.PHONY: install qt-libs test-tools run demo selftest lint test test-memory test-fast test-integrations bench bench-resolution openclipart clean

# PyPI's Linux torch brings ~4.5 GB of CUDA libraries (the venv: ~6.3 GB). DEV_TORCH=auto (default) installs
# it when there is room, but with less than $(DEV_TORCH_MIN_MB) MB free takes the CPU-only wheel instead, where
# there is one (TORCH_CPU_WHEEL, below): ~2 GB in all. DEV_TORCH=cpu or =pypi forces either.
DEV_TORCH        ?= auto
DEV_TORCH_MIN_MB ?= 9000
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ProtoLabel needs Python 3.11, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	@set -e; free_mb=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1024)}'); echo "free disk space here: $$free_mb MB"; \
	if [ "$(DEV_TORCH)" = cpu ] || { [ "$(DEV_TORCH)" = auto ] && [ "$$free_mb" -lt $(DEV_TORCH_MIN_MB) ]; }; then \
	  if [ -n "$(TORCH_CPU_WHEEL)" ] && [ -f "$(TORCH_CPU_WHEEL)" ]; then \
	    echo "installing the CPU-only torch (DEV_TORCH=$(DEV_TORCH), $$free_mb MB free)"; \
	    $(call INSTALL_CPU_TORCH,$(PY)); \
	  else echo "*** $$free_mb MB free and no CPU-only torch wheel: PyPI's torch needs ~7 GB; this may fail"; fi; \
	fi
	$(PY) -m pip install --no-cache-dir -e ".[dev]"
	$(PY) -c 'import core, torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
	touch $(STAMP)

install: $(STAMP) qt-libs

# The system libraries Qt's platform plugins link: offscreen (slim images lack EGL, fontconfig, xkbcommon), xcb
# (an X11 desktop; Qt >= 6.5 needs libxcb-cursor0, which many lack) and Wayland. desktop/startup.py keeps the
# list (the window's own message names the same packages) and finds, with ldd, what the plugins lack here.
qt-libs: $(STAMP)
	@missing="$$($(PY) desktop/startup.py --missing)"; \
	if [ -z "$$missing" ] && QT_QPA_PLATFORM=offscreen $(PY) -c 'from PySide6.QtWidgets import QApplication; QApplication([])' 2>/dev/null; \
	then exit 0; fi; \
	packages="$$($(PY) desktop/startup.py --packages)"; \
	echo "Qt's platform plugins lack system libraries ($${missing:-offscreen does not start}); installing: $$packages"; \
	command -v apt-get >/dev/null || { echo "*** no apt-get here: install your system's packages of those"; exit 0; }; \
	$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$packages; \
	missing="$$($(PY) desktop/startup.py --missing)"; [ -z "$$missing" ] || { echo "*** still missing: $$missing"; exit 1; }

# What the tests that start a real X server and install the .deb use (tests/xvfb.py, tests/test_dist.py).
TEST_TOOLS := Xvfb:xvfb xwininfo:x11-utils xprop:x11-utils desktop-file-validate:desktop-file-utils
test-tools:
	@packages="$$(for pair in $(TEST_TOOLS); do command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done | sort -u)"; \
	[ -z "$$packages" ] || { echo "installing for the tests: $$packages"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$packages; }

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

# Includes tests/test_dist.py, which runs the PyInstaller bundle and the .deb. They are built (when older than
# their inputs) in the background from the start, mostly on one core, while two pytest-xdist workers run the
# tests, slow ones first (tests/conftest.py); test_dist.py's fixtures wait for that build (build/package.lock).
# The bundle's build environment (build/dist-venv) is installed before, with the rest of the install.
TEST_WORKERS ?= 2
test: install test-tools dist-env lint
	@mkdir -p build; \
	if [ "$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}')" -ge 6 ]; then \
	  echo "building the bundle and the .deb in the background (log: build/package.log)"; \
	  flock build/package.lock $(MAKE) --no-print-directory deb > build/package.log 2>&1 & fi; \
	PROTOLABEL_TEST_DIST=1 QT_QPA_PLATFORM=offscreen $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal; \
	status=$$?; wait; exit $$status

# The peak-memory test alone (tests/core/test_memory.py: 500 and 2,000 images, the bound for 10,000; `make test`
# runs it too).
test-memory: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/core/test_memory.py -s

# ruff, configured in pyproject.toml; `make test` runs it first.
lint: install
	$(PY) -m ruff check .

test-fast: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not slow"

# A real Label Studio reads the `labelstudio` export through one local files storage (tests_integrations/, which
# `make test` leaves out): Label Studio starts on 127.0.0.1 with its data in a temporary folder, gets a project, the
# exported labeling config, the one storage the export names and the tasks; every task's label and image are checked
# through its API. It runs in its own environment, $(INTEGRATIONS_VENV) (label-studio, requests, pytest; the first run
# installs them, several minutes), so .venv stays lean; ProtoLabel runs as .venv's `protolabel`.
INTEGRATIONS_VENV  := build/integrations-venv
INTEGRATIONS_STAMP := $(INTEGRATIONS_VENV)/.installed-stamp
LABEL_STUDIO_SPEC  ?= label-studio>=1.20,<1.30
$(INTEGRATIONS_STAMP):
	test -x $(INTEGRATIONS_VENV)/bin/python || $(PYTHON) -m venv $(INTEGRATIONS_VENV)
	$(INTEGRATIONS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(INTEGRATIONS_VENV)/bin/python -m pip install --no-cache-dir "$(LABEL_STUDIO_SPEC)" requests pytest
	@$(INTEGRATIONS_VENV)/bin/python -m pip show label-studio | sed -n 's/^Version: /label-studio /p'
	touch $@

test-integrations: $(STAMP) $(INTEGRATIONS_STAMP)
	PROTOLABEL=$(CURDIR)/$(VENV)/bin/protolabel $(INTEGRATIONS_VENV)/bin/python -m pytest -p no:cacheprovider -s tests_integrations

bench: install
	$(PY) bench/run.py

# Input size vs accuracy (openclipart) vs live frames/s, for README's resolution table (~30 min on 2 cores).
bench-resolution: install openclipart
	$(PY) bench/resolution.py

# ------------------------------------------------------------------ installers (README "Installers")
.PHONY: dist dist-env dist-qt-libs dist-archive deb test-dist
# `make dist` builds dist/ProtoLabel/, a folder to zip: dist/ProtoLabel/ProtoLabel opens the window.
# TORCH=cpu (default): built in its own venv, build/dist-venv, with a CPU-only torch (PyPI's Linux torch
# carries ~3 GB of CUDA libraries). Found as TORCH_CPU_WHEEL (default: the wheel in /opt/wheels, where there is
# one), else on TORCH_CPU_INDEX; with neither, the build falls back to TORCH=cuda and says so.
# TORCH=cuda: built from .venv with PyPI's torch as it is (GPU support; a bundle of several GB).
TORCH           ?= cpu
TORCH_CPU_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-*+cpu-cp311-cp311-*linux*_x86_64.whl))
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DIST_VENV   := build/dist-venv
DIST_STAMP  := $(DIST_VENV)/.installed-stamp
DIST_PYFILE := build/dist-python
DIST_APP    := dist/ProtoLabel/ProtoLabel
DIST_INPUTS := build.spec pyproject.toml $(shell find core desktop resources -type f ! -name '*.pyc' 2>/dev/null)
# torchvision 0.N+15 goes with torch 2.N.
TORCHVISION_FOR = torchvision==0.$$(( $$(echo $(1) | cut -d. -f2) + 15 )).*
# Lets PyPI's torchvision (built against CUDA torch) import beside a CPU-only torch: core/_torchvision_guard.py.
GUARD_PTH := zz-protolabel-torchvision-guard.pth
# $(call INSTALL_CPU_TORCH,python): TORCH_CPU_WHEEL and the matching torchvision from PyPI (shell commands, for
# a recipe's `set -e` block). `import core` installs the guard itself; $(call WRITE_GUARD,python) installs it at
# every start of that python, for PyInstaller's hooks, which import torchvision in fresh processes.
INSTALL_CPU_TORCH = version=$$(basename "$(TORCH_CPU_WHEEL)" | cut -d- -f2); \
	  echo "CPU-only torch from $(TORCH_CPU_WHEEL) with PyPI's $(call TORCHVISION_FOR,$$version)"; \
	  $(1) -m pip install --no-cache-dir "$(TORCH_CPU_WHEEL)" "$(call TORCHVISION_FOR,$$version)"
WRITE_GUARD = $(1) -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "$(GUARD_PTH)").write_text("import importlib.util as u; s = u.spec_from_file_location(\"protolabel_torchvision_guard\", \"$(CURDIR)/core/_torchvision_guard.py\"); m = u.module_from_spec(s); s.loader.exec_module(m); m.install()\n")'

$(DIST_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ProtoLabel needs Python 3.11, found " + sys.version'
	test -x $(DIST_VENV)/bin/python || $(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet --upgrade pip
	@set -e; \
	if [ -n "$(TORCH_CPU_WHEEL)" ] && [ -f "$(TORCH_CPU_WHEEL)" ]; then \
	  $(call INSTALL_CPU_TORCH,$(DIST_VENV)/bin/python); \
	  $(DIST_VENV)/bin/python -m pip install --no-cache-dir -e ".[dist]"; \
	else \
	  $(DIST_VENV)/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=15)' \
	    "$(TORCH_CPU_INDEX)" 2>/dev/null || { echo "no CPU-only torch: no TORCH_CPU_WHEEL and $(TORCH_CPU_INDEX) unreachable"; exit 1; }; \
	  echo "CPU-only torch and torchvision from $(TORCH_CPU_INDEX)"; \
	  $(DIST_VENV)/bin/python -m pip install --index-url "$(TORCH_CPU_INDEX)" torch torchvision; \
	  $(DIST_VENV)/bin/python -m pip install -e ".[dist]"; \
	fi
	$(call WRITE_GUARD,$(DIST_VENV)/bin/python)
	$(DIST_VENV)/bin/python -c 'import torch, timm; assert torch.version.cuda is None, "torch " + torch.__version__ + " has CUDA"; print("build env: torch", torch.__version__, "timm", timm.__version__)'
	touch $(DIST_STAMP)

# Writes which python builds the bundle into $(DIST_PYFILE).
dist-env:
	@mkdir -p build
ifeq ($(TORCH),cuda)
	$(MAKE) --no-print-directory install
	$(PY) -m pip install --quiet -e ".[dev,dist]"
	@echo $(PY) > $(DIST_PYFILE)
else
	@if $(MAKE) --no-print-directory $(DIST_STAMP); then echo $(DIST_VENV)/bin/python > $(DIST_PYFILE); else \
	  echo "*** No CPU-only torch (no TORCH_CPU_WHEEL, $(TORCH_CPU_INDEX) unreachable): building with PyPI's torch"; \
	  echo "*** instead (TORCH=cuda: CUDA libraries included, a bundle of several GB)."; \
	  rm -rf $(DIST_VENV); $(MAKE) --no-print-directory dist-env TORCH=cuda; fi
endif

# Qt's platform plugins link these; PyInstaller bundles the ones the build machine has, so they are installed here
# and the folder runs on desktops without them (the list: desktop/startup.py, stdlib only, any python runs it).
DIST_QT_LIBS = $(shell $(PYTHON) desktop/startup.py --packages xcb wayland)
dist-qt-libs:
	@command -v dpkg-query >/dev/null || { echo "no dpkg: the bundle carries what this machine has of $(DIST_QT_LIBS)"; exit 0; }; \
	if dpkg-query -W -f='$${db:Status-Status}\n' $(DIST_QT_LIBS) 2>/dev/null | grep -qvx installed \
	   || ! dpkg-query -W $(DIST_QT_LIBS) >/dev/null 2>&1; then \
	  echo "installing the libraries Qt's platform plugins link, to bundle them: $(DIST_QT_LIBS)"; \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(DIST_QT_LIBS); } \
	  || echo "*** could not install them: the bundle will need them on the user's machine"; fi

# Switching TORCH rebuilds: the flavour file of the other one is gone.
build/dist-%.flavour:
	@mkdir -p build && touch $@

$(DIST_APP): $(DIST_INPUTS) build/dist-$(TORCH).flavour
	$(MAKE) --no-print-directory dist-env
	@$(MAKE) --no-print-directory dist-qt-libs
	$$(cat $(DIST_PYFILE)) -m PyInstaller --noconfirm --log-level WARN --workpath build/pyinstaller --distpath dist build.spec
	rm -f build/dist-*.flavour && touch build/dist-$(TORCH).flavour $(DIST_APP)

dist: $(DIST_APP)

# The folder as one archive to hand out (Linux: tar.gz keeps the links and permissions inside).
DIST_ARCHIVE := dist/ProtoLabel-$(shell uname -s | tr A-Z a-z)-$(shell uname -m).tar.gz
dist-archive: $(DIST_ARCHIVE)
$(DIST_ARCHIVE): $(DIST_APP)
	tar -C dist -czf $@ ProtoLabel
	@ls -l $@

# The Debian/Ubuntu package of the bundle (tools/make_deb.py): /opt/protolabel, `protolabel` on PATH, the menu
# entry and icons. DEB_COMPRESS: dpkg-deb's compressor[:level]. zstd needs a dpkg of Debian 12 or Ubuntu 21.10 on,
# older than the glibc 2.36 the bundle needs anyway; it packs in a fifth of gzip -6's time, and smaller.
DEB_COMPRESS ?= zstd:3
DEB := dist/protolabel_$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)_$(shell dpkg --print-architecture 2>/dev/null || echo amd64).deb
deb: $(DEB)
$(DEB): $(DIST_APP) tools/make_deb.py
	$(PYTHON) tools/make_deb.py --bundle dist/ProtoLabel --out dist --compress $(DEB_COMPRESS)

# Builds the bundle and the .deb when older than the sources, then runs them (tests/test_dist.py; as root it also
# installs the package and removes it again).
test-dist: install test-tools deb
	PROTOLABEL_TEST_DIST=1 QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/test_dist.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
