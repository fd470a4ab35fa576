"""The live view: a dragged rectangle becomes a region of interest in frame pixels; the overlay draws."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, Qt

from core import Frame
from desktop.live_view import LiveView
from desktop.state import ClassInfo, LivePrediction, ModelSnapshot


def test_drag_sets_a_region_in_frame_pixels(qtbot):
    view = LiveView()
    qtbot.addWidget(view)
    view.resize(640, 480)
    view.show()
    view.set_frame(Frame(np.zeros((240, 320, 3), np.uint8), 0, 0.0, "camera:0"))  # shown at 2x, no margins
    regions = []
    view.roiChanged.connect(regions.append)
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(100, 100))
    qtbot.mouseMove(view, QPoint(300, 200))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(300, 200))
    assert regions == [(50, 50, 150, 100)] and view.roi() == (50, 50, 150, 100)
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(10, 10))  # a click is not a region
    assert view.roi() == (50, 50, 150, 100)
    view.set_roi(None)
    assert regions[-1] is None


def test_overlay_shows_class_confidence_and_unknown(qtbot):
    view = LiveView()
    qtbot.addWidget(view)
    view.resize(640, 480)
    view.set_snapshot(ModelSnapshot(1, (ClassInfo("cat", "#e15759", "1", 3), ClassInfo("dog", "#4e79a7", "2", 3))))
    view.set_frame(Frame(np.full((240, 320, 3), 255, np.uint8), 0, 0.0, "camera:0"))
    blank = view.grab().toImage()
    view.set_prediction(LivePrediction(0, 1, "cat", 0.9, (("cat", 0.9), ("dog", 0.1)), 0.8, 12.0, None))
    cat = view.grab().toImage()
    view.set_prediction(LivePrediction(0, 1, "unknown", 0.6, (("dog", 0.6), ("cat", 0.4)), 0.3, 12.0, None))
    unknown = view.grab().toImage()
    red = cat.pixelColor(20, 40)  # the coloured edge of the overlay box
    assert red.red() > 180 and red.blue() < 120, red.name()
    assert cat != blank and unknown != cat
    grey = unknown.pixelColor(20, 40)
    assert abs(grey.red() - grey.blue()) < 20  # unknown is drawn grey, not in a class colour
