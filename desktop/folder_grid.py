"""The folder grid: its model (`_FolderModel`), cell painting (`_CellDelegate`) and the view (`_Grid`)."""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPointF,
    QRect,
    QRectF,
    QSize,
    Qt,
    QTimerEvent,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QKeyEvent,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
    QResizeEvent,
)
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from .state import FolderItem
from .thumbnails import THUMBNAIL_SIDE

if TYPE_CHECKING:
    from .folder_view import FolderView

CELL_SIZE = QSize(150, 170)  # the narrowest cell; cells widen to share a row's leftover width among its columns

_GREY = QColor("#9e9e9e")  # unknown / removed class, same grey as ModelSnapshot.color_of


class _FolderModel(QAbstractListModel):
    """The visible rows: `order` indexes into `items` (after sort and filter)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._items: list[FolderItem] = []
        self._order: list[int] = []
        self._row_of: dict[str, int] | None = None
        self.describe_error: Callable[[str], str] = lambda path: ""

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._order)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self._order):
            return None
        item = self._items[self._order[index.row()]]
        if role == Qt.ItemDataRole.DisplayRole:
            return os.path.basename(item.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(item, self.describe_error(item.path))
        return None

    def item(self, row: int) -> FolderItem:
        return self._items[self._order[row]]

    def path(self, row: int) -> str:
        return self._items[self._order[row]].path

    def visible_items(self) -> list[FolderItem]:
        return [self._items[i] for i in self._order]

    def paths_from(self, row: int) -> Iterator[str]:
        """Paths from `row` on in display order, as they are now (a later `set_rows` does not change them)."""
        items, order = self._items, self._order
        return (items[i].path for i in itertools.islice(order, row, None))

    def row_of(self, path: str) -> int | None:
        if self._row_of is None:  # built on demand: most reorders never need it
            self._row_of = {self._items[i].path: row for row, i in enumerate(self._order)}
        return self._row_of.get(path)

    def set_rows(self, items: list[FolderItem], order: list[int]) -> bool:
        """Show `order` of `items`; returns True when the row count changed (the view lays out again)."""
        self._row_of = None
        if len(order) == len(self._order):
            # Same count: new contents in the same rows keeps the view's layout and scroll position. No
            # dataChanged over all rows: the icon-mode view walks every row for it (60 ms at 100k); this model
            # has one view, which repaints what it shows.
            self._items, self._order = items, order
            return False
        self.beginResetModel()
        self._items, self._order = items, order
        self.endResetModel()
        return True


def _tooltip(item: FolderItem, error: str) -> str:
    if error:
        return f"{item.path}\n{error}"
    if not item.label:
        return f"{item.path}\nnot labeled yet"
    return f"{item.path}\n{item.label} · {item.confidence:.0%} · {item.source}"


def _readable(color: QColor) -> QColor:
    """The class colour, darkened when too light to read as text on a light background."""
    luma = 0.299 * color.red() + 0.587 * color.green() + 0.114 * color.blue()
    return color.darker(100 + int(luma - 120)) if luma > 150 else color


class _CellDelegate(QStyledItemDelegate):
    """Paints one grid cell: thumbnail, class border, label, confidence bar, check mark when confirmed."""

    def __init__(self, view: FolderView) -> None:
        super().__init__(view)
        self._view = view

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        return self._view.grid.cell_size()

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        view = self._view
        item = view._model.item(index.row())
        pal = option.palette
        card = option.rect.adjusted(3, 3, -3, -3)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        state = option.state
        if state & QStyle.StateFlag.State_Selected:
            hl = pal.color(QPalette.ColorRole.Highlight)
            fill = QColor(hl)
            fill.setAlpha(90)
            painter.setPen(QPen(hl, 3))
            painter.setBrush(fill)
            painter.drawRoundedRect(QRectF(card).adjusted(1.5, 1.5, -1.5, -1.5), 6, 6)
        elif state & QStyle.StateFlag.State_HasFocus:
            painter.setPen(QPen(pal.color(QPalette.ColorRole.Highlight), 1, Qt.PenStyle.DotLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(QRectF(card).adjusted(1, 1, -1, -1), 6, 6)

        frame = QRect(card.left() + (card.width() - THUMBNAIL_SIDE - 8) // 2, card.top() + 4,
                      THUMBNAIL_SIDE + 8, THUMBNAIL_SIDE + 8)
        inner = frame.adjusted(4, 4, -4, -4)
        self._paint_thumbnail(painter, inner, item.path, pal)

        color = view._color_of(item.label)
        confirmed = item.source == "confirmed" and bool(item.label)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if not item.label:
            painter.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1))
            painter.drawRect(QRectF(frame).adjusted(3.5, 3.5, -3.5, -3.5))
        elif item.is_unknown:
            painter.setPen(QPen(_GREY, 2, Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(frame).adjusted(2, 2, -2, -2))
        elif confirmed:
            painter.setPen(QPen(color, 4))
            painter.drawRect(QRectF(frame).adjusted(2, 2, -2, -2))
        else:
            painter.setPen(QPen(color, 2))
            painter.drawRect(QRectF(frame).adjusted(3, 3, -3, -3))
        if confirmed:
            _paint_check(painter, QPointF(frame.right() - 9, frame.top() + 9), color)

        strip = QRect(card.left() + 6, frame.bottom() + 3, card.width() - 12, card.bottom() - frame.bottom() - 4)
        self._paint_strip(painter, strip, item, color, option.font, pal)
        painter.restore()

    def _paint_thumbnail(self, painter: QPainter, inner: QRect, path: str, pal: QPalette) -> None:
        entry = self._view._thumbnail(path)
        if isinstance(entry, QPixmap):
            painter.fillRect(inner, pal.color(QPalette.ColorRole.AlternateBase))
            w, h = entry.width(), entry.height()
            painter.drawPixmap(inner.left() + (inner.width() - w) // 2, inner.top() + (inner.height() - h) // 2, entry)
            return
        painter.fillRect(inner, QColor("#c8c8c8") if entry is not None else QColor("#e4e4e4"))
        if entry is not None:
            painter.setPen(QColor("#505050"))
            painter.drawText(inner, Qt.AlignmentFlag.AlignCenter, "unreadable")

    def _paint_strip(self, painter: QPainter, strip: QRect, item: FolderItem, color: QColor, font: QFont,
                     pal: QPalette) -> None:
        text_color = pal.color(QPalette.ColorRole.Text)
        painter.setFont(font)
        fm = QFontMetrics(font)
        text_rect = QRect(strip.left(), strip.top(), strip.width(), fm.height())
        if not item.label:
            painter.setPen(_GREY)
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignCenter, "…")
            return
        pct = f"{item.confidence:.0%}"
        pct_w = fm.horizontalAdvance(pct)
        painter.setPen(_GREY if item.is_unknown else text_color)
        name = fm.elidedText(item.label, Qt.TextElideMode.ElideRight, strip.width() - pct_w - 6)
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name)
        painter.setPen(text_color)
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, pct)
        bar = QRectF(strip.left(), text_rect.bottom() + 3, strip.width(), 4)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 30))
        painter.drawRoundedRect(bar, 2, 2)
        filled = QRectF(bar)
        filled.setWidth(bar.width() * min(1.0, max(0.0, item.confidence)))
        painter.setBrush(color)
        painter.drawRoundedRect(filled, 2, 2)


def _paint_check(painter: QPainter, center: QPointF, color: QColor) -> None:
    """A filled circle in the class colour with a white check mark."""
    painter.setPen(QPen(QColor("white"), 1.5))
    painter.setBrush(color)
    painter.drawEllipse(center, 9, 9)
    path = QPainterPath(center + QPointF(-4.5, 0.5))
    path.lineTo(center + QPointF(-1.2, 3.8))
    path.lineTo(center + QPointF(4.8, -3.2))
    painter.setPen(QPen(QColor("white"), 2.2, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                        Qt.PenJoinStyle.RoundJoin))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawPath(path)


class _Grid(QListView):
    """The thumbnail grid: label keys, and the scroll position kept across re-layouts.

    QListView lays 100k items out in batches and meanwhile clamps the scroll position to what it has laid
    out; the grid remembers an anchor (the visible current item's screen position, else the scroll value)
    and restores it once the layout is complete, with viewport painting held back until then.
    """

    labelKeyPressed = Signal(str)  # "1".."9"
    acceptKeyPressed = Signal()
    rejectKeyPressed = Signal()  # "0": none of these classes

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pending: tuple | None = None  # ("path", path, top | None) or ("value", scroll value)
        self._capturing = False
        self._cell = QSize(CELL_SIZE)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(2000)  # ~3 ms of layout per event-loop turn on a slow 2-core machine
        self.setSpacing(4)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionRectVisible(True)
        self.setDragEnabled(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(40)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setMinimumWidth(self.width_for_columns(1))  # a narrower grid would cut its cells

    # --- cell size ---
    def cell_size(self) -> QSize:
        """The size of every cell: CELL_SIZE, widened so that the columns fill the viewport's width."""
        return self._cell

    def layout_width(self) -> int:
        """The width QListView lays cells out in: the viewport's, less a vertical scroll bar even while none is
        shown (so that the bar coming and going does not re-flow the grid)."""
        width = self.maximumViewportSize().width()
        style, bar = self.style(), self.verticalScrollBar()
        if (self.verticalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAsNeeded
                and not style.pixelMetric(QStyle.PixelMetric.PM_ScrollView_ScrollBarOverlap, None, bar)):
            width -= style.pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, bar)
            if style.styleHint(QStyle.StyleHint.SH_ScrollView_FrameOnlyAroundContents, None, self):
                width -= 2 * style.pixelMetric(QStyle.PixelMetric.PM_DefaultFrameWidth, None, self)
        return width

    def columns(self) -> int:
        """How many cells a row holds."""
        return max(1, self._room() // (CELL_SIZE.width() + self.spacing()))

    def columns_at(self, width: int) -> int:
        """How many cells a row would hold were the view `width` wide."""
        return max(1, (self._room() + width - self.width()) // (CELL_SIZE.width() + self.spacing()))

    def width_for_columns(self, columns: int) -> int:
        """The view's width at which `columns` cells of the least width fit in a row."""
        overhead = self.width() - self.layout_width()  # frame and scroll bar
        return overhead + self.spacing() + 1 + columns * (CELL_SIZE.width() + self.spacing())

    def _room(self) -> int:
        # QListView wraps a row before a cell whose end plus spacing would reach the last pixel of the width
        return self.layout_width() - self.spacing() - 1

    def _fit_cells(self) -> None:
        width = max(CELL_SIZE.width(), self._room() // self.columns() - self.spacing())
        if width != self._cell.width():
            self._cell = QSize(width, CELL_SIZE.height())
            self.scheduleDelayedItemsLayout()  # uniform item sizes: the view reads the new size on layout

    def resizeEvent(self, e: QResizeEvent) -> None:
        self._fit_cells()
        super().resizeEvent(e)

    # --- keys ---
    @staticmethod
    def _action_of(e: QKeyEvent) -> str | None:
        mods = e.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if mods != Qt.KeyboardModifier.NoModifier:
            return None
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            return "accept"
        if e.key() == Qt.Key.Key_0:
            return "reject"
        if Qt.Key.Key_1 <= e.key() <= Qt.Key.Key_9:
            return str(e.key() - Qt.Key.Key_0)
        return None

    def event(self, e: QEvent) -> bool:
        # Application shortcuts on 0-9/Enter (e.g. the live view's) must not steal the grid's keys.
        if e.type() == QEvent.Type.ShortcutOverride and self._action_of(e) is not None:  # type: ignore[arg-type]
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e: QKeyEvent) -> None:
        action = self._action_of(e)
        if action is None:
            super().keyPressEvent(e)
        elif action == "accept":
            self.acceptKeyPressed.emit()
        elif action == "reject":
            self.rejectKeyPressed.emit()
        else:
            self.labelKeyPressed.emit(action)

    def keyboardSearch(self, search: str) -> None:
        """Off: Qt's type-to-find asks the model for every row's text, 100k Python calls per key."""

    # --- scroll anchor across re-layouts ---
    def capture_anchor(self) -> tuple:
        """Where the user is looking: the current item's screen position if visible, else the scroll value."""
        cur = self.currentIndex()
        top = self.visible_top(cur.row()) if cur.isValid() else None
        if top is not None:
            return ("path", self.model().path(cur.row()), top)
        return ("value", self.verticalScrollBar().value())

    def visible_top(self, row: int) -> int | None:
        """The viewport y of `row`'s cell when it is (partly) on screen, else None."""
        self._capturing = True  # visualRect may run a posted layout, which calls doItemsLayout
        try:
            rect = self.visualRect(self.model().index(row))
        finally:
            self._capturing = False
        # vertically only: after a narrowing resize the old layout may put the current cell right of the viewport
        if rect.isValid() and rect.bottom() >= 0 and rect.top() < self.viewport().height():
            return rect.top()
        return None

    def restore_anchor(self, anchor: tuple) -> None:
        """Scroll back to `anchor` now, or once the pending layout is complete."""
        self._set_pending(anchor)
        self._apply_pending()

    def ensure_visible(self, path: str) -> None:
        self.restore_anchor(("path", path, None))

    def _set_pending(self, anchor: tuple) -> None:
        if self._pending is None:
            self.viewport().setUpdatesEnabled(False)
        self._pending = anchor

    def _layout_complete(self) -> bool:
        n = self.model().rowCount()
        return n == 0 or self.visualRect(self.model().index(n - 1)).isValid()

    def _apply_pending(self) -> None:
        anchor = self._pending
        if anchor is None or not self._layout_complete():
            return
        self._pending = None
        bar = self.verticalScrollBar()
        if anchor[0] == "value":
            bar.setValue(anchor[1])
        else:
            row = self.model().row_of(anchor[1])
            if row is not None:
                index = self.model().index(row)
                if anchor[2] is None:
                    self.scrollTo(index)
                else:
                    bar.setValue(bar.value() + self.visualRect(index).top() - anchor[2])
        self.viewport().setUpdatesEnabled(True)
        self.viewport().update()

    def doItemsLayout(self) -> None:
        if self._pending is None and not self._capturing and self.model() is not None:
            self._set_pending(self.capture_anchor())
        super().doItemsLayout()
        self._apply_pending()

    def timerEvent(self, e: QTimerEvent) -> None:
        super().timerEvent(e)  # runs one layout batch when it is the batch timer
        if self._pending is not None:
            self._apply_pending()
