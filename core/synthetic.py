"""Generated images: classes of drawn shapes that an ImageNet backbone can tell apart, and a small video.

Used by the tests and by `protolabel --selftest` (which must work without any image on disk)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["SHAPE_CLASSES", "GLYPHS", "draw_shape", "draw_glyph", "write_tree", "write_video", "write_glyph_tree"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
_COLORS = {"circle": (220, 40, 40), "square": (40, 90, 220), "triangle": (40, 170, 60), "star": (230, 180, 20)}


def draw_shape(kind: str, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """One RGB uint8 (size, size, 3) image of a `kind` shape at a random place and scale on a noisy background."""
    img = np.full((size, size, 3), rng.integers(200, 256), np.uint8)
    img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    color = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in _COLORS[kind])
    r = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    elif kind == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color)
    else:
        angles = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], color)
    return img


def write_tree(root: Path, per_class: int, seed: int = 0, classes=SHAPE_CLASSES, ext: str = ".png") -> dict[str, list[Path]]:
    """root/<class>/<i>.png for each class -> {class: [paths]}"""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        out[kind] = []
        for i in range(per_class):
            path = folder / f"{kind}_{i:03d}{ext}"
            cv2.imwrite(str(path), draw_shape(kind, rng)[..., ::-1])
            out[kind].append(path)
    return out


def write_video(path: Path, kinds: Sequence[str], frames_each: int = 10, fps: int = 10, seed: int = 0) -> Path:
    """An MJPG .avi (a camera stand-in: OpenCV reads it like a device) showing each kind in turn; 160x160 frames."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 160))
    for kind in kinds:
        for _ in range(frames_each):
            writer.write(np.ascontiguousarray(draw_shape(kind, rng)[..., ::-1]))
    writer.release()
    return path


GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnqrty23456789#%&@?"


def draw_glyph(char: str, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """One handwritten-looking character: random scale, place, rotation, shear and ink on noisy paper
    (an Omniglot-like class per character; ImageNet features tell these apart only so-so)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (size, size), 0)
    font = ImageFont.load_default(size=int(rng.integers(size // 2, int(size * 0.8))))
    ImageDraw.Draw(canvas).text((size / 2, size / 2), char, fill=255, font=font, anchor="mm")
    a = np.asarray(canvas, np.uint8)
    angle, shear = float(rng.uniform(-20, 20)), float(rng.uniform(-0.25, 0.25))
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    m[0, 1] += shear
    m[:, 2] += rng.uniform(-size * 0.12, size * 0.12, 2)
    a = cv2.warpAffine(a, m, (size, size))
    a = cv2.dilate(a, np.ones((2, 2), np.uint8), iterations=int(rng.integers(0, 3)))
    paper = rng.integers(215, 256)
    ink = np.array(rng.integers(0, 90, 3), np.float32)
    alpha = a[..., None].astype(np.float32) / 255
    img = (1 - alpha) * paper + alpha * ink
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_glyph_tree(root: Path, chars: str = GLYPHS, per_class: int = 12, seed: int = 0) -> list[str]:
    """root/<char code>/<i>.png for each character -> the class folder names."""
    rng = np.random.default_rng(seed)
    names = []
    for ch in chars:
        name = f"u{ord(ch):04x}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{i:02d}.png"), draw_glyph(ch, rng)[..., ::-1])
        names.append(name)
    return names
