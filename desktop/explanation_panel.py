"""The explanation panel beside the folder grid: the current image larger, its label, top-3, nearest examples."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from .folder_grid import _GREY, _readable
from .state import ExampleInfo, FolderItem

PREVIEW_SIDE = 320  # px, longer side of the explanation panel's image as decoded; shown smaller in a narrow panel
PREVIEW_LEAST = 120  # px, the smallest the image is shown


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
        text.setWordWrap(True)  # a long class name wraps in a narrow panel
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


class _Preview(QLabel):
    """The current image, as large as the panel's width allows (up to its decoded size), aspect kept."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet("background: #e4e4e4;")
        policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)
        self.setMaximumWidth(PREVIEW_SIDE)

    def sizeHint(self) -> QSize:
        return QSize(PREVIEW_SIDE, PREVIEW_SIDE)

    def minimumSizeHint(self) -> QSize:
        return QSize(PREVIEW_LEAST, PREVIEW_LEAST)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return max(PREVIEW_LEAST, min(width, PREVIEW_SIDE))  # square: portrait and landscape look alike

    def paintEvent(self, event: QPaintEvent) -> None:
        pixmap = self.pixmap()
        if pixmap.isNull():
            super().paintEvent(event)  # the background, and "unreadable" where it is
            return
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#e4e4e4"))
        size = pixmap.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        if size.width() > pixmap.width():
            size = pixmap.size()  # never enlarged: a blurred thumbnail says less than a small one
        target = QRect(0, 0, size.width(), size.height())
        target.moveCenter(self.rect().center())
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawPixmap(target, pixmap)


class _ExplanationPanel(QFrame):
    """Right-hand panel: the current image larger, its label, top-3 and the most similar support examples."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        self._scroll = scroll
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
        self.image = _Preview()
        lay.addWidget(self.image, 0, Qt.AlignmentFlag.AlignHCenter)
        self.label_line = QLabel()
        self.label_line.setTextFormat(Qt.TextFormat.RichText)
        self.label_line.setWordWrap(True)
        lay.addWidget(self.label_line)
        self.topk = QLabel()
        self.topk.setTextFormat(Qt.TextFormat.RichText)
        self.topk.setWordWrap(True)
        lay.addWidget(self.topk)
        self.heading = QLabel("Most similar examples")
        self.heading.setFont(font)
        self.heading.setWordWrap(True)
        lay.addWidget(self.heading)
        self.examples_box = QVBoxLayout()
        self.examples_box.setSpacing(2)
        lay.addLayout(self.examples_box)
        self.examples_note = QLabel()
        self.examples_note.setStyleSheet("color: #757575;")
        self.examples_note.setWordWrap(True)
        lay.addWidget(self.examples_note)
        lay.addStretch(1)
        self.rows: list[_ExampleRow] = []
        self.show_item(None, lambda name: _GREY)

    def sizeHint(self) -> QSize:
        """As wide as the preview at its full size."""
        return QSize(self._width_around(PREVIEW_SIDE), 600)

    def minimumSizeHint(self) -> QSize:
        """The least preview: below that the panel would cut its contents."""
        return QSize(self._width_around(PREVIEW_LEAST), 120)

    def _width_around(self, preview: int) -> int:
        """The panel's width for a preview that wide: the margins, a scroll bar and the frame around it."""
        body = self._scroll.widget().layout().contentsMargins()
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        return preview + body.left() + body.right() + bar + 2 * self.frameWidth()

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
