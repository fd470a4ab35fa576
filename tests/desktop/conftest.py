"""Desktop tests: pytest-qt, offscreen, the real widgets and threads; no thread may outlive its test."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("PySide6")


def _ours() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("protolabel") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_threads_left():
    """Fail a test that leaves an engine, source, probe or thumbnail thread running."""
    yield
    deadline = time.monotonic() + 5
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _ours(), f"threads left running: {_ours()}"


@pytest.fixture
def settings(tmp_path):
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def make_window(qtbot, tmp_path, embedder, settings):
    """MainWindow factory on the session's CPU embedder, with its own workspace and settings file."""
    from desktop.main_window import MainWindow

    windows = []

    def make(make_embedder=None, **kw):
        w = MainWindow(make_embedder=make_embedder or (lambda: embedder), workspace=tmp_path / "workspace",
                       settings=settings, open_last=kw.pop("open_last", False), **kw)
        qtbot.addWidget(w)
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()
