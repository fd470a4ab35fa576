"""Few-shot classifiers on features: one small class per method, one factory (easyfsl style).

A method sees features, not pixels: ``process_support_set(features (N, D), labels (N,))`` then
``forward(query (Q, D)) -> logits (Q, C)``. Transductive methods use the whole query batch at once.
Shared tensor helpers are pure functions.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FewShotMethod",
    "PrototypeClassifier",
    "TransductivePrototypes",
    "available_methods",
    "class_means",
    "cosine_logits",
    "create_method",
    "fit_logit_scale",
    "register_method",
]

DEFAULT_SCALE = 10.0  # cosine logit scale, as P>M>F


def class_means(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N, D), (N,) int -> (C, D) mean feature per class; a class without examples gets zeros."""
    sums = torch.zeros(n_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def centred_prototypes(support: torch.Tensor, labels: torch.Tensor, n_classes: int,
                       center: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The prototypes method's support side, for all its users (the method, fine-tuning's pseudo-episodes and
    checks, meta-training's loss and validation): (N, D) support, (N,) labels -> ((C, D) prototypes, (D,)
    centre). The centre is `center`, else the mean of the class means (class-balanced: no class dominates it);
    a prototype is the class mean of the centred, normalised support."""
    if center is None:
        center = class_means(support, labels, n_classes).mean(0)
    return class_means(F.normalize(support - center, dim=-1), labels, n_classes), center


def centred_cosines(query: torch.Tensor, prototypes: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """(Q, D) queries against centred_prototypes' output -> (Q, C) cosines; times a scale, the logits."""
    return F.normalize(query - center, dim=-1) @ F.normalize(prototypes, dim=-1).T


def cosine_logits(query: torch.Tensor, prototypes: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """(Q, D), (C, D) -> (Q, C) scaled cosine similarities."""
    return scale * F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T


def fit_logit_scale(cos: torch.Tensor, target: torch.Tensor) -> float:
    """(N, C) held-out cosines, (N,) their classes -> the logit scale (1 to 200, log grid) with the least NLL.

    Label smoothing 1/(n+2) (Laplace's rule of succession): n held-out examples all right do not justify
    certainty; without it a separable support drove the scale to the grid's end and every prediction read
    99-100%, which made "least confident first" useless (desktop screenshots)."""
    grid = torch.logspace(0, 2.3, 40)
    smooth = 1.0 / (len(target) + 2)
    nll = torch.stack([F.cross_entropy(t * cos, target, label_smoothing=smooth) for t in grid])
    return float(grid[int(nll.argmin())])


class FewShotMethod(nn.Module):
    """Base: subclasses implement process_support_set and forward."""

    def __init__(self, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.prototypes: torch.Tensor = torch.empty(0)

    def process_support_set(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None) -> None:
        raise NotImplementedError

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def is_transductive() -> bool:
        return False


class PrototypeClassifier(FewShotMethod):
    """SimpleShot-style cosine prototypes on centred, L2-normalised features.

    Centre: a fixed vector when one is given (e.g. the base-data mean stored with a meta-trained model),
    else the class-balanced mean of the support (the mean of class means), so no class dominates it.
    """

    def __init__(self, scale: float = DEFAULT_SCALE, center: torch.Tensor | None = None) -> None:
        super().__init__(scale)
        self.fixed_center = center
        self.center = torch.empty(0)
        self.support_features = torch.empty(0)
        self.support_labels = torch.empty(0, dtype=torch.long)
        self.n_classes = 0

    def _normalise(self, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - center, dim=-1)

    def process_support_set(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None) -> None:
        """features (N, D), labels (N,) in [0, C)."""
        n_classes = int(labels.max().item()) + 1 if n_classes is None else n_classes
        self.n_classes = n_classes
        self.support_features = features
        self.support_labels = labels
        means = class_means(features, labels, n_classes)
        present = torch.bincount(labels, minlength=n_classes) > 0
        if self.fixed_center is not None:
            center = self.fixed_center.to(features)
        elif int(present.sum()) >= 2:
            center = means[present].mean(0)  # classes without examples (a fixed class list) don't pull it
        else:
            # One class: centring on it would map its prototype to zero; keep raw features.
            center = torch.zeros_like(features[0])
        self.prototypes, self.center = centred_prototypes(features, labels, n_classes, center)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C)"""
        return self.scale * centred_cosines(query, self.prototypes, self.center)


class TransductivePrototypes(PrototypeClassifier):
    """Uses the unlabeled query batch too (folder labeling, where every image is known in advance).

    1. Shift the queries so their mean matches the support's (BD-CSPN's cross-class bias removal).
    2. Refine prototypes with soft k-means over support + queries: each query joins every prototype
       with its softmax weight (BD-CSPN's rectification, iterated); support examples keep weight 1.
    """

    def __init__(
        self,
        scale: float = DEFAULT_SCALE,
        center: torch.Tensor | None = None,
        iterations: int = 3,
        assign_scale: float = 10.0,
        query_weight: float = 1.0,
    ) -> None:
        super().__init__(scale, center)
        self.iterations = iterations
        self.assign_scale = assign_scale
        self.query_weight = query_weight

    @staticmethod
    def is_transductive() -> bool:
        return True

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C); all Q queries are used together."""
        if query.shape[0] == 0:
            return query.new_zeros(0, self.n_classes)
        support = self._normalise(self.support_features, self.center)
        q = F.normalize(query - self.center, dim=-1)
        q = F.normalize(q - q.mean(0) + support.mean(0), dim=-1)
        counts = torch.bincount(self.support_labels, minlength=self.n_classes).to(q.dtype)
        sums = counts[:, None] * self.prototypes
        prototypes = self.prototypes
        for _ in range(self.iterations):
            weights = (self.assign_scale * q @ F.normalize(prototypes, dim=-1).T).softmax(-1) * self.query_weight
            prototypes = (sums + weights.T @ q) / (counts + weights.sum(0)).clamp(min=1e-6)[:, None]
        return cosine_logits(q, prototypes, self.scale)


_METHODS: dict[str, Callable[..., FewShotMethod]] = {}


def register_method(name: str, factory: Callable[..., FewShotMethod]) -> None:
    _METHODS[name] = factory


def available_methods() -> list[str]:
    return list(_METHODS)


def create_method(name: str = "prototypes", **kwargs) -> FewShotMethod:
    if name not in _METHODS:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(_METHODS)}")
    return _METHODS[name](**kwargs)


register_method("prototypes", PrototypeClassifier)
register_method("transductive", TransductivePrototypes)
