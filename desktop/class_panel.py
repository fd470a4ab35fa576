"""The class panel: one card per class of the current task, with its support examples as thumbnails.

The panel keeps no model state. It renders the latest ``ModelSnapshot`` from the engine and emits intents
(``captureRequested``, ``renameClassRequested``, ...); the main window forwards them to the engine thread,
which answers with a new snapshot.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import QElapsedTimer, QMimeData, QPoint, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QFocusEvent,
    QIcon,
    QImage,
    QKeyEvent,
    QLinearGradient,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
    QPixmap,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from core import IMAGE_EXTENSIONS

from .state import UNKNOWN_LABEL, ClassInfo, ExampleInfo, ModelSnapshot

__all__ = ["EMPTY_HINT", "ClassCard", "ClassPanel", "thumbnail_pixmap", "usable_drop_paths"]

THUMB_SIZE = 56
_CELL = THUMB_SIZE + 6  # grid cell: room for the selection frame around a thumbnail
_MAX_ROWS = 2
# A press shorter than this is a click (one frame); longer is a hold (a burst of frames).
QUICK_CLICK_MS = 250
_RECORDING_RED = "#e53935"
_EXAMPLE_ID_ROLE = Qt.ItemDataRole.UserRole

EMPTY_HINT = ("Add a class, then hold its button (or its number key) to capture examples. "
              "You can also drop image files here.")


def usable_drop_paths(mime: QMimeData | None) -> list[str]:
    """Local image files (suffix in IMAGE_EXTENSIONS) and folders among dropped URLs, in drop order."""
    if mime is None or not mime.hasUrls():
        return []
    paths: list[str] = []
    for url in mime.urls():
        if not url.isLocalFile():
            continue
        path = Path(url.toLocalFile())
        if (path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()) or path.is_dir():
            paths.append(str(path))
    return paths


def thumbnail_pixmap(image: np.ndarray, size: int = THUMB_SIZE, device_pixel_ratio: float = 1.0) -> QPixmap:
    """(S, S, 3) RGB uint8 -> QPixmap that fits ``size`` logical pixels (aspect kept)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = np.ascontiguousarray(a[:, :, :3], dtype=np.uint8)
    h, w = a.shape[:2]
    # copy(): the QImage must not point into the numpy buffer once this function returns.
    qimage = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888).copy()
    pixels = max(1, round(size * device_pixel_ratio))
    if (w, h) != (pixels, pixels):
        qimage = qimage.scaled(pixels, pixels, Qt.AspectRatioMode.KeepAspectRatio,
                               Qt.TransformationMode.SmoothTransformation)
    pixmap = QPixmap.fromImage(qimage)
    pixmap.setDevicePixelRatio(device_pixel_ratio)
    return pixmap


def _color_icon(color: str, size: int = 12) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(color))
    painter.drawEllipse(1, 1, size - 2, size - 2)
    painter.end()
    return QIcon(pixmap)


def _count_text(n: int) -> str:
    return "no examples" if n == 0 else f"{n} example" if n == 1 else f"{n} examples"


class _NameLabel(QLabel):
    """A class name, elided to the space it has; double-click asks to rename."""

    doubleClicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(20)
        font = self.font()
        font.setBold(True)
        self.setFont(font)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = text
        self.setToolTip(f"{text}\nDouble-click to rename")
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width(), 20)))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.doubleClicked.emit()
        event.accept()


class _NameEditor(QLineEdit):
    """Inline editor for a class name: Escape cancels, losing focus commits (or cancels if invalid)."""

    cancelled = Signal()
    focusLost = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            self.cancelled.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:
        super().focusOutEvent(event)
        # A tooltip or a popup taking focus for a moment is not the user leaving the editor.
        if event.reason() not in (Qt.FocusReason.PopupFocusReason, Qt.FocusReason.ActiveWindowFocusReason):
            self.focusLost.emit()


class _ThumbnailStrip(QListWidget):
    """Wrapping grid of example thumbnails, newest first, at most two rows tall (then it scrolls)."""

    deleteRequested = Signal(list)  # example ids

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._ids: list[str] = []
        self._items: dict[str, QListWidgetItem] = {}
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        # Static also turns off IconMode's internal drag and drop, so file drops reach the card.
        self.setMovement(QListView.Movement.Static)
        self.setDragDropMode(QAbstractItemView.DragDropMode.NoDragDrop)
        self.setAcceptDrops(False)
        self.viewport().setAcceptDrops(False)
        self.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.setGridSize(QSize(_CELL, _CELL))
        self.setUniformItemSizes(True)
        self.setSpacing(0)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.Base, QColor(0, 0, 0, 0))
        self.setPalette(palette)
        self.viewport().setAutoFillBackground(False)
        self._update_height()

    def example_ids(self) -> list[str]:
        """Example ids in display order (newest first)."""
        return list(self._ids)

    def item_for(self, example_id: str) -> QListWidgetItem | None:
        return self._items.get(example_id)

    def set_examples(self, ids: Sequence[str], pixmap_for: Callable[[str], QPixmap]) -> None:
        """Show these example ids in this order; only items whose id is new or gone are touched."""
        ids = list(ids)
        if ids == self._ids:
            return
        wanted = set(ids)
        for row in range(self.count() - 1, -1, -1):
            example_id = self.item(row).data(_EXAMPLE_ID_ROLE)
            if example_id not in wanted:
                self.takeItem(row)
                self._items.pop(example_id, None)
        for row, example_id in enumerate(ids):
            item = self._items.get(example_id)
            if item is None:
                item = QListWidgetItem(QIcon(pixmap_for(example_id)), "")
                item.setData(_EXAMPLE_ID_ROLE, example_id)
                item.setSizeHint(QSize(_CELL, _CELL))
                self._items[example_id] = item
                self.insertItem(row, item)
            else:
                current = self.item(row)
                if current is None or current.data(_EXAMPLE_ID_ROLE) != example_id:
                    self.insertItem(row, self.takeItem(self.row(item)))
        self._ids = ids
        self._update_height()

    def selected_ids(self) -> list[str]:
        return [item.data(_EXAMPLE_ID_ROLE) for item in self.selectedItems()]

    def _update_height(self) -> None:
        n = self.count()
        per_row = max(1, (self.width() - 2 * self.frameWidth()) // _CELL)
        rows = min(_MAX_ROWS, max(1, math.ceil(n / per_row)))
        height = rows * _CELL + 2 * self.frameWidth() + 2
        if self.height() != height or self.minimumHeight() != height:
            self.setFixedHeight(height)
        self.setVisible(n > 0)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self._update_height()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.selectedItems():
            self.deleteRequested.emit(self.selected_ids())
            event.accept()
            return
        super().keyPressEvent(event)


class ClassCard(QFrame):
    """One class: swatch, key, name, example count, hold-to-capture button, menu and thumbnails.

    Built and updated by ``ClassPanel.set_snapshot``; its signals are forwarded by the panel.
    """

    renameRequested = Signal(str, str)
    removeRequested = Signal(str)
    captureRequested = Signal(str)
    burstRequested = Signal(str, bool)
    removeExampleRequested = Signal(str)
    moveExampleRequested = Signal(str, str)
    filesDropped = Signal(str, list)

    def __init__(self, info: ClassInfo, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("classCard")
        self.setAcceptDrops(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self._info: ClassInfo | None = None
        self._color = QColor(info.color)
        self._other_classes: tuple[tuple[str, str], ...] = ()
        self._highlighted = False
        self._recording = False
        self._drop_hover = False
        self._press_timer = QElapsedTimer()

        self.swatch = QLabel(self)
        self.swatch.setFixedSize(14, 14)
        self.key_badge = QLabel(self)
        self.key_badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.key_badge.setFixedSize(20, 20)
        self.key_badge.setStyleSheet(
            "QLabel { border: 1px solid palette(mid); border-radius: 4px; font-size: 11px; font-weight: 600;"
            " background: palette(button); }")
        self.name_label = _NameLabel(self)
        self.name_label.doubleClicked.connect(self.start_rename)
        self.name_editor = _NameEditor(self)
        self.name_editor.setVisible(False)
        self.name_editor.returnPressed.connect(self._on_editor_return)
        self.name_editor.cancelled.connect(self.cancel_rename)
        self.name_editor.focusLost.connect(self._on_editor_focus_lost)
        self.name_editor.textEdited.connect(self._on_editor_edited)
        self.menu_button = QToolButton(self)
        self.menu_button.setText("⋯")
        self.menu_button.setToolTip("Rename or remove this class")
        self.menu_button.setAutoRaise(True)
        self.menu_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu_button.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")
        menu = QMenu(self.menu_button)
        self.rename_action = menu.addAction("Rename…", self.start_rename)
        self.remove_action = menu.addAction("Remove class", self._on_remove_triggered)
        self.menu_button.setMenu(menu)

        self.count_label = QLabel(self)
        self.count_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.recording_label = QLabel("● recording", self)
        self.recording_label.setStyleSheet(f"color: {_RECORDING_RED}; font-weight: 600;")
        self.recording_label.setVisible(False)

        self.capture_button = QPushButton("Hold to capture", self)
        self.capture_button.setAutoDefault(False)
        self.capture_button.setMinimumHeight(28)
        self.capture_button.pressed.connect(self._on_capture_pressed)
        self.capture_button.released.connect(self._on_capture_released)
        self.capture_button.clicked.connect(self._on_capture_clicked)

        self.empty_label = QLabel("Hold the button to capture, or drop images here", self)
        self.empty_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_label.setWordWrap(True)
        small = self.empty_label.font()
        small.setPointSizeF(small.pointSizeF() * 0.9)
        self.empty_label.setFont(small)
        self.thumbnails = _ThumbnailStrip(self)
        self.thumbnails.customContextMenuRequested.connect(self._on_thumbnails_context_menu)
        self.thumbnails.deleteRequested.connect(self._on_thumbnails_delete)

        title = QHBoxLayout()
        title.setSpacing(6)
        title.addWidget(self.swatch)
        title.addWidget(self.key_badge)
        title.addWidget(self.name_label, 1)
        title.addWidget(self.name_editor, 1)
        title.addWidget(self.menu_button)
        status = QHBoxLayout()
        status.setSpacing(8)
        status.addWidget(self.count_label)
        status.addStretch(1)
        status.addWidget(self.recording_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 8, 8, 8)  # left margin leaves room for the colour edge
        layout.setSpacing(6)
        layout.addLayout(title)
        layout.addLayout(status)
        layout.addWidget(self.capture_button)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.thumbnails)
        self.set_info(info)

    # ------------------------------------------------------------------ rendering
    @property
    def name(self) -> str:
        return self._info.name if self._info else ""

    @property
    def count(self) -> int:
        return self._info.count if self._info else 0

    def set_info(self, info: ClassInfo) -> None:
        """Update name, colour, key and count; untouched widgets are left alone."""
        old = self._info
        self._info = info
        if old is None or old.name != info.name:
            self.name_label.set_full_text(info.name)
        if old is None or old.color != info.color:
            self._color = QColor(info.color)
            self.swatch.setStyleSheet(f"background: {info.color}; border-radius: 7px;")
            self.update()
        if old is None or old.key != info.key:
            self.key_badge.setText(info.key or "")
            self.key_badge.setVisible(bool(info.key))
            self._update_capture_tooltip()
        if old is None or old.count != info.count:
            self.count_label.setText(_count_text(info.count))
        if old is None or old.name != info.name:
            self._update_capture_tooltip()

    def set_examples(self, ids_newest_first: Sequence[str], pixmap_for: Callable[[str], QPixmap]) -> None:
        self.thumbnails.set_examples(ids_newest_first, pixmap_for)
        self.empty_label.setVisible(not ids_newest_first)

    def set_other_classes(self, classes: tuple[tuple[str, str], ...]) -> None:
        """(name, colour) of every class of the task, for the Move-to menu and rename checks."""
        self._other_classes = classes

    def example_ids(self) -> list[str]:
        """Example ids shown, newest first."""
        return self.thumbnails.example_ids()

    def set_capture_enabled(self, enabled: bool) -> None:
        if self.capture_button.isEnabled() != enabled:
            # Disabling a held button makes Qt emit released, which ends a burst.
            self.capture_button.setEnabled(enabled)
            self._update_capture_tooltip()

    def set_highlighted(self, on: bool) -> None:
        if on != self._highlighted:
            self._highlighted = on
            self.update()

    def set_recording(self, on: bool) -> None:
        if on != self._recording:
            self._recording = on
            self.recording_label.setVisible(on)
            self.update()

    def is_highlighted(self) -> bool:
        return self._highlighted

    def is_recording(self) -> bool:
        return self._recording

    def release_capture(self) -> None:
        """End a hold in progress (the card is going away): emit the release the user would have made."""
        if self.capture_button.isDown():
            self.capture_button.setDown(False)
            self.burstRequested.emit(self.name, False)

    def _update_capture_tooltip(self) -> None:
        if not self.capture_button.isEnabled():
            tip = "Open a camera or a video to capture examples"
        else:
            tip = f"Click to add the current picture to “{self.name}”; hold to record several per second"
            if self._info is not None and self._info.key:
                tip += f"\nKeyboard: hold {self._info.key}"
        self.capture_button.setToolTip(tip)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        radius = 6.0
        palette = self.palette()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(rect, radius, radius)
        if self._highlighted:
            glow = QLinearGradient(rect.left(), 0, rect.left() + rect.width() * 0.6, 0)
            start = QColor(self._color)
            start.setAlpha(110)
            end = QColor(self._color)
            end.setAlpha(0)
            glow.setColorAt(0.0, start)
            glow.setColorAt(1.0, end)
            painter.setBrush(glow)
            painter.drawRoundedRect(rect, radius, radius)
        # The colour edge: clip a rounded rect so the bar follows the card's corners.
        edge = 7 if self._highlighted else 4
        painter.save()
        painter.setClipRect(QRectF(rect.left(), rect.top(), edge, rect.height()))
        painter.setBrush(self._color)
        painter.drawRoundedRect(rect, radius, radius)
        painter.restore()
        if self._recording:
            pen = QPen(QColor(_RECORDING_RED), 2)
        elif self._drop_hover:
            pen = QPen(palette.color(QPalette.ColorRole.Highlight), 2, Qt.PenStyle.DashLine)
        elif self._highlighted:
            pen = QPen(self._color, 1.5)
        else:
            pen = QPen(palette.color(QPalette.ColorRole.Mid), 1)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        inset = pen.widthF() / 2
        painter.drawRoundedRect(rect.adjusted(inset, inset, -inset, -inset), radius, radius)
        painter.end()

    # ------------------------------------------------------------------ renaming
    def start_rename(self) -> None:
        """Swap the name for an inline editor."""
        self.name_editor.setText(self.name)
        self.name_editor.selectAll()
        self.name_editor.setStyleSheet("")
        self.name_label.setVisible(False)
        self.name_editor.setVisible(True)
        self.name_editor.setFocus(Qt.FocusReason.OtherFocusReason)

    def is_renaming(self) -> bool:
        return self.name_editor.isVisibleTo(self)

    def cancel_rename(self) -> None:
        self.name_editor.setVisible(False)
        self.name_label.setVisible(True)
        QToolTip.hideText()

    def rename_problem(self, new_name: str) -> str | None:
        """Why ``new_name`` can't be this class's name, or None when it can."""
        new_name = new_name.strip()
        if not new_name:
            return "A class needs a name."
        if new_name == UNKNOWN_LABEL:
            return f"“{UNKNOWN_LABEL}” is reserved for pictures that match no class."
        if new_name != self.name and any(name == new_name for name, _ in self._other_classes):
            return f"There is already a class called “{new_name}”."
        return None

    def commit_rename(self, new_name: str) -> bool:
        """Emit renameRequested(old, new) if the name is valid; else show why and emit nothing.

        Returns True when the rename was requested or the name is unchanged.
        """
        problem = self.rename_problem(new_name)
        if problem is not None:
            self.name_editor.setStyleSheet(f"QLineEdit {{ border: 1px solid {_RECORDING_RED}; }}")
            self.name_editor.setToolTip(problem)
            QToolTip.showText(self.name_editor.mapToGlobal(QPoint(0, self.name_editor.height())), problem,
                              self.name_editor)
            return False
        new_name = new_name.strip()
        self.cancel_rename()
        if new_name != self.name:
            self.renameRequested.emit(self.name, new_name)
        return True

    def _on_editor_return(self) -> None:
        self.commit_rename(self.name_editor.text())

    def _on_editor_focus_lost(self) -> None:
        if self.is_renaming() and not self.commit_rename(self.name_editor.text()):
            self.cancel_rename()

    def _on_editor_edited(self, text: str) -> None:
        problem = self.rename_problem(text)
        self.name_editor.setStyleSheet(
            "" if problem is None else f"QLineEdit {{ border: 1px solid {_RECORDING_RED}; }}")
        self.name_editor.setToolTip(problem or "")

    # ------------------------------------------------------------------ actions
    def _on_remove_triggered(self) -> None:
        self.removeRequested.emit(self.name)

    def _on_capture_pressed(self) -> None:
        self._press_timer.start()
        self.burstRequested.emit(self.name, True)

    def _on_capture_released(self) -> None:
        self.burstRequested.emit(self.name, False)

    def _on_capture_clicked(self) -> None:
        if not self._press_timer.isValid() or self._press_timer.elapsed() < QUICK_CLICK_MS:
            self.captureRequested.emit(self.name)
        self._press_timer.invalidate()

    def thumbnail_menu(self, example_id: str) -> QMenu:
        """Context menu for one thumbnail (acting on the whole selection when it is part of it)."""
        selected = self.thumbnails.selected_ids()
        ids = selected if example_id in selected else [example_id]
        menu = QMenu(self)
        label = "Remove example" if len(ids) == 1 else f"Remove {len(ids)} examples"
        remove = menu.addAction(label)
        remove.triggered.connect(lambda: self._remove_examples(ids))
        move = menu.addMenu("Move to")
        targets = [(name, color) for name, color in self._other_classes if name != self.name]
        for name, color in targets:
            action = move.addAction(_color_icon(color), name)
            action.triggered.connect(lambda _=False, target=name: self._move_examples(ids, target))
        move.setEnabled(bool(targets))
        return menu

    def _remove_examples(self, ids: Iterable[str]) -> None:
        for example_id in ids:
            self.removeExampleRequested.emit(example_id)

    def _move_examples(self, ids: Iterable[str], target: str) -> None:
        for example_id in ids:
            self.moveExampleRequested.emit(example_id, target)

    def _on_thumbnails_context_menu(self, pos: QPoint) -> None:
        item = self.thumbnails.itemAt(pos)
        if item is None:
            return
        menu = self.thumbnail_menu(item.data(_EXAMPLE_ID_ROLE))
        menu.exec(self.thumbnails.viewport().mapToGlobal(pos))
        menu.deleteLater()

    def _on_thumbnails_delete(self, ids: list) -> None:
        self._remove_examples(ids)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if usable_drop_paths(event.mimeData()):
            event.acceptProposedAction()
            self._drop_hover = True
            self.update()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        event.acceptProposedAction()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self._drop_hover = False
        self.update()

    def dropEvent(self, event: QDropEvent) -> None:
        self._drop_hover = False
        self.update()
        paths = usable_drop_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.filesDropped.emit(self.name, paths)


class ClassPanel(QWidget):
    """Right-hand panel: the classes of the current task as cards, rendered from ``ModelSnapshot``s.

    Keeps no model state: every user action is emitted as an intent for the engine.
    """

    addClassRequested = Signal(str)
    renameClassRequested = Signal(str, str)
    removeClassRequested = Signal(str)
    captureRequested = Signal(str)
    burstRequested = Signal(str, bool)
    removeExampleRequested = Signal(str)
    moveExampleRequested = Signal(str, str)
    filesDropped = Signal(str, list)
    importTreeRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.confirm_removals: bool = True
        self._snapshot: ModelSnapshot | None = None
        self._cards: dict[str, ClassCard] = {}
        self._order: list[str] = []
        self._pixmaps: dict[str, QPixmap] = {}
        self._capture_enabled = False
        self._highlight: str | None = None
        self._recording: str | None = None
        self.setAcceptDrops(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setMinimumWidth(220)

        title = QLabel("Classes", self)
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        title.setFont(font)
        self.add_button = QPushButton("+ Add class", self)
        self.add_button.setToolTip("Add a new class")
        self.add_button.clicked.connect(self._on_add_clicked)
        self.import_button = QPushButton("Import folder of classes…", self)
        self.import_button.setToolTip("Pick a folder with one subfolder of images per class")
        self.import_button.clicked.connect(self.importTreeRequested)

        self.hint_label = QLabel(EMPTY_HINT, self)
        self.hint_label.setWordWrap(True)
        self.hint_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.hint_label.setStyleSheet(
            "QLabel { border: 1px dashed palette(mid); border-radius: 8px; padding: 24px 16px; }")

        self._container = QWidget()
        self._cards_layout = QVBoxLayout(self._container)
        self._cards_layout.setContentsMargins(0, 0, 4, 0)
        self._cards_layout.setSpacing(8)
        self._cards_layout.addWidget(self.hint_label)
        self._cards_layout.addStretch(1)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self._container)

        header = QHBoxLayout()
        header.addWidget(title)
        header.addStretch(1)
        header.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(8)
        layout.addLayout(header)
        layout.addWidget(self.import_button)
        layout.addWidget(self.scroll_area, 1)

    def sizeHint(self) -> QSize:
        # three example thumbnails a row, and an 800 px window still leaves the folder grid two columns
        return QSize(264, 600)

    # ------------------------------------------------------------------ queries (tests, main window)
    def cards(self) -> list[ClassCard]:
        """Cards in display order."""
        return [self._cards[name] for name in self._order]

    def card(self, name: str) -> ClassCard | None:
        return self._cards.get(name)

    def snapshot(self) -> ModelSnapshot | None:
        """The snapshot on screen."""
        return self._snapshot

    def next_class_name(self) -> str:
        """'Class N' for the first N from the number of classes + 1 that no class uses."""
        used = set(self._order)
        n = len(used) + 1
        while f"Class {n}" in used:
            n += 1
        return f"Class {n}"

    # ------------------------------------------------------------------ rendering
    def set_snapshot(self, snapshot: ModelSnapshot) -> None:
        """Render ``snapshot``: cards are reused by class name, thumbnails by example id."""
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        names = [c.name for c in snapshot.classes]
        by_class: dict[str, list[ExampleInfo]] = {name: [] for name in names}
        for example in snapshot.examples:
            bucket = by_class.get(example.class_name)
            if bucket is not None:
                bucket.append(example)
        live_ids = {e.id for e in snapshot.examples}
        thumbnails = {e.id: e.thumbnail for e in snapshot.examples}
        ratio = self.devicePixelRatioF()

        def pixmap_for(example_id: str) -> QPixmap:
            pixmap = self._pixmaps.get(example_id)
            if pixmap is None:
                pixmap = self._pixmaps[example_id] = thumbnail_pixmap(thumbnails[example_id], THUMB_SIZE, ratio)
            return pixmap

        for name in [n for n in self._cards if n not in by_class]:
            self._drop_card(name)
        palette = tuple((c.name, c.color) for c in snapshot.classes)
        new_cards: list[ClassCard] = []
        for info in snapshot.classes:
            card = self._cards.get(info.name)
            if card is None:
                card = self._cards[info.name] = self._new_card(info)
                new_cards.append(card)
            else:
                card.set_info(info)
            card.set_other_classes(palette)
            # Snapshots list examples oldest first; the newest is shown first.
            card.set_examples([e.id for e in reversed(by_class[info.name])], pixmap_for)
        if names != self._order:
            for name in names:
                self._cards_layout.removeWidget(self._cards[name])
            for i, name in enumerate(names):
                self._cards_layout.insertWidget(1 + i, self._cards[name])
            self._order = names
        for card in new_cards:
            # A layout shows added widgets only on the next event-loop pass; show now so the panel is
            # complete when set_snapshot returns.
            card.show()
        for example_id in [k for k in self._pixmaps if k not in live_ids]:
            del self._pixmaps[example_id]
        self.hint_label.setVisible(not names)

    def _new_card(self, info: ClassInfo) -> ClassCard:
        card = ClassCard(info, self._container)
        card.renameRequested.connect(self.renameClassRequested)
        card.removeRequested.connect(self._on_card_remove_requested)
        card.captureRequested.connect(self.captureRequested)
        card.burstRequested.connect(self.burstRequested)
        card.removeExampleRequested.connect(self.removeExampleRequested)
        card.moveExampleRequested.connect(self.moveExampleRequested)
        card.filesDropped.connect(self.filesDropped)
        card.set_capture_enabled(self._capture_enabled)
        card.set_highlighted(info.name == self._highlight)
        card.set_recording(info.name == self._recording)
        return card

    def _drop_card(self, name: str) -> None:
        card = self._cards.pop(name)
        card.release_capture()
        self._cards_layout.removeWidget(card)
        card.hide()
        card.deleteLater()
        if name in self._order:
            self._order.remove(name)

    def set_capture_enabled(self, enabled: bool) -> None:
        """Capture buttons work only while there is a live picture to capture."""
        self._capture_enabled = enabled
        for card in self._cards.values():
            card.set_capture_enabled(enabled)

    def set_highlight(self, class_name: str | None) -> None:
        """Mark the class predicted for the current frame (None: no class). Cheap when unchanged."""
        if class_name == self._highlight:
            return
        for name in (self._highlight, class_name):
            card = self._cards.get(name) if name is not None else None
            if card is not None:
                card.set_highlighted(name == class_name)
        self._highlight = class_name

    def set_recording(self, class_name: str | None) -> None:
        """Show which class a hold-to-capture burst is recording into (None: none)."""
        if class_name == self._recording:
            return
        for name in (self._recording, class_name):
            card = self._cards.get(name) if name is not None else None
            if card is not None:
                card.set_recording(name == class_name)
        self._recording = class_name

    # ------------------------------------------------------------------ intents
    def _on_add_clicked(self) -> None:
        self.addClassRequested.emit(self.next_class_name())

    def _on_card_remove_requested(self, name: str) -> None:
        card = self._cards.get(name)
        count = card.count if card is not None else 0
        if count and self.confirm_removals:
            answer = QMessageBox.question(
                self, "Remove class",
                f"Remove the class “{name}” and its {_count_text(count)}? (Edit > Undo brings them back.)",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.removeClassRequested.emit(name)

    # ------------------------------------------------------------------ drops outside any card
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if usable_drop_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        """Files dropped beside the cards have no class: the main window decides (e.g. from folder names)."""
        paths = usable_drop_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.filesDropped.emit("", paths)
