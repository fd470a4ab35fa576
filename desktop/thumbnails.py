"""Thumbnail decoding off the UI thread: `decode_thumbnail`, the `ThumbnailLoader` thread and the UI thread's cache."""
from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage, QPixmap

from core import ImageError, load_image

THUMBNAIL_SIDE = 128  # px, longer side of a grid thumbnail
CACHE_SIZE = 3000  # thumbnails kept in the UI thread (~64 KB each at most)


def decode_thumbnail(path: str, side: int) -> tuple[QImage, str]:
    """Decode `path` to an RGB QImage whose longer side is `side` px; (null QImage, reason) when unreadable.

    Safe off the UI thread (QImage, not QPixmap); never raises.
    """
    try:
        rgb = load_image(path, max_side=512)
        h, w = rgb.shape[:2]
        scale = side / max(h, w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        # .copy(): the QImage must own its pixels once `rgb` is freed
        return QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888).copy(), ""
    except ImageError as e:
        return QImage(), str(e)
    except Exception as e:  # a decoder bug on one file must not end the loader thread
        return QImage(), f"cannot read '{path}': {type(e).__name__}: {e}"


class ThumbnailLoader(QObject):
    """One background thread that decodes thumbnails, most recently requested first (LIFO).

    `request()` is cheap and may be called from `paint()`; results arrive in the UI thread as
    `thumbnailReady(path, side, image, error)` with a null image and a reason for unreadable files.
    """

    thumbnailReady = Signal(str, int, QImage, str)

    def __init__(self, parent: QObject | None = None, max_pending: int = 512) -> None:
        super().__init__(parent)
        self._cond = threading.Condition()
        self._pending: OrderedDict[tuple[str, int], None] = OrderedDict()  # last = most recent = next
        self._in_flight: tuple[str, int] | None = None
        self._max_pending = max_pending
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.requested = 0  # requests accepted (not deduplicated ones); tests check laziness with it

    @property
    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request(self, path: str, side: int = THUMBNAIL_SIDE) -> tuple[str, int] | None:
        """Queue `path` for decoding at `side` px, ahead of everything requested before.

        Returns the (path, side) dropped to keep at most `max_pending` requests (the oldest: scrolled past
        long ago), which will not arrive, or None.
        """
        key = (path, side)
        dropped = None
        with self._cond:
            if self._stopping or key == self._in_flight:
                return None
            if key in self._pending:
                self._pending.move_to_end(key)
            else:
                self._pending[key] = None
                self.requested += 1
                if len(self._pending) > self._max_pending:
                    dropped, _ = self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protolabel-thumbnails", daemon=True)
                self._thread.start()
            self._cond.notify()
        return dropped

    def bump(self, path: str, side: int = THUMBNAIL_SIDE) -> None:
        """Move a pending request to the front; no-op when it is not pending."""
        with self._cond:
            if (path, side) in self._pending:
                self._pending.move_to_end((path, side))

    def idle(self) -> bool:
        """Nothing pending and nothing being decoded."""
        with self._cond:
            return not self._pending and self._in_flight is None

    def cancel(self, path: str, side: int = THUMBNAIL_SIDE) -> None:
        """Drop a pending request (one already decoding still arrives)."""
        with self._cond:
            self._pending.pop((path, side), None)

    def clear(self) -> None:
        """Drop every pending request."""
        with self._cond:
            self._pending.clear()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread and wait for it (one decode at most); True when it is gone. Idempotent."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.thread_alive

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key, _ = self._pending.popitem(last=True)
                self._in_flight = key
            image, error = decode_thumbnail(*key)
            with self._cond:
                self._in_flight = None
                if self._stopping:
                    return
            try:
                self.thumbnailReady.emit(key[0], key[1], image, error)
            except RuntimeError:  # the QObject is gone: nobody to deliver to
                return


class _Unreadable:
    """Cache entry for a file that could not be decoded."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _ThumbnailCache:
    """LRU of path -> QPixmap | _Unreadable, UI thread only."""

    def __init__(self, capacity: int = CACHE_SIZE) -> None:
        self._data: OrderedDict[str, QPixmap | _Unreadable] = OrderedDict()
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, path: str) -> bool:
        return path in self._data

    def get(self, path: str) -> QPixmap | _Unreadable | None:
        entry = self._data.get(path)
        if entry is not None:
            self._data.move_to_end(path)
        return entry

    def put(self, path: str, entry: QPixmap | _Unreadable) -> None:
        self._data[path] = entry
        self._data.move_to_end(path)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
