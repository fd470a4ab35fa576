"""Model > CPU runtime: the window chooses how the network runs on the CPU, says which, and remembers it."""
from __future__ import annotations


def until(qtbot, condition, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def _choose(window, name: str) -> None:
    [act] = [a for a in window.runtime_actions.actions() if a.data() == name]
    act.trigger()


def test_the_runtime_menu_switches_and_is_remembered(qtbot, make_window, settings):
    from desktop.main_window import default_embedder

    w = make_window()
    until(qtbot, lambda: w.model_ready)
    w.engine.add_class("a")
    _choose(w, "torch")
    until(qtbot, lambda: w.model_label.text().endswith("· PyTorch") and w.engine.embedder.runtime == "torch")
    assert settings.value("runtime") == "torch"
    assert [a.data() for a in w.runtime_actions.actions() if a.isChecked()] == ["torch"]
    assert [c.name for c in w.snapshot.classes] == ["a"]  # the classes stay
    _choose(w, "onnxruntime")
    until(qtbot, lambda: w.model_label.text().endswith("· ONNX Runtime") and w.engine.embedder.runtime == "onnxruntime")
    w.shutdown()

    settings.setValue("runtime", "torch")
    again = make_window(make_embedder=default_embedder)  # a restart with the default model
    until(qtbot, lambda: again.model_ready)
    assert again.engine.embedder.runtime == "torch" and again.model_label.text().endswith("· PyTorch")
