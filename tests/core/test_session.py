"""The labeling session (core.session) and the simulated annotator (core.simulate) on features with a known answer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import UNKNOWN_LABEL, FewShotClassifier
from core.cli import main
from core.evaluation import FeatureTable
from core.session import LabelingSession, SessionOptions
from core.runs import finish
from core.simulate import SimulationResult, simulate


def _clusters(embedder, n_classes: int, per_class: int, noise: float, seed: int = 0, names=None):
    """Features around one random direction per class (+ a shared offset, as real features have)."""
    g = torch.Generator().manual_seed(seed)
    dim = embedder.backbone.feature_dim
    centers = torch.randn(n_classes, dim, generator=g)
    offset = 3 * torch.randn(dim, generator=g)
    feats = torch.cat([c + offset + noise * torch.randn(per_class, dim, generator=g) for c in centers])
    labels = np.repeat(np.arange(n_classes), per_class)
    names = names or [f"class{c}" for c in range(n_classes)]
    paths = [f"/data/{names[c]}/{i:03d}.png" for c, i in zip(labels, range(len(labels)))]
    return FeatureTable(list(names), paths, labels, feats, None)


def _session(embedder, table, options=None) -> LabelingSession:
    s = LabelingSession(FewShotClassifier(embedder), "/data", table.paths, options)
    s.set_features(table.paths, table.features)
    return s


def _truth(table):
    return {p: table.class_names[c] for p, c in zip(table.paths, table.labels)}


def _run(gen):
    return finish(gen)


def test_nothing_is_predicted_before_a_class_has_a_label(embedder):
    table = _clusters(embedder, 2, 3, 0.1)
    s = _session(embedder, table)
    s.predict()
    assert not bool(s.predicted.any())
    assert s.label_of(table.paths[0]) == "" and s.review_order() == []
    assert s.estimate().unreviewed == 0


def test_shown_label_is_the_argmax_of_the_shown_distribution(embedder):
    table = _clusters(embedder, 4, 10, 1.5, seed=1)
    s = _session(embedder, table)
    truth = _truth(table)
    for name in table.class_names:
        s.confirm([next(p for p in table.paths if truth[p] == name)], name)
    s.reject([table.paths[-1]])
    s.predict()
    seen_unknown = False
    for record in s.records():
        pred = record.prediction
        if record.source == "confirmed":
            continue
        probs = [p for _, p in pred.topk]
        assert pred.label == pred.topk[0][0] and pred.probability == max(probs)
        assert probs == sorted(probs, reverse=True)
        seen_unknown |= pred.label == UNKNOWN_LABEL or any(n == UNKNOWN_LABEL for n, _ in pred.topk)
    assert seen_unknown  # "unknown" competes in the same distribution once something was rejected


def test_every_confirmed_label_teaches(embedder):
    # Two tight pairs; the first pair is labeled "a", then one of the second pair is corrected to "b":
    # its twin, never touched, follows.
    table = _clusters(embedder, 2, 2, 0.05, seed=2, names=["a", "b"])
    s = _session(embedder, table)
    a0, a1, b0, b1 = table.paths
    s.confirm([a0], "a")
    s.predict()
    assert s.label_of(b1) != "b"
    s.confirm([b0], "b")
    s.predict()
    assert s.label_of(b1) == "b" and s.label_of(a1) == "a"
    # Accepted labels teach too: confirming the prediction moves the prototype, so the probabilities change.
    before = s.probs.clone()
    assert s.accept([a1]) == [a1] and s.confirmed[a1] == "a"
    s.predict()
    assert not torch.equal(before, s.probs)


def test_none_of_these_classes_teaches_the_unknown_decision(embedder):
    table = _clusters(embedder, 3, 6, 0.3, seed=3, names=["cat", "dog", "other"])
    truth = _truth(table)
    s = _session(embedder, table, SessionOptions(unknown_floor=-1.0))  # nothing is unknown before a rejection
    for name in ("cat", "dog"):
        s.confirm([p for p in table.paths if truth[p] == name][:1], name)
    s.predict()
    others = [p for p in table.paths if truth[p] == "other"]
    assert all(s.label_of(p) != UNKNOWN_LABEL for p in others)  # before: nothing taught it
    assert s.reject(others[:2]) == others[:2]
    assert s.confirmed[others[0]] == UNKNOWN_LABEL and "unknown" not in s.classifier.classes
    s.predict()
    assert all(s.label_of(p) == UNKNOWN_LABEL for p in others[2:])
    assert all(s.label_of(p) == truth[p] for p in table.paths if truth[p] != "other")


def test_review_order_estimate_and_accept_all_preview(embedder):
    table = _clusters(embedder, 3, 8, 1.2, seed=4)
    truth = _truth(table)
    s = _session(embedder, table)
    for name in table.class_names:
        s.confirm([p for p in table.paths if truth[p] == name][:2], name)
    order = s.review_order()
    assert len(order) == len(table.paths) - 6 and not set(order) & set(s.confirmed)
    conf = {p: s.prediction(p).probability for p in order}
    assert [conf[p] for p in order] == sorted(conf[p] for p in order)  # least confident first
    assert s.review_order(5) == order[:5]
    est = s.estimate()
    assert est.unreviewed == len(order)
    assert est.expected_right == pytest.approx(sum(conf.values()), rel=1e-5)
    threshold = float(np.median(list(conf.values())))
    preview = s.preview_accept_above(threshold)
    above = [p for p in order if conf[p] >= threshold - 1e-9 and s.label_of(p) != UNKNOWN_LABEL]
    assert preview.count == len(above)
    assert preview.expected_wrong == pytest.approx(sum(1 - conf[p] for p in above), rel=1e-4)
    assert sorted(s.accept_above(threshold)) == sorted(above)
    assert all(s.confirmed[p] == s.label_of(p) for p in above)


def test_simulate_counts_actions_on_a_folder_with_a_known_answer(embedder):
    # Well separated classes: creating the 3 classes (1 example each) labels all 12 images right, so every
    # target is reached after 3 actions: 3 / 12 = 0.25 actions per image, no review needed.
    table = _clusters(embedder, 3, 4, 0.05, seed=5)
    result = _run(simulate(table, embedder, classes=3, per_class=4, other_classes=0, start=1, batch=2, trials=2))
    assert isinstance(result, SimulationResult) and len(result.trials) == 2
    summary = result.summary()
    assert summary["actions_per_image"] == {"90": 0.25, "95": 0.25, "98": 0.25}
    assert summary["start_accuracy"] == 100.0
    assert summary["hand_labeling"]["95"] == pytest.approx((3 + 12) / 12, abs=1e-3)  # classes + ceil(.95 * 12)


def test_simulate_review_rounds_and_unknowns(embedder):
    # One more class mixed in that the annotator never creates: its 4 tight images start out wrong (a class is
    # shown, "unknown" is right) and least confident, so they are reviewed first; one "none of these classes"
    # teaches the other three: 3 classes created + 1 review = 4 actions for everything right.
    table = _clusters(embedder, 4, 4, 0.05, seed=6)
    result = _run(simulate(table, embedder, classes=3, per_class=4, other_classes=1, start=1, batch=1, trials=1,
                           options=SessionOptions(unknown_floor=-1.0)))
    trial = result.trials[0]
    assert trial.images == 16 and trial.start_accuracy == 75.0
    actions = [a for a, _ in trial.curve]
    assert actions == sorted(actions) and actions[0] == 3
    assert trial.actions_to == {90: 4, 95: 4, 98: 4}
    assert trial.curve[-1] == (4, 100.0)
    assert trial.caught_unknown is None  # measured once 3 were rejected: never needed here


def test_never_reached_counts_as_one(embedder):
    table = _clusters(embedder, 4, 4, 0.05, seed=7)
    result = _run(simulate(table, embedder, classes=3, per_class=4, other_classes=1, start=1, batch=1, trials=1,
                           max_actions=3, options=SessionOptions(unknown_floor=-1.0)))
    assert result.trials[0].actions_to[98] is None
    assert result.actions_per_image()["98"] == 1.0


def test_simulate_command_prints_json_and_draws_the_plot(embedder, shapes_tree, tmp_path, capsys):
    plot = tmp_path / "curve.png"
    code = main(["simulate", str(shapes_tree), "--classes", "2", "--per-class", "3", "--other-classes", "1",
                 "--trials", "1", "--min-images", "2", "--batch", "2", "--plot", str(plot), "--json",
                 "--device", "cpu", "--option", "order=margin"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"actions_per_image", "start_accuracy", "estimate_error", "false_unknown", "caught_unknown",
                        "seconds_per_round"}
    assert 0 < out["actions_per_image"]["95"] <= 1.0
    assert plot.stat().st_size > 1000


def test_simulate_refuses_a_bad_option(shapes_tree, capsys):
    assert main(["simulate", str(shapes_tree), "--option", "nonsense=1"]) == 2
    assert "--option" in capsys.readouterr().err


def test_simulate_accept_all_is_one_action(embedder):
    table = _clusters(embedder, 4, 4, 0.05, seed=6)
    kw = dict(classes=3, per_class=4, other_classes=1, start=1, batch=1, trials=1,
              options=SessionOptions(unknown_floor=-1.0))
    plain = _run(simulate(table, embedder, **kw)).trials[0]
    bulk = _run(simulate(table, embedder, accept_above=0.5, **kw)).trials[0]
    # Same review (3 classes + 1 rejection), then one more action confirms every label >= 0.5 at once.
    assert [a for a, _ in plain.curve][-1] == 4
    assert [a for a, _ in bulk.curve][-1] == 5 and bulk.actions_to == plain.actions_to
