"""The few-shot engine: support management, incremental prototypes, unknowns, fine-tuning, save/load."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core import UNKNOWN_LABEL, FewShotClassifier, StateError, preprocess
from synthetic import SHAPE_CLASSES, draw_in_clutter, draw_shape


def _images(kind, n, seed):
    rng = np.random.default_rng(seed)
    return [draw_shape(kind, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def shape_images():
    return {k: _images(k, 12, seed=i) for i, k in enumerate(SHAPE_CLASSES)}


@pytest.fixture
def classifier(embedder, shape_images):
    clf = FewShotClassifier(embedder)
    for k in ("circle", "square", "triangle"):
        clf.add_examples(k, shape_images[k][:4])
    return clf


def test_predictions_on_held_out_shapes(classifier, shape_images):
    queries = [img for k in ("circle", "square", "triangle") for img in shape_images[k][4:8]]
    truth = [k for k in ("circle", "square", "triangle") for _ in range(4)]
    preds = classifier.predict(queries)
    assert sum(p.best_class == t for p, t in zip(preds, truth)) >= 11
    for p in preds:
        assert 0.0 <= p.probability <= 1.0
        assert len(p.topk) == 3 and p.topk[0][1] >= p.topk[1][1] >= p.topk[2][1]
        assert abs(sum(prob for _, prob in p.topk) - 1.0) < 1e-4  # 3 classes: top-3 is everything
        assert -1.0 <= p.similarity <= 1.0 and p.distance == pytest.approx(1 - p.similarity)


def test_adding_one_example_embeds_only_that_image(classifier, shape_images, monkeypatch):
    seen = []
    original = classifier.embedder.embed_tensor

    def counting(x, *args, **kwargs):
        seen.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(classifier.embedder, "embed_tensor", counting)
    before, names = classifier.prototypes()
    generation = classifier.generation
    classifier.add_example("circle", shape_images["circle"][10])
    after, _ = classifier.prototypes()
    assert seen == [1]  # one forward pass, for the new image only
    assert classifier.generation > generation
    changed = [names[i] for i in range(len(names)) if not torch.allclose(before[i], after[i])]
    assert changed == ["circle"]  # latency is measured by `make bench`, not here


def test_class_management(classifier):
    classifier.rename_class("square", "box")
    assert classifier.classes == ["circle", "box", "triangle"]
    assert len(classifier.examples_of("box")) == 4
    with pytest.raises(ValueError):
        classifier.rename_class("box", "circle")
    with pytest.raises(ValueError):
        classifier.add_class(UNKNOWN_LABEL)
    ex = classifier.examples_of("box")[0]
    classifier.remove_example(ex.id)
    assert len(classifier.examples_of("box")) == 3
    classifier.remove_class("box")
    assert classifier.classes == ["circle", "triangle"]
    assert all(e.class_name != "box" for e in classifier.examples.values())
    assert {p.best_class for p in classifier.predict_features(torch.stack([e.feature for e in classifier.examples.values()]))} <= {"circle", "triangle"}


def test_unknown_rejects_images_far_from_every_class(classifier, shape_images):
    skimage_data = pytest.importorskip("skimage.data")
    for k in ("circle", "square", "triangle"):
        classifier.add_examples(k, shape_images[k][4:8])  # 8 per class: per-class thresholds from leave-one-out
    photos = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]
    far = classifier.predict(photos)
    near = classifier.predict([img for k in ("circle", "square", "triangle") for img in shape_images[k][8:12]])
    assert all(p.is_unknown for p in far), [(p.best_class, p.similarity) for p in far]
    assert sum(p.is_unknown for p in near) <= 1
    # Overrides: off never says unknown; a threshold of 0.99 rejects nearly everything.
    classifier.unknown = "off"
    assert not any(p.is_unknown for p in classifier.predict(photos))
    classifier.unknown = 0.999
    assert all(p.is_unknown for p in classifier.predict(photos))


def test_finetune_stays_inside_its_budget_and_can_be_cancelled(classifier):
    steps, at = [], []
    t0 = time.perf_counter()
    result = classifier.finetune(budget_s=1.0, max_steps=10_000, lr=1e-3,
                                 progress=lambda p: (steps.append(p.step), at.append(p.elapsed_s)))
    elapsed = time.perf_counter() - t0
    assert result.steps == len(steps) and result.steps >= 2
    # Robust to a loaded machine: no step starts after the budget, and nothing slow runs after the last step.
    assert at[-2] < 1.0 <= at[-1] or at[-1] < 1.0
    assert elapsed - at[-1] < 0.5 + (at[-1] - at[-2])
    assert classifier.adapted_tail is not None
    before = classifier.generation
    cancelled = classifier.finetune(budget_s=5.0, lr=1e-3, cancel=lambda: True)
    assert cancelled.cancelled and classifier.generation == before
    classifier.reset_finetune()
    assert classifier.adapted_tail is None


def test_a_fine_tuned_prediction_runs_the_tail_once(classifier, shape_images, monkeypatch):
    """With an adapted tail, live predictions go trunk -> adapted tail (not trunk -> own tail -> adapted tail
    on fp16 maps), and agree with the cached-map path the folder uses."""
    classifier.finetune(budget_s=2.0, max_steps=5, lr=1e-3)
    backbone = classifier.embedder.backbone
    tails = []
    forward_tail = backbone.forward_tail
    monkeypatch.setattr(backbone, "forward_tail", lambda m, tail=None: (tails.append(tail), forward_tail(m, tail))[1])
    queries = [shape_images["circle"][11], shape_images["triangle"][11]]
    live = classifier.embed(queries)
    assert tails == [classifier.adapted_tail]
    _, maps = classifier.embed_tensor_with_maps(preprocess(queries, classifier.embedder.config))
    assert torch.allclose(live, classifier.features_from_maps(maps), atol=5e-3)
    classifier.reset_finetune()


def test_save_load_round_trip(classifier, shape_images, embedder, tmp_path):
    classifier.finetune(budget_s=2.0, max_steps=5, lr=1e-3)
    classifier.unknown = 0.4
    path = tmp_path / "state.safetensors"
    classifier.save(path)
    loaded = FewShotClassifier.load(path, embedder)
    assert loaded.classes == classifier.classes
    assert set(loaded.examples) == set(classifier.examples)
    assert loaded.unknown == 0.4 and loaded.adapted_tail is not None
    queries = [shape_images["circle"][11], shape_images["triangle"][11]]
    a, b = classifier.predict(queries), loaded.predict(queries)
    assert [p.label for p in a] == [p.label for p in b]
    assert [p.probability for p in a] == pytest.approx([p.probability for p in b], abs=1e-4)


def test_state_from_newer_version_or_garbage_is_refused(classifier, embedder, tmp_path):
    import json

    from safetensors.torch import save_file

    newer = tmp_path / "newer.safetensors"
    save_file({"features": torch.zeros(1, 1280)}, str(newer), metadata={"protolabel": json.dumps(
        {"format": "protolabel-classifier", "format_version": 999, "backbone": "efficientnet_lite0"})})
    with pytest.raises(StateError, match="newer"):
        FewShotClassifier.load(newer, embedder)
    pickle_file = tmp_path / "evil.safetensors"
    pickle_file.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)
    with pytest.raises(StateError):
        FewShotClassifier.load(pickle_file, embedder)


@pytest.mark.slow
def test_finetune_improves_a_small_task(embedder):
    """Shapes in loud clutter, 8 examples per class: adapting the tail must raise held-out accuracy.
    Three tasks (seeds 0-2, not picked); measured on the 2-core VM, 2026-11-27: 75->83%, 78->80%, 57->75% (lr 3e-3, 30 steps)."""
    kinds = ("circle", "square", "triangle")
    before, after = [], []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        clf = FewShotClassifier(embedder, unknown="off")
        for k in kinds:
            clf.add_examples(k, [draw_in_clutter(k, rng) for _ in range(8)])
        queries = [draw_in_clutter(k, rng) for k in kinds for _ in range(20)]
        truth = [k for k in kinds for _ in range(20)]
        before.append(np.mean([p.label == t for p, t in zip(clf.predict(queries), truth)]))
        result = clf.finetune(budget_s=60, max_steps=30, lr=3e-3, seed=seed)
        assert result.steps == 30 and not result.cancelled
        after.append(np.mean([p.label == t for p, t in zip(clf.predict(queries), truth)]))
    assert np.mean(after) >= np.mean(before) + 0.05, (before, after)
    assert min(a - b for a, b in zip(after, before)) >= -0.05, (before, after)


def test_auto_learning_rate_cross_validates_and_keeps_weights_without_enough_examples(embedder, shape_images):
    clf = FewShotClassifier(embedder)
    for k in ("circle", "square"):
        clf.add_examples(k, shape_images[k][:3])
    result = clf.finetune(budget_s=20, max_steps=6)
    assert set(result.lr_scores) == {0.0, 1e-4, 3e-4, 1e-3}  # lr 0 (no change) competes with the grid
    assert all(0 <= v <= 100 for v in result.lr_scores.values())
    assert (result.lr == 0.0) == (result.tail_state is None)
    one_shot = FewShotClassifier(embedder)
    one_shot.add_examples("circle", shape_images["circle"][:1])
    one_shot.add_examples("square", shape_images["square"][:2])
    kept = one_shot.finetune(budget_s=5)
    assert kept.lr == 0.0 and kept.tail_state is None and "2+ examples" in kept.message
    assert one_shot.adapted_tail is None


def test_one_class_confidence_says_how_close_the_query_is(embedder, shape_images):
    skimage_data = pytest.importorskip("skimage.data")
    clf = FewShotClassifier(embedder)
    clf.add_examples("circle", shape_images["circle"][:4])
    near, far = clf.predict([shape_images["circle"][5], skimage_data.astronaut()])
    assert near.label == "circle" and far.is_unknown
    assert near.probability > 0.5 > far.probability
    assert near.topk == [("circle", near.probability)]
