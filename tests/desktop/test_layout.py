"""The window's layout from 800 x 600 up: nothing forces it to grow, nothing visible is clipped or squeezed below
its minimum, the folder grid fills its width, the explanation panel resizes, dialogs fit their text."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QObject, QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QStyleOptionComboBox,
    QTabBar,
    QWidget,
)

from synthetic import write_tree

SMALL = QSize(800, 600)


def until(qtbot, condition, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def settle(qtbot, ms: int = 100) -> None:
    """Let posted layout requests and resizes run."""
    QApplication.processEvents()
    qtbot.wait(ms)
    QApplication.processEvents()


def _in_scroll_viewport(w: QWidget, top: QWidget) -> bool:
    """True when an ancestor of w (below top) is the viewport of a scroll area: its content may extend past it."""
    a = w.parentWidget()
    while a is not None and a is not top:
        owner = a.parentWidget()
        if isinstance(owner, QAbstractScrollArea) and owner.viewport() is a:
            return True
        a = owner
    return False


def _needed(w: QWidget) -> QSize:
    """The least size w can show itself at, as layouts see it (Qt's qSmartMinSize, by direction)."""
    hint, min_hint, policy = w.sizeHint(), w.minimumSizeHint(), w.sizePolicy()
    if isinstance(w, QTabBar):  # its minimum counts scroll buttons, which it shows only when its tabs don't fit
        min_hint = min_hint.boundedTo(hint)
    need = []
    for get_hint, get_min, pol, explicit in (
            (hint.width(), min_hint.width(), policy.horizontalPolicy(), w.minimumWidth()),
            (hint.height(), min_hint.height(), policy.verticalPolicy(), w.minimumHeight())):
        if explicit > 0:
            need.append(explicit)
        elif pol == QSizePolicy.Policy.Ignored:
            need.append(0)
        elif pol.value & QSizePolicy.PolicyFlag.ShrinkFlag.value:
            need.append(max(get_min, 0))
        else:
            need.append(max(get_hint, get_min, 0))
    return QSize(*need)


def layout_problems(top: QWidget) -> list[str]:
    """Every visible descendant of `top` outside its parent's rect or smaller than it needs, unless it is
    inside a scroll area's viewport (the scroll area shows the rest). Word-wrapped labels need their
    height for their width."""
    problems = []
    for w in top.findChildren(QWidget):
        if not w.isVisible() or w.isWindow() or _in_scroll_viewport(w, top) or _collapsed(w, top):
            continue
        if isinstance(w.parentWidget(), (QAbstractSpinBox, QComboBox)):
            continue  # the parts of a spin box or a combo box: the box itself is checked
        name = f"{type(w).__name__}({w.objectName() or getattr(w, 'text', lambda: '')()!s:.30})"
        parent = w.parentWidget()
        if w.width() and w.height() and not parent.rect().contains(w.geometry()):
            problems.append(f"{name} at {w.geometry().getRect()} outside its {type(parent).__name__} "
                            f"{parent.rect().getRect()}")
        need = _needed(w)
        if w.width() < need.width() or w.height() < need.height():
            problems.append(f"{name} is {w.width()}x{w.height()}, needs {need.width()}x{need.height()}")
        if not w.findChildren(QWidget) and w.hasHeightForWidth() and w.sizePolicy().verticalPolicy() != QSizePolicy.Policy.Ignored \
                and w.height() < w.heightForWidth(w.width()):  # a word-wrapped label: all its lines
            problems.append(f"{name} is {w.height()} high, needs {w.heightForWidth(w.width())} at width {w.width()}")
        if isinstance(w, QScrollArea) and w.widget() is not None \
                and w.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff \
                and w.widget().width() > w.viewport().width():
            problems.append(f"{name} cuts off its contents: {w.widget().width()} px wide in a "
                            f"{w.viewport().width()} px viewport that does not scroll sideways")
    return problems


def _collapsed(w: QWidget, top: QWidget) -> bool:
    """True when w or an ancestor has no area: nothing of it is drawn."""
    while w is not None and w is not top:
        if w.width() <= 0 or w.height() <= 0:
            return True
        w = w.parentWidget()
    return False


def assert_fits(qtbot, window, size: QSize = SMALL) -> None:
    settle(qtbot)
    problems = layout_problems(window)
    if window.size() != size:
        problems.insert(0, f"the window grew from {size.toTuple()} to {window.size().toTuple()} "
                           f"(minimum {window.minimumSize().toTuple()})")
    assert not problems, "\n".join(problems)


@pytest.fixture
def trees(tmp_path) -> tuple[Path, Path]:
    """support/<class>/ (3 each, three classes) and query/ with 4 images per class."""
    classes = ("circle", "square", "triangle")
    write_tree(tmp_path / "support", per_class=3, seed=1, classes=classes)
    write_tree(tmp_path / "query", per_class=4, seed=2, classes=classes)
    return tmp_path / "support", tmp_path / "query"


def _window_with_classes(qtbot, make_window, support: Path, size: QSize = SMALL):
    window = make_window()
    window.resize(size)
    window.show()
    until(qtbot, lambda: window.model_ready)
    window.import_tree(str(support))
    until(qtbot, lambda: sum(c.count for c in window.snapshot.classes) == 9)
    until(qtbot, lambda: len(window.class_panel.cards()) == 3 and all(c.example_ids() for c in window.class_panel.cards()))
    return window


def _label_folder(qtbot, window, query: Path) -> None:
    window.open_folder(str(query))
    assert window.tabs.currentWidget() is window.folder_view
    until(qtbot, lambda: len(window.folder_view.items()) == 12 and all(i.label for i in window.folder_view.items()))
    until(qtbot, lambda: window.task_bar.isHidden())
    first = window.folder_view.items()[0]
    window.folder_view.select_path(first.path)
    until(qtbot, lambda: window.folder_view.explained_path() == first.path, timeout=20_000)


def test_live_tab_fits_800x600(qtbot, make_window, trees):
    window = _window_with_classes(qtbot, make_window, trees[0])
    window.tabs.setCurrentWidget(window.live)
    assert_fits(qtbot, window)


class _Sizes(QObject):
    """Every size a widget is resized to (an event filter)."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self.seen: set[tuple[int, int]] = set()
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Resize:
            self.seen.add(event.size().toTuple())
        return False


def test_folder_tab_fits_800x600_and_the_explanation_panel_resizes(qtbot, make_window, trees):
    window = _window_with_classes(qtbot, make_window, trees[0])
    sizes = _Sizes(window)
    _label_folder(qtbot, window, trees[1])  # with the progress of labeling in the status bar meanwhile
    assert sizes.seen <= {SMALL.toTuple()}, f"the window was resized to {sizes.seen} while labeling"
    assert_fits(qtbot, window)
    window.tabs.setCurrentWidget(window.live)  # and back: switching tabs changes nothing
    assert_fits(qtbot, window)
    window.tabs.setCurrentWidget(window.folder_view)
    assert_fits(qtbot, window)

    # The explanation panel is on a splitter: narrower and wider than it starts, the grid takes the rest.
    fv = window.folder_view
    splitter, panel, grid = fv.splitter, fv.panel, fv.grid
    start = panel.width()
    total = sum(splitter.sizes())
    for width in (panel.minimumSizeHint().width() + 10, start + 120):
        splitter.setSizes([total - width, width])
        settle(qtbot)
        assert abs(panel.width() - width) <= 2, (width, splitter.sizes())
        assert abs(grid.width() - (total - width)) <= 2
        assert_fits(qtbot, window)
    # dragging the handle moves it too
    narrow = panel.minimumSizeHint().width() + 10
    splitter.setSizes([total - narrow, narrow])
    settle(qtbot)
    handle = splitter.handle(1)
    before = panel.width()
    qtbot.mousePress(handle, _left(), pos=QPoint(2, handle.height() // 2))
    _drag(handle, QPoint(2 - 60, handle.height() // 2))
    qtbot.mouseRelease(handle, _left(), pos=QPoint(2 - 60, handle.height() // 2))
    settle(qtbot)
    assert panel.width() >= before + 40, (before, panel.width())
    dragged = panel.width()
    window.shutdown()

    # The next window remembers the panel's width where it has the room; a small one keeps the grid 2 columns.
    again = make_window()
    again.resize(1400, 880)
    again.show()
    again.tabs.setCurrentWidget(again.folder_view)
    settle(qtbot)
    assert abs(again.folder_view.panel.width() - dragged) <= 2, (dragged, again.folder_view.splitter.sizes())
    again.resize(SMALL)
    assert_fits(qtbot, again)
    assert again.folder_view.grid.columns() == 2


def _left():
    return Qt.MouseButton.LeftButton


def _drag(widget: QWidget, pos: QPoint) -> None:
    """A mouse move with the left button held (QTest's mouseMove carries no buttons)."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QMouseEvent

    event = QMouseEvent(QMouseEvent.Type.MouseMove, QPointF(pos), QPointF(widget.mapToGlobal(pos)),
                        Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def _columns(grid) -> tuple[int, int]:
    """(columns in the first row of the grid, viewport width the cells leave unused on the right)."""
    model = grid.model()
    rects = [grid.visualRect(model.index(r)) for r in range(model.rowCount())]
    first_row = [r for r in rects if r.top() == rects[0].top()]
    return len(first_row), grid.viewport().width() - max(r.right() + 1 for r in first_row)


def test_folder_grid_fills_its_width(qtbot, make_window, trees):
    window = _window_with_classes(qtbot, make_window, trees[0])
    _label_folder(qtbot, window, trees[1])
    grid = window.folder_view.grid
    counts = {}
    for width in (800, 1000, 1300, 1600):
        window.resize(width, 600)
        settle(qtbot, 200)
        until(qtbot, lambda: grid.visualRect(grid.model().index(grid.model().rowCount() - 1)).isValid())
        columns, unused = _columns(grid)
        counts[width] = columns
        # what a row leaves over is shared among its cells, but for the spacing and a pixel per column; where
        # no scroll bar is shown, QListView keeps its room free all the same
        bar = 0 if grid.verticalScrollBar().isVisible() else grid.verticalScrollBar().sizeHint().width()
        assert unused <= 2 * grid.spacing() + columns + bar, \
            f"{unused} px unused right of {columns} columns in a {grid.viewport().width()} px grid"
    assert counts[1600] > counts[800], counts
    assert list(counts.values()) == sorted(counts.values()), counts


def test_camera_dialog_fits_its_text(qtbot, make_window):
    from desktop.main_window import CameraDialog

    window = make_window()
    dialog = CameraDialog(window.camera_probe, window)
    qtbot.addWidget(dialog)
    dialog.show()
    until(qtbot, lambda: "Looking" not in dialog.cameras.itemText(0), timeout=20_000)
    settle(qtbot)
    combo = dialog.cameras
    if not glob.glob("/dev/video*"):
        assert "No camera found" in combo.itemText(0)
    field = _combo_text_rect(combo)
    fm = combo.fontMetrics()
    for i in range(combo.count()):
        text = combo.itemText(i)
        assert fm.horizontalAdvance(text) <= field.width(), f"'{text}' does not fit the {field.width()} px combo"
    url = dialog.url
    assert url.fontMetrics().horizontalAdvance(url.placeholderText()) <= url.contentsRect().width() - 4
    problems = layout_problems(dialog)
    assert not problems, "\n".join(problems)
    screen = dialog.screen().availableGeometry()
    assert dialog.width() <= screen.width() and dialog.height() <= screen.height()
    dialog.reject()


def _combo_text_rect(combo: QComboBox) -> QRect:
    opt = QStyleOptionComboBox()
    combo.initStyleOption(opt)
    return combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                        QStyle.SubControl.SC_ComboBoxEditField, combo)
