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
