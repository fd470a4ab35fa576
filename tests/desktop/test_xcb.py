"""`make run` opens the real window: the app as installed by the README's commands, on Qt's xcb platform (what a
Linux desktop uses), under Xvfb at a common laptop size, with its icon, fitting the screen, drawn."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import pytest

from xvfb import show_app

ROOT = Path(__file__).resolve().parents[2]
SCREEN = (1366, 768)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb platform is Linux's")]


def app_command() -> list[str]:
    """The `protolabel` that `make run` starts (the venv's script), else the same entry point by module."""
    script = Path(sys.executable).with_name("protolabel")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "desktop.app"]


def test_the_window_opens_on_xcb(tmp_path):
    shown = show_app(app_command(), tmp_path, dict(os.environ, QT_QPA_PLATFORM="xcb",
                                                   PROTOLABEL_DATA_DIR=str(tmp_path / "data")),
                     screen=SCREEN, cwd=ROOT)
    assert (16, 16) in shown.icons and (48, 48) in shown.icons, f"the window's icons: {shown.icons}"
    width, height = shown.width, shown.height
    assert width <= SCREEN[0] and height <= SCREEN[1], f"a {width} x {height} window on a {SCREEN} screen"
    if os.environ.get("PROTOLABEL_SCREENSHOTS"):  # a picture of the empty window, as a desktop shows it
        cv2.imwrite(os.path.join(os.environ["PROTOLABEL_SCREENSHOTS"], "xcb-window.png"), shown.shot)
    # The window, not a bare screen: the menu bar's light strip above the dark live view.
    shot = shown.shot
    assert shot[:16, :width].mean() > shot[height // 3: 2 * height // 3, width // 4: width // 2].mean() + 60
