"""A real X server for the tests that need one (Debian's `xvfb`): the window on Qt's xcb platform, the
installed app started from its desktop entry. Screenshots come from Xvfb's framebuffer file (-fbdir), which
is an XWD image; windows are found with x11-utils' xwininfo and xprop."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TOOLS = ("Xvfb", "xwininfo", "xprop")


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install xvfb x11-utils; `make test` does)")


@dataclass
class Shown:
    """What a desktop shows of an app's window: its size, icon sizes and a screenshot once drawn."""
    width: int
    height: int
    icons: list[tuple[int, int]]
    shot: np.ndarray


def show_app(command: list[str], folder: Path, env: dict[str, str], wm_class: str = "ProtoLabel",
             screen: tuple[int, int] = (1366, 768), cwd: Path | None = None) -> Shown:
    """Start command on a fresh Xvfb (DISPLAY set in env, WAYLAND_DISPLAY taken out), wait for its window to be drawn, close it. Its
    output goes to folder/app.log, the screenshot to folder/screen.png; a traceback in the log fails."""
    import cv2

    x = Xvfb(folder / "x", *screen)
    try:
        with (folder / "app.log").open("w") as log:
            proc = subprocess.Popen(command, cwd=cwd or folder, stdout=log, stderr=subprocess.STDOUT,
                                    env={k: v for k, v in env.items() if k != "WAYLAND_DISPLAY"} | {"DISPLAY": x.display})
        try:
            window = x.wait_for_window(wm_class, proc)
            shown = Shown(*x.geometry(window), x.icon_sizes(window), x.wait_for_drawing(proc))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        x.stop()
    cv2.imwrite(str(folder / "screen.png"), shown.shot)
    assert "Traceback" not in (folder / "app.log").read_text()
    return shown


class Xvfb:
    """An Xvfb server on a free display, its framebuffer in a folder; stop() ends it."""

    def __init__(self, folder: Path, width: int = 1280, height: int = 800):
        require_tools()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24", "-fbdir", str(folder),
             "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(write)
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()  # Xvfb writes the display number once it accepts clients
        if not number:
            self.proc.kill()
            raise RuntimeError(f"Xvfb did not start: {self.proc.communicate()[1].decode(errors='replace')}")
        self.display = f":{number}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, DISPLAY=self.display, **extra)
        for name in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
            if name not in extra:
                env.pop(name, None)
        return env

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _x(self, *cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=self.env()).stdout

    def viewable_windows(self, wm_class: str) -> list[str]:
        """Ids of the top-level windows of that WM_CLASS class that are on screen."""
        ids = re.findall(r"^\s+(0x[0-9a-f]+) .*\(\"[^\"]*\" \"" + re.escape(wm_class) + r"\"\)",
                         self._x("xwininfo", "-root", "-children"), flags=re.M)
        return [w for w in ids if "IsViewable" in self._x("xwininfo", "-id", w)]

    def wait_for_window(self, wm_class: str, proc: subprocess.Popen, timeout: float = 180) -> str:
        """The first viewable window of that class; fails when proc exits or nothing shows in time (generous:
        the window comes after torch loads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the app exited ({proc.returncode}) before its window showed:\n{out}\n{err}")
            windows = self.viewable_windows(wm_class)
            if windows:
                return windows[0]
            time.sleep(0.5)
        pytest.fail(f"no {wm_class} window on {self.display} after {timeout:.0f} s")

    def geometry(self, window: str) -> tuple[int, int]:
        out = self._x("xwininfo", "-id", window)
        return (int(re.search(r"Width: (\d+)", out).group(1)), int(re.search(r"Height: (\d+)", out).group(1)))

    def icon_sizes(self, window: str) -> list[tuple[int, int]]:
        """The icon sizes the window gives the desktop (_NET_WM_ICON: what task bars and switchers show)."""
        out = self._x("xprop", "-id", window, "_NET_WM_ICON")
        return [(int(w), int(h)) for w, h in re.findall(r"Icon \((\d+) x (\d+)\)", out)]

    def screenshot(self) -> np.ndarray:
        """The screen as an H x W x 3 BGR array, read from the framebuffer's XWD file."""
        return read_xwd((self.folder / "Xvfb_screen0").read_bytes())

    def wait_for_drawing(self, proc: subprocess.Popen, timeout: float = 120, settle: float = 2.0) -> np.ndarray:
        """A screenshot once the screen has content and has stopped changing for `settle` seconds."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline and proc.poll() is None:
            shot = self.screenshot()
            if last is None or not np.array_equal(shot, last):
                last, since = shot, time.monotonic()
            elif shot.std() > 5 and time.monotonic() - since >= settle:
                return shot
            time.sleep(0.5)
        assert last is not None and last.std() > 5, "the screen stayed blank"
        return last


def read_xwd(data: bytes) -> np.ndarray:
    """A 24/32-bit ZPixmap XWD image (what Xvfb's -fbdir keeps) as BGR."""
    header = np.frombuffer(data[:100], dtype=">u4")
    if header[1] != 7:  # file_version: the header is in the writer's byte order
        header = np.frombuffer(data[:100], dtype="<u4")
    header_size, depth, width, height = int(header[0]), int(header[3]), int(header[4]), int(header[5])
    byte_order, bits_per_pixel, bytes_per_line, ncolors = (int(header[7]), int(header[11]), int(header[12]),
                                                           int(header[19]))
    assert depth == 24 and bits_per_pixel == 32, f"XWD of depth {depth}, {bits_per_pixel} bits per pixel"
    start = header_size + 12 * ncolors
    rows = np.frombuffer(data[start:start + height * bytes_per_line], dtype=np.uint8).reshape(height,
                                                                                                bytes_per_line)
    pixels = rows[:, :width * 4].reshape(height, width, 4)
    return np.ascontiguousarray(pixels[..., :3] if byte_order == 0 else pixels[..., 3:0:-1])
