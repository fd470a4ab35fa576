"""The last live source reopens with its project: a video that is still there, a camera that is plugged in;
a moved video or an absent camera is said once, and the app goes on."""
from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

from synthetic import FakeCapture, write_video


def until(qtbot, condition, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def _saved_source(project: Path) -> dict | None:
    return json.loads((project / "project.json").read_text())["settings"].get("source")


def _project_with_source(qtbot, window, project: Path, open_source) -> None:
    until(qtbot, lambda: window.model_ready)
    window.engine.add_class("cat")
    open_source()
    until(qtbot, lambda: window.live.frame() is not None)
    window.engine.save_project(str(project))
    until(qtbot, lambda: project.joinpath("project.json").is_file() and _saved_source(project) is not None)


def test_a_video_reopens_with_its_project_and_a_moved_one_is_said_once(qtbot, make_window, tmp_path):
    (tmp_path / "videos").mkdir()
    clip = write_video(tmp_path / "videos" / "clip.avi", ["circle", "square"], frames_each=5, fps=10, seed=2)
    project = tmp_path / "project"
    first = make_window()
    _project_with_source(qtbot, first, project, lambda: first.open_video(str(clip)))
    assert _saved_source(project) == {"kind": "video", "path": str(clip.resolve())}
    first.shutdown()

    again = make_window()  # a restarted app
    again.open_project(str(project))
    until(qtbot, lambda: again.live.frame() is not None)  # the video plays again without being asked
    assert again.live.frame().source == str(clip.resolve()) or "clip.avi" in again.source_label.text()
    again.shutdown()

    shutil.move(str(clip), str(tmp_path / "elsewhere.avi"))
    moved = make_window()
    moved.open_project(str(project))
    until(qtbot, lambda: any("not there any more" in t for _, t in moved.messages))
    until(qtbot, lambda: [c.name for c in moved.snapshot.classes] == ["cat"])
    qtbot.wait(300)
    assert sum("not there any more" in t for _, t in moved.messages) == 1
    assert moved.live.frame() is None and moved.engine.is_running()


def test_stopping_the_source_means_the_project_reopens_without_one(qtbot, make_window, tmp_path):
    clip = write_video(tmp_path / "clip.avi", ["circle"], frames_each=5, fps=10, seed=2)
    project = tmp_path / "project"
    w = make_window()
    _project_with_source(qtbot, w, project, lambda: w.open_video(str(clip)))
    w.stop_source()
    w.engine.save_project()
    until(qtbot, lambda: _saved_source(project) is None)


def test_a_camera_reopens_only_when_it_is_plugged_in(qtbot, make_window, tmp_path, monkeypatch):
    import core.sources
    import desktop.main_window as mw
    import desktop.workers as workers
    from core import CameraInfo

    plugged: list = []
    monkeypatch.setattr(workers, "list_cameras", lambda: list(plugged))
    monkeypatch.setattr(mw, "CameraSource", partial(core.sources.CameraSource,
                                                    capture_factory=lambda device: FakeCapture(device)))
    project = tmp_path / "project"
    first = make_window()
    _project_with_source(qtbot, first, project, lambda: first.open_camera(0, (640, 480)))
    assert _saved_source(project) == {"kind": "camera", "device": 0, "resolution": [640, 480]}
    first.shutdown()

    unplugged = make_window()
    unplugged.open_project(str(project))
    until(qtbot, lambda: any("not connected" in t for _, t in unplugged.messages))
    assert unplugged.live.frame() is None
    unplugged.shutdown()

    plugged.append(CameraInfo(0, "Fake camera", 640, 480))
    back = make_window()
    back.open_project(str(project))
    until(qtbot, lambda: back.live.frame() is not None)
    assert not any("not connected" in t for _, t in back.messages)
    back.stop_source()
