"""Frame sources: a camera or a video file, read one frame at a time (image folders are labeled through
core.session, not streamed).

Every source is a plain blocking iterator (no threads here): ``open()``, then ``read()`` until it gives
None, then ``close()``; or ``with source: for frame in source.frames(cancel): ...``. The GUI runs a
source in its own worker thread and keeps only the latest frame; the CLI iterates directly.

Frames are RGB uint8 (H, W, 3), C-contiguous, new arrays (the consumer may keep or modify them).

Threading contract: one thread reads (``open``/``read``/``reopen``). ``close()`` may come from any
thread: when a read is in progress it does not wait for it; the reading thread releases the device as
soon as that read returns, and every later ``read()`` gives None. So a GUI can close a camera that hangs
in ``read()`` without blocking, and the worker's loop ends by itself.
"""
from __future__ import annotations

import glob
import math
import os
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .images import from_bgr

__all__ = [
    "VIDEO_EXTENSIONS",
    "CameraInfo",
    "CameraSource",
    "Frame",
    "FrameSource",
    "SourceError",
    "VideoFileSource",
    "list_cameras",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v"})

_SLEEP_SLICE = 0.05  # longest uninterrupted sleep, so close() from another thread ends a wait quickly
_FALLBACK_FPS = 30.0  # pace of realtime playback when a clip does not declare its fps


@dataclass(frozen=True, eq=False)  # identity equality: comparing pixel arrays with == is ambiguous
class Frame:
    """One picture from a source.

    image: RGB uint8 (H, W, 3), C-contiguous. index: 0-based, increasing; for cameras and videos the
    number of frames delivered before this one (it keeps counting across ``loop`` and ``reopen``), for
    folders the file's position in the sorted list (gaps where files were skipped), so ``(index + 1) /
    total`` is progress. timestamp: seconds; ``time.monotonic()`` when a camera or folder frame was
    read, the position in the clip for video files (it wraps with ``loop``). source: 'camera:0', the
    video's path, or the image file's path.
    """

    image: np.ndarray
    index: int
    timestamp: float
    source: str


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped working; ``str(e)`` is a sentence for the user."""


class CancelFlag(Protocol):
    """What ``frames(cancel=...)`` needs: ``core.embedding.CancelToken`` fits."""

    @property
    def cancelled(self) -> bool: ...


class FrameSource(ABC):
    """Base of all sources: state handling, iteration and the context manager.

    Subclasses implement ``_open`` (acquire, raise SourceError), ``_read`` (a Frame, or None at the
    end) and ``_close`` (release; called once per successful open).
    """

    name: str
    fps: float | None

    def __init__(self, name: str) -> None:
        self.name = name
        self.fps = None
        self._lock = threading.Lock()  # held by the reading thread during open/read
        self._state = "new"  # "new" (never opened) | "open" | "closed"
        self._closing = False

    # -- public surface ------------------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """Number of frames when known (video files, folders), else None."""
        return None

    @property
    def is_open(self) -> bool:
        return self._state == "open" and not self._closing

    def open(self) -> None:
        """Acquire the device/file; a no-op when already open. Raises SourceError with a clear message."""
        with self._lock:
            if self._state == "open" and not self._closing:
                return
            if self._state == "open":  # a close() that came in while we held nothing: finish it first
                self._state = "closed"
                self._close()
            self._closing = False
            self._open()
            self._state = "open"
        self._release_if_closing()  # close() arrived during a slow open

    def read(self) -> Frame | None:
        """The next frame; None at the end (and after ``close``). Raises SourceError if not opened yet."""
        try:
            with self._lock:
                if self._state == "new":
                    raise SourceError(f"{self.name} is not open (call open() or use 'with')")
                if self._state != "open" or self._closing:
                    return None
                return self._read()
        finally:
            self._release_if_closing()

    def close(self) -> None:
        """Release the device/file. Idempotent, safe from any thread (see the module docstring)."""
        self._closing = True
        self._release_if_closing()

    def reopen(self) -> None:
        """Close and open again (reconnect a camera, restart a clip or folder). Raises SourceError."""
        with self._lock:
            if self._state == "open":
                self._state = "closed"
                self._close()
            self._closing = False
            self._open()
            self._state = "open"
        self._release_if_closing()

    def frames(self, cancel: CancelFlag | None = None) -> Iterator[Frame]:
        """Yield frames until the end, ``cancel.cancelled`` turns true, or ``close()``.

        Opens the source if it is not open, and then closes it when the iteration ends (also when the
        consumer breaks out of the loop or the generator is closed); a source opened by the caller
        (``with source:``) stays open.
        """
        opened_here = not self.is_open
        if opened_here:
            self.open()
        try:
            while cancel is None or not cancel.cancelled:
                frame = self.read()
                if frame is None:
                    return
                yield frame
        finally:
            if opened_here:
                self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._state})"

    # -- for subclasses ------------------------------------------------------------------------------

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self) -> Frame | None: ...

    @abstractmethod
    def _close(self) -> None: ...

    def _sleep_until(self, deadline: float) -> bool:
        """Sleep until ``time.monotonic()`` reaches deadline; False if ``close()`` cut it short."""
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(remaining, _SLEEP_SLICE))
        return False

    def _release_if_closing(self) -> None:
        # Called by close() and by the reading thread after each open/read. Whichever of them gets the
        # lock releases; if close() finds the lock held, the reader's call after its read does it.
        if self._closing and self._lock.acquire(blocking=False):
            try:
                if self._closing and self._state == "open":
                    self._state = "closed"
                    self._close()
            finally:
                self._lock.release()


# ---------------------------------------------------------------------------------------------------
# Capture helpers (cv2.VideoCapture or anything with the same methods)


def _release_quietly(capture: Any) -> None:
    try:
        capture.release()
    except Exception:
        pass


def _get(capture: Any, prop: int) -> float:
    try:
        value = float(capture.get(prop))
    except Exception:
        return 0.0
    return value if math.isfinite(value) else 0.0


def _positive_fps(value: float) -> float | None:
    return value if 0.0 < value <= 1000.0 else None  # some backends report 0, nan or 90000 (timebase)


def _is_opened(capture: Any) -> bool:
    try:
        return bool(capture.isOpened())
    except Exception:
        return False


def _grab_frame(capture: Any) -> np.ndarray | None:
    """One BGR/gray uint8 frame from ``capture.read()``, or None when the read failed in any way."""
    try:
        ok, frame = capture.read()
    except Exception:  # cv2.error from a backend that lost its device
        return None
    if not ok or not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
        return None
    return frame


def _to_rgb(frame: np.ndarray) -> np.ndarray | None:
    try:
        return from_bgr(frame)
    except (ValueError, cv2.error):
        return None


# ---------------------------------------------------------------------------------------------------
# Camera


def _camera_label(device: int | str) -> str:
    return f"camera {device}" if isinstance(device, int) else f"camera '{device}'"


class CameraSource(FrameSource):
    """A webcam (index) or a stream (URL) through ``cv2.VideoCapture``.

    width/height/fps are requests (``CAP_PROP_*``); after ``open`` the attributes ``width``, ``height``
    and ``fps`` hold what the camera actually delivers (None where it does not say). A failed read is
    retried after ``retry_delay`` seconds; ``max_failures`` failures in a row raise SourceError
    ("stopped sending frames"); ``reopen()`` reconnects. ``capture_factory(device)`` builds the capture
    (tests pass a fake).
    """

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        max_failures: int = 10,
        retry_delay: float = 0.05,
        capture_factory: Callable[[int | str], Any] = cv2.VideoCapture,
    ) -> None:
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise TypeError(f"device must be a camera index or a URL/path, got {device!r}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures!r}")
        super().__init__(f"camera:{device}")
        self.device = device
        self.requested = (width, height, fps)
        self.width: int | None = None
        self.height: int | None = None
        self.max_failures = int(max_failures)
        self.retry_delay = float(retry_delay)
        self._factory = capture_factory
        self._capture: Any = None
        self._failures = 0
        self._index = 0

    @property
    def label(self) -> str:
        """How messages name this camera: "camera 0" or "camera 'rtsp://...'"."""
        return _camera_label(self.device)

    def _open(self) -> None:
        hint = "is another program using it?" if isinstance(self.device, int) else "check the address"
        try:
            capture = self._factory(self.device)
        except Exception as e:
            raise SourceError(f"{self.label} could not be opened ({hint}; {type(e).__name__}: {e})") from e
        if not _is_opened(capture):
            _release_quietly(capture)
            raise SourceError(f"{self.label} could not be opened ({hint})")
        width, height, fps = self.requested
        try:
            # Ask for the size before the rate: many drivers only offer some rates at some sizes.
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, width),
                (cv2.CAP_PROP_FRAME_HEIGHT, height),
                (cv2.CAP_PROP_FPS, fps),
            ):
                if value:
                    capture.set(prop, float(value))
        except Exception:
            pass  # a request the driver refuses is not an error: we read back what we got
        self.width = int(_get(capture, cv2.CAP_PROP_FRAME_WIDTH)) or None
        self.height = int(_get(capture, cv2.CAP_PROP_FRAME_HEIGHT)) or None
        self.fps = _positive_fps(_get(capture, cv2.CAP_PROP_FPS))
        self._capture = capture
        self._failures = 0

    def _read(self) -> Frame | None:
        while True:
            frame = _grab_frame(self._capture)
            rgb = _to_rgb(frame) if frame is not None else None
            if rgb is not None:
                self._failures = 0
                self.height, self.width = rgb.shape[:2]
                out = Frame(rgb, self._index, time.monotonic(), self.name)
                self._index += 1
                return out
            self._failures += 1
            if self._failures >= self.max_failures:
                self._failures = 0  # a later read() (or reopen()) tries afresh
                raise SourceError(f"{self.label} stopped sending frames (unplugged?)")
            if not self._sleep_until(time.monotonic() + self.retry_delay):
                return None  # close() during the wait

    def _close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            _release_quietly(capture)


@dataclass(frozen=True)
class CameraInfo:
    """A camera that opened when probed: ``CameraSource(index)`` opens it. width/height 0 if unknown."""

    index: int
    name: str
    width: int
    height: int


def _linux_camera_name(index: int) -> str | None:
    try:
        with open(f"/sys/class/video4linux/video{index}/name", encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _candidate_indices(max_index: int, capture_factory: Callable[..., Any]) -> list[int]:
    if sys.platform.startswith("linux") and capture_factory is cv2.VideoCapture:
        # Only /dev/videoN nodes can open; probing the rest costs time and log noise.
        found = set()
        for node in glob.glob("/dev/video*"):
            m = re.fullmatch(r"/dev/video(\d+)", node)
            if m and int(m.group(1)) < max_index:
                found.add(int(m.group(1)))
        return sorted(found)
    return list(range(max_index))


def list_cameras(max_index: int = 8, capture_factory: Callable[..., Any] = cv2.VideoCapture) -> list[CameraInfo]:
    """Cameras at indices 0 .. max_index - 1 that open, in index order. Never raises.

    Each one is opened and released (a camera in use by another program is left out). On Linux only
    indices with a /dev/videoN node are probed, and names come from sysfs.
    """
    found: list[CameraInfo] = []
    try:
        candidates = _candidate_indices(max_index, capture_factory)
    except Exception:
        return found
    log_level = None
    try:
        log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # "can't open camera" per probe
    except Exception:
        log_level = None
    try:
        for index in candidates:
            capture = None
            try:
                capture = capture_factory(index)
                if not _is_opened(capture):
                    continue
                width = int(_get(capture, cv2.CAP_PROP_FRAME_WIDTH))
                height = int(_get(capture, cv2.CAP_PROP_FRAME_HEIGHT))
                if not (width and height):
                    frame = _grab_frame(capture)
                    if frame is not None:
                        height, width = frame.shape[:2]
                name = _linux_camera_name(index) if capture_factory is cv2.VideoCapture else None
                found.append(CameraInfo(index, name or f"Camera {index}", max(width, 0), max(height, 0)))
            except Exception:
                continue
            finally:
                if capture is not None:
                    _release_quietly(capture)
    finally:
        if log_level is not None:
            try:
                cv2.utils.logging.setLogLevel(log_level)
            except Exception:
                pass
    return found


# ---------------------------------------------------------------------------------------------------
# Video file


class VideoFileSource(FrameSource):
    """A video file through ``cv2.VideoCapture(path)``.

    ``realtime=True`` paces reads at the clip's fps (30 if it declares none) like a camera: frame k is
    returned k / fps seconds after the first; a consumer that falls more than a second behind restarts
    the clock instead of getting a burst. ``loop=True`` starts over at the end. ``total`` is the
    container's frame count (None when it does not say). The first frame is decoded at ``open``, so an
    unreadable file fails there.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        realtime: bool = False,
        loop: bool = False,
        capture_factory: Callable[[str], Any] = cv2.VideoCapture,
    ) -> None:
        super().__init__(os.fspath(path))
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self._factory = capture_factory
        self._capture: Any = None
        self._total: int | None = None
        self._pending: np.ndarray | None = None  # the first frame, decoded by open
        self._position = 0  # frame number within the clip of the next frame
        self._index = 0
        self._ended = False
        self._clock: float | None = None  # realtime pacing: when paced frame 0 was due
        self._paced = 0

    @property
    def total(self) -> int | None:
        return self._total

    def _open(self) -> None:
        label = f"'{self.path}'"
        if not self.path.exists():
            raise SourceError(f"{label} does not exist")
        if self.path.is_dir():
            raise SourceError(f"{label} is a folder, not a video")
        capture = self._new_capture()
        if capture is None:
            raise SourceError(f"{label} is not a readable video")
        first = _grab_frame(capture)
        if first is None or _to_rgb(first) is None:
            _release_quietly(capture)
            raise SourceError(f"{label} is not a readable video (no frame could be decoded)")
        self.fps = _positive_fps(_get(capture, cv2.CAP_PROP_FPS))
        count = int(_get(capture, cv2.CAP_PROP_FRAME_COUNT))
        self._total = count if count > 0 else None
        self._capture, self._pending = capture, first
        self._position, self._ended = 0, False
        self._clock, self._paced = None, 0

    def _new_capture(self) -> Any:
        try:
            capture = self._factory(str(self.path))
        except Exception:
            return None
        if not _is_opened(capture):
            _release_quietly(capture)
            return None
        return capture

    def _next_bgr(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        frame = _grab_frame(self._capture)
        if frame is not None or not self.loop or self._position == 0:
            return frame  # a frame, or the end (never loop a pass that gave nothing: no endless spin)
        # Loop: seek back; if the backend cannot, open the file again.
        self._position = 0
        try:
            if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                frame = _grab_frame(self._capture)
        except Exception:
            frame = None
        if frame is None:
            _release_quietly(self._capture)
            self._capture = self._new_capture()
            frame = _grab_frame(self._capture) if self._capture is not None else None
        return frame

    def _read(self) -> Frame | None:
        if self._ended or self._capture is None:
            return None
        bgr = self._next_bgr()
        rgb = _to_rgb(bgr) if bgr is not None else None
        if rgb is None:
            self._ended = True
            return None
        if self.fps:
            timestamp = self._position / self.fps
        else:
            timestamp = max(0.0, _get(self._capture, cv2.CAP_PROP_POS_MSEC) / 1000.0)
        if self.realtime and not self._pace():
            return None
        frame = Frame(rgb, self._index, timestamp, self.name)
        self._index += 1
        self._position += 1
        return frame

    def _pace(self) -> bool:
        """Wait until the next paced frame is due; False if close() came meanwhile."""
        interval = 1.0 / (self.fps or _FALLBACK_FPS)
        now = time.monotonic()
        if self._clock is None or now - (self._clock + self._paced * interval) > 1.0:
            self._clock = now - self._paced * interval  # first frame, or far behind: due now
        due = self._clock + self._paced * interval
        self._paced += 1
        return self._sleep_until(due)

    def _close(self) -> None:
        capture, self._capture = self._capture, None
        self._pending = None
        if capture is not None:
            _release_quietly(capture)
