"""Edit > Undo / Redo: every change of classes, examples and labels goes back, in memory and in the saved project."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from core import Frame, load_project
from core.project import LabelStore
from synthetic import draw_shape

from desktop.engine import Engine, LatestFrame


def _frame(kind: str, seed: int) -> Frame:
    return Frame(draw_shape(kind, np.random.default_rng(seed)), 0, time.monotonic(), "camera:0")


@pytest.fixture
def engine(qtbot, tmp_path, embedder):
    eng = Engine(lambda: embedder, LatestFrame(), tmp_path / "workspace")
    eng.changes, eng.done, eng.cleared = [], [], []
    eng.changeDone.connect(eng.changes.append)
    eng.jobFinished.connect(lambda job, text: eng.done.append((job, text)))
    eng.historyCleared.connect(lambda: eng.cleared.append(True))
    with qtbot.waitSignal(eng.ready, timeout=30_000):
        eng.start()
    yield eng
    assert eng.shutdown(), "engine thread did not stop"


def _wait_job(qtbot, engine, job: str, n: int = 1) -> None:
    qtbot.waitUntil(lambda: sum(j == job for j, _ in engine.done) >= n, timeout=60_000)


def _saved(project: Path, embedder) -> tuple[list[str], dict[str, int], dict[str, tuple[str, str]]]:
    """What is on disk: classes, examples per class, labels.sqlite rows (file name -> (label, source))."""
    p = load_project(project, embedder)
    counts = {c: len(p.classifier.examples_of(c)) for c in p.classifier.classes}
    store = LabelStore(project / "labels.sqlite")
    try:
        rows = {Path(r.path).name: (r.label, r.source) for r in store.all()}
    finally:
        store.close()
    return list(p.classifier.classes), counts, rows


def _state(engine) -> tuple[list[str], dict[str, int], dict[str, str]]:
    c = engine.classifier
    confirmed = {Path(p).name: lab for p, lab in engine.session.confirmed.items()} if engine.session else {}
    return list(c.classes), {n: len(c.examples_of(n)) for n in c.classes}, confirmed


def test_undo_remove_class_restores_classes_examples_and_labels_in_memory_and_on_disk(qtbot, engine, tmp_path,
                                                                                     embedder):
    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, kind in enumerate(["circle", "square", "triangle"] * 2):
        cv2.imwrite(str(folder / f"{i}-{kind}.png"), draw_shape(kind, rng)[..., ::-1])
    for i, kind in enumerate(["circle", "square", "triangle"]):
        engine.capture(kind, _frame(kind, 10 + i))
    engine.label_folder(str(folder))
    _wait_job(qtbot, engine, "label folder")
    triangles = sorted(str(p) for p in folder.glob("*-triangle.png"))
    engine.assign(triangles, "triangle")
    _wait_job(qtbot, engine, "correct")
    engine.save_project()
    _wait_job(qtbot, engine, "save")
    before = _state(engine)
    assert before[0] == ["circle", "square", "triangle"] and before[2] == {Path(p).name: "triangle" for p in triangles}
    n_changes = len(engine.changes)

    engine.remove_class("triangle")
    _wait_job(qtbot, engine, "remove class")
    qtbot.waitUntil(lambda: len(engine.changes) == n_changes + 1)
    change = engine.changes[-1]
    assert change.text == "Remove class 'triangle'"
    engine.save_project()
    _wait_job(qtbot, engine, "save", 2)
    project = engine.project_folder
    removed = _state(engine)
    assert removed[0] == ["circle", "square"] and removed[2] == {}
    classes, counts, rows = _saved(project, embedder)
    assert classes == ["circle", "square"]
    assert all(rows[Path(p).name][1] != "confirmed" for p in triangles if Path(p).name in rows)

    engine.undo(change)
    _wait_job(qtbot, engine, "undo")
    assert _state(engine) == before
    classes, counts, rows = _saved(project, embedder)  # saved at once, no autosave delay
    assert classes == before[0] and counts == before[1]
    assert {n: rows[n] for n in before[2]} == {n: ("triangle", "confirmed") for n in before[2]}

    engine.redo(change)
    _wait_job(qtbot, engine, "redo")
    assert _state(engine) == removed
    classes, counts, rows = _saved(project, embedder)
    assert classes == ["circle", "square"]
    assert all(rows.get(Path(p).name, ("", ""))[1] != "confirmed" for p in triangles)


def test_examples_moves_renames_and_accepts_go_back_in_order(qtbot, engine):
    engine.capture("a", _frame("circle", 1))
    engine.capture("b", _frame("square", 2))
    engine.capture("b", _frame("square", 3))
    _wait_job(qtbot, engine, "capture", 3)
    qtbot.waitUntil(lambda: len(engine.changes) == 3)
    states = [_state(engine)]
    ex = engine.classifier.examples_of("b")[0].id
    engine.move_example(ex, "a")
    _wait_job(qtbot, engine, "move example")
    states.append(_state(engine))
    engine.rename_class("a", "round")
    _wait_job(qtbot, engine, "rename class")
    states.append(_state(engine))
    engine.remove_example(ex)
    _wait_job(qtbot, engine, "remove example")
    states.append(_state(engine))
    assert len(engine.changes) == 6
    assert [c.text for c in engine.changes[3:]] == ["Move an example to 'a'", "Rename class 'a' to 'round'",
                                                   "Remove an example"]
    assert states[1][1] == {"a": 2, "b": 1} and states[2][0] == ["round", "b"] and states[3][1] == {"round": 1, "b": 1}

    for i, change in enumerate(reversed(engine.changes[3:])):
        engine.undo(change)
        _wait_job(qtbot, engine, "undo", i + 1)
        assert _state(engine) == states[2 - i]
    # The moved example is the same example again, with its class as it was before the move.
    assert engine.classifier.examples[ex].class_name == "b"
    for i, change in enumerate(engine.changes[3:]):
        engine.redo(change)
        _wait_job(qtbot, engine, "redo", i + 1)
        assert _state(engine) == states[i + 1]


def test_a_failed_change_records_nothing_and_a_new_project_clears_the_history(qtbot, engine):
    engine.add_class("a")
    _wait_job(qtbot, engine, "add class")
    engine.add_class("a")  # already there: an error message, nothing changed
    _wait_job(qtbot, engine, "add class", 2)
    assert [c.text for c in engine.changes] == ["Add class 'a'"]
    engine.new_project()
    _wait_job(qtbot, engine, "new project")
    assert engine.cleared


def test_ctrl_z_in_the_window_undoes_and_ctrl_shift_z_redoes(qtbot, make_window):
    w = make_window()
    qtbot.waitUntil(lambda: w.model_ready, timeout=30_000)
    w.engine.add_class("cat")
    qtbot.waitUntil(lambda: [c.name for c in w.snapshot.classes] == ["cat"], timeout=10_000)
    assert w.undo_stack.count() == 1 and w.act_undo.isEnabled()
    assert "Add class 'cat'" in w.act_undo.text()
    assert QKeySequenceText(w.act_redo) >= {"Ctrl+Shift+Z"}
    w.act_undo.trigger()
    qtbot.waitUntil(lambda: w.snapshot.classes == (), timeout=10_000)
    w.act_redo.trigger()
    qtbot.waitUntil(lambda: [c.name for c in w.snapshot.classes] == ["cat"], timeout=10_000)
    assert w.undo_stack.count() == 1  # redo re-applies the same change, it doesn't add one


def QKeySequenceText(action) -> set[str]:
    return {s.toString() for s in action.shortcuts()}


def test_a_burst_of_captures_is_one_undo_step(qtbot, make_window):
    w = make_window()
    qtbot.waitUntil(lambda: w.model_ready, timeout=30_000)
    w.engine.add_class("b")
    for seed in range(3):  # what holding a key does: captures a fifth of a second apart
        w.engine.capture("a", _frame("circle", seed))
    qtbot.waitUntil(lambda: sum(c.count for c in w.snapshot.classes) == 3, timeout=10_000)
    qtbot.waitUntil(lambda: w.undo_stack.count() == 2, timeout=10_000)
    assert w.undo_stack.undoText() == "Add 3 examples to 'a'"
    w.act_undo.trigger()
    qtbot.waitUntil(lambda: [c.name for c in w.snapshot.classes] == ["b"], timeout=10_000)
    w.act_redo.trigger()
    qtbot.waitUntil(lambda: sum(c.count for c in w.snapshot.classes) == 3, timeout=10_000)
