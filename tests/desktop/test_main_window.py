"""The real main window driven through a whole session, offscreen: a generated video as the camera, classes,
captures by key and by held button, live predictions in the overlay, a folder labeled and corrected,
save, export, reopen. Plus: the UI thread stays responsive with a deliberately slow model."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

import pytest

from PySide6.QtCore import Qt, QTimer

from synthetic import FakeCapture, write_tree, write_video

KINDS = ("circle", "square")


def truth(frame_index: int) -> str:
    """The generated clip shows 10 circle frames, then 10 square frames, and so on (index counts across loops)."""
    return KINDS[(frame_index // 10) % 2]


def until(qtbot, condition, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.avi", list(KINDS) * 4, frames_each=10, fps=10, seed=3)


def counts(window) -> dict[str, int]:
    return {c.name: c.count for c in window.snapshot.classes}


def capture_on_truth(qtbot, window, key: str, kind: str, n: int) -> None:
    """Press the class's number key while the live view shows `kind` (the key captures the frame on screen)."""
    used: set[int] = set()
    for _ in range(n):
        until(qtbot, lambda: window.live.frame() is not None and truth(window.live.frame().index) == kind
              and window.live.frame().index % 10 in (2, 3, 4, 5, 6, 7) and window.live.frame().index not in used,
              timeout=20_000)
        used.add(window.live.frame().index)
        qtbot.keyClick(window, key)  # press + release: one capture


def test_whole_session(qtbot, make_window, clip, tmp_path):
    window = make_window()
    window.show()
    until(qtbot, lambda: window.model_ready)
    assert "efficientnet_lite0" in window.model_label.text()
    assert window.model_label.text().endswith("on CPU · ONNX Runtime")  # the trunk's runtime, opened before frames

    # The camera stand-in: a generated clip, read in real time like a webcam.
    window.open_video(str(clip))
    until(qtbot, lambda: window.live.frame() is not None)
    assert window.tabs.currentWidget() is window.live

    # Two classes from the panel's button, renamed inline.
    qtbot.mouseClick(window.class_panel.add_button, Qt.MouseButton.LeftButton)
    until(qtbot, lambda: len(window.snapshot.classes) == 1)
    qtbot.mouseClick(window.class_panel.add_button, Qt.MouseButton.LeftButton)
    until(qtbot, lambda: len(window.snapshot.classes) == 2)
    assert window.class_panel.card("Class 1").commit_rename("circle")
    assert window.class_panel.card("Class 2").commit_rename("square")
    until(qtbot, lambda: [c.name for c in window.snapshot.classes] == ["circle", "square"])

    # Capture with the number keys while the right shape is on screen.
    capture_on_truth(qtbot, window, "1", "circle", 3)
    capture_on_truth(qtbot, window, "2", "square", 3)
    until(qtbot, lambda: counts(window) == {"circle": 3, "square": 3})

    # Predictions follow at once and are drawn in the overlay.
    seen = []
    window.engine.livePrediction.connect(seen.append)
    until(qtbot, lambda: len(seen) >= 15, timeout=30_000)
    assert window.live.prediction() is not None
    right = sum(p.label == truth(p.frame_index) for p in seen)
    assert right >= 0.8 * len(seen), [(p.frame_index, p.label) for p in seen]
    assert window.live.model_fps > 0 and window.live.source_fps > 0

    # Hold-to-capture on the class card: several frames while the button is held.
    button = window.class_panel.card("circle").capture_button
    before = counts(window)["circle"]
    qtbot.mousePress(button, Qt.MouseButton.LeftButton)
    until(qtbot, lambda: counts(window)["circle"] >= before + 3, timeout=10_000)
    qtbot.mouseRelease(button, Qt.MouseButton.LeftButton)
    after_release = counts(window)["circle"]
    qtbot.wait(600)
    assert counts(window)["circle"] <= after_release + 1  # at most one capture still in the queue

    # Fix the wrong ones: remove the burst examples again from the panel (it may have caught squares).
    for info in window.snapshot.examples_of("circle")[3:]:  # oldest first: keep the three keyed ones
        window.class_panel.removeExampleRequested.emit(info.id)
    until(qtbot, lambda: counts(window)["circle"] == 3)

    # Label a folder: least confident first, correct one with a key, it becomes an example.
    query = tmp_path / "query"
    write_tree(query, per_class=4, classes=KINDS, seed=5)
    window.open_folder(str(query))
    assert window.tabs.currentWidget() is window.folder_view
    until(qtbot, lambda: len(window.folder_view.items()) == 8 and all(i.label for i in window.folder_view.items()),
          timeout=60_000)
    items = window.folder_view.items()
    confidences = [i.confidence for i in items]
    assert confidences == sorted(confidences)  # least confident first
    assert sum(i.label == Path(i.path).parent.name for i in items) >= 7, [(i.path, i.label) for i in items]
    first = items[0]
    window.folder_view.select_path(first.path)
    wrong = "square" if first.label == "circle" else "circle"
    qtbot.keyClick(window.folder_view.grid, "2" if wrong == "square" else "1")
    until(qtbot, lambda: any(i.path == first.path and i.source == "confirmed" and i.label == wrong
                             for i in window.folder_view.items()))
    until(qtbot, lambda: counts(window)[wrong] == 4)  # the correction is a support example now

    # Save as, export CSV.
    project = tmp_path / "project"
    window.save_project_as(str(project))
    until(qtbot, lambda: window.project_folder == str(project) and not window.project_unsaved)
    assert (project / "project.json").is_file() and "project" in window.windowTitle()
    out = tmp_path / "labels.csv"
    window.export_csv(str(out))
    until(qtbot, lambda: out.is_file())
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 8 and (rows[first.path]["label"], rows[first.path]["source"]) == (wrong, "confirmed")
    window.close()
    assert not window.engine.is_running()

    # Reopen in a new window: classes, examples, the labeled folder and the correction are back.
    again = make_window()
    again.open_project(str(project))
    until(qtbot, lambda: counts(again) == counts(window), timeout=30_000)
    until(qtbot, lambda: any(i.path == first.path and i.source == "confirmed" and i.label == wrong
                             for i in again.folder_view.items()), timeout=60_000)
    assert len(again.folder_view.items()) == 8


def test_missing_camera_gives_a_message_and_the_app_goes_on(qtbot, make_window, clip):
    window = make_window()
    window.show()
    qtbot.waitExposed(window)
    assert not window.message_bar.isVisible()
    window.open_camera(97)  # no such device
    until(qtbot, lambda: any(level == "error" for level, _ in window.messages), timeout=20_000)
    text = [t for level, t in window.messages if level == "error"][-1]
    assert "camera 97" in text and "could not be opened" in text
    assert window.message_bar.isVisible() and window.message_bar.label.text() == text  # the person sees it
    window.open_video(str(clip))  # and another source still works
    until(qtbot, lambda: window.live.frame() is not None)


def test_unplugged_camera_reconnects_and_keeps_the_work(qtbot, make_window):
    from core import CameraSource

    plugged = [True]

    class Camera(FakeCapture):
        def isOpened(self) -> bool:  # while unplugged, opening fails
            return plugged[0]

    def factory(device):
        return Camera(device, frames=8)  # 8 frames, then the cable is out

    window = make_window()
    until(qtbot, lambda: window.model_ready)
    window.engine.add_class("kept")
    window.start_source(CameraSource(0, max_failures=3, retry_delay=0.01, capture_factory=factory))
    until(qtbot, lambda: window.live.frame() is not None)
    plugged[0] = False  # the cable is pulled: the 8 frames run out and reopening fails
    until(qtbot, lambda: any("reconnecting" in t for _, t in window.messages), timeout=20_000)
    assert "stopped sending frames (unplugged?)" in [t for _, t in window.messages if "reconnecting" in t][0]
    assert window.source_label.text() == "Reconnecting…"
    plugged[0] = True  # plugged back in
    until(qtbot, lambda: any("camera:0 is back" in t for _, t in window.messages), timeout=20_000)
    assert [c.name for c in window.snapshot.classes] == ["kept"] and window.engine.is_running()
    window.stop_source()


def test_unreadable_video_gives_a_message(qtbot, make_window, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    window = make_window()
    window.open_video(str(bad))
    until(qtbot, lambda: any(level == "error" for level, _ in window.messages), timeout=20_000)
    assert "broken.mp4" in window.messages[-1][1]


FORWARD_S = 0.3  # the slowed model's time per forward pass


def test_ui_thread_stays_responsive_with_a_slow_model(qtbot, make_window, clip, tmp_path):
    """Every forward pass of the model sleeps 300 ms first: a UI thread that ever waited for one would see its
    10 ms timer stall for 300 ms or more. The bound (250 ms) holds with room on a machine several times slower
    than the 2-core VM, where the worst stalls are 20-90 ms (Qt's own event processing)."""
    from core import Embedder, create_backbone

    def slow_embedder() -> Embedder:
        backbone = create_backbone("efficientnet_lite0")
        fast = backbone.forward_trunk

        def forward_trunk(x):
            time.sleep(FORWARD_S)
            return fast(x)

        backbone.forward_trunk = forward_trunk
        return Embedder(backbone, "cpu", batch_size=8)

    window = make_window(make_embedder=slow_embedder)
    window.show()
    until(qtbot, lambda: window.model_ready)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=10, timeout=tick)
    window.open_video(str(clip))
    until(qtbot, lambda: window.live.frame() is not None)
    qtbot.wait(300)  # first paints (fonts, pixmap caches) are not what we measure
    last[0] = time.perf_counter()
    timer.start()
    try:
        # Captures, live predictions, a folder to label and a fine-tuning run, all on the slow model.
        for _kind, key in (("circle", "1"), ("square", "2")):
            for _ in range(2):
                qtbot.keyClick(window, key)
        until(qtbot, lambda: sum(counts(window).values()) == 4, timeout=30_000)
        query = tmp_path / "q"
        write_tree(query, per_class=6, classes=KINDS, seed=9)
        window.open_folder(str(query))
        until(qtbot, lambda: len(window.folder_view.items()) == 12 and all(i.label for i in window.folder_view.items()),
              timeout=60_000)
        window.tabs.setCurrentWidget(window.live)
        window.open_video(str(clip))
        window.finetune()
        until(qtbot, lambda: any("fine-tun" in t for _, t in window.messages), timeout=60_000)
        qtbot.wait(1000)
    finally:
        timer.stop()
    assert len(gaps) > 100
    worst = max(gaps)
    print(f"UI thread: worst wait {worst * 1000:.1f} ms over {len(gaps)} ticks of a 10 ms timer")
    assert worst < FORWARD_S - 0.05, f"UI thread stalled {worst * 1000:.0f} ms (10 ms timer; {len(gaps)} ticks)"


def test_burst_by_holding_a_number_key(qtbot, make_window, clip):
    window = make_window()
    window.show()
    until(qtbot, lambda: window.model_ready)
    window.open_video(str(clip))
    until(qtbot, lambda: window.live.frame() is not None)
    qtbot.keyPress(window, "1")  # no class yet: key 1 makes "Class 1"
    until(qtbot, lambda: counts(window).get("Class 1", 0) >= 4, timeout=10_000)
    qtbot.keyRelease(window, "1")
    n = counts(window)["Class 1"]
    qtbot.wait(500)
    assert counts(window)["Class 1"] <= n + 1
    qtbot.keyClick(window, "5")
    until(qtbot, lambda: any("Key 5 has no class" in t for _, t in window.messages))


def test_camera_dialog_probes_in_the_background(qtbot, make_window):
    import glob

    from desktop.main_window import CameraDialog

    window = make_window()
    dialog = CameraDialog(window.camera_probe, window)
    qtbot.addWidget(dialog)
    assert "Looking for cameras" in dialog.cameras.itemText(0)  # the window did not wait for the probe
    until(qtbot, lambda: "Looking" not in dialog.cameras.itemText(0), timeout=20_000)
    if not glob.glob("/dev/video*"):
        assert "No camera found" in dialog.cameras.itemText(0) and dialog.choice()[0] is None
    dialog.url.setText("rtsp://example.invalid/stream")
    dialog.resolution.setCurrentIndex(2)
    assert dialog.choice() == ("rtsp://example.invalid/stream", (1280, 720))
    dialog.reject()


def test_a_damaged_project_is_reopened_from_its_backup_when_the_user_agrees(qtbot, make_window, tmp_path, embedder):
    from core import FewShotClassifier, save_project
    from synthetic import draw_shape

    folder = tmp_path / "proj"
    c = FewShotClassifier(embedder)
    rng = np.random.default_rng(0)
    c.add_example("circle", draw_shape("circle", rng))
    save_project(folder, c)
    c.add_example("square", draw_shape("square", rng))
    save_project(folder, c)
    (folder / "project.json").write_text("{ broken")
    window = make_window()
    questions = []
    window.ask = lambda title, text: questions.append(text) or True
    window.open_project(str(folder))
    until(qtbot, lambda: questions and counts(window) == {"circle": 1}, timeout=30_000)
    assert "damaged" in questions[0]
    assert any("restored the previous save" in t for _, t in window.messages)
