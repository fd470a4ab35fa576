"""Fixtures shared by all tests. Models are built once per session (they take a second or two)."""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as ProtoLabel's programs set it, before torch loads
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `make test`'s workers share the cores: torch threads beyond a worker's share wait for each other (on 2
    # cores a fine-tuning test took 124 s beside another worker, 21 s alone). Set before torch loads; subprocesses
    # inherit it.
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("PROTOLABEL_THREADS", _share)


@pytest.fixture(scope="session")
def backbone():
    from core import create_backbone

    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def embedder(backbone):
    from core import Embedder

    return Embedder(backbone, "cpu", batch_size=16)


@pytest.fixture(scope="session")
def shapes_tree(tmp_path_factory) -> Path:
    """support/<class>/ (3 each) and query/<class>/ (6 each) of generated shapes."""
    from synthetic import write_tree

    root = tmp_path_factory.mktemp("shapes")
    write_tree(root / "support", per_class=3, seed=1)
    write_tree(root / "query", per_class=6, seed=2)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the feature cache of tests out of the user's home."""
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC over tag + data."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG that declares width x height RGB pixels but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def _encoded(fmt: str, **kw) -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def bad_image_dir(tmp_path: Path) -> Path:
    """A folder of files with image extensions that cannot be decoded, one per failure kind."""
    d = tmp_path / "bad"
    d.mkdir()
    jpeg, png, webp = _encoded("JPEG", quality=90), _encoded("PNG"), _encoded("WEBP", quality=80)
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("just some notes\nthat were saved with the wrong name\n", encoding="utf-8")
    (d / "page.png").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n",
        encoding="utf-8",
    )
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    (d / "truncated.webp").write_bytes(webp[: len(webp) // 2])
    (d / "header_cut.png").write_bytes(png[:20])
    (d / "noise.bmp").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # 10000 MP: PIL's backstop fires first
    (d / "over_limit.png").write_bytes(png_header_only(20_001, 20_000))  # 400.02 MP: only our check catches it
    return d


def write_huge_png(path: Path, width: int = 16_000, height: int = 10_500) -> Path:
    """A real 168-megapixel RGB PNG (a dark disc on white, as clip-art collections hold), written row by row so
    the test never holds it whole: 504 MB of pixels, a few MB on disk."""
    white = b"\x00" + b"\xff" * (3 * width)  # filter byte 0 + one row
    cx, cy, r = width // 2, height // 2, min(width, height) // 3
    comp = zlib.compressobj(1)
    parts = [b"\x89PNG\r\n\x1a\n", png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    idat = []
    for y in range(height):
        dy = y - cy
        if abs(dy) >= r:
            idat.append(comp.compress(white))
            continue
        half = int((r * r - dy * dy) ** 0.5)
        row = bytearray(white)
        row[1 + 3 * (cx - half): 1 + 3 * (cx + half)] = bytes((40, 90, 200)) * (2 * half)
        idat.append(comp.compress(bytes(row)))
    idat.append(comp.flush())
    parts += [png_chunk(b"IDAT", b"".join(idat)), png_chunk(b"IEND", b"")]
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory) -> Path:
    return write_huge_png(tmp_path_factory.mktemp("huge") / "poster 168MP.png")


@pytest.fixture
def messy_folder(tmp_path: Path, bad_image_dir: Path, huge_png: Path):
    """Every input of the reliability issue in one folder (spaces and unicode in its name): the bad-image corpus,
    odd but readable images, a 168 MP PNG, a symlink loop and a file without read permission.

    Returns (folder, readable names, unreadable names, the name of the file without read permission). Root can
    read that file anyway; tests that want it refused patch the opening (see `deny_reading`)."""
    import cv2

    from synthetic import draw_shape

    folder = tmp_path / "Ferien 2026 – Fotos ü"
    folder.mkdir()
    unreadable = []
    for f in sorted(bad_image_dir.iterdir()):
        (folder / f.name).write_bytes(f.read_bytes())
        unreadable.append(f.name)
    rng = np.random.default_rng(0)
    circle, square = draw_shape("circle", rng), draw_shape("square", rng)
    cv2.imwrite(str(folder / "ein Kreis.png"), circle[..., ::-1])
    Image.fromarray(square).save(folder / "das Quadrat 🟦.jpg", quality=92)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "tiny.png")
    Image.fromarray(np.zeros((1, 100_000, 3), np.uint8)).save(folder / "strip.png")
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(folder / "sixteen.png")
    Image.fromarray(circle).convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    palette = Image.fromarray(square).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    frames = [Image.fromarray(draw_shape("square", rng)) for _ in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated
    Image.fromarray(np.ascontiguousarray(np.rot90(circle))).save(folder / "exif rotated.jpg", exif=exif, quality=92)
    os.link(huge_png, folder / huge_png.name)
    secret = folder / "no read permission.png"
    cv2.imwrite(str(secret), square[..., ::-1])
    secret.chmod(0)
    (folder / "loop").mkdir()
    (folder / "loop" / "back").symlink_to(folder, target_is_directory=True)
    readable = ["ein Kreis.png", "das Quadrat 🟦.jpg", "tiny.png", "strip.png", "sixteen.png", "cmyk.jpg",
                "palette.png", "anim.gif", "exif rotated.jpg", huge_png.name]
    yield folder, readable, unreadable, secret.name
    secret.chmod(0o644)  # lets pytest clean up


@pytest.fixture
def deny_reading(monkeypatch):
    """deny_reading(name): opening a file of that name in core.images raises PermissionError, as for a file
    without read permission when not running as root (tests run as root here)."""
    import builtins

    from core import images

    names: set[str] = set()

    def guarded_open(file, *args, **kwargs):
        if Path(os.fsdecode(file)).name in names:
            raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(images, "open", guarded_open, raising=False)
    return names.add


def pytest_collection_modifyitems(config, items):
    """Longest first, so that `make test`'s two pytest-xdist workers finish together: the tests marked slow, then
    the rest; the packaging tests last, so that the bundle and the .deb, which `make test` builds in the
    background from the start, are ready when they come. Order is kept within each."""
    def rank(item) -> int:
        return 2 if item.get_closest_marker("packaging") else 0 if item.get_closest_marker("slow") else 1

    items.sort(key=rank)
