"""Start-up checks: what can stop the app before its window works, each turned into a message that names
what is missing and what to do, on stderr, in the log file and, where a screen is available, in a dialog.

- the Qt platform plugin (missing from the folder, or a system library it needs is not installed): Qt's
  fatal error becomes our message and exit code 3 (Qt alone aborts, which from a double-click says nothing);
- the model (the default backbone's weights, or a model file named by PROTOLABEL_DEFAULT_MODEL): exit code 4;
- an unwritable settings or app-data folder: the session runs on a temporary folder and says so.

PROTOLABEL_DATA_DIR puts the settings, the workspace of unsaved projects and the log in one folder of your
choice (a portable install, or a machine whose home folder is read-only).

Nothing here imports torch or core at module level: the checks run before the heavy imports.
"""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXIT_NO_MODEL",
    "EXIT_NO_PLATFORM",
    "Locations",
    "is_frozen",
    "missing_model",
    "platform_diagnosis",
    "report",
    "resolve_locations",
    "unwritable",
]

APP = "ProtoLabel"
EXIT_NO_PLATFORM = 3
EXIT_NO_MODEL = 4
LOG_NAME = "protolabel.log"
LOG_LIMIT = 1_000_000  # bytes; an older log is cut to its last half

# The Debian/Ubuntu packages of the system libraries Qt's platform plugins link (beyond libc and X11 itself; Qt 6
# docs, "Qt for X11 Requirements", and the plugins' own links). Slim images lack even the offscreen ones; many
# desktops lack libxcb-cursor0, which Qt >= 6.5's xcb plugin needs. `make qt-libs` installs them all.
SYSTEM_PACKAGES = {
    "offscreen": ("libegl1", "libgl1", "libfontconfig1", "libxkbcommon0", "libdbus-1-3", "libglib2.0-0"),
    "xcb": ("libxcb-cursor0", "libxcb-icccm4", "libxcb-image0", "libxcb-keysyms1", "libxcb-randr0",
            "libxcb-render-util0", "libxcb-shape0", "libxcb-xfixes0", "libxcb-xinerama0", "libxcb-xkb1",
            "libxkbcommon-x11-0", "libx11-xcb1"),
    "wayland": ("libwayland-client0", "libwayland-cursor0", "libwayland-egl1"),
}
DIALOG_WIDTH = 78  # characters: xmessage, the last resort, does not wrap at all


def system_packages(plugins: Sequence[str] = tuple(SYSTEM_PACKAGES)) -> list[str]:
    """What to apt-get install for these plugins (the offscreen libraries are under every plugin)."""
    names = ["offscreen", *plugins]
    return list(dict.fromkeys(package for name in names for package in SYSTEM_PACKAGES.get(name, ())))


def install_command(plugins: Sequence[str]) -> str:
    """The apt-get line, broken into lines of at most DIALOG_WIDTH with the shell's continuation (it still
    pastes into a terminal as one command)."""
    lines, line = [], "    sudo apt-get install"
    for package in system_packages(plugins):
        if len(line) + 1 + len(package) + 2 > DIALOG_WIDTH:
            lines.append(line + " \\")
            line = "        " + package
        else:
            line += " " + package
    return "\n".join([*lines, line])


def wrap(text: str, width: int = DIALOG_WIDTH) -> str:
    """Prose lines wrapped at width; indented lines (commands, paths) are kept as they are."""
    import textwrap

    return "\n".join(line if not line.strip() or line.startswith(" ") else
                     textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False)
                     for line in text.splitlines())


def is_frozen() -> bool:
    """True inside a PyInstaller bundle."""
    return bool(getattr(sys, "frozen", False))


def _reinstall_hint() -> str:
    if is_frozen():
        return ("This ProtoLabel folder is incomplete: unzip the download again into an empty folder "
                "(or rebuild it with `make dist`).")
    return "Reinstall ProtoLabel's packages: `make install` (or pip install -e .)."


# ------------------------------------------------------------------------------------------------ folders
@dataclass(frozen=True)
class Locations:
    """Where this session keeps its settings, the workspace of unsaved projects and its log.

    settings_file None means Qt's native place for QSettings("ProtoLabel", "ProtoLabel")."""

    data_dir: Path
    settings_file: Path | None
    workspace: Path
    log_file: Path
    temporary: bool = False
    problem: str = ""  # why a temporary folder is used ("" when it isn't)

    def settings(self):
        from PySide6.QtCore import QSettings

        if self.settings_file is None:
            return QSettings(APP, APP)
        return QSettings(str(self.settings_file), QSettings.Format.IniFormat)


def unwritable(folder: Path) -> str:
    """Why files can't be written in folder (created if missing), or "" when they can.

    Tries it (create, write, delete) rather than trusting permission bits: root passes every mode check,
    and a read-only mount or a full disk fails only on the write."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".protolabel-write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _native_locations() -> tuple[Path, Path | None]:
    """(Qt's app-data folder, the folder of Qt's native settings file or None where settings live in the
    Windows registry)."""
    from PySide6.QtCore import QCoreApplication, QSettings, QStandardPaths

    QCoreApplication.setOrganizationName(APP)
    QCoreApplication.setApplicationName(APP)
    data = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation))
    name = QSettings(APP, APP).fileName()
    settings_dir = None if name.startswith("\\HKEY_") else Path(name).parent
    return data, settings_dir


def resolve_locations() -> Locations:
    """The folders of this session: PROTOLABEL_DATA_DIR, else Qt's usual places; a fresh temporary folder
    when one of them can't be written (problem says which and why)."""
    override = os.environ.get("PROTOLABEL_DATA_DIR")
    if override:
        base = Path(override).expanduser()
        settings_file: Path | None = base / "settings.ini"
        folders = [("data folder (PROTOLABEL_DATA_DIR)", base)]
    else:
        base, settings_dir = _native_locations()
        settings_file = None
        folders = [("app-data folder", base)]
        if settings_dir is not None and settings_dir != base:
            folders.append(("settings folder", settings_dir))
    failures = [f"{what} {folder}: {reason}" for what, folder in folders if (reason := unwritable(folder))]
    if not failures:
        return Locations(base, settings_file, base / "unsaved", base / LOG_NAME)
    tmp = Path(tempfile.mkdtemp(prefix="protolabel-"))
    problem = (
        f"ProtoLabel can't write to its {'; '.join(failures)}. This session keeps its settings and unsaved "
        f"work in a temporary folder, {tmp}, which is lost when you quit: save your project to a folder you "
        f"can write to. To choose the folder ProtoLabel uses, set PROTOLABEL_DATA_DIR."
    )
    return Locations(tmp, tmp / "settings.ini", tmp / "unsaved", tmp / LOG_NAME, temporary=True, problem=problem)


# ------------------------------------------------------------------------------------------------ reporting
def default_log_file() -> Path:
    """The log file when the session's folders are not known yet (falls back to the temporary folder)."""
    override = os.environ.get("PROTOLABEL_DATA_DIR")
    try:
        folder = Path(override).expanduser() if override else _native_locations()[0]
    except ImportError:  # no usable Qt at all
        folder = Path(tempfile.gettempdir())
    if unwritable(folder):
        folder = Path(tempfile.gettempdir())
    return folder / LOG_NAME


def append_log(log_file: Path, text: str) -> Path | None:
    """Append a dated entry; returns the file written, or None when even that failed."""
    for path in (log_file, Path(tempfile.gettempdir()) / LOG_NAME):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size > LOG_LIMIT:
                keep = path.read_bytes()[-LOG_LIMIT // 2:]
                path.write_bytes(keep)
            with path.open("a", encoding="utf-8") as f:
                f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {text.rstrip()}\n")
            return path
        except OSError:
            continue
    return None


def _system_env() -> dict[str, str]:
    """The environment for a system program: in a bundle, without the bundle's library path (the bootloader
    sets LD_LIBRARY_PATH to it and keeps the user's as LD_LIBRARY_PATH_ORIG)."""
    env = dict(os.environ)
    if is_frozen():
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        env.pop("LD_LIBRARY_PATH", None)
        if original:
            env["LD_LIBRARY_PATH"] = original
    return env


def _desktop_dialog(title: str, text: str) -> None:
    """Best effort without Qt: a native message box on Windows, zenity/kdialog/xmessage on a Linux desktop."""
    try:
        if sys.platform == "win32":
            import ctypes

            ctypes.windll.user32.MessageBoxW(None, text, title, 0x10)  # MB_ICONERROR
            return
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return
        for tool, args in (("zenity", ["--error", "--no-markup", f"--title={title}", f"--text={text}"]),
                           ("kdialog", ["--title", title, "--error", text]),
                           ("xmessage", ["-center", text])):
            exe = shutil.which(tool)
            if exe:
                subprocess.Popen([exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True, env=_system_env())
                return
    except Exception:  # a failed dialog must not hide the message already on stderr/in the log
        pass


def report(title: str, text: str, log_file: Path | None = None, dialog: bool = True,
           qt_dialog: bool = True) -> Path | None:
    """Tell the user: stderr, the log file, and a dialog (Qt's when a QApplication runs and qt_dialog, else
    the desktop's) when stderr is not a terminal someone is looking at. Returns the log file written."""
    log = append_log(log_file or default_log_file(), f"{title}: {text}")
    full = f"{text}\n\n(This message is also in {log}.)" if log else text
    stream = sys.stderr
    if stream is not None:
        try:
            stream.write(f"ProtoLabel: {title}\n{full}\n")
            stream.flush()
        except (OSError, ValueError):
            stream = None
    interactive = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    if dialog and not interactive and os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal"):
        app = None
        if qt_dialog:
            try:
                from PySide6.QtWidgets import QApplication, QMessageBox

                app = QApplication.instance()
                if app is not None:
                    QMessageBox.critical(None, f"ProtoLabel: {title}", wrap(full))
            except ImportError:
                pass
        if app is None:
            _desktop_dialog(f"ProtoLabel: {title}", wrap(full))
    return log


# ------------------------------------------------------------------------------------------------ Qt platform
def _platform_candidates() -> list[str]:
    """The platform plugins Qt will try, in order (QT_QPA_PLATFORM's list, else the OS default)."""
    env = os.environ.get("QT_QPA_PLATFORM", "").strip()
    if env:
        return [part.split(":", 1)[0] for part in env.split(";") if part.strip()]
    if sys.platform == "win32":
        return ["windows"]
    if sys.platform == "darwin":
        return ["cocoa"]
    if os.environ.get("XDG_SESSION_TYPE") == "wayland" and os.environ.get("WAYLAND_DISPLAY"):
        return ["wayland", "xcb"]
    return ["xcb"]


def _plugin_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) / "platforms" for p in os.environ.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    try:
        from PySide6.QtCore import QLibraryInfo

        dirs.append(Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms")
    except ImportError:
        pass
    return dirs


def _plugin_file(folder: Path, name: str) -> Path:
    if sys.platform == "win32":
        return folder / f"q{name}.dll"
    return folder / f"libq{name}.{'dylib' if sys.platform == 'darwin' else 'so'}"


def _plugin_name(path: Path) -> str:
    """libqxcb.so -> xcb, qwindows.dll -> windows."""
    stem = path.name.split(".", 1)[0]
    return stem[4:] if stem.startswith("libq") else stem[1:] if stem.startswith("q") else stem


def _load_failure(plugin: Path) -> tuple[list[str], str]:
    """Why the plugin can't be loaded here: (system libraries it needs that this machine lacks, the loader's
    error); ([], "") when it loads."""
    import ctypes

    try:
        ctypes.CDLL(str(plugin))
        return [], ""
    except OSError as exc:
        error = str(exc)
    missing: list[str] = []
    ldd = shutil.which("ldd")
    if ldd and sys.platform.startswith("linux"):  # ldd names every missing library, dlopen only the first
        try:  # with this process's environment: in a bundle, its library path is where Qt's libraries are
            out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
            # ldd repeats a library that several others need
            missing = list(dict.fromkeys(line.split("=>")[0].strip() for line in out.splitlines()
                                         if "not found" in line))
        except (OSError, subprocess.SubprocessError):
            pass
    if not missing and "cannot open shared object file" in error:
        missing = [error.split(":", 1)[0].strip()]
    return missing, error


def _found_plugins(name: str, dirs: Sequence[Path]) -> list[Path]:
    """The files of platform plugin `name` in these folders, in the order Qt looks."""
    return [f for d in dirs if (f := _plugin_file(d, name)).is_file()]


def missing_libraries(plugins: Sequence[str] = ("xcb", "wayland")) -> dict[str, list[str]]:
    """The system libraries each of these platform plugins needs and can't find here (those found; ldd)."""
    dirs = [d for d in _plugin_dirs() if d.is_dir()]
    missing = {}
    for name in plugins:
        found = _found_plugins(name, dirs)
        if found and (libraries := _load_failure(found[0])[0]):
            missing[name] = libraries
    return missing


def platform_diagnosis() -> str:
    """What stops Qt's platform plugin from loading on this machine, as advice; "" when nothing is seen."""
    names = _platform_candidates()
    dirs = [d for d in _plugin_dirs() if d.is_dir()]
    advice: list[str] = []
    for name in names:
        found = _found_plugins(name, dirs)
        if not found:
            available = sorted({_plugin_name(p) for d in dirs for p in d.iterdir() if p.is_file()})
            looked = ", ".join(str(d) for d in _plugin_dirs()) or "(no plugin folder found)"
            asked = os.environ.get("QT_QPA_PLATFORM")
            advice.append(
                f'Qt\'s platform plugin "{name}" is not in {looked}. '
                + (f"Plugins there: {', '.join(available)}. " if available else "")
                + (f"QT_QPA_PLATFORM={asked} asks for it: unset it or name one of those. " if asked else "")
                + (_reinstall_hint() if is_frozen() or not asked else "")
            )
            continue
        missing, error = _load_failure(found[0])
        if missing:
            text = (f'Qt\'s platform plugin "{name}" can\'t load: this machine lacks the system libraries it '
                    f"needs: {', '.join(missing)}.\n    (the plugin: {found[0]})")
            if name in SYSTEM_PACKAGES and sys.platform.startswith("linux"):
                text += "\nOn Debian or Ubuntu, install them with:\n" + install_command([name])
            advice.append(text)
            continue
        if error:
            advice.append(f'Qt\'s platform plugin "{name}" ({found[0]}) can\'t be loaded: {error}. '
                          + _reinstall_hint())
            continue
        if name == "xcb" and not os.environ.get("DISPLAY"):
            advice.append('Qt\'s platform plugin "xcb" needs an X display and DISPLAY is not set. Run ProtoLabel '
                          "from a desktop session; without a screen, QT_QPA_PLATFORM=offscreen runs it headless "
                          "(`ProtoLabel --selftest` does that itself).")
        elif name == "wayland" and not os.environ.get("WAYLAND_DISPLAY"):
            advice.append('Qt\'s platform plugin "wayland" needs a Wayland session and WAYLAND_DISPLAY is not set.')
    return "\n".join(advice)


def platform_failure(qt_message: str, log_file: Path | None = None) -> int:
    """Qt said no platform plugin could start: explain, log, return the exit code."""
    diagnosis = platform_diagnosis()
    text = ("The window can't open because Qt could not start a platform plugin (the part that talks to the "
            "screen).\n" + (diagnosis or _reinstall_hint()) + f"\n\nQt said: {qt_message.strip()}")
    # No Qt dialog: the QApplication is half-built and has no platform to draw with.
    report("no Qt platform plugin", text, log_file, qt_dialog=False)
    return EXIT_NO_PLATFORM


# ------------------------------------------------------------------------------------------------ the model
def missing_model() -> str:
    """What is missing for the app's default model to load, as a message; "" when it is all there.

    Looks at the files only (building the model is the engine thread's job): PROTOLABEL_DEFAULT_MODEL's
    file, else the shipped model file, else the weights inside the default backbone's package."""
    env = os.environ.get("PROTOLABEL_DEFAULT_MODEL")
    if env:
        if Path(env).is_file():
            return ""
        return (f"The model file {env} does not exist (PROTOLABEL_DEFAULT_MODEL names it). Unset "
                "PROTOLABEL_DEFAULT_MODEL to use the built-in model, or point it at a ProtoLabel model file.")
    from core import DEFAULT_BACKBONE, WeightsNotFoundError, default_model_file
    from core.backbones import embedded_weights_file

    if default_model_file() is not None:
        return ""
    try:
        embedded_weights_file(DEFAULT_BACKBONE)
    except WeightsNotFoundError as exc:
        return f"The default model's weights are missing: {exc}. {_reinstall_hint()}"
    return ""


if __name__ == "__main__":  # for the Makefile (`make qt-libs`, `make dist`): stdlib only, no package imports
    if sys.argv[1:2] == ["--packages"]:  # what to apt-get install for the plugins named (default: all)
        print(" ".join(system_packages(sys.argv[2:] or tuple(SYSTEM_PACKAGES))))
    elif sys.argv[1:2] == ["--missing"]:  # the libraries the xcb and Wayland plugins lack here, if any
        print("; ".join(f"{name}: {', '.join(libs)}" for name, libs in missing_libraries().items()))
    else:
        sys.exit("usage: python desktop/startup.py --packages [PLUGIN ...] | --missing")
