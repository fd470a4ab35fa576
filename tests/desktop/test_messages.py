"""One message model: each message has a cause, leaves the bar when the cause is resolved or replaced, and
everything said stays in Help > Messages…"""
from __future__ import annotations

from pathlib import Path

from synthetic import write_video


def until(qtbot, condition, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def test_message_log_causes_replace_resolve_and_dismiss(qtbot):
    from desktop.messages import MessageLog

    log = MessageLog()
    a = log.post("save", "error", "'x' is not empty")
    b = log.post("source", "error", "camera gone", sticky=True)
    assert log.current() is b
    log.resolve("source")  # the camera is back
    assert log.current() is a
    c = log.post("save", "info", "saved to y")  # the same cause again: replaces the error
    assert log.current() is c and list(log.active) == ["save"]
    log.post("export", "info", "only in the list", activate=False)
    assert log.current() is c
    log.dismiss(a)  # an older message of the cause: nothing to do
    assert log.current() is c
    log.dismiss(c)
    assert log.current() is None
    assert [n.text for n in log.notices] == ["'x' is not empty", "camera gone", "saved to y", "only in the list"]


def test_a_failed_save_message_clears_when_a_save_succeeds(qtbot, make_window, tmp_path):
    window = make_window()
    window.show()
    qtbot.waitExposed(window)
    until(qtbot, lambda: window.model_ready)
    window.engine.add_class("cat")
    full = tmp_path / "full"
    full.mkdir()
    (full / "something.txt").write_text("mine")
    window.engine.save_project(str(full))
    until(qtbot, lambda: any(level == "error" and "not empty" in text for level, text in window.messages))
    assert window.message_bar.isVisible() and "not empty" in window.message_bar.label.text()
    window.engine.save_project(str(tmp_path / "new-project"))
    until(qtbot, lambda: any("saved to" in text for _, text in window.messages))
    assert "not empty" not in window.message_bar.label.text() or not window.message_bar.isVisible()
    assert "not empty" in window.show_messages().text()  # still reachable, with its time
    window.show_messages().close()


def test_a_source_error_stays_until_a_source_opens(qtbot, make_window, tmp_path):
    clip = write_video(tmp_path / "clip.avi", ["circle", "square"], frames_each=5, fps=10, seed=1)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    window = make_window()
    window.show()
    qtbot.waitExposed(window)
    window.open_video(str(bad))
    until(qtbot, lambda: window.message_log.active.get("source") is not None)
    notice = window.message_log.active["source"]
    assert notice.level == "error" and notice.sticky and "broken.mp4" in notice.text
    assert window.message_bar.isVisible() and window.message_bar.label.text() == notice.text
    window.open_video(str(clip))
    until(qtbot, lambda: window.live.frame() is not None)
    assert "source" not in window.message_log.active
    assert not window.message_bar.isVisible() or "broken.mp4" not in window.message_bar.label.text()
    window.stop_source()


def test_a_long_jobs_result_and_warnings_stay_reachable(qtbot, make_window, tmp_path):
    import cv2
    import numpy as np

    from synthetic import draw_shape

    folder = tmp_path / "pictures"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), draw_shape("circle", np.random.default_rng(1))[..., ::-1])
    (folder / "broken.png").write_bytes(b"not a picture")
    window = make_window()
    until(qtbot, lambda: window.model_ready)
    window.engine.label_folder(str(folder))
    until(qtbot, lambda: any("image(s) in pictures" in text for _, text in window.messages))
    said = window.message_log.active["label folder"]
    # The job's warning about the broken file keeps the bar; its result went into the list.
    assert said.level == "warning" and "broken.png" in said.text
    assert any(n.text.startswith("1 image(s) in pictures") for n in window.message_log.notices)
    window.engine.label_folder(str(folder))  # run again: its earlier messages are replaced
    until(qtbot, lambda: sum("image(s) in pictures" in text for _, text in window.messages) == 2)
    assert [n.cause for n in window.message_log.active.values()].count("label folder") == 1
    assert Path(folder).is_dir()
