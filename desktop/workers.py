"""Background threads other than the engine: the frame source reader and the camera probe.

Each runs a plain core iterator or function in a thread, puts frames into the LatestFrame slot and reports
through signals; none touches a widget.
"""
from __future__ import annotations

import logging
import threading
import time

from PySide6.QtCore import QObject, Signal

from core import CameraInfo, CameraSource, CancelToken, FrameSource, SourceError, list_cameras

from .engine import LatestFrame

log = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 1.0


class SourceRunner(QObject):
    """Reads one FrameSource at a time in its own thread into a LatestFrame slot.

    Opening happens in the thread too (a camera can take seconds to open or fail)."""

    opened = Signal(str)  # source name
    failed = Signal(str)  # why the source could not be opened or stopped
    interrupted = Signal(str)  # a camera stopped sending; the runner is reconnecting
    ended = Signal(str)  # source name: the end of a (non-looping) video or a stop

    def __init__(self, frames: LatestFrame, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.frames = frames
        self.source: FrameSource | None = None
        self._thread: threading.Thread | None = None
        self._cancel: CancelToken | None = None
        self._stopping: list[threading.Thread] = []  # stopped, maybe still finishing a read

    def start(self, source: FrameSource) -> None:
        self.stop()
        self.source = source
        self._cancel = CancelToken()
        self._thread = threading.Thread(target=self._run, args=(source, self._cancel), name="protolabel-source",
                                        daemon=True)
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, wait: float | None = None) -> None:
        """Stop reading without blocking: close() does not wait for a read in progress (core.sources'
        threading contract) and the thread ends by itself. wait: seconds to join it (at shutdown)."""
        if self._cancel is not None:
            self._cancel.cancel()
        if self.source is not None:
            self.source.close()
        if self._thread is not None:
            self._stopping.append(self._thread)
        self._thread = None
        self.source = None
        self._stopping = [t for t in self._stopping if t.is_alive()]
        if wait is not None:
            for t in self._stopping:
                t.join(wait)
                if t.is_alive():
                    log.warning("source thread still busy after %.1f s (a camera read that hangs)", wait)

    def _run(self, source: FrameSource, cancel: CancelToken) -> None:
        try:
            source.open()
        except SourceError as exc:
            self.failed.emit(str(exc))
            return
        except Exception as exc:
            self.failed.emit(f"{source.name} could not be opened: {type(exc).__name__}: {exc}")
            return
        self.opened.emit(source.name)
        try:
            while not cancel.cancelled:
                try:
                    for frame in source.frames(cancel):
                        if cancel.cancelled:  # stopped while this frame was read: it belongs to the old source
                            break
                        self.frames.put(frame)
                    break  # the end of a clip, or stopped
                except SourceError as exc:
                    if cancel.cancelled:
                        return
                    if not isinstance(source, CameraSource):
                        self.failed.emit(str(exc))
                        return
                    # A camera that stopped (unplugged, driver hiccup): keep trying until it is back or stopped.
                    self.interrupted.emit(f"{exc}; reconnecting… (plug it back in, or pick another source)")
                    if not self._reconnect(source, cancel):
                        return
                    self.opened.emit(f"{source.name} (reconnected)")
        except Exception as exc:
            self.failed.emit(f"{source.name}: {type(exc).__name__}: {exc}")
            return
        finally:
            source.close()
        if not cancel.cancelled:
            self.ended.emit(source.name)

    def _reconnect(self, source: FrameSource, cancel: CancelToken) -> bool:
        """Reopen every RECONNECT_INTERVAL_S until it works (True) or the runner is stopped (False)."""
        while True:
            deadline = time.monotonic() + RECONNECT_INTERVAL_S
            while time.monotonic() < deadline:
                if cancel.cancelled:
                    return False
                time.sleep(0.05)
            try:
                source.reopen()
                return True
            except SourceError:
                continue


class CameraProbe(QObject):
    """Lists the cameras in a thread (opening each one can take a second)."""

    found = Signal(object)  # list[CameraInfo]

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="protolabel-camera-probe", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        cameras: list[CameraInfo] = list_cameras()
        self.found.emit(cameras)
