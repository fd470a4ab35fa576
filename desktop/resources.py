"""The app's data files (resources/): the repository's folder in a source checkout, _internal/resources/ in the
PyInstaller bundle (build.spec copies resources/ there)."""
from __future__ import annotations

import sys
from pathlib import Path

# tools/make_icons.py renders resources/icon.svg at these sizes.
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)  # set by PyInstaller's bootloader
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parents[1] / "resources"


def icon_path(size: int) -> Path:
    return resources_dir() / "icons" / f"protolabel-{size}.png"


def app_icon():
    """The window's icon from the PNG renders, every size (the bundle has no SVG plugin); a null QIcon when the
    files are missing (an installation without resources/), which Qt shows as its default icon."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for size in ICON_SIZES:
        path = icon_path(size)
        if path.is_file():
            icon.addFile(str(path), QSize(size, size))
    return icon
