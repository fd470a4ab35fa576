"""core.sources: video files, image folders and cameras (a fake capture) as blocking frame iterators."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic import write_solid_video, write_video

from core.embedding import CancelToken
from core.sources import (
    CameraInfo,
    CameraSource,
    Frame,
    SourceError,
    VideoFileSource,
    list_cameras,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


# ---------------------------------------------------------------------------------------------------
# Fixtures and fakes


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames at 20 fps, 160x160, drawn shapes."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", ["circle", "square"], frames_each=10, fps=20)


@pytest.fixture(scope="module")
def red_blue(tmp_path_factory) -> Path:
    """5 red frames then 5 blue ones, 20 fps."""
    return write_solid_video(tmp_path_factory.mktemp("video") / "red_blue.avi", [RED, BLUE], frames_each=5, fps=20)


class FakeCapture:
    """Stands in for cv2.VideoCapture. ``script``: one entry per read(), True = a frame, False = a failure;
    after the script every read gives a frame (``then=True``) or fails (``then=False``)."""

    def __init__(self, opened=True, script=(), then=True, size=(64, 48), bgr=(255, 0, 0)):
        self.opened = opened
        self.script = list(script)
        self.then = then
        self.size = size  # (w, h): what the "driver" delivers whatever is asked
        self.bgr = bgr
        self.reads = 0
        self.released = 0
        self.requests: dict[int, float] = {}

    def isOpened(self):
        return self.opened and not self.released

    def read(self):
        self.reads += 1
        ok = self.script.pop(0) if self.script else self.then
        if not ok:
            return False, None
        frame = np.empty((self.size[1], self.size[0], 3), np.uint8)
        frame[:] = self.bgr
        return True, frame

    def set(self, prop, value):
        self.requests[prop] = value
        return True

    def get(self, prop):
        return {
            cv2.CAP_PROP_FRAME_WIDTH: self.size[0],
            cv2.CAP_PROP_FRAME_HEIGHT: self.size[1],
            cv2.CAP_PROP_FPS: 30.0,
        }.get(prop, 0.0)

    def release(self):
        self.released += 1


class Factory:
    """capture_factory that hands out the given captures in turn and records the devices asked for."""

    def __init__(self, *captures):
        self.captures = list(captures)
        self.devices = []

    def __call__(self, device):
        self.devices.append(device)
        return self.captures.pop(0)


def camera(*captures, **kw) -> CameraSource:
    kw.setdefault("retry_delay", 0.0)
    return CameraSource(0, capture_factory=Factory(*captures), **kw)


def _png(path: Path, rgb, size=(40, 30)) -> Path:
    img = np.empty((size[1], size[0], 3), np.uint8)
    img[:] = rgb[::-1]
    assert cv2.imwrite(str(path), img)
    return path


# ---------------------------------------------------------------------------------------------------
# Video files


def test_video_reads_every_frame_in_order_then_none(clip):
    with VideoFileSource(clip) as src:
        assert src.total == 20 and src.fps == pytest.approx(20.0)
        frames = list(src.frames())
        assert src.read() is None and src.read() is None  # the end stays the end
    assert len(frames) == 20
    assert [f.index for f in frames] == list(range(20))
    assert [f.timestamp for f in frames] == pytest.approx([i / 20 for i in range(20)])
    for f in frames:
        assert isinstance(f, Frame) and f.source == str(clip)
        assert f.image.shape == (160, 160, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    # Consecutive frames are distinct decoded pictures, not one buffer reused.
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_video_frames_are_rgb(red_blue):
    with VideoFileSource(red_blue) as src:
        first = src.read()
        rest = list(src.frames())
    r, g, b = (first.image[..., c].mean() for c in range(3))
    assert r > 200 and g < 60 and b < 60
    last = rest[-1].image
    assert last[..., 2].mean() > 200 and last[..., 0].mean() < 60


def test_video_loop_wraps_around(red_blue):
    with VideoFileSource(red_blue, loop=True) as src:
        frames = [src.read() for _ in range(25)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(25))  # index keeps counting across the wrap
    assert frames[10].timestamp == 0.0 and frames[20].timestamp == 0.0  # the clip position wraps
    assert frames[9].timestamp == pytest.approx(9 / 20)
    assert frames[10].image[..., 0].mean() > 200  # red again after the blue end
    assert frames[9].image[..., 2].mean() > 200
    np.testing.assert_allclose(frames[10].image, frames[0].image, atol=2)


def test_video_loop_reopens_when_the_backend_cannot_seek(red_blue):
    opened = []

    class NoSeek:
        def __init__(self, path):
            self.cap = cv2.VideoCapture(path)
            opened.append(self)

        def set(self, prop, value):
            return False

        def __getattr__(self, name):
            return getattr(self.cap, name)

    with VideoFileSource(red_blue, loop=True, capture_factory=NoSeek) as src:
        frames = [src.read() for _ in range(12)]
    assert len(opened) == 2  # the end of the clip reopened the file
    assert [f.timestamp for f in frames[9:]] == pytest.approx([9 / 20, 0.0, 1 / 20])
    assert frames[10].image[..., 0].mean() > 200


def test_video_realtime_paces_at_clip_fps(red_blue):
    t0 = time.monotonic()
    with VideoFileSource(red_blue) as src:
        assert len(list(src.frames())) == 10
    fast = time.monotonic() - t0

    t0 = time.monotonic()
    with VideoFileSource(red_blue, realtime=True) as src:
        frames = list(src.frames())
    paced = time.monotonic() - t0
    # 10 frames at 20 fps: frame k is due k/20 s after the first -> 0.45 s; loose upper bound (busy CI).
    assert len(frames) == 10
    assert 0.4 <= paced < 2.0, paced
    assert fast < paced


def test_video_close_from_another_thread_ends_a_paced_wait(red_blue):
    src = VideoFileSource(red_blue, realtime=True, loop=True)
    src.open()
    src.read()
    threading.Timer(0.1, src.close).start()
    count = sum(1 for _ in src.frames())  # the opener owns it: frames() does not close it, close() does
    assert 0 < count < 10  # a looping clip at 20 fps: ended by the close after 0.1 s, not by the clip
    assert src.read() is None


def test_missing_video_is_a_clear_error(tmp_path):
    path = tmp_path / "gone.avi"
    with pytest.raises(SourceError, match="does not exist") as e:
        VideoFileSource(path).open()
    assert str(path) in str(e.value)


def test_text_file_named_avi_is_not_a_video(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("this is not a video\n")
    src = VideoFileSource(path)
    with pytest.raises(SourceError, match="not a readable video") as e:
        src.open()
    assert str(path) in str(e.value)
    assert not src.is_open


# ---------------------------------------------------------------------------------------------------
# Cameras (fake capture)


def test_camera_that_fails_to_open_names_the_camera():
    cap = FakeCapture(opened=False)
    with pytest.raises(SourceError, match=r"camera 0 could not be opened \(is another program using it\?\)"):
        camera(cap).open()
    assert cap.released == 1

    def broken(device):
        raise RuntimeError("backend exploded")

    with pytest.raises(SourceError, match="camera 3 could not be opened.*backend exploded"):
        CameraSource(3, capture_factory=broken).open()


def test_camera_requests_settings_reads_back_actual_and_converts_to_rgb():
    cap = FakeCapture(size=(64, 48), bgr=(255, 0, 0))  # pure blue in OpenCV's BGR
    with camera(cap, width=1280, height=720, fps=60) as src:
        assert cap.requests == {cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720, cv2.CAP_PROP_FPS: 60}
        assert (src.width, src.height, src.fps) == (64, 48, 30.0)  # what the driver gave, not what was asked
        assert src.total is None and src.name == "camera:0"
        frame = src.read()
    assert frame.source == "camera:0" and frame.index == 0
    assert frame.image.shape == (48, 64, 3) and frame.image.flags.c_contiguous
    assert frame.image[..., 2].min() == 255 and frame.image[..., 0].max() == 0  # blue lands in channel 2
    assert abs(frame.timestamp - time.monotonic()) < 5


def test_camera_that_stops_mid_stream_raises_after_max_failures():
    cap = FakeCapture(script=[True] * 3, then=False)
    with camera(cap) as src:
        frames = [src.read() for _ in range(3)]
        with pytest.raises(SourceError, match=r"camera 0 stopped sending frames \(unplugged\?\)"):
            src.read()
    assert [f.index for f in frames] == [0, 1, 2]
    assert cap.reads == 3 + 10  # max_failures=10 consecutive failed reads, then the error


def test_camera_that_fails_a_few_times_then_recovers_keeps_going():
    cap = FakeCapture(script=[True, False, False, False, True, False] + [False] * 8, then=True)
    with camera(cap) as src:
        frames = [src.read() for _ in range(5)]
    # 3 failures, then 9 in a row: both under the limit of 10, so every read() still gives a frame.
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert cap.reads == 5 + 3 + 9


def test_camera_reopen_after_a_failure_reconnects():
    dead = FakeCapture(script=[True], then=False)
    fresh = FakeCapture()
    factory = Factory(dead, fresh)
    src = CameraSource(0, max_failures=3, retry_delay=0.0, capture_factory=factory)
    src.open()
    assert src.read().index == 0
    with pytest.raises(SourceError, match="stopped"):
        src.read()
    src.reopen()
    assert dead.released == 1 and factory.devices == [0, 0]
    assert src.read().index == 1  # numbering continues across the reconnect
    src.close()
    assert fresh.released == 1


def test_close_is_idempotent_and_read_after_close_gives_none():
    cap = FakeCapture()
    src = camera(cap)
    src.close()  # before open: nothing to release, no error
    with pytest.raises(SourceError, match="not open"):
        src.read()
    src.open()
    src.close()
    src.close()
    assert cap.released == 1
    assert src.read() is None and not src.is_open


def test_breaking_out_of_iteration_releases_the_capture():
    cap = FakeCapture()
    src = camera(cap)
    for frame in src:  # iteration opened it ...
        if frame.index == 2:
            break
    assert cap.released == 1  # ... and breaking out closed it

    cap2 = FakeCapture()
    with camera(cap2) as src:
        for frame in src:
            if frame.index == 2:
                break
        assert cap2.released == 0  # opened by `with`: stays open until the block ends
    assert cap2.released == 1


def test_cancel_token_stops_iteration():
    cap = FakeCapture()
    token = CancelToken()
    seen = []
    with camera(cap) as src:
        for frame in src.frames(cancel=token):
            seen.append(frame.index)
            if len(seen) == 5:
                token.cancel()
    assert seen == [0, 1, 2, 3, 4]
    assert cap.reads == 5 and cap.released == 1


def test_close_from_another_thread_does_not_wait_for_a_hanging_read():
    started, unblock = threading.Event(), threading.Event()

    class Hanging(FakeCapture):
        def read(self):
            started.set()
            assert unblock.wait(5)
            return super().read()

    cap = Hanging()
    src = camera(cap)
    src.open()
    result = []
    reader = threading.Thread(target=lambda: result.append(src.read()))
    reader.start()
    assert started.wait(5)
    closer = threading.Thread(target=src.close)  # the GUI thread: must not block on the read in progress
    closer.start()
    closer.join(5)
    assert not closer.is_alive() and reader.is_alive() and not unblock.is_set()  # returned while the read hangs
    assert cap.released == 0  # the device is still in use by the read
    unblock.set()
    reader.join(5)
    assert cap.released == 1  # released by the reading thread as its read returned
    assert result and src.read() is None


def test_list_cameras_reports_only_those_that_open_and_never_raises():
    class Sizeless(FakeCapture):
        def get(self, prop):
            return 0.0  # a driver that reports nothing: the size comes from a frame

    def factory(index):
        if index == 1:
            raise RuntimeError("driver crash")
        if index == 3:
            return Sizeless(size=(320, 240))
        return FakeCapture(opened=index in (0, 4), size=(640, 480))

    cams = list_cameras(max_index=6, capture_factory=factory)
    assert [c.index for c in cams] == [0, 3, 4]
    assert cams[0] == CameraInfo(0, "Camera 0", 640, 480)
    assert (cams[1].width, cams[1].height) == (320, 240)

    probed = []

    def recording(index):
        probed.append(FakeCapture(opened=index == 2))
        return probed[-1]

    assert [c.index for c in list_cameras(4, recording)] == [2]
    assert [c.released for c in probed] == [1, 1, 1, 1]  # every probe is released, open or not

    def always_raises(index):
        raise OSError("no video subsystem")

    assert list_cameras(3, always_raises) == []


# ---------------------------------------------------------------------------------------------------
# Dispatch
