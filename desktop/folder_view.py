"""The folder-labeling screen: a grid of a folder's images with predicted labels, reviewed least-confident first.

The widget keeps no labels of its own: the main window hands it `FolderItem` snapshots with `set_items` and turns
its intents (`assignRequested`, `acceptRequested`, ...) into engine calls. Thumbnails are decoded by one background
thread (`ThumbnailLoader`) and reach the UI thread as QImages through a queued signal.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import (
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QPoint,
    QRect,
    QSettings,
    QSize,
    Qt,
    Signal,
    SignalInstance,
)
from PySide6.QtGui import QAction, QCloseEvent, QColor, QIcon, QImage, QPainter, QPaintEvent, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLayoutItem,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QToolTip,
    QVBoxLayout,
    QWidget,
    QWidgetItem,
)

from core import UNKNOWN_LABEL

from .explanation_panel import PREVIEW_SIDE, _ExplanationPanel
from .folder_grid import _GREY, _CellDelegate, _FolderModel, _Grid
from .state import ClassInfo, ExampleInfo, FolderItem
from .thumbnails import THUMBNAIL_SIDE, ThumbnailLoader, _ThumbnailCache, _Unreadable, decode_thumbnail

__all__ = ["PREVIEW_SIDE", "THUMBNAIL_SIDE", "FolderView", "ThumbnailLoader", "decode_thumbnail"]

SORT_LEAST, SORT_MOST, SORT_NAME = "least", "most", "name"
SORTS = ((SORT_LEAST, "Least confident first"), (SORT_MOST, "Most confident first"), (SORT_NAME, "File name"))

_DIGITS = re.compile(r"\d+")
PANEL_WIDTH_KEY = "folder/panel_width"  # QSettings key: the explanation panel's width as the user left it
PANEL_SHARE = 0.3  # the explanation panel's default part of the width, up to the width of its full-size preview
GRID_COLUMNS_KEPT = 2  # a narrow window narrows the explanation panel before the grid drops below this


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

    def __init__(self, parent: QWidget | None = None, settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self._settings = settings  # where the explanation panel's width is remembered (None: nowhere)
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

        # The header wraps onto more lines where the view is narrow (an 800 x 600 window) instead of widening it.
        header = _FlowLayout(spacing=(8, 4))
        self.sort_combo = QComboBox()
        for key, text in SORTS:
            self.sort_combo.addItem(text, key)
        self.sort_combo.currentIndexChanged.connect(self._on_sort_changed)
        header.addWidget(_labeled("Sort", self.sort_combo))
        self.filter_combo = QComboBox()
        self.filter_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.filter_combo.setMaximumWidth(240)  # a long class name is cut rather than widening the header
        self._fill_filter_combo()
        self.filter_combo.currentIndexChanged.connect(self._on_filter_changed)
        header.addWidget(_labeled("Show", self.filter_combo))
        self.count_label = _ElidedLabel()
        header.addWidget(self.count_label)
        header.set_elastic(self.count_label, 0.6)  # a little cut off rather than a line of its own
        self.summary_label = QLabel()
        self.summary_label.setStyleSheet("color: #b26a00;")
        self.summary_label.hide()
        header.addWidget(self.summary_label)
        self.accept_above_button = QPushButton("Accept all ≥")
        self.accept_above_button.clicked.connect(self._on_accept_above_clicked)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.5, 1.0)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setDecimals(2)
        # High on purpose: wrong labels accepted in bulk are no longer shown for review and teach the model
        # their mistake (README, "Labeling effort").
        self.threshold_spin.setValue(0.98)
        self.threshold_spin.valueChanged.connect(self._update_accept_tooltip)
        accept = _labeled(self.accept_above_button, self.threshold_spin)
        header.addWidget(accept)
        header.align_right(accept)
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
        self.splitter.setStretchFactor(0, 1)  # a wider window widens the grid; the panel keeps its width
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setCollapsible(0, False)
        self.splitter.setCollapsible(1, False)
        self.splitter.splitterMoved.connect(self._on_splitter_moved)
        self._panel_width = 0  # the width the user dragged the panel to (0: not yet, or not remembered)
        if self._settings is not None:
            self._panel_width = self._settings.value(PANEL_WIDTH_KEY, 0, int)
        lay.addWidget(self.splitter, 1)
        self._update_counts()

    # --- splitter ---
    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)  # the layout has resized the splitter already
        self._fit_panel()

    def _fit_panel(self) -> None:
        """The explanation panel at the user's width (else PANEL_SHARE of the width), narrower where the grid
        would otherwise show fewer than GRID_COLUMNS_KEPT columns."""
        total = self.splitter.width() - self.splitter.handleWidth()
        if total <= 0:
            return
        # by default the smaller part of the width: the grid is what the user works in
        wanted = self._panel_width or min(self.panel.sizeHint().width(), int(total * PANEL_SHARE))
        least = self.panel.minimumSizeHint().width()
        width = max(least, min(wanted, total - self.grid.width_for_columns(GRID_COLUMNS_KEPT)))
        if not self._panel_width:
            # the grid keeps whole columns: what would only widen its cells goes to the panel, up to full size
            columns = self.grid.columns_at(total - width)
            width = max(width, min(self.panel.sizeHint().width(), total - self.grid.width_for_columns(columns)))
        width = min(width, total - self.grid.minimumWidth())
        if self.splitter.sizes()[1] != width:
            self.splitter.setSizes([total - width, width])

    def _on_splitter_moved(self, _pos: int, _index: int) -> None:
        self._panel_width = self.panel.width()
        if self._settings is not None:
            self._settings.setValue(PANEL_WIDTH_KEY, self._panel_width)

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


def _labeled(label: str | QWidget, widget: QWidget) -> QWidget:
    """`label` (text or a widget) and `widget` side by side, kept together when the header wraps."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.setSpacing(4)
    lay.addWidget(QLabel(label) if isinstance(label, str) else label)
    lay.addWidget(widget)
    return box


class _FlowLayout(QLayout):
    """Items left to right at their size hints, wrapping onto the next line where the width ends (as words in
    a paragraph). Items marked `align_right` go to the right end of their line; the one `elastic` item may
    narrow down to a part of its width to stay on its line, and takes what its line leaves over."""

    def __init__(self, parent: QWidget | None = None, spacing: tuple[int, int] = (6, 6)) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._right: set[int] = set()  # ids of the widgets aligned right
        self._elastic: tuple[int, float] | None = None  # (id of the widget, least part of its width)
        self._hspace, self._vspace = spacing

    def addItem(self, item: QLayoutItem) -> None:
        self._items.append(item)

    def addWidget(self, widget: QWidget) -> None:  # type: ignore[override]
        self.addChildWidget(widget)
        self.addItem(QWidgetItem(widget))
        self.invalidate()

    def align_right(self, widget: QWidget) -> None:
        self._right.add(id(widget))
        self.invalidate()

    def set_elastic(self, widget: QWidget, least: float) -> None:
        self._elastic = (id(widget), least)
        self.invalidate()

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._place(QRect(0, 0, width, 0), move=False)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._place(rect, move=True)

    def sizeHint(self) -> QSize:
        """Everything on one line."""
        shown = self._shown()
        m = self.contentsMargins()
        width = sum(i.sizeHint().width() for i in shown) + self._hspace * max(0, len(shown) - 1)
        height = max((i.sizeHint().height() for i in shown), default=0)
        return QSize(width + m.left() + m.right(), height + m.top() + m.bottom())

    def minimumSize(self) -> QSize:
        """The widest item: one item a line."""
        m = self.contentsMargins()
        width = max((self._least(i) for i in self._shown()), default=0) + m.left() + m.right()
        return QSize(width, self.heightForWidth(width))

    def _shown(self) -> list[QLayoutItem]:
        return [i for i in self._items if not i.isEmpty()]

    def _least(self, item: QLayoutItem) -> int:
        width = item.sizeHint().width()
        if self._elastic is not None and id(item.widget()) == self._elastic[0]:
            return max(item.minimumSize().width(), int(width * self._elastic[1]))
        return width

    def _place(self, rect: QRect, move: bool) -> int:
        """Lay the items out in `rect` (only measure unless `move`); returns the height they take."""
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        shown = self._shown()
        lines = self._lines(shown, [i.sizeHint().width() for i in shown], area.width())
        narrowed = self._lines(shown, [self._least(i) for i in shown], area.width())
        if len(narrowed) < len(lines):  # the elastic item narrows only where that saves a line
            lines = narrowed
        y = area.y()
        for line in lines:
            height = max((i.sizeHint().height() for i in line), default=0)
            if move:
                self._move_line(line, area, y, height)
            y += height + self._vspace
        return y - self._vspace - rect.y() + m.bottom() if lines[0] else m.top() + m.bottom()

    def _lines(self, items: list[QLayoutItem], widths: list[int], room: int) -> list[list[QLayoutItem]]:
        """`items` of these widths broken into lines of at most `room`, greedily."""
        lines: list[list[QLayoutItem]] = [[]]
        used = 0
        for item, w in zip(items, widths, strict=True):
            if lines[-1] and used + self._hspace + w > room:
                lines.append([])
                used = 0
            used += (self._hspace if lines[-1] else 0) + w
            lines[-1].append(item)
        return lines

    def _move_line(self, line: list[QLayoutItem], area: QRect, y: int, height: int) -> None:
        widths = [i.sizeHint().width() for i in line]
        free = area.width() - sum(widths) - self._hspace * (len(line) - 1)
        for k, item in enumerate(line):
            if free < 0 and self._elastic is not None and id(item.widget()) == self._elastic[0]:
                widths[k] = max(self._least(item), widths[k] + free)  # it gives what the line lacks
        left = [(i, w) for i, w in zip(line, widths, strict=True) if id(i.widget()) not in self._right]
        right = [(i, w) for i, w in zip(line, widths, strict=True) if id(i.widget()) in self._right]
        x = area.x()
        for item, w in left:
            h = item.sizeHint().height()
            item.setGeometry(QRect(x, y + (height - h) // 2, min(w, area.right() + 1 - x), h))
            x += w + self._hspace
        x = area.right() + 1
        for item, w in reversed(right):
            h = item.sizeHint().height()
            x = max(area.x(), x - w)
            item.setGeometry(QRect(x, y + (height - h) // 2, w, h))
            x -= self._hspace


class _ElidedLabel(QLabel):
    """A one-line label that shows as much of its text as it has room for, the whole in its tooltip."""

    def minimumSizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance("…") * 4, super().minimumSizeHint().height())

    def setText(self, text: str) -> None:  # type: ignore[override]
        super().setText(text)
        self._update_tooltip()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._update_tooltip()

    def _shown_text(self) -> str:
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())

    def _update_tooltip(self) -> None:
        self.setToolTip(self.text() if self._shown_text() != self.text() else "")

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        self.style().drawItemText(painter, self.contentsRect(), int(self.alignment()), self.palette(),
                                  self.isEnabled(), self._shown_text(), self.foregroundRole())


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
