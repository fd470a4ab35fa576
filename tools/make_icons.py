"""Renders resources/icon.svg into the app's icon files; run it after editing the SVG and commit the outputs.

    .venv/bin/python tools/make_icons.py

Writes (overwriting) resources/icons/protolabel-{16,...,512}.png (the window's icon and the freedesktop icon),
resources/protolabel.ico (Windows: the bundle's program icon, 16-256 px) and resources/protolabel.icns (macOS:
the .app's icon). Qt's SVG renderer draws every size from the vector source (no downscaled bitmaps); Pillow
writes the files, without timestamps, so the same SVG and Qt give the same bytes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
SVG = RESOURCES / "icon.svg"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # 256 is the largest an .ico holds
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)  # 1024: the 512 px @2x slot, rendered rather than upscaled
_app = None


def png_path(size: int) -> Path:
    return RESOURCES / "icons" / f"protolabel-{size}.png"


def render(svg: Path, size: int) -> Image.Image:
    """The SVG drawn on a transparent size x size canvas, as an RGBA image."""
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"Qt cannot read {svg}")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(0)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)  # straight (not premultiplied) alpha, byte order
    return Image.frombuffer("RGBA", (size, size), bytes(image.constBits()), "raw", "RGBA", image.bytesPerLine(), 1)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    global _app
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # Qt's painting needs one, kept alive
    images = {size: render(SVG, size) for size in sorted({*SIZES, *ICO_SIZES, *ICNS_SIZES})}
    png_path(SIZES[0]).parent.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        images[size].save(png_path(size), optimize=True)
    # Each format gets the renders at its own sizes (append_images), not one image resampled by Pillow.
    largest = images[max(ICO_SIZES)]
    largest.save(RESOURCES / "protolabel.ico", sizes=[(s, s) for s in ICO_SIZES],
                 append_images=[images[s] for s in ICO_SIZES if s != max(ICO_SIZES)])
    images[max(ICNS_SIZES)].save(RESOURCES / "protolabel.icns", append_images=[images[s] for s in ICNS_SIZES[:-1]])
    written = [png_path(s) for s in SIZES] + [RESOURCES / "protolabel.ico", RESOURCES / "protolabel.icns"]
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1024:.0f} KiB, from {SVG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
