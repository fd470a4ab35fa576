"""Generated test images: the shapes and video of core.synthetic, plus shapes lost in clutter."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from core.synthetic import GLYPHS, SHAPE_CLASSES, draw_glyph, draw_shape, write_glyph_tree, write_tree, write_video

__all__ = ["FakeCapture", "SHAPE_CLASSES", "GLYPHS", "draw_shape", "write_tree", "write_video", "draw_in_clutter", "draw_glyph",
           "write_glyph_tree"]


def draw_in_clutter(kind: str, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """A small shape of random colour on a loud random background (smooth colour field + random lines):
    the background dominates pretrained features, so prototypes alone are mediocre and adapting helps."""
    img = cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(img, p1, p2, c, int(rng.integers(2, 6)))
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(rng.integers(14, 26))
    cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        cv2.fillPoly(img, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], color)
    return img


def write_solid_video(path: Path, colors: list[tuple[int, int, int]], frames_each: int = 5, fps: int = 20,
                      size: tuple[int, int] = (160, 160)) -> Path:
    """An MJPG .avi of solid-colour frames: each RGB colour in `colors` for `frames_each` frames; size = (w, h), even."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for rgb in colors:
        frame = np.empty((size[1], size[0], 3), np.uint8)
        frame[:] = rgb[::-1]  # the writer takes BGR
        for _ in range(frames_each):
            writer.write(frame)
    writer.release()
    return path


class FakeCapture:
    """A cv2.VideoCapture stand-in: `frames` grey frames (None: endless), then failed reads; sleeps `delay`
    per read like a camera."""

    def __init__(self, device=0, frames: int | None = None, delay: float = 0.0) -> None:
        self.left = frames
        self.delay = delay
        self.n = 0

    def isOpened(self) -> bool:
        return True

    def set(self, prop, value) -> bool:
        return False

    def get(self, prop) -> float:
        return 0.0

    def read(self):
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                return False, None
        self.n += 1
        time.sleep(self.delay)
        return True, np.full((120, 160, 3), self.n % 255, np.uint8)

    def release(self) -> None:
        pass
