"""The folder-labeling screen: a grid of a folder's images with predicted labels, reviewed least-confident first.

The widget keeps no labels of its own: the main window hands it `FolderItem` snapshots with `set_items` and turns
its intents (`assignRequested`, `acceptRequested`, ...) into engine calls. Thumbnails are decoded by one background
thread (`ThumbnailLoader`) and reach the UI thread as QImages through a queued signal.
"""
from __future__ import annotations

import itertools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QPointF,
    QRect,
    QRectF,
    QSize,
    Qt,
    QTimerEvent,
    Signal,
    SignalInstance,
)
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QColor,
    QFont,
    QFontMetrics,
    QIcon,
    QImage,
    QKeyEvent,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from core import UNKNOWN_LABEL, ImageError, load_image

from .state import ClassInfo, ExampleInfo, FolderItem

__all__ = ["PREVIEW_SIDE", "THUMBNAIL_SIDE", "FolderView", "ThumbnailLoader", "decode_thumbnail"]

THUMBNAIL_SIDE = 128  # px, longer side of a grid thumbnail
PREVIEW_SIDE = 236  # px, longer side of the explanation panel's image
CELL_SIZE = QSize(150, 170)
CACHE_SIZE = 3000  # thumbnails kept in the UI thread (~64 KB each at most)

SORT_LEAST, SORT_MOST, SORT_NAME = "least", "most", "name"
SORTS = ((SORT_LEAST, "Least confident first"), (SORT_MOST, "Most confident first"), (SORT_NAME, "File name"))

_GREY = QColor("#9e9e9e")  # unknown / removed class, same grey as ModelSnapshot.color_of
_DIGITS = re.compile(r"\d+")


def decode_thumbnail(path: str, side: int) -> tuple[QImage, str]:
    """Decode `path` to an RGB QImage whose longer side is `side` px; (null QImage, reason) when unreadable.

    Safe off the UI thread (QImage, not QPixmap); never raises.
    """
    try:
        rgb = load_image(path, max_side=512)
        h, w = rgb.shape[:2]
        scale = side / max(h, w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        # .copy(): the QImage must own its pixels once `rgb` is freed
        return QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888).copy(), ""
    except ImageError as e:
        return QImage(), str(e)
    except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not end the loader thread
        return QImage(), f"cannot read '{path}': {type(e).__name__}: {e}"


class ThumbnailLoader(QObject):
    """One background thread that decodes thumbnails, most recently requested first (LIFO).

    `request()` is cheap and may be called from `paint()`; results arrive in the UI thread as
    `thumbnailReady(path, side, image, error)` with a null image and a reason for unreadable files.
    """

    thumbnailReady = Signal(str, int, QImage, str)

    def __init__(self, parent: QObject | None = None, max_pending: int = 512) -> None:
        super().__init__(parent)
        self._cond = threading.Condition()
        self._pending: OrderedDict[tuple[str, int], None] = OrderedDict()  # last = most recent = next
        self._in_flight: tuple[str, int] | None = None
        self._max_pending = max_pending
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.requested = 0  # requests accepted (not deduplicated ones); tests check laziness with it

    @property
    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request(self, path: str, side: int = THUMBNAIL_SIDE) -> tuple[str, int] | None:
        """Queue `path` for decoding at `side` px, ahead of everything requested before.

        Returns the (path, side) dropped to keep at most `max_pending` requests (the oldest: scrolled past
        long ago), which will not arrive, or None.
        """
        key = (path, side)
        dropped = None
        with self._cond:
            if self._stopping or key == self._in_flight:
                return None
            if key in self._pending:
                self._pending.move_to_end(key)
            else:
                self._pending[key] = None
                self.requested += 1
                if len(self._pending) > self._max_pending:
                    dropped, _ = self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protolabel-thumbnails", daemon=True)
                self._thread.start()
            self._cond.notify()
        return dropped

    def bump(self, path: str, side: int = THUMBNAIL_SIDE) -> None:
        """Move a pending request to the front; no-op when it is not pending."""
        with self._cond:
            if (path, side) in self._pending:
                self._pending.move_to_end((path, side))

    def idle(self) -> bool:
        """Nothing pending and nothing being decoded."""
        with self._cond:
            return not self._pending and self._in_flight is None

    def cancel(self, path: str, side: int = THUMBNAIL_SIDE) -> None:
        """Drop a pending request (one already decoding still arrives)."""
        with self._cond:
            self._pending.pop((path, side), None)

    def clear(self) -> None:
        """Drop every pending request."""
        with self._cond:
            self._pending.clear()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread and wait for it (one decode at most); True when it is gone. Idempotent."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.thread_alive

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key, _ = self._pending.popitem(last=True)
                self._in_flight = key
            image, error = decode_thumbnail(*key)
            with self._cond:
                self._in_flight = None
                if self._stopping:
                    return
            try:
                self.thumbnailReady.emit(key[0], key[1], image, error)
            except RuntimeError:  # the QObject is gone: nobody to deliver to
                return


class _Unreadable:
    """Cache entry for a file that could not be decoded."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _ThumbnailCache:
    """LRU of path -> QPixmap | _Unreadable, UI thread only."""

    def __init__(self, capacity: int = CACHE_SIZE) -> None:
        self._data: OrderedDict[str, QPixmap | _Unreadable] = OrderedDict()
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, path: str) -> bool:
        return path in self._data

    def get(self, path: str) -> QPixmap | _Unreadable | None:
        entry = self._data.get(path)
        if entry is not None:
            self._data.move_to_end(path)
        return entry

    def put(self, path: str, entry: QPixmap | _Unreadable) -> None:
        self._data[path] = entry
        self._data.move_to_end(path)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


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
        return CELL_SIZE

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


class _ExampleRow(QWidget):
    """One nearest support example: its thumbnail, class name in the class colour, similarity."""

    def __init__(self, example: ExampleInfo, similarity: float, color: QColor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 2, 0, 2)
        thumb = QLabel()
        thumb.setFixedSize(56, 56)
        thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        thumb.setStyleSheet(f"border: 2px solid {color.name()};")
        pixmap = _pixmap_from_rgb(example.thumbnail)
        if not pixmap.isNull():
            thumb.setPixmap(pixmap.scaled(52, 52, Qt.AspectRatioMode.KeepAspectRatio,
                                          Qt.TransformationMode.SmoothTransformation))
        lay.addWidget(thumb)
        text = QLabel(f"<b style='color:{_readable(color).name()}'>{_escape(example.class_name)}</b>"
                      f"<br><span>similarity {similarity:.2f}</span>")
        text.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(text, 1)
        self.class_label = text


def _pixmap_from_rgb(rgb: np.ndarray) -> QPixmap:
    """QPixmap of an RGB uint8 (H, W, 3) array (a small support thumbnail: no decoding, UI thread)."""
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3:
        return QPixmap()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return QPixmap.fromImage(QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888).copy())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _ExplanationPanel(QFrame):
    """Right-hand panel: the current image larger, its label, top-3 and the most similar support examples."""

    PANEL_WIDTH = 260

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumWidth(200)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        body = QWidget()
        scroll.setWidget(body)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.setSpacing(6)
        self.title = QLabel()
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)
        self.title.setWordWrap(True)
        lay.addWidget(self.title)
        self.image = QLabel()
        self.image.setFixedSize(PREVIEW_SIDE, PREVIEW_SIDE)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setStyleSheet("background: #e4e4e4;")
        lay.addWidget(self.image, 0, Qt.AlignmentFlag.AlignHCenter)
        self.label_line = QLabel()
        self.label_line.setTextFormat(Qt.TextFormat.RichText)
        self.label_line.setWordWrap(True)
        lay.addWidget(self.label_line)
        self.topk = QLabel()
        self.topk.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.topk)
        self.heading = QLabel("Most similar examples")
        self.heading.setFont(font)
        lay.addWidget(self.heading)
        self.examples_box = QVBoxLayout()
        self.examples_box.setSpacing(2)
        lay.addLayout(self.examples_box)
        self.examples_note = QLabel()
        self.examples_note.setStyleSheet("color: #757575;")
        lay.addWidget(self.examples_note)
        lay.addStretch(1)
        self.rows: list[_ExampleRow] = []
        self.show_item(None, lambda name: _GREY)

    def sizeHint(self) -> QSize:
        return QSize(self.PANEL_WIDTH, 600)

    def show_item(self, item: FolderItem | None, color_of: Callable[[str], QColor]) -> None:
        """Label, confidence and top-3 of `item` (None: nothing selected)."""
        if item is None:
            self.title.setText("No image selected")
            self.image.clear()
            self.label_line.setText("Select an image to see why it got its label.")
            self.topk.clear()
            self.heading.hide()
            self.set_examples(None, color_of)
            return
        self.title.setText(os.path.basename(item.path))
        self.title.setToolTip(item.path)
        self.heading.show()
        if not item.label:
            self.label_line.setText("Not labeled yet")
        else:
            color = _readable(color_of(item.label)).name()
            state = "confirmed" if item.source == "confirmed" else "predicted"
            self.label_line.setText(f"<b style='color:{color}; font-size:large'>{_escape(item.label)}</b>"
                                    f"&nbsp; {item.confidence:.0%} · {state}")
        rows = []
        for name, p in sorted(item.topk, key=lambda t: -t[1])[:3]:
            color = color_of(name).name()
            rows.append(f"<tr><td><span style='color:{color}'>■</span> {_escape(name)}</td>"
                        f"<td align='right'>&nbsp;&nbsp;{p:.0%}</td></tr>")
        self.topk.setText(f"<table cellspacing='0'>{''.join(rows)}</table>" if rows else "")

    def set_preview(self, pixmap: QPixmap | None, unreadable: str = "") -> None:
        if pixmap is None or pixmap.isNull():
            self.image.clear()
            self.image.setText("unreadable" if unreadable else "")
            self.image.setToolTip(unreadable)
        else:
            self.image.setPixmap(pixmap)
            self.image.setToolTip("")

    def set_examples(self, nearest: Sequence[tuple[ExampleInfo, float]] | None,
                     color_of: Callable[[str], QColor]) -> None:
        """The nearest support examples; None while they are being computed."""
        for row in self.rows:
            self.examples_box.removeWidget(row)
            row.deleteLater()
        self.rows = []
        if nearest is None:
            self.examples_note.setText("…")
            return
        for example, similarity in nearest:
            row = _ExampleRow(example, similarity, color_of(example.class_name))
            self.examples_box.addWidget(row)
            self.rows.append(row)
        self.examples_note.setText("" if self.rows else "No examples yet")


class FolderView(QWidget):
    """The folder-labeling screen: thumbnails of every image with predicted label and confidence.

    The user reviews least-confident first and accepts or reassigns with mouse or keyboard; the widget only
    emits intents, the main window applies them and calls `set_items` with the new state.
    """

    assignRequested = Signal(list, str)  # paths, class name
    acceptRequested = Signal(list)  # paths whose predicted label the user confirmed
    rejectRequested = Signal(list)  # paths that belong to none of the classes
    acceptAboveRequested = Signal(float)  # confidence threshold
    currentChanged = Signal(str)  # path
    cancelRequested = Signal()
    openRequested = Signal(str)  # path, to show in the live view

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._classes: tuple[ClassInfo, ...] = ()
        self._colors: dict[str, QColor] = {}
        self._key_to_class: dict[str, str] = {}
        self._items: list[FolderItem] = []
        self._paths: list[str] = []
        self._conf = np.zeros(0)
        self._review = np.zeros(0)  # "least confident first" key: the session's priority, else confidence
        self._group = np.zeros(0, np.int8)  # 0 predicted, 1 confirmed, 2 not labeled yet
        self._unknown = np.zeros(0, bool)
        self._name_order: np.ndarray | None = None  # natural file-name order, cached while paths are unchanged
        self._path_order: np.ndarray | None = None  # plain path order, the tie-breaker
        self._current_path: str | None = None
        # (first acted-on path, its successor) from the last assign/accept/reject, until the next rebuild: the
        # successor then takes the acted-on cell's place on screen instead of the grid scrolling by a line.
        self._handover: tuple[str, str] | None = None
        self._restoring = False
        self._cache = _ThumbnailCache()
        self._errors: dict[str, str] = {}
        # Thumbnails requested and not received yet: a repaint between the worker's emit and the queued
        # delivery must not ask for the same file again (14% duplicate decodes while scrolling without it).
        self._waiting: set[str] = set()
        self._loader = ThumbnailLoader()  # no parent: lives until shutdown, never deleted under the thread
        self._loader.thumbnailReady.connect(self._on_loader_thumbnail_ready, Qt.ConnectionType.QueuedConnection)
        loader = self._loader
        self.destroyed.connect(lambda *_: loader.stop())  # not self: its wrapper may be gone by then
        self._build()

    # --- construction ---
    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)

        header = QHBoxLayout()
        header.addWidget(QLabel("Sort"))
        self.sort_combo = QComboBox()
        for key, text in SORTS:
            self.sort_combo.addItem(text, key)
        self.sort_combo.currentIndexChanged.connect(self._on_sort_changed)
        header.addWidget(self.sort_combo)
        header.addSpacing(8)
        header.addWidget(QLabel("Show"))
        self.filter_combo = QComboBox()
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self._fill_filter_combo()
        self.filter_combo.currentIndexChanged.connect(self._on_filter_changed)
        header.addWidget(self.filter_combo)
        header.addSpacing(12)
        self.count_label = QLabel()
        header.addWidget(self.count_label)
        header.addStretch(1)
        self.summary_label = QLabel()
        self.summary_label.setStyleSheet("color: #b26a00;")
        self.summary_label.hide()
        header.addWidget(self.summary_label)
        header.addSpacing(12)
        self.accept_above_button = QPushButton("Accept all ≥")
        self.accept_above_button.clicked.connect(self._on_accept_above_clicked)
        header.addWidget(self.accept_above_button)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.5, 1.0)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setDecimals(2)
        # High on purpose: wrong labels accepted in bulk are no longer shown for review and teach the model
        # their mistake (README, "Labeling effort").
        self.threshold_spin.setValue(0.98)
        self.threshold_spin.valueChanged.connect(self._update_accept_tooltip)
        header.addWidget(self.threshold_spin)
        lay.addLayout(header)

        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)  # a long estimate wraps instead of widening the window
        self.estimate_label.hide()
        lay.addWidget(self.estimate_label)

        self.progress_row = QWidget()
        prow = QHBoxLayout(self.progress_row)
        prow.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        prow.addWidget(self.progress_bar, 1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelRequested)
        prow.addWidget(self.cancel_button)
        self.progress_row.hide()
        lay.addWidget(self.progress_row)

        self._model = _FolderModel(self)
        self._model.describe_error = self._errors.get
        self.grid = _Grid()
        self.grid.setModel(self._model)
        self.grid.setItemDelegate(_CellDelegate(self))
        self.grid.selectionModel().currentChanged.connect(self._on_selection_current_changed)
        self.grid.labelKeyPressed.connect(self._on_grid_label_key)
        self.grid.acceptKeyPressed.connect(self._on_grid_accept_key)
        self.grid.rejectKeyPressed.connect(self._on_grid_reject_key)
        self.grid.doubleClicked.connect(self._on_grid_double_clicked)
        self.grid.customContextMenuRequested.connect(self._on_grid_context_menu)

        self.panel = _ExplanationPanel()
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.grid)
        self.splitter.addWidget(self.panel)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setSizes([1000, _ExplanationPanel.PANEL_WIDTH])
        lay.addWidget(self.splitter, 1)
        self._update_counts()

    def _fill_filter_combo(self) -> None:
        combo = self.filter_combo
        previous = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for text, data in (("All images", ("all", "")), ("Unknown", ("unknown", "")),
                           ("Not confirmed", ("unconfirmed", "")), ("Confirmed", ("confirmed", ""))):
            combo.addItem(text, data)
        for c in self._classes:
            combo.addItem(_swatch(QColor(c.color)), f"Class: {c.name}", ("class", c.name))
        index = combo.findData(previous) if previous is not None else 0
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    # --- public API ---
    @property
    def thumbnail_loader(self) -> ThumbnailLoader:
        return self._loader

    def set_classes(self, classes: Sequence[ClassInfo]) -> None:
        """Class names, colours and keys: updates the filter combo and the 1-9 keys; repaints."""
        self._classes = tuple(classes)
        self._colors = {c.name: QColor(c.color) for c in self._classes}
        self._key_to_class = {c.key: c.name for c in self._classes if c.key}
        before = self.filter_combo.currentData()
        self._fill_filter_combo()
        if self.filter_combo.currentData() != before:  # the filtered class is gone
            self._rebuild()
        self.grid.viewport().update()
        self._refresh_panel_item()

    def set_items(self, items: Sequence[FolderItem]) -> None:
        """Replace the whole list; current item and selection are kept (by path) where they still exist."""
        items = list(items)
        n = len(items)
        paths = [it.path for it in items]
        if paths != self._paths:
            self._paths = paths
            self._name_order = None
            self._path_order = np.array(sorted(range(n), key=paths.__getitem__), dtype=np.int64)
        self._items = items
        self._conf = np.fromiter((it.confidence for it in items), np.float64, n)
        self._group = np.fromiter(
            (2 if not it.label else 1 if it.source == "confirmed" else 0 for it in items), np.int8, n)
        self._review = np.fromiter(
            (it.confidence if it.priority is None else it.priority for it in items), np.float64, n)
        self._review[self._group != 0] = self._conf[self._group != 0]  # priority orders what awaits review only
        self._unknown = np.fromiter((it.label == UNKNOWN_LABEL for it in items), bool, n)
        self._rebuild()
        self._refresh_panel_item()

    def items(self) -> list[FolderItem]:
        """The current items in display order (after sort and filter)."""
        return self._model.visible_items()

    def current_path(self) -> str | None:
        return self._current_path

    def select_path(self, path: str) -> bool:
        """Make `path` current, selected and visible; shows all images if a filter hides it. False if absent.

        The only way the filter changes without the user: moving on after a correction keeps it.
        """
        row = self._model.row_of(path)
        if row is None and path in set(self._paths) and self.filter_combo.currentIndex() != 0:
            self.filter_combo.setCurrentIndex(0)
            row = self._model.row_of(path)
        if row is None:
            return False
        index = self._model.index(row)
        self.grid.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.grid.ensure_visible(path)
        return True

    def set_progress(self, stage: str, done: int, total: int) -> None:
        """Show the progress row: '<stage> <done> / <total>' and a Cancel button."""
        bar = self.progress_bar
        if total > 0:
            bar.setRange(0, total)
            bar.setValue(min(done, total))
        else:
            bar.setRange(0, 0)  # unknown total: busy indicator
        bar.setFormat(f"{stage} {done} / {total}" if total > 0 else f"{stage} {done}")
        self.progress_row.show()

    def set_busy(self, busy: bool) -> None:
        """False hides the progress row; True shows it as a busy indicator if no progress is shown yet."""
        if not busy:
            self.progress_row.hide()
        elif not self.progress_row.isVisible():
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat("working…")
            self.progress_row.show()

    def set_summary(self, text: str) -> None:
        """A line such as '3 unreadable files skipped' in the header ('' hides it)."""
        self.summary_label.setText(text)
        self.summary_label.setVisible(bool(text))

    def set_estimate(self, text: str) -> None:
        """A line such as 'about 94% of 312 unreviewed labels right' above the grid ('' hides it)."""
        self.estimate_label.setText(text)
        self.estimate_label.setVisible(bool(text))

    def show_explanation(self, path: str, nearest: Sequence[tuple[ExampleInfo, float]]) -> None:
        """Show the nearest support examples (with similarity) of `path`; ignored unless it is the current image."""
        if path != self._current_path:
            return
        self._explained = path
        self.panel.set_examples(list(nearest), self._color_of)

    def explained_path(self) -> str | None:
        """The image whose explanation is on show (None before the first one)."""
        return getattr(self, "_explained", None)

    def shutdown(self) -> None:
        """Stop and join the thumbnail thread; the main window calls it before closing. Idempotent."""
        self._loader.stop()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    # --- ordering ---
    def _sort_key(self) -> str:
        return self.sort_combo.currentData()

    def _order(self) -> list[int]:
        """Indices into self._items in display order (numpy sorts: 100k items in a few ms)."""
        n = len(self._items)
        if n == 0:
            return []
        sort = self._sort_key()
        if sort == SORT_NAME:
            order = self._natural_order()
        else:
            # lexsort's last key is the primary one; the path-order rank breaks ties deterministically
            rank = np.empty(n, np.int64)
            rank[self._path_order] = np.arange(n)
            key = self._review if sort == SORT_LEAST else -self._conf
            order = np.lexsort((rank, key, self._group))
        mask = self._filter_mask()
        if mask is not None:
            order = order[mask[order]]
        return order.tolist()

    def _natural_order(self) -> np.ndarray:
        if self._name_order is None:  # ~0.12 s for 100k paths, once per folder
            keys = [_natural_key(p) for p in self._paths]
            self._name_order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        return self._name_order

    def _filter_mask(self) -> np.ndarray | None:
        kind, name = self.filter_combo.currentData() or ("all", "")
        items, n = self._items, len(self._items)
        if kind == "unknown":
            return self._unknown
        if kind == "unconfirmed":
            return self._group != 1
        if kind == "confirmed":
            return self._group == 1
        if kind == "class":
            return np.fromiter((it.label == name for it in items), bool, n)
        return None

    def _rebuild(self, keep_scroll: bool = True) -> None:
        """Re-sort and re-filter; keep current item, selection and what the user is looking at.

        The visible current image stays where it is on screen; otherwise the scroll position is kept
        (`keep_scroll`, for new data) or goes back to the top (a new sort or filter).
        """
        grid, model = self.grid, self._model
        handover, self._handover = self._handover, None
        old_current = self._current_path
        old_row = model.row_of(old_current) if old_current is not None else None
        later = model.paths_from(old_row) if old_row is not None else iter(())
        selected = self._selected_paths(include_current=False)
        anchor = grid.capture_anchor() if model.rowCount() else ("value", 0)
        if anchor[0] == "value" and not keep_scroll:
            anchor = ("value", 0)
        place = None  # (row, viewport y) of the first acted-on cell, for the successor of an intent
        if handover is not None and handover[1] == old_current and anchor[0] == "path":
            acted_row = model.row_of(handover[0])
            top = grid.visible_top(acted_row) if acted_row is not None else None
            place = (acted_row, top) if top is not None else None
        self._restoring = True
        try:
            relaid = model.set_rows(self._items, self._order())
            n = model.rowCount()
            new_row = model.row_of(old_current) if old_current is not None else None
            if new_row is None and old_row is not None and n:
                # the current image left the list: the next one still in it takes its place
                new_row = next((r for p in later if (r := model.row_of(p)) is not None), n - 1)
                if anchor[0] == "path":
                    anchor = ("path", model.path(new_row), anchor[2])
            elif place is not None and new_row == place[0]:
                anchor = ("path", old_current, place[1])
            sm = grid.selectionModel()
            selection = QItemSelection()
            rows = sorted(r for p in selected if (r := model.row_of(p)) is not None)
            for start, end in _runs(rows):
                selection.select(model.index(start), model.index(end))
            if new_row is not None and (old_current is None or model.path(new_row) != old_current):
                selection.select(model.index(new_row), model.index(new_row))
            sm.select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
            if new_row is not None:
                sm.setCurrentIndex(model.index(new_row), QItemSelectionModel.SelectionFlag.NoUpdate)
            elif sm.currentIndex().isValid():
                sm.clearCurrentIndex()
        finally:
            self._restoring = False
        if relaid or anchor != ("value", grid.verticalScrollBar().value()):
            grid.restore_anchor(anchor)
        new_current = model.path(new_row) if new_row is not None else None
        if new_current != old_current:
            self._set_current(new_current)
        self._update_counts()
        grid.viewport().update()

    def _update_counts(self) -> None:
        n = len(self._items)
        confirmed = int(np.count_nonzero(self._group == 1))
        unlabeled = int(np.count_nonzero(self._group == 2))
        unknown = int(np.count_nonzero(self._unknown))
        parts = [f"{n} image{'s' if n != 1 else ''}", f"{confirmed} confirmed", f"{unknown} unknown"]
        if unlabeled:
            parts.append(f"{unlabeled} not labeled yet")
        shown = self._model.rowCount()
        if shown != n:
            parts.append(f"{shown} shown")
        self.count_label.setText(" · ".join(parts))
        self._update_accept_tooltip()

    def _accept_above_outcome(self, t: float) -> tuple[int, int]:
        """(predicted labels "Accept all ≥ t" would confirm, how many of them are expected to be wrong)."""
        chosen = (self._group == 0) & ~self._unknown & (self._conf >= t - 1e-9)
        # a calibrated confidence p is wrong with probability 1 - p
        return int(np.count_nonzero(chosen)), round(float(np.sum(1.0 - self._conf[chosen])))

    def _update_accept_tooltip(self) -> None:
        t = self.threshold_spin.value()
        count, wrong = self._accept_above_outcome(t)
        if not count:
            text = f"no predicted labels ≥ {t:.2f}"
        else:
            text = (f"Confirm the {count} predicted label{'s' if count != 1 else ''} with confidence ≥ {t:.2f}; "
                    + _wrong_text(wrong))
        self.accept_above_button.setToolTip(text)

    # --- selection and current item ---
    def _selected_paths(self, include_current: bool = True) -> list[str]:
        """Selected paths in display order; the current one alone when nothing is selected."""
        # selection ranges, not selectedIndexes(): Ctrl+A on 100k images would make 100k index objects
        rows = sorted(r for rng in self.grid.selectionModel().selection()
                      for r in range(rng.top(), rng.bottom() + 1))
        if not rows and include_current:
            cur = self.grid.currentIndex()
            rows = [cur.row()] if cur.isValid() else []
        return [self._model.path(r) for r in rows]

    def _on_selection_current_changed(self, current: QModelIndex, previous: QModelIndex) -> None:
        if self._restoring:
            return
        path = self._model.path(current.row()) if current.isValid() else None
        if path != self._current_path:
            self._set_current(path)

    def _set_current(self, path: str | None) -> None:
        previous = self._current_path
        self._current_path = path
        if previous is not None:
            self._loader.cancel(previous, PREVIEW_SIDE)  # arrow-key browsing must not queue stale previews
        self._refresh_panel_item()
        self.panel.set_examples(None, self._color_of)
        if path is None:
            return
        self._request(path, PREVIEW_SIDE)
        self.panel.set_preview(self._preview_stand_in(path), self._errors.get(path, ""))
        self.currentChanged.emit(path)

    def _preview_stand_in(self, path: str) -> QPixmap | None:
        """The grid thumbnail scaled up, shown until the sharper preview is decoded."""
        entry = self._cache.get(path)
        if isinstance(entry, QPixmap):
            return entry.scaled(PREVIEW_SIDE, PREVIEW_SIDE, Qt.AspectRatioMode.KeepAspectRatio,
                                Qt.TransformationMode.SmoothTransformation)
        return None

    def _refresh_panel_item(self) -> None:
        path = self._current_path
        row = self._model.row_of(path) if path is not None else None
        self.panel.show_item(self._model.item(row) if row is not None else None, self._color_of)

    # --- intents ---
    def _assign(self, paths: list[str], name: str) -> None:
        if paths:
            self._act(paths, self.assignRequested, paths, name)

    def _accept(self, paths: list[str]) -> None:
        labeled = [p for p in paths if (r := self._model.row_of(p)) is not None and self._model.item(r).label]
        if labeled:
            self._act(paths, self.acceptRequested, labeled)
        else:
            self._go_to(self._next_path(paths))

    def _reject(self, paths: list[str]) -> None:
        if paths:
            self._act(paths, self.rejectRequested, paths)

    def _act(self, paths: list[str], signal: SignalInstance, *args: object) -> None:
        """Emit an intent about `paths` (display order), then move on to the image after them."""
        next_path = self._next_path(paths)
        self._handover = (paths[0], next_path) if next_path is not None else None
        signal.emit(*args)
        self._go_to(next_path)

    def _next_path(self, paths: list[str]) -> str | None:
        rows = [r for p in paths if (r := self._model.row_of(p)) is not None]
        if not rows or max(rows) + 1 >= self._model.rowCount():
            return None
        return self._model.path(max(rows) + 1)

    def _go_to(self, path: str | None) -> None:
        # By path, not row: the main window may already have called set_items from the signal. Never touches
        # the filter: only the program's select_path may show images the user chose to hide.
        row = self._model.row_of(path) if path is not None else None
        if row is None:
            return
        index = self._model.index(row)
        self.grid.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.grid.ensure_visible(path)

    def _on_grid_label_key(self, key: str) -> None:
        name = self._key_to_class.get(key)
        if name is not None:
            self._assign(self._selected_paths(), name)

    def _on_grid_accept_key(self) -> None:
        self._accept(self._selected_paths())

    def _on_grid_reject_key(self) -> None:
        self._reject(self._selected_paths())

    def _on_accept_above_clicked(self) -> None:
        t = self.threshold_spin.value()
        count, wrong = self._accept_above_outcome(t)
        if not count:
            QToolTip.showText(self.accept_above_button.mapToGlobal(QPoint(0, self.accept_above_button.height())),
                              self.accept_above_button.toolTip(), self.accept_above_button)
            return
        text = (f"Confirm {count} label{'s' if count != 1 else ''} with confidence ≥ {t:.2f}? "
                + _wrong_text(wrong).capitalize() + ". Wrong ones are then no longer shown for review.")
        if self._confirm_accept_above(text):
            self.acceptAboveRequested.emit(round(t, 4))

    def _confirm_accept_above(self, text: str) -> bool:
        """Ask before confirming many labels at once (tests replace this)."""
        answer = QMessageBox.question(self, "Accept all above a confidence", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Yes)
        return answer == QMessageBox.StandardButton.Yes

    def _on_grid_double_clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            self.openRequested.emit(self._model.path(index.row()))

    def _on_grid_context_menu(self, pos: QPoint) -> None:
        index = self.grid.indexAt(pos)
        if not index.isValid():
            return
        sm = self.grid.selectionModel()
        if not sm.isSelected(index):
            sm.setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        menu = self.context_menu(self._model.path(index.row()))
        menu.exec(self.grid.viewport().mapToGlobal(pos))
        menu.deleteLater()

    def context_menu(self, clicked_path: str) -> QMenu:
        """The right-click menu for the selection (`clicked_path` opens in the live view)."""
        paths = self._selected_paths() or [clicked_path]
        menu = QMenu(self)
        accept = menu.addAction("Accept")
        accept.triggered.connect(lambda: self._accept(paths))
        reject = menu.addAction("None of these classes\t0")
        reject.triggered.connect(lambda: self._reject(paths))
        assign = menu.addMenu("Assign to")
        for c in self._classes:
            action = QAction(_swatch(QColor(c.color)), c.name + (f"\t{c.key}" if c.key else ""), assign)
            action.triggered.connect(lambda _=False, name=c.name: self._assign(paths, name))
            assign.addAction(action)
        assign.setEnabled(bool(self._classes))
        menu.addSeparator()
        show = menu.addAction("Show in live view")
        show.triggered.connect(lambda: self.openRequested.emit(clicked_path))
        return menu

    def _on_sort_changed(self, _index: int) -> None:
        self._rebuild(keep_scroll=False)

    def _on_filter_changed(self, _index: int) -> None:
        self._rebuild(keep_scroll=False)

    # --- thumbnails ---
    def _color_of(self, label: str) -> QColor:
        return self._colors.get(label, _GREY)

    def _thumbnail(self, path: str) -> QPixmap | _Unreadable | None:
        """The cached thumbnail of `path`, or None after asking the loader for it (called from paint)."""
        entry = self._cache.get(path)
        if entry is None:
            if path in self._waiting:
                self._loader.bump(path, THUMBNAIL_SIDE)  # visible again: decode it before what scrolled away
            else:
                self._waiting.add(path)
                self._request(path, THUMBNAIL_SIDE)
        return entry

    def _request(self, path: str, side: int) -> None:
        dropped = self._loader.request(path, side)
        if dropped is not None and dropped[1] == THUMBNAIL_SIDE:
            self._waiting.discard(dropped[0])  # never arrives: the next paint asks again

    def _on_loader_thumbnail_ready(self, path: str, side: int, image: QImage, error: str) -> None:
        if error:
            self._errors[path] = error
        if side == PREVIEW_SIDE:
            if path == self._current_path:
                self.panel.set_preview(None if image.isNull() else QPixmap.fromImage(image), error)
            return
        self._waiting.discard(path)
        self._cache.put(path, _Unreadable(error) if image.isNull() else QPixmap.fromImage(image))
        self.grid.viewport().update()  # coalesced by Qt into one repaint per event-loop turn
        if path == self._current_path and self.panel.image.pixmap().isNull() and not error:
            self.panel.set_preview(self._preview_stand_in(path))


def _wrong_text(wrong: int) -> str:
    if wrong == 0:
        return "probably none of them is wrong"
    return f"about {wrong} of them {'is' if wrong == 1 else 'are'} probably wrong"


def _swatch(color: QColor, size: int = 12) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(color)
    return QIcon(pixmap)


def _natural_key(path: str) -> str:
    """'img2' before 'img10': digit runs are zero-padded so that they compare as numbers."""
    return _DIGITS.sub(_pad_digits, path.casefold())


def _pad_digits(match: re.Match) -> str:
    return match.group().rjust(20, "0")


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted rows -> (first, last) of each contiguous run."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and r == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], r)
        else:
            runs.append((r, r))
    return runs
