"""Image decoding and the ONE preprocessing path every part of ProtoLabel uses.

Decoding: ``load_image`` turns a file or bytes into an RGB uint8 array (H, W, 3), honouring EXIF
orientation, flattening transparency onto white, scaling 16-bit data properly, refusing decompression
bombs from the header size, and decoding big images reduced (JPEG draft, then ``Image.reduce`` strip by
strip) so a 168 MP photo never needs several full-size copies. Every failure is an ``ImageError`` whose
message names the file and the reason.

Preprocessing: ``preprocess(images, config)`` = ``to_tensor([resize_for_model(i, config) ...], config)``
gives (B, 3, S, S) float32, normalised ``(x - mean) / std`` on 0-255 RGB. Support examples, live
queries, the CLI and export all go through it, so they cannot drift apart.
"""

from __future__ import annotations


import contextlib
import io
import math
import numbers
import os
import stat
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageError",
    "PreprocessConfig",
    "class_folders",
    "crop",
    "from_bgr",
    "list_images",
    "load_image",
    "preprocess",
    "resize_for_model",
    "to_tensor",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

MAX_PIXELS = 400_000_000
"""Images declaring more pixels than this are refused before decoding (decompression bombs)."""

# Our own check in load_image is the gate; PIL's is a backstop that must not fire below our limit
# (it warns above MAX_IMAGE_PIXELS and raises above twice that).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Our own check (below) refuses with a clear message; PIL's warning between the limits is only noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_STRIP_PIXELS = 1 << 20  # pixels converted/reduced per strip: bounds the transient copies (~16 MB)
_BIG_DECODE_PIXELS = 32_000_000  # images at least this big (as decoded) are decoded one at a time
_BIG_DECODES = threading.Lock()

# EXIF orientation -> the array operation that undoes it (the table PIL.ImageOps.exif_transpose uses, as
# numpy views). Applied to the decoded, reduced array instead of calling exif_transpose on the
# full-size PIL image, which would copy it.
_ORIENTATION: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # ROTATE_270 (90 degrees clockwise)
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # ROTATE_90 (90 degrees anticlockwise)
}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

StrPath = str | os.PathLike[str]


class ImageError(Exception):
    """A file or buffer that cannot be decoded; ``str(e)`` names the source and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read {source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        # Default exception pickling replays args=(message,) and would break the two-argument __init__
        # (matters for process pools).
        return (type(self), (self.source, self.reason))


# ---------------------------------------------------------------------------------------------------
# Decoding


def load_image(
    source: StrPath | bytes | bytearray | memoryview,
    max_side: int | None = 1024,
    exact: bool = True,
    *,
    shorter_side: int | None = None,
) -> np.ndarray:
    """Decode a file path or encoded bytes to a C-contiguous, writable RGB uint8 array (H, W, 3).

    With ``max_side`` the longer side is at most ``max_side`` (images are never enlarged); ``None`` keeps
    full size. ``shorter_side`` (instead of ``max_side``) bounds the shorter side the same way, for callers
    that crop to a square. ``exact=False`` stops after the cheap reductions (JPEG's scaled decode, integer box
    reduction): the bounded side then ends at least at, and under twice, the bound, for callers that resize
    again anyway (the model path). Animated files give their first frame. Raises ``ImageError`` for anything
    unreadable.
    """
    for name, value in (("max_side", max_side), ("shorter_side", shorter_side)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if shorter_side is not None and max_side is not None:
        raise ValueError("give max_side or shorter_side, not both")
    if isinstance(source, (bytes, bytearray, memoryview)):
        with io.BytesIO(source) as fp:
            return _load(fp, "in-memory image", max_side, exact, shorter_side)
    label = f"'{os.fspath(source)}'"
    with _open_file(source, label) as fp:
        return _load(fp, label, max_side, exact, shorter_side)


def _open_file(path: StrPath, label: str) -> IO[bytes]:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(label, "is a directory")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise ImageError(label, "not a regular file")
        return open(path, "rb")  # returned to the caller's `with`
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except OSError as e:
        raise ImageError(label, e.strerror or str(e)) from None


def _load(fp: IO[bytes], label: str, max_side: int | None, exact: bool, shorter_side: int | None) -> np.ndarray:
    head = fp.read(512)
    if not head:
        raise ImageError(label, "file is empty")
    fp.seek(0)
    try:
        with Image.open(fp) as im:
            _check_size(im.size, label)
            return _decode(im, max_side, exact, shorter_side)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(label, _describe_unidentified(head)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL refuses above 2 * MAX_IMAGE_PIXELS before we see the size; word it like our own check.
        size = _declared_size(fp)
        if size is not None:
            _check_size(size, label)
        raise ImageError(label, f"too many pixels ({e})") from None
    except MemoryError:
        raise ImageError(label, "not enough memory to decode it") from None
    except EOFError:
        raise ImageError(label, "file is truncated") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, IndexError, ...
        text = str(e)
        if "truncat" in text.lower() or _webp_truncated(head, fp):
            raise ImageError(label, "file is truncated") from None
        raise ImageError(label, f"cannot decode it ({type(e).__name__}: {text})") from None


def _check_size(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(label, f"declares an empty image ({w}x{h} pixels)")
    if w * h > MAX_PIXELS:
        mp = f"{w * h / 1e6:.2f}".rstrip("0").rstrip(".")
        raise ImageError(label, f"declares {w}x{h} pixels ({mp} MP), over the {MAX_PIXELS // 1_000_000} MP limit")


def _declared_size(fp: IO[bytes]) -> tuple[int, int] | None:
    """The header size, read by PIL's format plugins without its bomb check; None if none can parse it."""
    try:
        fp.seek(0)
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            try:
                fp.seek(0)
                return factory(fp, "").size
            except Exception:
                continue
    except Exception:
        pass
    return None


def _describe_unidentified(head: bytes) -> str:
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return f"{fmt} header is truncated or corrupt"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP header is truncated or corrupt"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"hevc"):
        return "HEIC/HEIF/AVIF images are not supported (convert to JPEG or PNG)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text or b"<head" in text or b"<body" in text:
        return "not an image (looks like HTML text)"
    if text.startswith(b"<svg") or b"<svg" in text:
        return "SVG vector images are not supported"
    if _looks_like_text(head):
        return "not an image (looks like text)"
    return "not an image, or a format that cannot be decoded"


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 (or UTF-16 with a BOM) that is almost all printable. Binary rarely decodes as UTF-8."""
    encoding = "utf-16" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8"
    # Drop up to 3 trailing bytes: the 512-byte window can split a multi-byte character.
    for end in range(len(head), max(0, len(head) - 4), -1):
        try:
            text = head[:end].decode(encoding)
        except UnicodeDecodeError:
            continue
        return bool(text) and sum(c.isprintable() or c in "\t\r\n" for c in text) >= 0.95 * len(text)
    return False


def _webp_truncated(head: bytes, fp: IO[bytes]) -> bool:
    """libwebp reports a cut file as 'could not create decoder object'; the RIFF size tells."""
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    declared = int.from_bytes(head[4:8], "little") + 8
    return fp.seek(0, io.SEEK_END) < declared


def _decode(im: Image.Image, max_side: int | None, exact: bool = True, shorter_side: int | None = None) -> np.ndarray:
    """Opened (not yet loaded) image -> RGB uint8 (H, W, 3), at most max_side on the longer side (under
    2 * max_side when not exact); with ``shorter_side`` instead, the same for the shorter side."""
    w0, h0 = im.size
    if shorter_side is not None:
        # The longer side that keeps the shorter one at shorter_side; rounded up, so it never ends below.
        max_side = math.ceil(shorter_side * max(w0, h0) / max(1, min(w0, h0)))
    # (extent_x, extent_y): the original image measured in pixels of the current, reduced one. Reduced
    # sizes are rounded up, so the last column/row may stand for a partial block; resizing from this
    # box (as PIL's thumbnail does) keeps the geometry exact instead of stretching that edge.
    extent = (float(w0), float(h0))
    if max_side is not None and max(w0, h0) > max_side:
        # JPEG: libjpeg scales by 1/2, 1/4 or 1/8 while decoding. Ask for the fitted box (not a
        # square) so draft keeps the LONGER side >= max_side. Other formats ignore draft.
        scale = max_side / max(w0, h0)
        drafted = im.draft("RGB", (max(1, math.ceil(w0 * scale)), max(1, math.ceil(h0 * scale))))
        if drafted is not None:
            extent = (float(drafted[1][2]), float(drafted[1][3]))
    factor = max(1, max(im.size) // max_side) if max_side is not None else 1
    # Formats without draft (PNG, TIFF, ...) decode at full size before reducing: 504 MB for a 168 MP RGB
    # image. Decoder threads take turns on such images, so a folder of them costs one full-size copy at a time.
    big = im.size[0] * im.size[1] >= _BIG_DECODE_PIXELS
    with _BIG_DECODES if big else contextlib.nullcontext():
        im.load()
        orientation = _orientation(im)
        array = _to_rgb_reduced(im, factor)
        im.close()  # free the full-size decode now, not when the caller's `with` ends
        if big:
            # Give the full-size copy back to the system: freed memory is kept for reuse per thread arena
            # (core.device.keep_freed_memory), and the next big image may decode in another thread.
            from .device import release_memory

            release_memory()
    extent = (extent[0] / factor, extent[1] / factor)

    if exact and max_side is not None and max(array.shape[:2]) > max_side:
        scale = max_side / max(w0, h0) if shorter_side is None else shorter_side / min(w0, h0)
        size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        # What is left is under 2x: LANCZOS on the small image, from the exact extent.
        small = Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, box=(0.0, 0.0, *extent))
        array = np.array(small)
    if orientation in _ORIENTATION:
        array = np.ascontiguousarray(_ORIENTATION[orientation](array))
    return array


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value)
    except Exception:  # corrupt EXIF must not make a decodable image unreadable
        return 1


def _to_rgb_reduced(im: Image.Image, factor: int) -> np.ndarray:
    """Loaded PIL image of any mode -> new RGB uint8 (ceil(H/f), ceil(W/f), 3), box-reduced by factor f.

    Works strip by strip (crop, convert, reduce, copy into the output), so beside the decoded image
    only the output and one strip are alive. Strip heights are multiples of the factor, so the result
    equals reducing the whole image at once.
    """
    w, h = im.size
    scale = _sample_scale(im)
    out = np.empty((-(-h // factor), -(-w // factor), 3), np.uint8)
    rows = max(factor, _STRIP_PIXELS // w // factor * factor)
    for y in range(0, h, rows):
        part = im if rows >= h else im.crop((0, y, w, min(h, y + rows)))
        reduced = _strip_to_rgb(part, factor, scale)
        out[y // factor : y // factor + reduced.shape[0]] = reduced
    return out


def _sample_scale(im: Image.Image) -> float:
    """Multiplier mapping this image's integer/float samples to 0-255 (decided once, not per strip)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        return 255.0 / 65535.0  # 16-bit data; PIL's own convert("L") would clip everything above 255
    if im.mode == "F":
        _, hi = im.getextrema()  # type: ignore[misc]
        return 255.0 if hi <= 1.0 else 1.0  # float images are 0..1 by convention, else taken as 0..255
    return 1.0


def _strip_to_rgb(part: Image.Image, factor: int, scale: float) -> np.ndarray:
    """A strip of any mode -> RGB uint8 array, reduced by factor; each mode converted where cheapest."""
    mode = part.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(part).astype(np.float32)
        values *= scale
        np.clip(values, 0.0, 255.0, out=values)
        part, mode = Image.fromarray(np.rint(values).astype(np.uint8)), "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in part.info:
        # Reduce premultiplied (as Image.reduce does for RGBA), then flatten onto white:
        # c*a + 255*(1-a) = premultiplied c + (255 - a), which stays linear through the box filter.
        premultiplied = part.convert("RGBA").convert("RGBa")
        if factor > 1:
            premultiplied = premultiplied.reduce(factor)
        rgba = np.asarray(premultiplied)
        return rgba[..., :3] + (255 - rgba[..., 3:])  # premultiplied c <= a: no overflow
    if mode == "1":
        part = part.convert("L")  # the box filter turns 1-bit into antialiased gray
    elif mode not in ("L", "RGB"):
        part = part.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX
    if factor > 1:
        part = part.reduce(factor)
    array = np.asarray(part)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array  # gray -> RGB after reducing


# ---------------------------------------------------------------------------------------------------
# Finding files


def list_images(root: StrPath, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (by extension, case-insensitive), sorted.

    Names starting with '.' are skipped, unreadable folders are skipped silently, symlinked folders are
    followed but each real folder is visited once (symlink loops terminate). Raises FileNotFoundError /
    NotADirectoryError when ``root`` itself is missing or not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such folder: '{root}'")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: '{root}'")
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if recursive:
                        stack.append(folder / entry.name)
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(folder / entry.name)
            except OSError:  # dangling or unreadable entry
                continue
    return sorted(found)


def class_folders(root: StrPath, min_images: int = 1) -> dict[str, list[Path]]:
    """Folders under ``root`` (any depth, not root itself) holding >= ``min_images`` images directly.

    Key: the folder's path relative to root with '/' separators ('animals/cats'); value: its image
    files, sorted. Keys are sorted too.
    """
    root = Path(root)
    groups: dict[str, list[Path]] = {}
    for path in list_images(root):
        key = path.parent.relative_to(root).as_posix()
        if key != ".":
            groups.setdefault(key, []).append(path)
    return {k: v for k, v in sorted(groups.items()) if len(v) >= max(1, min_images)}


# ---------------------------------------------------------------------------------------------------
# Preprocessing

_FITS = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model input: (size, size) RGB, normalised (x - mean) / std on 0-255 values.

    fit: "pad" resizes the longer side to ``size`` and pads to a centred square with ``pad_value``;
    "crop" resizes the shorter side to ``size`` and centre-crops; "stretch" ignores the aspect ratio.
    """

    size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    fit: str = "pad"
    pad_value: int = 255

    def __post_init__(self) -> None:
        # Accept lists (JSON, timm configs) but store tuples so the config stays hashable.
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean!r} and {self.std!r}")
        if any(s == 0.0 for s in std):
            raise ValueError(f"std must not contain 0, got {self.std!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.fit not in _FITS:
            raise ValueError(f"fit must be one of {_FITS}, got {self.fit!r}")
        if not 0 <= int(self.pad_value) <= 255:
            raise ValueError(f"pad_value must be within 0..255, got {self.pad_value!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "pad_value", int(self.pad_value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of ``to_dict``; missing keys take defaults, unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {sorted(unknown)}")
        return cls(**d)


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image {image.shape}")


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C). Shrinking: a whole-factor INTER_AREA reduction, then INTER_LINEAR if under 2x
    both ways, else INTER_AREA. Enlarging: INTER_LINEAR. One axis shrinking, the other growing: per axis."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if width <= w and height <= h:
        # OpenCV's area filter is fast only for whole factors: a 640x480 frame to 224x168 took 2.0 ms in one area
        # resize. So: a whole-factor box reduction first (0.1 ms; up to k-1 edge pixels are left out to make the
        # factor whole), then what is left, under 2x on the tighter axis, bilinear where it is under 2x on both
        # (0.16 ms from 320x240, where area took 0.76: samples under 2 px apart read every source pixel), else area.
        # Measured 2026-12-01 on the 2-core VM; files reach this from their reduced decode, frames as they are.
        k = min(w // width, h // height)
        if k >= 2:
            image = cv2.resize(image[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
            h, w = image.shape[:2]
            if (w, h) == (width, height):
                return image
        if w < 2 * width and h < 2 * height:
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if width >= w and height >= h:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    # One axis shrinks, the other grows (stretch of a long strip): do each with its own filter.
    if width < w:
        image = cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA)
    else:
        image = cv2.resize(image, (w, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _fit_into(image: np.ndarray, config: PreprocessConfig, out: np.ndarray) -> None:
    """Write ``image`` (H, W, 3) resized per ``config.fit`` into ``out`` (size, size, 3)."""
    _check_rgb(image)
    s = config.size
    h, w = image.shape[:2]
    if config.fit == "stretch":
        out[...] = _resize(image, s, s)
    elif config.fit == "crop":
        # Crop the centred square in the source first: same geometry as resize-then-crop, without
        # a huge intermediate for thin images (10000x1 would become 2.24 M x 224).
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        out[...] = _resize(image[y0 : y0 + side, x0 : x0 + side], s, s)
    else:
        scale = s / max(h, w)
        nw, nh = min(s, max(1, round(w * scale))), min(s, max(1, round(h * scale)))
        out[...] = config.pad_value
        y0, x0 = (s - nh) // 2, (s - nw) // 2
        out[y0 : y0 + nh, x0 : x0 + nw] = _resize(image, nw, nh)


def resize_for_model(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """RGB uint8 (H, W, 3) of any size -> new RGB uint8 (size, size, 3) per ``config.fit``."""
    out = np.empty((config.size, config.size, 3), np.uint8)
    _fit_into(image, config, out)
    return out


def to_tensor(images: np.ndarray | Sequence[np.ndarray], config: PreprocessConfig) -> torch.Tensor:
    """uint8 (S, S, 3), (B, S, S, 3) or a list of (S, S, 3) -> float32 (B, 3, S, S), contiguous, normalised."""
    s = config.size
    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == 3 else images
    elif len(images) == 0:
        return torch.empty((0, 3, s, s), dtype=torch.float32)
    else:
        batch = np.stack(images)  # the one copy a list needs
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (s, s, 3):
        raise ValueError(f"expected uint8 (B, {s}, {s}, 3) images, got {batch.dtype} {batch.shape}")
    if not batch.flags.writeable or min(batch.strides) < 0:
        batch = np.array(batch, order="C")  # torch.from_numpy needs writable memory and positive strides
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    # One conversion: uint8 NHWC view -> float32 NCHW contiguous (plain .float() would keep NHWC strides).
    x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    x.sub_(torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
    x.div_(torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
    return x


def preprocess(images: np.ndarray | Sequence[np.ndarray], config: PreprocessConfig) -> torch.Tensor:
    """RGB uint8 arrays of any size (one (H, W, 3) array or a list) -> float32 (B, 3, S, S), normalised.

    The one function every path (support, query, CLI, export) uses to make model input.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    batch = np.empty((len(images), config.size, config.size, 3), np.uint8)
    for i, image in enumerate(images):
        _fit_into(image, config, batch[i])
    return to_tensor(batch, config)


# ---------------------------------------------------------------------------------------------------
# Small array helpers


def crop(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """(H, W, C) -> contiguous copy of ``box`` = (x0, y0, x1, y1) clamped to the image; None -> the image.

    Raises ValueError when the clamped box is empty.
    """
    if box is None:
        return image
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, min(w, x0)), max(0, min(w, x1))
    y0, y1 = max(0, min(h, y0)), max(0, min(h, y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {tuple(box)} for a {w}x{h} image")
    return image[y0:y1, x0:x1].copy()


def from_bgr(frame: np.ndarray) -> np.ndarray:
    """OpenCV frame, BGR (H, W, 3), BGRA (H, W, 4) or gray (H, W), uint8 -> new contiguous RGB (H, W, 3)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"expected a (H, W, 3) BGR frame, got shape {frame.shape}")
