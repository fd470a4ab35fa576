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

from . import startup

USAGE = """usage: protolabel [PROJECT_FOLDER]    open the window (and a project)
       protolabel --selftest            headless check of this installation (exit 0 = fine)
       protolabel COMMAND ...           label | evaluate | metatrain | demo | backbones (see below)
The window keeps its settings, unsaved work and log (protolabel.log) in the user's app-data folder;
PROTOLABEL_DATA_DIR=DIR puts them in DIR instead.
"""


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: beside a camera thread, the GUI or other programs on a
    # 2-core machine, spinning made a batch-1 forward 3-30x slower (bench, 2-core VM under load). Read when
    # torch loads, so first thing; an explicit setting wins. (`import core` sets nothing process-wide.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


_log_file: Path | None = None  # where Qt's fatal errors are logged (the session's log; None: the default one)


def _qt_message(mode, context, message: str) -> None:
    """Qt's message handler: drop the offscreen plugin's notice about window size hints, pass the rest on.

    A fatal "no platform plugin" becomes our explanation and exit code 3: Qt would abort, which from a
    double-click shows nothing at all."""
    from PySide6.QtCore import QtMsgType

    if "propagateSizeHints" in message:
        return
    if mode == QtMsgType.QtFatalMsg and "platform plugin" in message:
        code = startup.platform_failure(message, _log_file)
        os._exit(code)  # Qt aborts (core dump, exit 134) once this handler returns
    if sys.stderr is not None:
        sys.stderr.write(message + "\n")
    if mode == QtMsgType.QtFatalMsg:
        startup.append_log(_log_file or startup.default_log_file(), f"Qt fatal error: {message}")


def _application(log_file: Path | None = None):
    global _log_file
    from PySide6.QtCore import qInstallMessageHandler
    from PySide6.QtWidgets import QApplication

    from .resources import app_icon

    _log_file = log_file
    qInstallMessageHandler(_qt_message)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ProtoLabel")  # also the X11 window class: resources/protolabel.desktop's StartupWMClass
    app.setOrganizationName("ProtoLabel")
    app.setDesktopFileName("protolabel")  # Wayland's app id: the desktop entry (and its icon) of the window
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")
    return app


def _log_to_file(log_file: Path) -> None:
    """Warnings and uncaught errors also go to the log file: a double-clicked app has no terminal."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
    except OSError:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    previous = sys.excepthook

    def log_uncaught(kind, value, tb) -> None:
        logging.getLogger("protolabel").error("uncaught error", exc_info=(kind, value, tb))
        if sys.stderr is not None:  # a windowed bundle has none
            previous(kind, value, tb)

    sys.excepthook = log_uncaught


def run_gui(project: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    where = startup.resolve_locations()
    _log_to_file(where.log_file)
    app = _application(where.log_file)
    missing = startup.missing_model()
    if missing:
        startup.report("the model is missing", missing, where.log_file)
        return startup.EXIT_NO_MODEL
    from core.device import keep_freed_memory

    from .main_window import MainWindow

    keep_freed_memory()
    window = MainWindow(workspace=where.workspace, settings=where.settings(), open_last=project is None)
    if where.temporary:
        logging.getLogger("protolabel").warning(where.problem)  # stderr and the log file
        window.show_message("warning", where.problem)
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

    app = _application()
    missing = startup.missing_model()
    if missing:
        print(f"selftest FAILED: {missing}", file=sys.stderr)
        return startup.EXIT_NO_MODEL
    from core.device import keep_freed_memory
    from core.synthetic import write_tree, write_video

    from .main_window import MainWindow

    keep_freed_memory()

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

        errors = lambda: [t for lvl, t in window.messages if lvl == "error"]  # noqa: E731
        if not _wait(app, lambda: window.model_ready or bool(errors()), timeout) or not window.model_ready:
            return fail("the model did not load" + (f": {errors()[-1]}" if errors() else ""))
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
