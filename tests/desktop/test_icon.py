"""The application icon and what uses it: the generated PNGs (every size, current with resources/icon.svg), the
.ico and .icns, the window's and the application's icon, the freedesktop entry; the About box names the version."""
from __future__ import annotations

import configparser
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop import resources
from desktop.resources import ICON_SIZES, app_icon, icon_path, resources_dir

ROOT = Path(__file__).resolve().parents[2]


def load_make_icons():
    spec = importlib.util.spec_from_file_location("make_icons", ROOT / "tools" / "make_icons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resources_found_in_the_checkout_and_in_the_bundle(monkeypatch, tmp_path):
    assert resources_dir() == ROOT / "resources"
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)  # what PyInstaller's bootloader sets
    assert resources_dir() == tmp_path / "resources"
    assert icon_path(16) == tmp_path / "resources" / "icons" / "protolabel-16.png"


def test_pngs_exist_at_every_size():
    assert ICON_SIZES == load_make_icons().SIZES
    for size in ICON_SIZES:
        with Image.open(icon_path(size)) as image:
            assert image.format == "PNG" and image.mode == "RGBA"
            assert image.size == (size, size)
            alpha = np.asarray(image)[..., 3]
            assert alpha[size // 2, size // 2] == 255 and alpha.mean() > 200  # drawn, not an empty canvas


@pytest.mark.parametrize("size", [16, 256])
def test_pngs_are_current_with_the_svg(qapp, size):
    """Someone edited resources/icon.svg and didn't run tools/make_icons.py: the committed PNGs differ."""
    rendered = np.asarray(load_make_icons().render(ROOT / "resources" / "icon.svg", size), dtype=np.int16)
    with Image.open(icon_path(size)) as image:
        committed = np.asarray(image.convert("RGBA"), dtype=np.int16)
    assert np.abs(rendered - committed).mean() < 1.0  # room for another Qt version's antialiasing; a moved stroke is ~3


def test_ico_and_icns_hold_the_sizes_the_platforms_use():
    with Image.open(ROOT / "resources" / "protolabel.ico") as ico:
        assert {(s, s) for s in (16, 24, 32, 48, 64, 128, 256)} <= set(ico.info["sizes"])
    with Image.open(ROOT / "resources" / "protolabel.icns") as icns:
        assert {(16, 16, 2), (32, 32, 2), (128, 128, 1), (256, 256, 1), (512, 512, 1), (512, 512, 2)} <= set(
            icns.info["sizes"])


def test_window_icon_has_small_and_large_sizes(make_window):
    assert not app_icon().isNull()
    icon = make_window().windowIcon()
    assert not icon.isNull()
    sizes = {(s.width(), s.height()) for s in icon.availableSizes()}
    assert {(16, 16), (256, 256)} <= sizes
    assert icon.pixmap(16, 16).size().width() == 16


def test_missing_resources_give_a_null_icon_not_an_error(monkeypatch, tmp_path, qapp):
    monkeypatch.setattr(resources, "resources_dir", lambda: tmp_path)
    assert app_icon().isNull()


def test_application_sets_icon_and_desktop_file_name():
    """desktop/app.py's QApplication (in a child: it installs a process-wide message handler and style)."""
    code = ("from desktop.app import _application\n"
            "app = _application()\n"
            "print(app.windowIcon().isNull(), app.desktopFileName(), app.applicationName())\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "protolabel", "ProtoLabel"]


def test_about_names_the_version(make_window, monkeypatch):
    from core import __version__
    from desktop import main_window

    shown = []
    monkeypatch.setattr(main_window.QMessageBox, "about", lambda parent, title, text: shown.append((title, text)))
    make_window().show_about()
    assert len(shown) == 1
    assert f"ProtoLabel {__version__}" in shown[0][1]


def test_desktop_entry():
    entry = configparser.ConfigParser(strict=False, interpolation=None)
    entry.optionxform = str  # keys are case-sensitive
    entry.read(ROOT / "resources" / "protolabel.desktop", encoding="utf-8")
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application"
    assert d["Name"] == "ProtoLabel"
    assert d["Icon"] == "protolabel"  # the icon theme name of resources/icons/protolabel-<size>.png once installed
    assert d["Exec"].split()[0] == "protolabel"  # pyproject.toml's console script
    assert d["Terminal"] == "false"
    assert d["StartupWMClass"] == "ProtoLabel"  # the application name desktop/app.py sets (X11's window class)
    assert d["Categories"].endswith(";")
