"""Label a folder of images with a model exported by ProtoLabel, without ProtoLabel or PyTorch.

    pip install onnxruntime numpy pillow
    python predict_onnx.py MODEL.onnx FOLDER [--batch-size 16] > labels.csv

MODEL.onnx comes from `protolabel export model PROJECT --format onnx --out MODEL.onnx`. Every image under
FOLDER (recursive, sorted; .png .jpg .jpeg .bmp .webp .tif .tiff .gif) is labeled; stdout gets CSV rows
`path,label,confidence`, where label is a class name or "unknown". Unreadable files are skipped with a
message on stderr.

The model's metadata (ONNX metadata_props, key "protolabel") holds the class names, the unknown thresholds
and the preprocessing; this file decodes and preprocesses images the way ProtoLabel does
(core/images.py: load_image with a reduced decode, then preprocess), with Pillow and numpy only:
EXIF orientation, transparency flattened onto white, 16-bit samples scaled to 8 bits, the image fitted
into the model's square (padded with pad_value, white; or centre-cropped; or stretched) with OpenCV's
filters (shrinking: a whole-factor area reduction, then bilinear under 2x or area; enlarging: bilinear),
redone in numpy with OpenCV's rounding, then (x - mean) / std.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_PIXELS = 400_000_000  # ProtoLabel refuses images declaring more pixels (decompression bombs)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# EXIF orientation -> the array operation that undoes it (as PIL.ImageOps.exif_transpose).
ORIENTATION = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


# ------------------------------------------------------------------------------------------- finding files


def list_images(root: Path) -> list[Path]:
    """Image files under root (by extension, case-insensitive), sorted; names starting with '.' skipped;
    symlinked folders followed, each real folder once."""
    found, seen, stack = [], set(), [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(folder / entry.name)
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(folder / entry.name)
            except OSError:
                continue
    return sorted(found)


# ------------------------------------------------------------------------------------------- decoding


def to_rgb(im: Image.Image, factor: int) -> np.ndarray:
    """A loaded PIL image of any mode -> RGB uint8 (ceil(H/f), ceil(W/f), 3), box-reduced by factor f."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(im).astype(np.float32)
        if mode.startswith("I;16") or mode == "I":
            values *= 255.0 / 65535.0
        elif mode == "F" and values.max() <= 1.0:
            values *= 255.0
        im, mode = Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)), "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        # Flatten onto white after reducing premultiplied: c*a + 255*(1-a) = premultiplied c + (255 - a).
        premultiplied = im.convert("RGBA").convert("RGBa")
        if factor > 1:
            premultiplied = premultiplied.reduce(factor)
        rgba = np.asarray(premultiplied)
        return rgba[..., :3] + (255 - rgba[..., 3:])
    if mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if factor > 1:
        im = im.reduce(factor)
    array = np.asarray(im)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def load_image(path: Path, pixels: int, side: str = "longer") -> np.ndarray:
    """A file -> RGB uint8 (H, W, 3), reduced as ProtoLabel does before its one resize: JPEG decoded at 1/2,
    1/4 or 1/8 and other formats box-reduced by an integer factor, while the longer (or shorter) side stays
    >= pixels."""
    with Image.open(path) as im:
        w0, h0 = im.size
        if w0 <= 0 or h0 <= 0 or w0 * h0 > MAX_PIXELS:
            raise ValueError(f"unsupported image size {w0}x{h0}")
        # The longer side's floor: given, or the one that keeps the shorter side at `pixels` (rounded up).
        max_side = pixels if side == "longer" else math.ceil(pixels * max(w0, h0) / min(w0, h0))
        if max(w0, h0) > max_side:
            scale = max_side / max(w0, h0)
            im.draft("RGB", (max(1, math.ceil(w0 * scale)), max(1, math.ceil(h0 * scale))))  # JPEG only
        im.load()
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
        factor = max(1, max(im.size) // max_side)
        array = to_rgb(im, factor)
    if orientation in ORIENTATION:
        array = np.ascontiguousarray(ORIENTATION[orientation](array))
    return array


# ------------------------------------------------------------------------------------------- preprocessing


def _area_taps(n: int, m: int) -> list[list[tuple[int, np.float32]]]:
    """Shrinking n samples to m by area: per output, (source index, weight) pairs, as OpenCV's
    computeResizeAreaTab makes them (overlaps under 1e-3 of a pixel are left out)."""
    scale = n / m
    taps = []
    for d in range(m):
        lo = d * scale
        hi = lo + scale
        cell = min(scale, n - lo)
        first, last = math.ceil(lo), min(math.floor(hi), n - 1)
        first = min(first, last)
        row = []
        if first - lo > 1e-3:
            row.append((first - 1, np.float32((first - lo) / cell)))
        row += [(i, np.float32(1.0 / cell)) for i in range(first, last)]
        if hi - last > 1e-3:
            row.append((last, np.float32(min(hi - last, 1.0, cell) / cell)))
        taps.append(row)
    return taps


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink (H, W, 3) uint8 to (height, width, 3): OpenCV's INTER_AREA, float32 in its order of operations."""
    h, w = image.shape[:2]
    if w % width == 0 and h % height == 0:  # whole factors: OpenCV's fast path, plain box sums
        fx, fy = w // width, h // height
        sums = image.astype(np.int64).reshape(height, fy, width, fx, -1).sum((1, 3))
        if fx == fy == 2:
            return ((sums + 2) >> 2).astype(np.uint8)
        return np.clip(np.rint(sums.astype(np.float32) * np.float32(1.0 / (fx * fy))), 0, 255).astype(np.uint8)
    values = image.astype(np.float32)
    across = _area_taps(w, width)
    rows = np.zeros((h, width, image.shape[2]), np.float32)
    for k in range(max(map(len, across))):  # k-th tap of every output column, accumulated in OpenCV's order
        index = np.array([t[k][0] if k < len(t) else 0 for t in across])
        weight = np.array([t[k][1] if k < len(t) else 0 for t in across], np.float32)
        rows += values[:, index] * weight[None, :, None]
    out = np.empty((height, width, image.shape[2]), np.float32)
    for d, taps in enumerate(_area_taps(h, height)):
        acc = np.zeros((width, image.shape[2]), np.float32)
        for i, weight in taps:
            acc += weight * rows[i]
        out[d] = acc
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _linear_taps(n: int, m: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Enlarging n samples to m: (first source, second source, weight of first, weight of second), weights
    in OpenCV's 11-bit fixed point. Columns past an edge take the edge pixel whole; rows past an edge keep
    their weights and read the edge row twice (what OpenCV does)."""
    pos = ((np.arange(m) + 0.5) * (1.0 / (m / n)) - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first).astype(np.float32)
    if clamp_weights:
        frac[first < 0] = 0
        first[first < 0] = 0
        frac[first >= n - 1] = 0
        first[first >= n - 1] = n - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    return np.clip(first, 0, n - 1), np.clip(first + 1, 0, n - 1), w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 to (height, width, 3), enlarging or shrinking under 2x: OpenCV's INTER_LINEAR, in its
    integer arithmetic."""
    h, w = image.shape[:2]
    x0, x1, a0, a1 = _linear_taps(w, width, True)
    y0, y1, b0, b1 = _linear_taps(h, height, False)
    pixels = image.astype(np.int64)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]
    out = (((rows[y0] >> 4) * b0[:, None, None]) >> 16) + (((rows[y1] >> 4) * b1[:, None, None]) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) as core.images._resize: shrinking, a whole-factor area reduction,
    then bilinear if under 2x both ways, else area; enlarging, bilinear; per axis when one shrinks and one grows."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if width <= w and height <= h:
        k = min(w // width, h // height)
        if k >= 2:  # a whole-factor box reduction first (edge pixels beyond a whole factor left out)
            image = resize_area(image[: h // k * k, : w // k * k], w // k, h // k)
            h, w = image.shape[:2]
            if (w, h) == (width, height):
                return image
        if w < 2 * width and h < 2 * height:  # what is left is under 2x both ways: bilinear
            return resize_linear(image, width, height)
        return resize_area(image, width, height)
    if width >= w and height >= h:
        return resize_linear(image, width, height)
    # One axis shrinks, the other grows (stretching a long strip): each with its own filter.
    image = resize_area(image, width, h) if width < w else resize_area(image, w, height)
    return resize_linear(image, width, height)


def fit(image: np.ndarray, size: int, how: str, pad_value: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (size, size, 3): "pad" (longer side to size, centred on pad_value),
    "crop" (centre square) or "stretch"."""
    h, w = image.shape[:2]
    if how == "stretch":
        return resize(image, size, size)
    if how == "crop":
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        return resize(image[y0 : y0 + side, x0 : x0 + side], size, size)
    scale = size / max(h, w)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    out = np.full((size, size, 3), pad_value, np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resize(image, nw, nh)
    return out


def to_input(images: list[np.ndarray], config: dict) -> np.ndarray:
    """(size, size, 3) uint8 images -> float32 (B, 3, size, size), (x - mean) / std."""
    batch = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2)
    mean = np.asarray(config["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((batch - mean) / std)


# ------------------------------------------------------------------------------------------- labeling


def read_metadata(session: ort.InferenceSession) -> dict:
    text = session.get_modelmeta().custom_metadata_map.get("protolabel")
    if not text:
        raise SystemExit("error: this ONNX file has no ProtoLabel metadata (export it with `protolabel export model`)")
    return json.loads(text)


def labels_for(probabilities: np.ndarray, similarities: np.ndarray, meta: dict) -> list[tuple[str, float]]:
    """(B, C), (B, C) -> (label, confidence) per row; below its class's threshold a row is unknown."""
    out = []
    for probs, sims in zip(probabilities, similarities):
        best = int(np.argmax(probs))
        name = meta["classes"][best]
        threshold = meta["thresholds"].get(name)
        label = meta["unknown_label"] if threshold is not None and sims[best] < threshold else name
        out.append((label, float(probs[best])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Label images with a ProtoLabel ONNX model; CSV on stdout.")
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = read_metadata(session)
    config = meta["preprocess"]
    if "decode_bound" in meta:
        pixels, side = int(meta["decode_bound"]["pixels"]), meta["decode_bound"]["side"]
    else:  # exported before 2026-12-01 (no decode_bound): the longer side stayed >= decode_max_side
        pixels, side = int(meta.get("decode_max_side", max(2 * config["size"], 512))), "longer"
    input_name = meta["input"]["name"]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "label", "confidence"])
    paths = list_images(Path(args.folder))
    for start in range(0, len(paths), args.batch_size):
        ok, arrays = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                image = load_image(path, pixels, side)
                arrays.append(fit(image, config["size"], config.get("fit", "pad"), config.get("pad_value", 255)))
                ok.append(path)
            except Exception as exc:  # a bad file must never stop the folder
                print(f"skipped: cannot read '{path}': {type(exc).__name__}: {exc}", file=sys.stderr)
        if not ok:
            continue
        probabilities, similarities = session.run(["probabilities", "similarities"],
                                                  {input_name: to_input(arrays, config)})
        for path, (label, confidence) in zip(ok, labels_for(probabilities, similarities, meta)):
            writer.writerow([str(path), label, f"{confidence:.4f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
