"""Screenshots of the window's layout on a real X server (Xvfb), at the smallest size it is made for and on a
large screen, with the Live tab (a generated clip, predictions drawn) and the Folder tab (a generated folder,
labeled). For a person to look at after changing a layout:

    .venv/bin/python tools/screenshot_pass.py [--out docs/screenshots] [--sizes 800x600,1920x1080]

Writes layout-<W>x<H>-live.png and layout-<W>x<H>-folder.png into --out. Each size runs in its own Xvfb whose
screen is that size (no window manager: the window fills it, without decorations); the window is the app's own
(Fusion style, the default model, Qt's xcb platform), with a throwaway workspace and settings. The picture is
read from Xvfb's framebuffer, so it is what X shows, not what Qt meant to draw. Needs Debian's xvfb and
x11-utils. Says, and exits 1, where the window grew beyond the screen's size.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/xvfb.py: the Xvfb helpers the tests use


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--sizes", default="800x600,1920x1080", help="comma-separated WxH screen sizes")
    parser.add_argument("--_child", nargs=3, metavar=("W", "H", "FBDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        w, h, fbdir = args._child
        return _shoot(int(w), int(h), Path(fbdir), args.out)

    from xvfb import Xvfb

    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        with tempfile.TemporaryDirectory(prefix="protolabel-shots-") as tmp:
            x = Xvfb(Path(tmp) / "x", w, h)
            try:
                env = x.env(QT_QPA_PLATFORM="xcb", OMP_WAIT_POLICY="PASSIVE")
                cmd = [sys.executable, __file__, "--out", str(args.out), "--_child", str(w), str(h), str(x.folder)]
                failed |= subprocess.run(cmd, env=env, cwd=ROOT, timeout=600).returncode
            finally:
                x.stop()
    return 1 if failed else 0


def _shoot(width: int, height: int, fbdir: Path, out: Path) -> int:
    """In the child, on the Xvfb of DISPLAY: the window at the screen's size, two tabs, two screenshots."""
    import cv2
    from PySide6.QtCore import QSettings, Qt

    from core.synthetic import write_tree, write_video
    from desktop.app import _application
    from desktop.main_window import MainWindow, default_embedder
    from xvfb import read_xwd

    app = _application()
    app.setOverrideCursor(Qt.CursorShape.BlankCursor)  # Xvfb draws the pointer into the framebuffer
    tmp = Path(tempfile.mkdtemp(prefix="protolabel-shot-"))
    classes = ("circle", "square", "triangle")
    write_tree(tmp / "support", per_class=4, seed=1, classes=classes)
    write_tree(tmp / "query", per_class=10, seed=2, classes=classes)
    clip = write_video(tmp / "clip.avi", list(classes) * 4, frames_each=15, fps=15, seed=4)

    def until(condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s at {width}x{height}")
            app.processEvents()
            time.sleep(0.01)

    def pause(seconds: float) -> None:
        end = time.monotonic() + seconds
        until(lambda: time.monotonic() > end)

    grown = []

    def shot(name: str) -> None:
        pause(0.8)  # let X draw what Qt sent
        size = window.size()
        if size.width() > width or size.height() > height:
            grown.append(f"{name}: the window is {size.width()}x{size.height()} on a {width}x{height} screen")
        geo = window.frameGeometry()
        image = read_xwd((fbdir / "Xvfb_screen0").read_bytes())
        image = image[max(0, geo.y()):geo.y() + geo.height(), max(0, geo.x()):geo.x() + geo.width()]
        path = out / f"layout-{width}x{height}-{name}.png"
        cv2.imwrite(str(path), image)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: window {size.width()}x{size.height()}")

    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(make_embedder=default_embedder, workspace=tmp / "workspace", settings=settings,
                        open_last=False)
    window.move(0, 0)
    window.resize(width, height)
    window.show()
    try:
        until(lambda: window.model_ready)
        window.import_tree(str(tmp / "support"))
        until(lambda: sum(c.count for c in window.snapshot.classes) == 4 * len(classes))
        window.open_video(str(clip))
        until(lambda: window.live.prediction() is not None)
        window.live.set_roi(None)
        shot("live")

        window.stop_source()
        window.open_folder(str(tmp / "query"))
        view = window.folder_view
        until(lambda: len(view.items()) == 10 * len(classes) and all(i.label for i in view.items()))
        until(lambda: window.task_bar.isHidden())
        first = view.items()[0]
        view.select_path(first.path)
        until(lambda: view.explained_path() == first.path, timeout=30)
        until(lambda: view.thumbnail_loader.idle(), timeout=30)
        shot("folder")
    finally:
        window.shutdown()
        window.deleteLater()
    for line in grown:
        print(line, file=sys.stderr)
    return 1 if grown else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
