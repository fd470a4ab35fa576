"""The `protolabel` command: no arguments opens the window; `--selftest` checks an installation headless;
anything else is a core command (label, evaluate, demo, backbones), run without the GUI."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

USAGE = """usage: protolabel [PROJECT_FOLDER]    open the window (and a project)
       protolabel --selftest            headless check of this installation (exit 0 = fine)
       protolabel COMMAND ...           label | evaluate | metatrain | demo | backbones (see below)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--selftest"]:
        return selftest()
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
    if not args or args[0] == "gui" or (len(args) == 1 and Path(args[0], "project.json").is_file()):
        project = args[-1] if args and args[-1] != "gui" else None
        return run_gui(project)
    from core.cli import main as cli_main

    return cli_main(args)


def _quiet_offscreen(mode, context, message: str) -> None:
    """Qt's message handler: drop the offscreen plugin's notice about window size hints, pass the rest on."""
    if "propagateSizeHints" in message:
        return
    sys.stderr.write(message + "\n")


def _application():
    from PySide6.QtCore import qInstallMessageHandler
    from PySide6.QtWidgets import QApplication

    qInstallMessageHandler(_quiet_offscreen)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ProtoLabel")
    app.setOrganizationName("ProtoLabel")
    app.setStyle("Fusion")
    return app


def run_gui(project: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = _application()
    from .main_window import MainWindow

    window = MainWindow(open_last=project is None)
    if project:
        window.open_project(project)
    window.show()
    return app.exec()


def _wait(app, condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def selftest(timeout: float = 180.0) -> int:
    """Open the main window offscreen, teach it two generated classes, predict on a generated video, close.

    Exit 0 when the predictions are right on most frames and every thread stopped; 1 with the reason."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings

    from core.synthetic import write_tree, write_video

    app = _application()
    from .main_window import MainWindow

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="protolabel-selftest-") as tmp:
        root = Path(tmp)
        write_tree(root / "examples", per_class=4, classes=("circle", "square"), seed=1)
        video = write_video(root / "clip.avi", ["circle", "square"] * 3, frames_each=10, fps=20, seed=2)
        settings = QSettings(str(root / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(workspace=root / "workspace", settings=settings, open_last=False)
        window.show()
        seen: list = []
        window.engine.livePrediction.connect(seen.append)

        def fail(reason: str) -> int:
            window.shutdown()
            window.close()
            print(f"selftest FAILED: {reason}", file=sys.stderr)
            return 1

        if not _wait(app, lambda: window.model_ready, timeout):
            errors = [t for lvl, t in window.messages if lvl == "error"]
            return fail("the model did not load" + (f": {errors[-1]}" if errors else ""))
        window.import_tree(str(root / "examples"))
        counts = lambda: {c.name: c.count for c in window.snapshot.classes}  # noqa: E731
        if not _wait(app, lambda: counts() == {"circle": 4, "square": 4}, 60):
            return fail(f"the examples were not learned (classes: {counts()})")
        window.open_video(str(video))
        if not _wait(app, lambda: len(seen) >= 20, 60):
            return fail(f"only {len(seen)} live predictions in 60 s from the video")
        # Frames 0-9 show circles, 10-19 squares, ... (the index keeps counting when the clip loops).
        truth = lambda i: ("circle", "square")[(i // 10) % 2]  # noqa: E731
        right = sum(p.label == truth(p.frame_index) for p in seen)
        overlay = window.live.prediction()
        window.shutdown()
        window.close()
        app.processEvents()
        left = [t.name for t in threading.enumerate() if t.name.startswith("protolabel")]
        if left:
            print(f"selftest FAILED: threads still running after close: {left}", file=sys.stderr)
            return 1
        if overlay is None:
            print("selftest FAILED: the live view never showed a prediction", file=sys.stderr)
            return 1
        if right < 0.8 * len(seen):
            print(f"selftest FAILED: {right} of {len(seen)} live predictions right (need 80%)", file=sys.stderr)
            return 1
    print(f"selftest passed: model {window.model_label.text()}; {right}/{len(seen)} live predictions right "
          f"on a generated video; {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
