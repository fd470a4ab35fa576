"""Soak: many frames through the live pipeline without memory growth; many camera start/stop cycles without
threads left behind."""
from __future__ import annotations

import threading
import time

import pytest

from core import CameraSource
from synthetic import FakeCapture, write_video


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def until(qtbot, condition, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def test_fifty_camera_start_stop_cycles_leave_no_threads(qtbot, make_window):
    window = make_window()
    until(qtbot, lambda: window.model_ready)
    for _ in range(50):
        window.start_source(CameraSource(0, capture_factory=lambda d: FakeCapture(d, delay=0.005)))
        until(qtbot, lambda: window.frames.latest()[1] is not None, timeout=10_000)
        window.stop_source()
    deadline = time.monotonic() + 5
    while any(t.name == "protolabel-source" for t in threading.enumerate()) and time.monotonic() < deadline:
        qtbot.wait(20)
    assert not [t for t in threading.enumerate() if t.name == "protolabel-source"]


@pytest.fixture
def small_input_embedder(backbone):
    """The session's backbone reading 96 px instead of 224: every frame still goes through the whole pipeline
    (source, latest-frame slot, preprocessing, model, prediction, drawing) for a fifth of the arithmetic. A leak
    is per frame: one kept 96 px input tensor alone would be 108 KB a frame, ten times the bound."""
    import dataclasses

    from core import Embedder, create_backbone

    small = create_backbone(backbone.name)
    small.preprocess_config = dataclasses.replace(small.preprocess_config, size=96)
    return Embedder(small, "cpu", batch_size=16)


@pytest.mark.slow
def test_thousands_of_frames_through_the_live_pipeline_without_memory_growth(qtbot, make_window, tmp_path,
                                                                            small_input_embedder):
    """1,800 live predictions; growth measured over the last 1,500, after 300 that settle caches, allocator pools
    and pixmaps: at most 10 KB a frame. (Traced every 100 frames over 3,300, the resident memory stayed within
    0.1 MB from frame 100 on; 10,000 frames once took 7 minutes and left it unchanged.)"""
    from core import VideoFileSource

    window = make_window(lambda: small_input_embedder)
    window.show()
    until(qtbot, lambda: window.model_ready)
    clip = write_video(tmp_path / "clip.avi", ["circle", "square"] * 5, frames_each=10, fps=60, seed=1)
    # Paced at 60 frames/s, faster than the model: an unpaced decoder would only take CPU from the model.
    window.start_source(VideoFileSource(clip, realtime=True, loop=True))
    until(qtbot, lambda: window.live.frame() is not None)
    window.capture("circle")
    qtbot.wait(100)
    window.capture("square")
    seen = [0]
    window.engine.livePrediction.connect(lambda p: seen.__setitem__(0, seen[0] + 1))
    until(qtbot, lambda: seen[0] >= 300, timeout=300_000)
    t_settled = time.monotonic()
    start = rss_mb()
    until(qtbot, lambda: seen[0] >= 1_800, timeout=600_000)
    growth = rss_mb() - start
    print(f"1,500 live predictions in {time.monotonic() - t_settled:.0f} s: RSS {start:.0f} MB -> {start + growth:.0f} MB ({growth:+.0f} MB); "
          f"frames dropped by the latest-frame slot: {window.frames.dropped}")
    assert growth < 15, f"memory grew {growth:.0f} MB over 1,500 frames"
    window.stop_source()
