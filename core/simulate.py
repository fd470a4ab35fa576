"""`protolabel simulate`: a simulated annotator labels a folder through the LabelingSession, counting actions.

The annotator knows the truth (ROOT is a folder of class folders). It creates each class with `start`
examples taken from the folder, then in rounds reviews the `batch` images the grid shows first (its default
order), one action per image: accept when the shown label is right, else correct it (a class, or "none of
these classes" for pictures of the `other_classes` it never creates). After each round the session predicts
again. Folder accuracy = confirmed labels plus the session's predictions for the rest, "unknown" counting as
wrong for pictures of a created class and right for the others.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .classifier import UNKNOWN_LABEL, FewShotClassifier
from .embedding import CancelToken, Embedder
from .evaluation import FeatureTable
from .session import LabelingSession, SessionOptions

__all__ = ["SimulationProgress", "SimulationResult", "simulate", "plot_curves", "TARGETS"]

TARGETS = (90, 95, 98)


@dataclass
class SimulationProgress:
    stage: str
    done: int
    total: int


@dataclass
class TrialResult:
    images: int
    actions_to: dict[int, int | None]  # target percent -> actions when first reached (None: never)
    start_accuracy: float  # percent, after the classes were created, before any review
    estimate_errors: list[float]  # estimated - true unreviewed accuracy, points, one per round
    false_unknown: float | None  # percent of created-class pictures called unknown after the first round
    caught_unknown: float | None  # percent of other-class pictures called unknown once 3 were rejected
    round_seconds: list[float]
    curve: list[tuple[int, float]]  # (actions, folder accuracy percent)


@dataclass
class SimulationResult:
    trials: list[TrialResult]
    targets: tuple[int, ...] = TARGETS
    options: dict = field(default_factory=dict)

    def actions_per_image(self) -> dict[str, float]:
        """Mean over trials of actions / images to reach each target; never reached counts as 1.0."""
        out = {}
        for t in self.targets:
            vals = [(tr.actions_to[t] / tr.images) if tr.actions_to[t] is not None else 1.0 for tr in self.trials]
            out[str(t)] = round(float(np.mean(vals)), 3)
        return out

    def summary(self) -> dict:
        def mean(vals):
            vals = [v for v in vals if v is not None]
            return round(float(np.mean(vals)), 2) if vals else None

        return {
            "actions_per_image": self.actions_per_image(),
            "start_accuracy": mean([t.start_accuracy for t in self.trials]),
            "estimate_error": mean([abs(e) for t in self.trials for e in t.estimate_errors]),
            "estimate_bias": mean([e for t in self.trials for e in t.estimate_errors]),
            "false_unknown": mean([t.false_unknown for t in self.trials]),
            "caught_unknown": mean([t.caught_unknown for t in self.trials]),
            "seconds_per_round": round(float(np.mean([s for t in self.trials for s in t.round_seconds])), 4),
            "hand_labeling": self.hand_labeling(),
            "images": int(np.mean([t.images for t in self.trials])),
        }

    def hand_labeling(self) -> dict[str, float]:
        """Labeling every image by hand (one action each, classes created first) to reach each target."""
        return {str(t): round(float(np.mean([(tr.curve[0][0] + math.ceil(t / 100 * tr.images)) / tr.images
                                            for tr in self.trials])), 3) for t in self.targets}


def _pick(table: FeatureTable, rng: np.random.Generator, n_classes: int, n_other: int, per_class: int):
    per = table.items_per_class()
    eligible = [c for c, rows in enumerate(per) if rows]
    if len(eligible) < n_classes + n_other:
        raise ValueError(f"{n_classes} classes and {n_other} other classes need {n_classes + n_other} class folders; "
                         f"found {len(eligible)}")
    chosen = rng.choice(eligible, n_classes + n_other, replace=False)
    rows, truth = [], []
    for k, c in enumerate(chosen):
        take = rng.permutation(per[c])[:per_class]
        rows += take.tolist()
        truth += [table.class_names[c] if k < n_classes else UNKNOWN_LABEL] * len(take)
    return [table.class_names[c] for c in chosen[:n_classes]], rows, truth


def _run_trial(table: FeatureTable, embedder: Embedder, rng: np.random.Generator, n_classes: int, n_other: int,
               per_class: int, start: int, batch: int, options: SessionOptions, targets: Sequence[int],
               max_actions: int | None, accept_above: float | None = None) -> TrialResult:
    class_names, rows, truth_list = _pick(table, rng, n_classes, n_other, per_class)
    paths = [table.paths[r] for r in rows]
    truth = dict(zip(paths, truth_list))
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    paths = [paths[i] for i in order]
    feats = table.features[torch.as_tensor([rows[i] for i in order])]
    n = len(paths)
    session = LabelingSession(FewShotClassifier(embedder), "", paths, options)
    session.set_features(paths, feats)
    actions = 0
    for name in class_names:  # one action per class created (with its first example), one per further example
        members = [p for p in paths if truth[p] == name]
        session.confirm(list(rng.permutation(members)[:start]), name)
        actions += max(1, min(start, len(members)))
    in_class = [p for p in paths if truth[p] != UNKNOWN_LABEL]
    other = [p for p in paths if truth[p] == UNKNOWN_LABEL]

    def right() -> int:
        return sum(session.label_of(p) == truth[p] for p in paths)

    reached: dict[int, int | None] = {t: None for t in targets}
    curve: list[tuple[int, float]] = []

    def record(correct: int) -> None:
        acc = 100.0 * correct / n
        curve.append((actions, acc))
        for t in targets:
            if reached[t] is None and acc >= t - 1e-9:
                reached[t] = actions

    def unknown_share(group: list[str]) -> float | None:
        left = [p for p in group if p not in session.confirmed]
        return 100.0 * sum(session.label_of(p) == UNKNOWN_LABEL for p in left) / len(left) if left else None

    round_seconds, estimate_errors = [], []
    false_unknown = caught_unknown = None

    def show_round():
        """What the grid shows after a change: predictions, the first `batch` to review, the estimate (timed)."""
        t0 = time.perf_counter()
        session.predict()
        shown, estimate = session.review_order(batch), session.estimate()
        round_seconds.append(time.perf_counter() - t0)
        return shown, estimate

    shown, estimate = show_round()
    correct = right()
    start_accuracy = 100.0 * correct / n
    record(correct)
    rounds = 0
    while shown and any(v is None for v in reached.values()):
        if max_actions is not None and actions >= max_actions:
            break
        unreviewed = session.unreviewed_rows().tolist()
        if unreviewed:
            true_acc = sum(session.label_of(session.paths[i]) == truth[session.paths[i]] for i in unreviewed)
            estimate_errors.append(100.0 * estimate.accuracy - 100.0 * true_acc / len(unreviewed))
        for p in shown:
            label = session.label_of(p)
            if label == truth[p]:
                session.accept([p])
            else:
                session.confirm([p], truth[p])
                correct += 1
            actions += 1
            record(correct)
        rounds += 1
        shown, estimate = show_round()
        correct = right()
        record(correct)
        if rounds == 1:
            false_unknown = unknown_share(in_class)
        rejected = sum(1 for p in other if session.confirmed.get(p) == UNKNOWN_LABEL)
        if caught_unknown is None and other and rejected >= 3:
            caught_unknown = unknown_share(other)
        if accept_above is not None and session.preview_accept_above(accept_above).count >= batch:
            # "Accept all >= t" when it would confirm at least a batch's worth (one action): those labels become
            # confirmed, right or wrong, and teach; then the grid shows the next batch.
            session.accept_above(accept_above)
            actions += 1
            shown = session.review_order(batch)
            estimate = session.estimate()
            correct = right()  # the confirmed labels taught: the other predictions may have changed
            record(correct)
    return TrialResult(n, reached, start_accuracy, estimate_errors, false_unknown, caught_unknown, round_seconds,
                       curve)


def simulate(table: FeatureTable, embedder: Embedder, classes: int = 10, per_class: int = 40, other_classes: int = 2,
             start: int = 1, batch: int = 10, trials: int = 5, seed: int = 0, options: SessionOptions | None = None,
             targets: Sequence[int] = TARGETS, max_actions: int | None = None,
             cancel: CancelToken | None = None,
             accept_above: float | None = None) -> Generator[SimulationProgress, None, SimulationResult]:
    """Yields SimulationProgress per trial, returns the SimulationResult (also when cancelled: the trials done).
    accept_above: after each round the annotator also uses "Accept all >= t" (one action) when it would
    confirm at least `batch` labels."""
    options = options or SessionOptions()
    rng = np.random.default_rng(seed)
    done: list[TrialResult] = []
    yield SimulationProgress("simulating", 0, trials)
    for k in range(trials):
        if cancel is not None and cancel.cancelled:
            break
        done.append(_run_trial(table, embedder, rng, classes, other_classes, per_class, start, batch, options,
                               targets, max_actions, accept_above))
        yield SimulationProgress("simulating", k + 1, trials)
    from dataclasses import asdict

    return SimulationResult(done, tuple(targets), asdict(options))


def plot_curves(results: dict[str, SimulationResult], out: str, width: int = 900, height: int = 560) -> str:
    """Folder accuracy against actions per image, the mean over trials of each result (a PNG, drawn with OpenCV)."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 30, 60
    w, h = width - left - right, height - top - bottom
    xmax, ymin = 1.0, 40.0

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(left + w * min(x, xmax) / xmax), int(top + h * (1 - (max(y, ymin) - ymin) / (100 - ymin)))

    grey, black = (200, 200, 200), (0, 0, 0)
    for y in range(40, 101, 10):
        cv2.line(img, pt(0, y), pt(xmax, y), grey, 1)
        cv2.putText(img, f"{y}%", (10, pt(0, y)[1] + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1, cv2.LINE_AA)
    for x in np.arange(0, 1.01, 0.1):
        cv2.line(img, pt(x, ymin), pt(x, 100), grey, 1)
        cv2.putText(img, f"{x:.1f}", (pt(x, ymin)[0] - 12, top + h + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1,
                    cv2.LINE_AA)
    cv2.putText(img, "actions per image", (left + w // 2 - 70, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.55, black, 1,
                cv2.LINE_AA)
    cv2.putText(img, "folder labeled right", (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, black, 1, cv2.LINE_AA)
    colors = [(0, 120, 230), (40, 160, 40), (200, 60, 60), (150, 60, 170), (0, 160, 200)]
    grid = np.linspace(0, 1, 201)
    for k, (name, result) in enumerate(results.items()):
        ys = []
        for tr in result.trials:
            xs = np.array([a / tr.images for a, _ in tr.curve])
            acc = np.array([v for _, v in tr.curve])
            idx = np.searchsorted(xs, grid, side="right") - 1  # the last point at or before each x
            ys.append(np.where(idx >= 0, acc[np.clip(idx, 0, None)], np.nan))
        with warnings.catch_warnings():  # before a trial's first action its curve has no point yet
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(np.array(ys), 0)
        color = colors[k % len(colors)]
        points = [pt(x, y) for x, y in zip(grid, mean) if not np.isnan(y)]
        cv2.polylines(img, [np.array(points, np.int32)], False, color, 2, cv2.LINE_AA)
        cv2.putText(img, name, (left + w - 300, top + h - 20 - 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1,
                    cv2.LINE_AA)
    cv2.imwrite(out, img)
    return out
