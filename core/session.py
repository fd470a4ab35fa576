"""The labeling session: a folder, its features, the model's predictions and the person's labels.

One implementation of the labeling loop. The window's engine thread drives it (a thin thread + signals
adapter) and so does `protolabel simulate`; neither keeps labels of its own. No Qt, no threads.

Every confirmed label teaches: the folder model is fitted on the classifier's support examples plus every
image the person confirmed (accepted, corrected, or marked "none of these classes"). Each image gets ONE
distribution over the classes and "unknown"; the label shown is its argmax and the probability shown is its
value, so a label never sits beside a higher probability for another class.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import UNKNOWN_LABEL, FewShotClassifier, Prediction
from .embedding import CancelToken
from .labeling import LabelRecord, Progress, label_paths
from .calibration import fit_logit_scale
from .runs import finish

if TYPE_CHECKING:
    from .embedding_cache import EmbeddingCache

__all__ = ["AcceptPreview", "Estimate", "LabelingSession", "SessionOptions"]

_CHUNK = 16384  # rows normalised at a time: bounds the float32 copy of a 100k-image folder


@dataclass(frozen=True)
class SessionOptions:
    """How the folder model scores and orders images (defaults: what `protolabel simulate` measured best)."""

    # Defaults measured with `protolabel simulate` on openclipart and Fashion-MNIST (docs/labeling-effort.md has
    # every variant tried and its figures).
    center: str = "folder"  # folder: centre on the folder's mean feature | none
    head: str = "logistic"  # prototypes | logistic (a linear head fitted to the labels, from the prototypes)
    logistic_min_labels: int = 3  # labels per class on average before the logistic head takes over
    logistic_steps: int = 60
    logistic_l2: float = 1.0  # pull towards the prototype weights, per labeled example
    knn_mix: float = 0.5  # share of each class's nearest labeled image in its score (classes of several kinds)
    unknown: str = "gate"  # gate: P(unknown) from the nearest labeled image being a rejection or a class
    # example, the classes sharing the rest | column: an "unknown" logit beside the classes'
    unknown_floor: float = 0.0  # before any rejection: centred cosine to the nearest labeled image that is as
    # likely unknown as not
    gate_scale: float = 40.0
    reject_knn: int = 1  # column: unknown score = mean similarity of the k nearest rejections
    order: str = "least"  # least: least confident first | margin | random | cover (uncertain, not redundant)
    smooth: float = 0.0  # weight of the folder neighbours' distribution in each image's (label propagation)
    smooth_k: int = 10  # neighbours per image for smoothing and `cover`
    smooth_steps: int = 2
    smooth_max_images: int = 20000  # above this, no neighbour graph (its cost grows with the square)
    temperature: str = "loo"  # loo: prototype scale fitted by leave-one-out on the labels | fixed
    scale: float = 10.0  # cosine logit scale when not fitted

    def with_changes(self, **kw) -> "SessionOptions":
        return replace(self, **kw)


@dataclass(frozen=True)
class Estimate:
    """How many unreviewed labels are probably right (the model's calibrated probabilities summed)."""

    unreviewed: int
    expected_right: float

    @property
    def accuracy(self) -> float:
        return self.expected_right / self.unreviewed if self.unreviewed else 1.0

    def text(self) -> str:
        if not self.unreviewed:
            return "every label reviewed"
        return f"about {100 * self.accuracy:.0f}% of {self.unreviewed:,} unreviewed labels right"


@dataclass(frozen=True)
class AcceptPreview:
    """What "Accept all >= threshold" would confirm."""

    threshold: float
    count: int
    expected_wrong: float

    def text(self) -> str:
        return (f"would confirm {self.count:,} label(s) with confidence ≥ {self.threshold:.2f}; "
                f"about {self.expected_wrong:.0f} of them wrong")


@dataclass
class _Fit:
    """The folder model for one state of the labels: column j < C is class j, column C is unknown."""

    classes: list[str]
    weights: torch.Tensor  # (C, D) on centred, normalised features
    bias: torch.Tensor  # (C,)
    rejected: torch.Tensor  # (R, D) centred, normalised features of "none of these" images
    scale: float
    unknown_floor: float
    reject_knn: int
    prototypes: torch.Tensor  # (C, D) normalised class means: `similarity` is measured to them
    known: torch.Tensor | None = None  # (M, D) labeled class examples, for the gate
    gate_scale: float = 0.0
    known_labels: torch.Tensor | None = None  # (M,) their classes
    knn_mix: float = 0.0  # share of the nearest-example score in the class logits

    def class_logits(self, z: torch.Tensor, sims: torch.Tensor | None = None) -> torch.Tensor:
        """(Q, D) -> (Q, C): the head's logits, mixed with each class's nearest labeled example (scaled
        cosine) when knn_mix > 0: classes made of several kinds of picture are not one prototype.
        sims: (Q, M) similarities to the labeled class examples, when already computed."""
        cls = z @ self.weights.T + self.bias
        if self.knn_mix > 0 and self.known_labels is not None and len(self.known_labels):
            sims = z @ self.known.T if sims is None else sims
            nearest = torch.full((len(z), len(self.classes)), -1.0).scatter_reduce(
                1, self.known_labels.expand(len(z), -1), sims, "amax")
            cls = (1 - self.knn_mix) * cls + self.knn_mix * self.scale * nearest
        return cls

    def probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """(Q, D) centred normalised -> (Q, C + 1) probabilities; the last column is "unknown"."""
        if self.gate_scale <= 0:
            return self.logits(z).softmax(1)
        sims = z @ self.known.T
        cls = self.class_logits(z, sims).softmax(1)
        near_known = sims.max(1).values
        if len(self.rejected):
            near_rejected = (z @ self.rejected.T).max(1).values
        else:
            near_rejected = torch.full_like(near_known, self.unknown_floor)
        pu = torch.sigmoid(self.gate_scale * (near_rejected - near_known))
        return torch.cat([(1 - pu)[:, None] * cls, pu[:, None]], 1)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """(Q, D) centred normalised -> (Q, C + 1) logits; the last column is "unknown"."""
        cls = self.class_logits(z)
        if len(self.rejected):
            k = min(self.reject_knn, len(self.rejected))
            unk = (z @ self.rejected.T).topk(k, dim=1).values.mean(1)
        else:
            unk = torch.full((len(z),), self.unknown_floor)
        return torch.cat([cls, (self.scale * unk)[:, None]], 1)


class LabelingSession:
    """See the module docstring. Rows follow ``paths``; a row is usable once embedded.

    confirmed: path -> a class name or UNKNOWN_LABEL ("none of these classes"). Confirmed images of a class
    are also examples of it for the folder model (not for the live view: those are the classifier's own).
    """

    def __init__(self, classifier: FewShotClassifier, root: str, paths: Sequence[str],
                 options: SessionOptions | None = None) -> None:
        self.classifier = classifier
        self.options = options or SessionOptions()
        self.root = root
        self.paths = [str(p) for p in paths]
        self.row = {p: i for i, p in enumerate(self.paths)}
        dim = classifier.embedder.backbone.feature_dim if classifier.embedder is not None else 0
        self.features = torch.zeros(len(self.paths), dim, dtype=torch.float16)  # half: 100k files ~ 250 MB
        self.embedded = torch.zeros(len(self.paths), dtype=torch.bool)
        self.confirmed: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        # Predictions, one row per path (valid where `predicted`): column index (C = unknown), probability.
        self.classes: list[str] = []
        self.probs = torch.zeros(len(self.paths), 1)
        self.predicted = torch.zeros(len(self.paths), dtype=torch.bool)
        self.similarity = torch.zeros(len(self.paths))
        self._label_version = 0  # bumped by every change of labels or features
        self._predicted_version: tuple[int, int] | None = None  # (classifier generation, label version)
        self._priority: torch.Tensor | None = None  # of the current predictions
        self._z: torch.Tensor | None = None  # centred normalised features (float32), rebuilt when features change
        self._center: torch.Tensor | None = None
        self._knn: tuple | None = None
        self._rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ features
    def set_features(self, paths: Sequence[str], features: torch.Tensor) -> None:
        """(len(paths), D) features of these files (already embedded elsewhere, e.g. a feature table)."""
        if not len(paths):
            return
        rows = torch.as_tensor([self.row[p] for p in paths])
        self.features[rows] = features.to(torch.float16)
        self.embedded[rows] = True
        self._z = None
        self._label_version += 1

    def embed(self, cache: "EmbeddingCache | None" = None, cancel: CancelToken | None = None,
              paths: Sequence[str] | None = None, chunk: int = 128) -> Iterator[Progress]:
        """Embed files (all by default) in chunks through core.labeling; yields Progress after each chunk.
        Unreadable files land in ``skipped`` with the reason."""
        todo = list(self.paths if paths is None else paths)
        done = 0
        for i in range(0, len(todo), chunk):
            if cancel is not None and cancel.cancelled:
                break
            part = todo[i : i + chunk]
            run = finish(label_paths(self.classifier, part, transductive=False, cancel=cancel, cache=cache,
                                     predict=False))
            for s in run.skipped:
                self.skipped[s.path] = s.reason
            if run.paths:
                self.set_features(run.paths, run.features)
            done += len(part)
            yield Progress("embedding", done, len(todo), len(self.skipped))

    def feature(self, path: str) -> torch.Tensor | None:
        i = self.row.get(path)
        return self.features[i].float() if i is not None and bool(self.embedded[i]) else None

    def _normalised(self) -> torch.Tensor:
        """(N, D) float32 centred, L2-normalised features (zeros for rows not embedded)."""
        if self._z is None:
            rows = self.embedded.nonzero().flatten()
            dim = self.features.shape[1]
            center = torch.zeros(dim)
            if self.options.center == "folder" and len(rows):
                for i in range(0, len(rows), _CHUNK):
                    center += self.features[rows[i : i + _CHUNK]].float().sum(0)
                center /= len(rows)
            self._center = center
            z = torch.zeros(len(self.paths), dim)
            for i in range(0, len(self.paths), _CHUNK):
                part = self.features[i : i + _CHUNK].float()
                z[i : i + _CHUNK] = F.normalize(part - center, dim=-1)
            z[~self.embedded] = 0
            self._z = z
        return self._z

    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(N, k) indices and cosine similarities of each embedded row's nearest other rows; None when the
        folder is too big for the graph. Rebuilt when the features change."""
        if self._knn is None or self._knn[0] is not self._z:
            z = self._normalised()
            n, k = len(z), self.options.smooth_k
            if n > self.options.smooth_max_images or n <= k:
                self._knn = (self._z, None)
            else:
                idx = torch.empty(n, k, dtype=torch.long)
                val = torch.empty(n, k)
                for i in range(0, n, 2048):
                    sims = z[i : i + 2048] @ z.T
                    rows = torch.arange(i, min(i + 2048, n))
                    sims[rows - i, rows] = -2  # not its own neighbour
                    sims[:, ~self.embedded] = -2
                    v, j = sims.topk(k, dim=1)
                    idx[i : i + 2048], val[i : i + 2048] = j, v
                self._knn = (self._z, (idx, val))
        return self._knn[1]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        self._normalised()
        return F.normalize(x.float() - self._center, dim=-1)

    # ------------------------------------------------------------------ the person's labels
    def _ensure_class(self, name: str) -> None:
        if name != UNKNOWN_LABEL and name not in self.classifier.classes:
            self.classifier.add_class(name)

    def confirm(self, paths: Sequence[str], label: str) -> list[str]:
        """The person says these images are `label` (a class, created if new, or UNKNOWN_LABEL for "none of
        these classes"). -> the paths taken (those in the folder)."""
        self._ensure_class(label)
        took = [p for p in paths if p in self.row]
        for p in took:
            self.confirmed[p] = label
        if took:
            self._label_version += 1
        return took

    def reject(self, paths: Sequence[str]) -> list[str]:
        """"None of these classes": confirms "unknown" and teaches it."""
        return self.confirm(paths, UNKNOWN_LABEL)

    def accept(self, paths: Sequence[str]) -> list[str]:
        """Confirm the shown label of each image (unconfirmed, predicted ones). -> the paths confirmed."""
        took = []
        for p in paths:
            if p in self.confirmed:
                continue
            label = self.label_of(p)
            if label:
                self.confirmed[p] = label
                took.append(p)
        if took:
            self._label_version += 1
        return took

    def set_confirmed(self, labels: dict[str, str | None]) -> list[str]:
        """Put the person's labels back as they were (an undo or redo): path -> label, or None for "not
        confirmed". Paths outside the folder are ignored; no class is created. -> the paths changed."""
        took = []
        for p, label in labels.items():
            if p not in self.row or self.confirmed.get(p) == label:
                continue
            if label is None:
                del self.confirmed[p]
            else:
                self.confirmed[p] = label
            took.append(p)
        if took:
            self._label_version += 1
        return took

    def rename_class(self, old: str, new: str) -> None:
        self.confirmed = {p: (new if c == old else c) for p, c in self.confirmed.items()}
        self._label_version += 1

    def remove_class(self, name: str) -> None:
        self.confirmed = {p: c for p, c in self.confirmed.items() if c != name}
        self._label_version += 1

    def accept_candidates(self, threshold: float) -> list[str]:
        """Unconfirmed images whose shown class label has probability >= threshold ("unknown" is never
        accepted in bulk)."""
        self.predict()
        C = len(self.classes)
        p, col = self.probs.max(1) if len(self.probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        ok = self.predicted & (col < C) & (p >= threshold - 1e-9)
        return [self.paths[i] for i in ok.nonzero().flatten().tolist() if self.paths[i] not in self.confirmed]

    def preview_accept_above(self, threshold: float) -> AcceptPreview:
        paths = self.accept_candidates(threshold)
        rows = torch.as_tensor([self.row[p] for p in paths], dtype=torch.long)
        wrong = float((1 - self.probs[rows].max(1).values).sum()) if len(rows) else 0.0
        return AcceptPreview(threshold, len(paths), wrong)

    def accept_above(self, threshold: float) -> list[str]:
        return self.accept(self.accept_candidates(threshold))

    # ------------------------------------------------------------------ the folder model
    def _labeled(self) -> tuple[torch.Tensor, list[str], list[str]]:
        """-> centred normalised features (M, D) of every labeled example (support + confirmed), their
        labels (class names or UNKNOWN_LABEL), and the classes in classifier order that have any."""
        z_all = self._normalised()
        confirmed_rows, confirmed_labels = [], []
        known = set(self.classifier.classes) | {UNKNOWN_LABEL}
        for p, label in self.confirmed.items():
            i = self.row.get(p)
            if i is not None and bool(self.embedded[i]) and label in known:
                confirmed_rows.append(i)
                confirmed_labels.append(label)
        feats = [z_all[torch.as_tensor(confirmed_rows, dtype=torch.long)]] if confirmed_rows else []
        labels = list(confirmed_labels)
        # The classifier's own examples, except folder images already counted as confirmed.
        support = [e for e in self.classifier.examples.values() if not (e.source and e.source in self.confirmed)]
        if support:
            feats.append(self._normalise(torch.stack([e.feature for e in support])))
            labels += [e.class_name for e in support]
        z = torch.cat(feats) if feats else torch.zeros(0, z_all.shape[1])
        present = set(labels)
        classes = [c for c in self.classifier.classes if c in present]
        return z, labels, classes

    def _fit_model(self) -> _Fit | None:
        opts = self.options
        z, labels, classes = self._labeled()
        if not classes:
            return None
        C = len(classes)
        index = {c: i for i, c in enumerate(classes)}
        is_class = torch.as_tensor([name in index for name in labels], dtype=torch.bool)
        y = torch.as_tensor([index.get(name, C) for name in labels], dtype=torch.long)
        zc, yc = z[is_class], y[is_class]
        rejected = z[~is_class]
        sums = torch.zeros(C, z.shape[1]).index_add_(0, yc, zc)
        counts = torch.bincount(yc, minlength=C).float()
        protos = F.normalize(sums / counts[:, None], dim=-1)
        scale = opts.scale
        if opts.temperature == "loo":
            scale = _loo_scale(zc, yc, sums, counts, opts)
        weights, bias = scale * protos, torch.zeros(C)
        if opts.head == "logistic" and C >= 2 and len(yc) >= opts.logistic_min_labels * C:
            weights, bias = _logistic(zc, yc, C, weights, opts, scale)
        fit = _Fit(classes, weights, bias, rejected, scale, opts.unknown_floor, opts.reject_knn, protos)
        fit.known, fit.known_labels, fit.knn_mix = zc, yc, opts.knn_mix
        if opts.unknown == "gate":
            fit.gate_scale = opts.gate_scale
        return fit

    def predict(self, force: bool = False) -> bool:
        """Predict every embedded image with the current labels; cached until something changes.
        -> True when predictions were (re)made."""
        version = (self.classifier.generation, self._label_version)
        if not force and version == self._predicted_version:
            return False
        self._predicted_version = version
        self._priority = None
        fit = self._fit_model()
        n = len(self.paths)
        if fit is None:
            self.classes = []
            self.probs = torch.zeros(n, 1)
            self.predicted = torch.zeros(n, dtype=torch.bool)
            return True
        z = self._normalised()
        self.classes = list(fit.classes)
        probs = torch.empty(n, len(fit.classes) + 1)
        sims = torch.empty(n)
        with torch.inference_mode():
            for i in range(0, n, _CHUNK):
                zi = z[i : i + _CHUNK]
                probs[i : i + _CHUNK] = fit.probabilities(zi)
                sims[i : i + _CHUNK] = (zi @ fit.prototypes.T).max(1).values
        if self.options.smooth > 0:
            probs = self._smoothed(probs)
        self.probs = probs
        self.similarity = sims
        self.predicted = self.embedded.clone()
        return True

    def _smoothed(self, probs: torch.Tensor) -> torch.Tensor:
        """Each image's distribution mixed with its folder neighbours' (similarity-weighted), a few steps:
        pictures in a tight group end up agreeing; confirmed rows stay one-hot sources."""
        graph = self._neighbours()
        if graph is None:
            return probs
        idx, val = graph
        w = val.clamp(min=0)
        w = w / w.sum(1, keepdim=True).clamp(min=1e-6)
        fixed = torch.zeros(len(self.paths), dtype=torch.bool)
        target = probs.clone()
        names = self.classes + [UNKNOWN_LABEL]
        col = {c: j for j, c in enumerate(names)}
        for p, label in self.confirmed.items():
            if label in col:
                i = self.row[p]
                target[i] = 0
                target[i, col[label]] = 1
                fixed[i] = True
        cur = target
        a = self.options.smooth
        for _ in range(self.options.smooth_steps):
            cur = (1 - a) * target + a * (w[:, :, None] * cur[idx]).sum(1)
            cur[fixed] = target[fixed]
        return cur

    # ------------------------------------------------------------------ what the grid shows
    def _column_name(self, col: int) -> str:
        return self.classes[col] if col < len(self.classes) else UNKNOWN_LABEL

    def label_of(self, path: str) -> str:
        """The label shown for an image: the person's, else the model's ("" while not predicted)."""
        if path in self.confirmed:
            return self.confirmed[path]
        i = self.row.get(path)
        if i is None or not bool(self.predicted[i]):
            return ""
        return self._column_name(int(self.probs[i].argmax()))

    def prediction(self, path: str, topk: int = 3) -> Prediction | None:
        """The model's prediction for one image (None while not predicted); probability = the shown label's."""
        i = self.row.get(path)
        if i is None or not bool(self.predicted[i]):
            return None
        return self._prediction_of_row(i, topk)

    def _prediction_of_row(self, i: int, topk: int) -> Prediction:
        p = self.probs[i]
        k = min(topk, len(p))
        top_p, top_i = p.topk(k)
        names = [(self._column_name(int(j)), float(v)) for v, j in zip(top_p, top_i)]
        best_class = self.classes[int(p[:-1].argmax())] if len(self.classes) else None
        return Prediction(names[0][0], names[0][1], names, float(self.similarity[i]), best_class)

    def shown(self, topk: int = 3) -> list[tuple[str, str, float, float, list[tuple[str, float]], float]]:
        """Every row as the grid shows it, computed in bulk (a 100k-image folder in well under a second):
        (label, source, confidence, similarity, topk, priority); label "" while not predicted, source
        "confirmed" or "predicted"."""
        n = len(self.paths)
        if len(self.classes) and bool(self.predicted.any()):
            k = min(topk, self.probs.shape[1])
            top_p, top_i = self.probs.topk(k, dim=1)
            names = self.classes + [UNKNOWN_LABEL]
            top_p, top_i = top_p.tolist(), top_i.tolist()
            prio, sims = self.priority().tolist(), self.similarity.tolist()
        else:
            top_p = top_i = [[]] * n
            prio, sims, names = [0.0] * n, [0.0] * n, []
        predicted = self.predicted.tolist()
        out = []
        for i, p in enumerate(self.paths):
            top = [(names[j], v) for j, v in zip(top_i[i], top_p[i])] if predicted[i] else []
            label = self.confirmed.get(p)
            if label is not None:
                out.append((label, "confirmed", 1.0, sims[i] if predicted[i] else 0.0, top, 0.0))
            elif predicted[i]:
                out.append((top[0][0], "predicted", top[0][1], sims[i], top, prio[i]))
            else:
                out.append(("", "predicted", 0.0, 0.0, [], 0.0))
        return out

    def confirmed_prediction(self, path: str) -> Prediction:
        """The person's label of `path` as a Prediction (certainty 1; the model's similarity kept)."""
        label = self.confirmed[path]
        i = self.row[path]
        sim = float(self.similarity[i]) if bool(self.predicted[i]) else 0.0
        return Prediction(label, 1.0, [(label, 1.0)], sim, None if label == UNKNOWN_LABEL else label)

    def records(self, topk: int = 3, paths: Sequence[str] | None = None) -> list[LabelRecord]:
        """Every labeled image in path order (or only those of `paths` in the folder, in that order): the
        person's labels ("confirmed"), then the model's ("predicted")."""
        out = []
        rows = ((self.row[p], p) for p in paths if p in self.row) if paths is not None else enumerate(self.paths)
        for i, p in rows:
            if p in self.confirmed:
                out.append(LabelRecord(p, self.confirmed_prediction(p), "confirmed"))
            elif bool(self.predicted[i]):
                out.append(LabelRecord(p, self._prediction_of_row(i, topk), "predicted"))
        return out

    def stale(self) -> bool:
        """The labels or the support changed since the last prediction (and there is something to predict)."""
        return bool(self.embedded.any()) and (self.classifier.generation, self._label_version) != self._predicted_version

    def confidence(self) -> torch.Tensor:
        """(N,) probability of the shown label per row (1 for confirmed rows, 0 where not predicted)."""
        conf = torch.where(self.predicted, self.probs.max(1).values, torch.zeros(len(self.paths)))
        for p in self.confirmed:
            conf[self.row[p]] = 1.0
        return conf

    def unreviewed_rows(self) -> torch.Tensor:
        mask = self.predicted.clone()
        for p in self.confirmed:
            mask[self.row[p]] = False
        return mask.nonzero().flatten()

    def review_order(self, limit: int | None = None) -> list[str]:
        """Unconfirmed predicted images in the order the grid shows them by default (review these first)."""
        self.predict()
        rows = self.unreviewed_rows()
        if not len(rows):
            return []
        priority = self.priority()[rows]
        order = rows[torch.argsort(priority, stable=True)]
        if limit is not None:
            order = order[:limit]
        return [self.paths[i] for i in order.tolist()]

    def priority(self) -> torch.Tensor:
        """(N,) review priority per row, lower first (meaningful for unreviewed predicted rows); fixed until
        the next prediction, so the grid and the review order agree."""
        if self._priority is None or len(self._priority) != len(self.paths):
            self._priority = self._compute_priority()
        return self._priority

    def _compute_priority(self) -> torch.Tensor:
        opts = self.options
        n = len(self.paths)
        if not len(self.classes):
            return torch.zeros(n)
        top2 = self.probs.topk(min(2, self.probs.shape[1]), dim=1).values
        if opts.order == "margin" and top2.shape[1] == 2:
            return top2[:, 0] - top2[:, 1]
        if opts.order == "random":
            return torch.from_numpy(self._rng.random(n)).float()
        if opts.order == "cover":
            return self._cover_priority(1 - top2[:, 0])
        return top2[:, 0]

    def _cover_priority(self, uncertainty: torch.Tensor, picks: int = 50) -> torch.Tensor:
        """Greedy: the image whose not-yet-covered neighbourhood (itself + its k nearest) holds the most
        uncertainty comes first; its neighbourhood is then covered, so one batch doesn't spend ten reviews on
        ten near-copies. Neighbourhoods of confirmed images start covered. After `picks`, least confident."""
        graph = self._neighbours()
        base = 1 - uncertainty  # least confident first, for everything after the greedy picks
        if graph is None:
            return base
        idx, _ = graph
        open_ = self.predicted.clone()
        conf_rows = torch.as_tensor([self.row[p] for p in self.confirmed], dtype=torch.long)
        if len(conf_rows):
            open_[conf_rows] = False
            open_[idx[conf_rows].flatten()] = False
        candidates = self.predicted.clone()
        if len(conf_rows):
            candidates[conf_rows] = False
        u = uncertainty.clone()
        priority = base + 2.0  # greedy picks get priorities below every other row
        for rank in range(min(picks, int(candidates.sum()))):
            hood_open = open_[idx].float()  # (N, k)
            gain = u * open_.float() + (u[idx] * hood_open).sum(1)
            gain[~candidates] = -1
            best = int(gain.argmax())
            if gain[best] <= 0:
                break
            priority[best] = rank / picks
            candidates[best] = False
            open_[best] = False
            open_[idx[best]] = False
        return priority

    def estimate(self) -> Estimate:
        """Expected number of right labels among unreviewed predicted images."""
        self.predict()
        rows = self.unreviewed_rows()
        if not len(rows):
            return Estimate(0, 0.0)
        return Estimate(len(rows), float(self.probs[rows].max(1).values.sum()))


def _loo_scale(zc: torch.Tensor, yc: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
               opts: SessionOptions) -> float:
    """Cosine logit scale that minimises leave-one-out NLL on the labeled examples (each scored against
    its own class's prototype without it)."""
    C = len(counts)
    own = counts[yc]
    held = own >= 2
    if C < 2 or int(held.sum()) < 4:
        return opts.scale
    cos = zc @ F.normalize(sums, dim=-1).T
    loo = F.normalize(sums[yc] - zc, dim=-1)
    cos[torch.arange(len(zc)), yc] = (zc * loo).sum(1)
    return fit_logit_scale(cos[held], yc[held])


def _logistic(zc: torch.Tensor, yc: torch.Tensor, C: int, w0: torch.Tensor, opts: SessionOptions,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, D) labeled class examples, (M,) their classes -> a linear head (C, D), (C,) started from (and
    pulled towards) the prototype weights w0."""
    w = w0.clone().requires_grad_(True)
    b = torch.zeros(C, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=opts.logistic_steps, line_search_fn="strong_wolfe")
    lam = opts.logistic_l2 / max(1, len(yc))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(zc @ w.T + b, yc) + lam * ((w - w0) ** 2).sum() / (scale ** 2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
