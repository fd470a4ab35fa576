"""The live view: the latest frame with the prediction drawn over it, and a region of interest to drag."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QMenu, QWidget

from core import Frame

from .state import UNKNOWN_LABEL, LivePrediction, ModelSnapshot

HINT = ("Pick a source in the toolbar: Camera, Video or Image folder.\n"
        "Then add a class and hold its button (or its number key) to capture examples.")


def to_qimage(image: np.ndarray) -> QImage:
    """RGB uint8 (H, W, 3) -> QImage sharing the array's memory (keep the array alive as long as the QImage)."""
    a = np.ascontiguousarray(image)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888)


class LiveView(QWidget):
    """Paints the frame scaled to fit, then the overlay: class in its colour, confidence bar, top-3,
    "unknown" as such, frames per second and latency. Drag with the left button to set a region of interest
    (predictions and captures use it); right-click offers "This is <class>" and "Clear region"."""

    roiChanged = Signal(object)  # (x0, y0, x1, y1) in frame pixels, or None
    captureRequested = Signal(str)  # class name: the right-click correction

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(360, 240)  # room for the prediction box (300 px) beside the margins
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(False)
        self._frame: Frame | None = None
        self._qimage: QImage | None = None
        self._array: np.ndarray | None = None  # keeps the QImage's memory alive
        self._prediction: LivePrediction | None = None
        self._snapshot = ModelSnapshot(0)
        self._roi: tuple[int, int, int, int] | None = None
        self._drag_start: QPointF | None = None
        self._drag_now: QPointF | None = None
        self.source_fps = 0.0
        self.model_fps = 0.0
        self.status = ""  # e.g. "fine-tuning…", drawn top-right
        self.hint = HINT

    # ------------------------------------------------------------------ data in
    def set_frame(self, frame: Frame | None) -> None:
        self._frame = frame
        if frame is None:
            self._array = self._qimage = None
        else:
            self._array = np.ascontiguousarray(frame.image)
            self._qimage = to_qimage(self._array)
        self.update()

    def frame(self) -> Frame | None:
        return self._frame

    def set_prediction(self, prediction: LivePrediction | None) -> None:
        self._prediction = prediction
        self.update()

    def prediction(self) -> LivePrediction | None:
        return self._prediction

    def set_snapshot(self, snapshot: ModelSnapshot) -> None:
        self._snapshot = snapshot
        self.update()

    def roi(self) -> tuple[int, int, int, int] | None:
        return self._roi

    def set_roi(self, roi: tuple[int, int, int, int] | None) -> None:
        self._roi = roi
        self.update()
        self.roiChanged.emit(roi)

    # ------------------------------------------------------------------ geometry
    def _image_rect(self) -> QRectF:
        if self._qimage is None:
            return QRectF()
        w, h = self._qimage.width(), self._qimage.height()
        scale = min(self.width() / w, self.height() / h)
        dw, dh = w * scale, h * scale
        return QRectF((self.width() - dw) / 2, (self.height() - dh) / 2, dw, dh)

    def _to_frame(self, p: QPointF) -> tuple[float, float]:
        r = self._image_rect()
        w, h = self._qimage.width(), self._qimage.height()
        x = (p.x() - r.x()) / r.width() * w
        y = (p.y() - r.y()) / r.height() * h
        return min(max(x, 0.0), w), min(max(y, 0.0), h)

    def _to_widget(self, roi: tuple[int, int, int, int]) -> QRectF:
        r = self._image_rect()
        w, h = self._qimage.width(), self._qimage.height()
        sx, sy = r.width() / w, r.height() / h
        return QRectF(r.x() + roi[0] * sx, r.y() + roi[1] * sy, (roi[2] - roi[0]) * sx, (roi[3] - roi[1]) * sy)

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self._qimage is not None:
            self._drag_start = self._drag_now = event.position()
            self.update()
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag_start is not None:
            self._drag_now = event.position()
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._drag_start is None or event.button() != Qt.MouseButton.LeftButton:
            return super().mouseReleaseEvent(event)
        (x0, y0), (x1, y1) = self._to_frame(self._drag_start), self._to_frame(event.position())
        self._drag_start = self._drag_now = None
        if abs(x1 - x0) >= 8 and abs(y1 - y0) >= 8:  # a click is not a region
            self.set_roi((int(min(x0, x1)), int(min(y0, y1)), int(max(x0, x1)), int(max(y0, y1))))
        self.update()

    def contextMenuEvent(self, event) -> None:
        menu = QMenu(self)
        if self._frame is not None:
            for c in self._snapshot.classes:
                act = menu.addAction(f"This is “{c.name}” (add as example)")
                act.triggered.connect(lambda _=False, n=c.name: self.captureRequested.emit(n))
        if self._roi is not None:
            menu.addSeparator()
            menu.addAction("Clear region").triggered.connect(lambda: self.set_roi(None))
        if not menu.isEmpty():
            menu.exec(event.globalPos())

    # ------------------------------------------------------------------ painting
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e1f22"))
        if self._qimage is None:
            p.setPen(QColor("#c8c8c8"))
            f = QFont(self.font())
            f.setPointSizeF(f.pointSizeF() * 1.2)
            p.setFont(f)
            p.drawText(self.rect().adjusted(40, 40, -40, -40), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self.hint)
            self._draw_status(p)
            return
        target = self._image_rect()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, target.width() < self._qimage.width())
        p.drawImage(target, self._qimage)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        self._draw_roi(p)
        self._draw_prediction(p)
        self._draw_stats(p)
        self._draw_status(p)

    def _draw_roi(self, p: QPainter) -> None:
        rect = None
        if self._drag_start is not None and self._drag_now is not None:
            rect = QRectF(self._drag_start, self._drag_now).normalized()
        elif self._roi is not None:
            rect = self._to_widget(self._roi)
        if rect is None:
            return
        pred = self._prediction
        color = QColor(self._snapshot.color_of(pred.label)) if pred is not None and self._roi else QColor("#ffffff")
        p.setPen(QPen(color, 2, Qt.PenStyle.DashLine))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(rect)

    def _draw_prediction(self, p: QPainter) -> None:
        pred = self._prediction
        if pred is None:
            if not self._snapshot.classes or not any(c.count for c in self._snapshot.classes):
                self._banner(p, "No examples yet: hold a class's button or number key to capture some.")
            return
        unknown = pred.label == UNKNOWN_LABEL
        color = QColor("#9e9e9e") if unknown else QColor(self._snapshot.color_of(pred.label))
        box = QRectF(16, 16, 300, 64 + 20 * max(0, len(pred.topk) - 1))
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(20, 20, 20, 190))
        p.drawRoundedRect(box, 8, 8)
        p.setBrush(color)
        p.drawRoundedRect(QRectF(box.x(), box.y(), 8, box.height()), 4, 4)
        big = QFont(self.font())
        big.setPointSizeF(big.pointSizeF() * 1.6)
        big.setBold(True)
        p.setFont(big)
        p.setPen(color.lighter(130) if not unknown else QColor("#dddddd"))
        title = "unknown" if unknown else pred.label
        p.drawText(QRectF(box.x() + 18, box.y() + 6, box.width() - 90, 30), Qt.AlignmentFlag.AlignVCenter, title)
        p.setFont(self.font())
        p.setPen(QColor("#ffffff"))
        p.drawText(QRectF(box.right() - 80, box.y() + 6, 70, 30),
                   Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, f"{pred.confidence:.0%}")
        bar = QRectF(box.x() + 18, box.y() + 40, box.width() - 30, 8)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(255, 255, 255, 50))
        p.drawRoundedRect(bar, 4, 4)
        p.setBrush(color)
        p.drawRoundedRect(QRectF(bar.x(), bar.y(), bar.width() * max(0.0, min(1.0, pred.confidence)), bar.height()),
                          4, 4)
        y = box.y() + 54
        for name, prob in pred.topk[1:]:
            p.setPen(QColor(self._snapshot.color_of(name)).lighter(130))
            p.drawText(QRectF(box.x() + 18, y, box.width() - 90, 18), Qt.AlignmentFlag.AlignVCenter, name)
            p.setPen(QColor("#cccccc"))
            p.drawText(QRectF(box.right() - 80, y, 70, 18),
                       Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, f"{prob:.0%}")
            y += 20
        if unknown and pred.topk:
            p.setPen(QColor("#bbbbbb"))
            p.drawText(QRectF(box.x() + 18, box.bottom() - 2, box.width(), 18), Qt.AlignmentFlag.AlignVCenter,
                       f"closest: {pred.topk[0][0]} (similarity {pred.similarity:.2f})")

    def _draw_stats(self, p: QPainter) -> None:
        pred = self._prediction
        parts = []
        if self.source_fps:
            parts.append(f"source {self.source_fps:.0f} fps")
        if self.model_fps and pred is not None:
            parts.append(f"model {self.model_fps:.0f} fps · {pred.latency_ms:.0f} ms")
        if not parts:
            return
        text = "   ".join(parts)
        w = p.fontMetrics().horizontalAdvance(text) + 16
        box = QRectF(16, self.height() - 34, w, 24)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(20, 20, 20, 170))
        p.drawRoundedRect(box, 6, 6)
        p.setPen(QColor("#e0e0e0"))
        p.setFont(self.font())
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _draw_status(self, p: QPainter) -> None:
        if not self.status:
            return
        w = p.fontMetrics().horizontalAdvance(self.status) + 20
        box = QRectF(self.width() - w - 16, 16, w, 26)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(40, 90, 160, 210))
        p.drawRoundedRect(box, 6, 6)
        p.setPen(QColor("#ffffff"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, self.status)

    def _banner(self, p: QPainter, text: str) -> None:
        w = p.fontMetrics().horizontalAdvance(text) + 24
        box = QRectF((self.width() - w) / 2, 16, w, 28)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(20, 20, 20, 190))
        p.drawRoundedRect(box, 6, 6)
        p.setPen(QColor("#f0f0f0"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
