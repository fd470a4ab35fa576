"""Screenshots of the main screens at a realistic window size, written to docs/screenshots/ (README shows them),
so a person can check the layout: the live view with its overlay, the folder grid, the classes panel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage

from synthetic import write_tree, write_video

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
OPENCLIPART = Path("/usr/share/openclipart/png")
CLIPART_CLASSES = ("animals", "food", "transportation")


def until(qtbot, condition, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def _clipart_tree(root: Path) -> tuple[Path, Path] | None:
    """support/<class>/ (4 each) and query/ (12 each) from openclipart when installed, else None."""
    import shutil

    if not all((OPENCLIPART / c).is_dir() for c in CLIPART_CLASSES):
        return None
    for c in CLIPART_CLASSES:
        files = sorted(p for p in (OPENCLIPART / c).rglob("*.png") if p.stat().st_size < 400_000)[:16]
        if len(files) < 16:
            return None
        (root / "support" / c).mkdir(parents=True)
        (root / "query").mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            name = f"{i:02d}-{f.name}"  # sub-folders may repeat a file name
            shutil.copy(f, (root / "support" / c / name) if i < 4 else (root / "query" / f"{c}-{name}"))
    return root / "support", root / "query"


def _check(path: Path) -> None:
    image = QImage(str(path))
    assert not image.isNull() and image.width() >= 220  # the classes panel's minimum width; the window is wider
    arr = np.frombuffer(image.convertToFormat(QImage.Format.Format_RGB888).constBits(), np.uint8)
    assert arr.std() > 10, f"{path.name} looks blank"


def test_screenshots(qtbot, make_window, tmp_path):
    OUT.mkdir(parents=True, exist_ok=True)
    window = make_window()
    window.resize(1400, 880)
    window.show()
    until(qtbot, lambda: window.model_ready)
    qtbot.wait(200)
    window.grab().save(str(OUT / "start.png"))  # what a first start looks like: the hint says what to do

    # Live view with the overlay: shapes from a generated clip.
    clip = write_video(tmp_path / "clip.avi", ["circle", "square"] * 6, frames_each=15, fps=15, seed=4)
    write_tree(tmp_path / "shapes", per_class=4, classes=("circle", "square", "triangle"), seed=1)
    window.import_tree(str(tmp_path / "shapes"))
    until(qtbot, lambda: sum(c.count for c in window.snapshot.classes) == 12)
    window.open_video(str(clip))
    until(qtbot, lambda: window.live.prediction() is not None)
    window.live.set_roi(None)
    qtbot.wait(400)
    window.grab().save(str(OUT / "live.png"))
    window.class_panel.grab().save(str(OUT / "classes.png"))

    # Folder grid: clip art when installed (realistic), else generated shapes.
    window.stop_source()
    window.new_project()
    until(qtbot, lambda: not window.snapshot.classes)
    trees = _clipart_tree(tmp_path / "clipart")
    if trees is None:
        write_tree(tmp_path / "gen", per_class=4, classes=("circle", "square", "star"), seed=2)
        write_tree(tmp_path / "genq", per_class=10, classes=("circle", "square", "star"), seed=3)
        trees = (tmp_path / "gen", tmp_path / "genq")
    window.import_tree(str(trees[0]))
    until(qtbot, lambda: sum(c.count for c in window.snapshot.classes) == 12)
    window.open_folder(str(trees[1]))
    until(qtbot, lambda: any(" image(s) in " in text for _, text in window.messages))  # labeling finished
    first = window.folder_view.items()[0]
    window.folder_view.select_path(first.path)
    until(qtbot, lambda: window.folder_view.explained_path() == first.path, timeout=20_000)
    qtbot.wait(1500)  # thumbnails load in their thread
    window.grab().save(str(OUT / "folder.png"))

    for name in ("start.png", "live.png", "classes.png", "folder.png"):
        _check(OUT / name)
