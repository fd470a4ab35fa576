"""core.images: decoding every kind of file, refusing bad ones clearly, and the one preprocessing path."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from core import images
from core.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageError,
    PreprocessConfig,
    class_folders,
    crop,
    from_bgr,
    list_images,
    load_image,
    preprocess,
    resize_for_model,
    to_tensor,
)

WHITE = (255 - 127) / 128
BLACK = (0 - 127) / 128


def _pattern(h: int, w: int) -> np.ndarray:
    """A deterministic RGB uint8 (h, w, 3) image with structure in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth RGB uint8 (h, w, 3) image (low frequencies only), cheap to make at any size."""
    out = np.empty((h, w, 3), np.uint8)
    out[..., 0] = (127 + 120 * np.sin(np.arange(w) / 150.0)).astype(np.uint8)[None, :]
    out[..., 1] = (127 + 120 * np.cos(np.arange(h) / 110.0)).astype(np.uint8)[:, None]
    out[..., 2] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    return out


def _save(path: Path, image: Image.Image | np.ndarray, **kw) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **kw)
    return path


# ---------------------------------------------------------------------------------------------------
# Decoding good files


@pytest.mark.parametrize(
    ("name", "kw", "lossless"),
    [
        ("a.png", {}, True),
        ("a.bmp", {}, True),
        ("a.tiff", {}, True),
        ("a.webp", {"lossless": True}, True),
        ("a.jpg", {"quality": 95}, False),
        ("a.webp", {"quality": 90}, False),
    ],
)
def test_round_trip(tmp_path: Path, name: str, kw: dict, lossless: bool) -> None:
    array = _pattern(48, 64)
    path = _save(tmp_path / name, array, **kw)
    out = load_image(path)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    if lossless:
        np.testing.assert_array_equal(out, array)
    else:
        assert np.abs(out.astype(int) - array).mean() < 12
    np.testing.assert_array_equal(load_image(path.read_bytes()), out)  # bytes decode the same
    np.testing.assert_array_equal(load_image(str(path)), out)


def test_gif_round_trip_and_animated_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    webp = tmp_path / "anim.webp"
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    for path in (gif, webp):
        with Image.open(path) as im:
            assert getattr(im, "n_frames", 1) == 3
        out = load_image(path)
        assert out.shape == (20, 30, 3)
        assert (out.reshape(-1, 3) == (255, 0, 0)).all(), path.name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path: Path, orientation: int) -> None:
    image = Image.fromarray(_pattern(20, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "o.jpg", image, exif=exif, quality=95)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = load_image(path)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == ((40, 20, 3) if orientation >= 5 else (20, 40, 3))


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red, right half blue
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rot.jpg", array, exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (40, 20, 3)
    # Orientation 6 = the camera was turned clockwise: the left edge becomes the top.
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50


def test_exif_orientation_with_reduced_decode(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "big.jpg", _smooth(1000, 3000), exif=exif, quality=90)
    out = load_image(path, max_side=500)
    assert out.shape == (500, 167, 3)


def test_rgba_transparency_becomes_white(tmp_path: Path) -> None:
    array = np.zeros((10, 20, 4), np.uint8)
    array[..., 0] = 255  # red everywhere
    array[:, :10, 3] = 255  # left opaque
    array[:, 10:15, 3] = 0  # transparent
    array[:, 15:, 3] = 128  # half transparent
    out = load_image(_save(tmp_path / "rgba.png", array))
    assert (out[:, :10] == (255, 0, 0)).all()
    assert (out[:, 10:15] == (255, 255, 255)).all()
    assert np.abs(out[:, 15:].astype(int) - (255, 127, 127)).max() <= 1


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    im.paste(1, (0, 0, 4, 8))  # left half green (index 1), right half black (index 0) = transparent
    path = _save(tmp_path / "p.png", im, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = load_image(path)
    assert (out[:, :4] == (0, 128, 0)).all()
    assert (out[:, 4:] == (255, 255, 255)).all()


def test_la_and_gif_transparency(tmp_path: Path) -> None:
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 50
    la[:2, :, 1] = 255
    out = load_image(_save(tmp_path / "la.png", Image.fromarray(la, "LA")))
    assert (out[:2] == 50).all() and (out[2:] == 255).all()

    gif = Image.new("P", (4, 4), 1)
    gif.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    gif.paste(0, (0, 0, 4, 2))
    out = load_image(_save(tmp_path / "t.gif", gif, transparency=1))
    assert (out[:2] == (10, 20, 30)).all() and (out[2:] == 255).all()


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    path = tmp_path / "g16.png"
    assert cv2.imwrite(str(path), gradient)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = load_image(path)
    assert out.shape == (8, 256, 3)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert abs(row[128] - 128) <= 1  # linear, not clipped to 255 after the first few values
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, 255),
        ("L", 128, 128),
        ("I", 32896, 128),  # 16-bit convention: 32896 / 257 = 128
        ("I;16", 65535, 255),
        ("F", 0.5, 128),  # float images in 0..1
        ("F", 200.0, 200),  # float images already in 0..255
        ("CMYK", (0, 0, 0, 127), 128),
        ("YCbCr", (128, 128, 128), 128),
    ],
)
def test_modes_convert_to_rgb(tmp_path: Path, mode: str, value, expected: int) -> None:
    path = _save(tmp_path / "m.tiff", Image.new(mode, (6, 5), value))
    out = load_image(path)
    assert out.shape == (5, 6, 3)
    assert np.abs(out.astype(int) - expected).max() <= 1, (mode, out[0, 0])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = load_image(path)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - (0, 255, 255)).max() <= 3  # pure cyan


def test_tiny_and_thin_images(tmp_path: Path) -> None:
    one = load_image(_save(tmp_path / "one.png", np.full((1, 1, 3), 9, np.uint8)))
    thin = load_image(_save(tmp_path / "thin.png", _pattern(1, 10000)), max_side=None)
    tall = load_image(_save(tmp_path / "tall.png", _pattern(10000, 1)), max_side=512)
    assert one.shape == (1, 1, 3) and (one == 9).all()
    assert thin.shape == (1, 10000, 3)
    assert tall.shape == (512, 1, 3)
    for fit in ("pad", "crop", "stretch"):
        config = PreprocessConfig(size=32, fit=fit)
        x = preprocess([one, thin, tall, _pattern(100000, 1)], config)
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert torch.isfinite(x).all()


def test_large_png_decoded_reduced(tmp_path: Path) -> None:
    array = _smooth(4000, 6000)
    path = _save(tmp_path / "big.png", array, compress_level=1)
    out = load_image(path, max_side=512)
    assert out.shape == (341, 512, 3)
    # Matches a full-size decode resized with an area filter (not aliased, not shifted).
    reference = cv2.resize(array, (512, 341), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - reference).max() <= 2
    assert load_image(path, max_side=8000).shape == (4000, 6000, 3)  # never enlarged


def test_large_jpeg_uses_draft(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.jpg", _smooth(3000, 4800), quality=90)
    with Image.open(path) as im:
        im.draft("RGB", (512, 320))
        assert im.size == (600, 375)  # libjpeg scaled by 1/8, still >= the box
    out = load_image(path, max_side=512)
    assert out.shape == (320, 512, 3)
    reference = cv2.resize(_smooth(3000, 4800), (512, 320), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - reference).mean() < 2


@pytest.mark.parametrize("name", ["wide.jpg", "wide.png"])
def test_shorter_side_bound(tmp_path: Path, name: str) -> None:
    """shorter_side keeps the SHORTER side >= the bound (what a centre crop needs); not exact: under twice it."""
    array = _smooth(900, 2400)
    path = _save(tmp_path / name, array, **({"quality": 90} if name.endswith(".jpg") else {}))
    cheap = load_image(path, None, exact=False, shorter_side=200)
    assert 200 <= min(cheap.shape[:2]) < 400
    assert cheap.shape[0] * 2400 == pytest.approx(cheap.shape[1] * 900, rel=0.02)  # aspect kept
    longer_bound = load_image(path, 200, exact=False)
    assert min(longer_bound.shape[:2]) < 200  # the longer-side bound would have gone below the crop's need
    exact = load_image(path, None, shorter_side=200)
    assert exact.shape == (200, 533, 3)
    reference = cv2.resize(array, (533, 200), interpolation=cv2.INTER_AREA)
    assert np.abs(exact.astype(int) - reference).mean() < 2
    assert load_image(path, None, shorter_side=2000).shape == (900, 2400, 3)  # never enlarged
    with pytest.raises(ValueError):
        load_image(path, 512, shorter_side=200)
    with pytest.raises(ValueError):
        load_image(path, None, shorter_side=0)


def _random_image(mode: str, h: int, w: int) -> Image.Image:
    rng = np.random.default_rng(3)
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    gray = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if mode == "P":
        im = gray.convert("P")
        im.info["transparency"] = 7
        return im
    return gray.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "L", "1", "CMYK"])
def test_strips_equal_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    image = _random_image(mode, 301, 257)
    path = _save(tmp_path / ("m.tiff" if mode == "CMYK" else "m.png"), image)
    with Image.open(path) as check:
        assert check.mode == mode and (mode != "P" or "transparency" in check.info)
    whole = load_image(path, max_side=60)
    full = load_image(path, max_side=None)
    monkeypatch.setattr(images, "_STRIP_PIXELS", 1000)  # a few rows per strip
    assert whole.shape == (60, 51, 3)
    np.testing.assert_array_equal(load_image(path, max_side=60), whole)
    np.testing.assert_array_equal(load_image(path, max_side=None), full)
    assert len(np.unique(whole)) > 10  # real content survived, not a flat colour


def test_unicode_and_spaces_in_paths(tmp_path: Path) -> None:
    folder = tmp_path / "día de campo" / "ñandú 🐦"
    folder.mkdir(parents=True)
    path = _save(folder / "foto número 1.PNG", _pattern(5, 7))
    assert load_image(path).shape == (5, 7, 3)
    assert list_images(tmp_path) == [path]


# ---------------------------------------------------------------------------------------------------
# Refusing bad files


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "file is empty"),
        ("text.jpg", "looks like text"),
        ("page.png", "looks like HTML"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
        ("truncated.webp", "truncated"),
        ("header_cut.png", "truncated"),
        ("noise.bmp", ""),
    ],
)
def test_bad_files_raise_image_error(bad_image_dir: Path, name: str, reason: str) -> None:
    path = bad_image_dir / name
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert name in message and reason in message
    assert info.value.reason and name in info.value.source
    with pytest.raises(ImageError):
        load_image(path.read_bytes())


def test_decompression_bomb_refused_from_header(bad_image_dir: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageError) as info:
        load_image(bad_image_dir / "bomb.png")
    assert time.perf_counter() - start < 1.0
    assert "100000x100000" in str(info.value) and "400 MP limit" in str(info.value)


def test_just_over_our_limit_refused_by_our_check(bad_image_dir: Path) -> None:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL's own, before our refusal
        with pytest.raises(ImageError) as info:
            load_image(bad_image_dir / "over_limit.png")
    assert time.perf_counter() - start < 1.0
    assert "20001x20000" in str(info.value) and "400 MP limit" in str(info.value)
    assert 20_001 * 20_000 > MAX_PIXELS >= 20_000 * 20_000


def test_missing_directory_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="file is empty"):
        load_image(b"")


def test_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read files without read permission")
    path = _save(tmp_path / "secret.png", _pattern(4, 4))
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_is_reported_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "secret.png", _pattern(4, 4))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", denied, raising=False)  # shadows the builtin inside core.images
    with pytest.raises(ImageError, match="secret.png': permission denied"):
        load_image(path)


def test_image_error_pickles() -> None:
    error = ImageError("'a.jpg'", "file is truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "cannot read 'a.jpg': file is truncated"
    assert copy.reason == "file is truncated"


def test_max_side_validated(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", _pattern(4, 4))
    with pytest.raises(ValueError):
        load_image(path, max_side=0)


# ---------------------------------------------------------------------------------------------------
# Finding files


def test_list_images_filters_sorts_and_survives_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/deep/z.JPG", "b/a.png", "a.webp", ".hidden/x.png", "b/.dot.png"):
        _save(tmp_path / rel, _pattern(2, 2), **({"format": "JPEG"} if rel.endswith("JPG") else {}))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b" / "deep" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "b" / "dangling.png").symlink_to(tmp_path / "missing.png")

    found = list_images(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a.webp", "b/a.png", "b/deep/z.JPG"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.webp"]
    assert {p.suffix.lower() for p in found} <= IMAGE_EXTENSIONS
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_class_folders_nested_and_min_images(tmp_path: Path) -> None:
    counts = {"animals/cats": 3, "animals/dogs": 1, "plants": 2, "animals": 2}
    for folder, n in counts.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _save(tmp_path / folder / f"{i}.png", _pattern(2, 2))
    _save(tmp_path / "loose.png", _pattern(2, 2))  # root itself is not a class

    classes = class_folders(tmp_path)
    assert list(classes) == ["animals", "animals/cats", "animals/dogs", "plants"]
    assert classes["animals/cats"] == sorted(classes["animals/cats"])
    assert [p.name for p in classes["animals/cats"]] == ["0.png", "1.png", "2.png"]
    assert list(class_folders(tmp_path, min_images=2)) == ["animals", "animals/cats", "plants"]
    assert list(class_folders(tmp_path, min_images=3)) == ["animals/cats"]


# ---------------------------------------------------------------------------------------------------
# Preprocessing


def test_white_image_normalises_to_constant() -> None:
    config = PreprocessConfig()
    x = preprocess(np.full((50, 80, 3), 255, np.uint8), config)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, torch.full_like(x, WHITE))


def test_pad_crop_stretch_geometry() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # red, 2:1 wide
    image[:, :20] = (0, 0, 255)  # blue bands at the left and right edges
    image[:, -20:] = (0, 0, 255)

    pad = resize_for_model(image, PreprocessConfig(size=100, fit="pad"))
    assert pad.shape == (100, 100, 3)
    assert (pad[:25] == 255).all() and (pad[75:] == 255).all()  # white bars top and bottom
    assert (pad[26:74, 20:80] == (255, 0, 0)).all()
    assert (pad[26:74, :8] == (0, 0, 255)).all()

    cropped = resize_for_model(image, PreprocessConfig(size=100, fit="crop"))
    assert (cropped == (255, 0, 0)).all()  # the centre square holds no blue

    stretched = resize_for_model(image, PreprocessConfig(size=100, fit="stretch"))
    assert (stretched[:, :8] == (0, 0, 255)).all() and (stretched[:, 20:80] == (255, 0, 0)).all()

    x = preprocess([image], PreprocessConfig(size=100, fit="pad"))
    assert torch.allclose(x[0, :, 0, 50], torch.tensor([WHITE] * 3))
    assert torch.allclose(x[0, :, 50, 50], torch.tensor([WHITE, BLACK, BLACK]))


def test_big_shrink_is_close_to_one_area_resize() -> None:
    """Frames more than twice the input take a whole-factor box reduction first (faster): the result stays
    within rounding of one area resize, also where the size is not a whole multiple."""
    for h, w in ((480, 640), (481, 643), (1080, 1920)):
        array = _smooth(h, w)
        for fit in ("pad", "crop", "stretch"):
            config = PreprocessConfig(size=96, fit=fit)
            got = resize_for_model(array, config)
            if fit == "crop":
                side = min(h, w)
                y0, x0 = (h - side) // 2, (w - side) // 2
                one = cv2.resize(array[y0 : y0 + side, x0 : x0 + side], (96, 96), interpolation=cv2.INTER_AREA)
            elif fit == "stretch":
                one = cv2.resize(array, (96, 96), interpolation=cv2.INTER_AREA)
            else:
                nh = round(h * 96 / w)
                one = np.full((96, 96, 3), 255, np.uint8)
                one[(96 - nh) // 2 : (96 - nh) // 2 + nh] = cv2.resize(array, (96, nh), interpolation=cv2.INTER_AREA)
            assert np.abs(got.astype(int) - one).mean() < 1.0, (h, w, fit)


def test_pad_value_and_tiny_image() -> None:
    out = resize_for_model(np.full((1, 1, 3), 7, np.uint8), PreprocessConfig(size=8, pad_value=0))
    assert (out == 7).all()  # a 1x1 image fills the square (enlarged, nothing to pad)
    thin = resize_for_model(np.full((1, 64, 3), 7, np.uint8), PreprocessConfig(size=8, pad_value=0))
    assert (thin[3] == 7).all() and (thin[:3] == 0).all() and (thin[4:] == 0).all()  # one row, centred


def test_to_tensor_per_channel_normalisation() -> None:
    config = PreprocessConfig(size=4, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    batch = np.zeros((2, 4, 4, 3), np.uint8)
    batch[1] = (110, 120, 130)
    x = to_tensor(batch, config)
    assert x.shape == (2, 3, 4, 4) and x.is_contiguous()
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-5.0, -5.0, -6.0]))
    assert torch.allclose(x[1, :, 3, 3], torch.tensor([50.0, 25.0, 20.0]))
    assert torch.equal(to_tensor(list(batch), config), x)
    assert torch.equal(to_tensor(batch[1], config), x[1:])
    readonly = batch.copy()
    readonly.flags.writeable = False
    assert torch.equal(to_tensor(readonly, config), x)
    assert to_tensor([], config).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError):
        to_tensor(np.zeros((1, 5, 5, 3), np.uint8), config)


def test_preprocess_equals_resize_then_to_tensor() -> None:
    config = PreprocessConfig(size=32, fit="crop")
    batch = [_pattern(40, 90), _pattern(17, 5)]
    expected = to_tensor([resize_for_model(i, config) for i in batch], config)
    assert torch.equal(preprocess(batch, config), expected)
    view = batch[0][::-1, ::2]  # negative and non-unit strides, as numpy views give
    assert torch.equal(preprocess(view, config), preprocess(np.ascontiguousarray(view), config))
    with pytest.raises(ValueError):
        preprocess([np.zeros((4, 4), np.uint8)], config)  # grayscale must be converted first


def test_config_round_trip_and_validation() -> None:
    config = PreprocessConfig(size=260, mean=[1.0, 2.0, 3.0], std=(4, 5, 6), fit="crop", pad_value=0)
    assert config.mean == (1.0, 2.0, 3.0) and hash(config)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    for bad in ({"fit": "zoom"}, {"size": 0}, {"std": (1, 0, 1)}, {"pad_value": 300}, {"colour": 1}):
        with pytest.raises(ValueError):
            PreprocessConfig.from_dict(bad)


# ---------------------------------------------------------------------------------------------------
# Array helpers


def test_crop_clamps_and_copies() -> None:
    image = _pattern(10, 20)
    part = crop(image, (-5, 2, 8, 100))
    assert part.shape == (8, 8, 3) and part.flags.c_contiguous
    np.testing.assert_array_equal(part, image[2:10, 0:8])
    part[:] = 0
    assert image[2:10, 0:8].any()  # a copy, not a view
    assert crop(image, None) is image
    for empty in ((5, 5, 5, 9), (30, 0, 40, 5), (3, 4, 1, 8)):
        with pytest.raises(ValueError):
            crop(image, empty)


def test_from_bgr() -> None:
    bgr = np.zeros((3, 4, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV order
    rgb = from_bgr(bgr)
    assert rgb.flags.c_contiguous and rgb is not bgr
    assert (rgb == (0, 0, 200)).all()
    assert from_bgr(np.full((3, 4), 9, np.uint8)).shape == (3, 4, 3)
    assert (from_bgr(np.dstack([bgr, np.zeros((3, 4), np.uint8)])) == (0, 0, 200)).all()


def test_camera_frame_and_file_share_one_path(tmp_path: Path) -> None:
    """A frame from a camera (BGR) and the same picture from a file give the same model input."""
    rgb = _pattern(60, 80)
    path = _save(tmp_path / "frame.png", rgb)
    config = PreprocessConfig(size=48)
    from_file = preprocess(load_image(path), config)
    from_camera = preprocess(from_bgr(np.ascontiguousarray(rgb[..., ::-1])), config)
    assert torch.equal(from_file, from_camera)


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_model_path_decode_is_close_to_a_full_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fit: str
) -> None:
    """Files on the model path are decoded reduced (down to the side the fit needs: the shorter one for crop and
    stretch), then resized once: close to resizing the full-size picture, for wide and tall JPEGs and PNGs."""
    from core.embedding import load_for_model

    decoded = []

    def spy(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
        decoded.append(image.shape[:2])
        return resize_for_model(image, config)

    monkeypatch.setattr(images, "resize_for_model", spy)
    config = PreprocessConfig(size=64, fit=fit)
    for h, w in ((300, 1000), (1000, 300)):
        array = _smooth(h, w)
        for name, kw in (("a.jpg", {"quality": 95}), ("a.png", {})):
            path = _save(tmp_path / name, array, **kw)
            got = load_for_model(str(path), config)
            side = max(decoded[-1]) if fit == "pad" else min(decoded[-1])
            assert 64 <= side < 128, (fit, decoded[-1])  # reduced, never below what the fit scales to 64
            want = resize_for_model(array, config)
            assert got.shape == want.shape == (64, 64, 3)
            assert np.abs(got.astype(int) - want).mean() < 2.5, (fit, h, w, name)


def test_bytes_buffer_is_accepted() -> None:
    buf = io.BytesIO()
    Image.fromarray(_pattern(6, 9)).save(buf, "PNG")
    np.testing.assert_array_equal(load_image(memoryview(buf.getvalue())), _pattern(6, 9))


def test_a_168_megapixel_png_is_decoded_reduced_one_at_a_time(huge_png: Path) -> None:
    """Two 168 MP PNGs through the threaded folder loader, in a fresh process: the model-sized result is right,
    and the peak stays near ONE full-size decode (504 MB of pixels), not one per decoder thread."""
    script = textwrap.dedent(f"""
        import json
        from core.device import peak_memory_mb
        from core.embedding import load_many
        from core.images import PreprocessConfig
        base = peak_memory_mb()
        (ok, arrays, skipped), = load_many([{str(huge_png)!r}] * 2, PreprocessConfig(size=224), 2, workers=2)
        peak = peak_memory_mb()
        print(json.dumps({{"ok": len(ok), "shape": arrays[0].shape, "disc": arrays[0][112, 112].tolist(),
                          "grown_mb": peak - base}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == 2 and report["shape"] == [224, 224, 3]
    assert report["disc"] == [40, 90, 200]  # the disc's colour at the centre: decoded, not a blank
    print(f"\ntwo 168 MP PNGs: peak grew by {report['grown_mb']:.0f} MB")
    assert report["grown_mb"] < 800, f"peak grew by {report['grown_mb']:.0f} MB decoding two 168 MP PNGs"
