"""Few-shot classifiers on features: one small class per method, one factory (easyfsl style).

A method sees features, not pixels: ``process_support_set(features (N, D), labels (N,))`` then
``forward(query (Q, D)) -> logits (Q, C)``. Transductive methods use the whole query batch at once.
Shared tensor helpers are pure functions.
"""
from __future__ import annotations

import copy
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
    "method_for",
    "CentredCosineHead",
    "centred_cosines",
    "centred_prototypes",
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


class FewShotMethod(nn.Module):
    """Base of every method: what prediction, calibration and export need, and nothing else.

    A subclass implements ``scores`` (and usually ``process_support_set``, calling this one first). To be
    exported it implements ``export_head``; ``held_out_scores`` has a generic (refitting) form that a method
    may replace with a closed form. ``transductive_variant`` names the registered method that refines this
    one with the whole query batch (folder labeling), or None."""

    transductive_variant: str | None = None

    def __init__(self, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.scale = scale
        self.support_features = torch.empty(0)
        self.support_labels = torch.empty(0, dtype=torch.long)
        self.n_classes = 0

    def process_support_set(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None) -> None:
        """features (N, D), labels (N,) in [0, C)."""
        self.n_classes = int(labels.max().item()) + 1 if n_classes is None else n_classes
        self.support_features = features
        self.support_labels = labels

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C) unscaled similarity of each query to each class (a cosine, for the built-in methods):
        calibration fits the softmax scale on these."""
        raise NotImplementedError

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C) logits."""
        return self.scale * self.scores(query)

    def held_out_scores(self) -> torch.Tensor:
        """(N, C): each support example scored by the method fitted to the support without it (leave-one-out).
        Generic form: one refit per example; rows whose class has a single example are not meaningful."""
        feats, labels, n_classes = self.support_features, self.support_labels, self.n_classes
        rows = []
        for i in range(len(labels)):
            keep = torch.arange(len(labels)) != i
            other = copy.deepcopy(self)
            other.process_support_set(feats[keep], labels[keep], n_classes)
            rows.append(other.scores(feats[i : i + 1])[0])
        return torch.stack(rows) if rows else feats.new_zeros(0, n_classes)

    def export_head(self) -> nn.Module:
        """A traceable module (B, D) features -> (B, C) ``scores``, holding the fitted support as fp32 CPU
        buffers: the exported model's last stage (ONNX, TorchScript)."""
        raise NotImplementedError(f"{type(self).__name__} has no exportable form")

    @staticmethod
    def is_transductive() -> bool:
        return False


class CentredCosineHead(nn.Module):
    """(B, D) -> (B, C) cosine of the centred query to each prototype: the prototypes method, exported."""

    def __init__(self, center: torch.Tensor, prototypes: torch.Tensor) -> None:
        super().__init__()
        # clone(): tensors made under inference_mode can't be saved in a traced graph.
        self.register_buffer("center", center.detach().float().cpu().clone())
        self.register_buffer("prototypes", F.normalize(prototypes.detach().float().cpu().clone(), dim=-1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features - self.center, dim=-1) @ self.prototypes.T


class PrototypeClassifier(FewShotMethod):
    """SimpleShot-style cosine prototypes on centred, L2-normalised features.

    Centre: a fixed vector when one is given (e.g. the base-data mean stored with a meta-trained model),
    else the class-balanced mean of the support (the mean of class means), so no class dominates it.
    """

    transductive_variant = "transductive"

    def __init__(self, scale: float = DEFAULT_SCALE, center: torch.Tensor | None = None) -> None:
        super().__init__(scale)
        self.fixed_center = center
        self.center = torch.empty(0)
        self.prototypes = torch.empty(0)

    def process_support_set(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None) -> None:
        """features (N, D), labels (N,) in [0, C)."""
        super().process_support_set(features, labels, n_classes)
        n_classes = self.n_classes
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

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C)"""
        return centred_cosines(query, self.prototypes, self.center)

    def held_out_scores(self) -> torch.Tensor:
        """Closed form, no refit: each example's own class prototype is recomputed without it; the centre is
        kept from the full support (a small, conservative approximation)."""
        feats, labels = self.support_features, self.support_labels
        counts = torch.bincount(labels, minlength=self.n_classes).to(feats.dtype)
        own = counts[labels]
        normed = F.normalize(feats - self.center, dim=-1)
        cos = normed @ F.normalize(self.prototypes, dim=-1).T  # (N, C)
        own_proto = (self.prototypes * counts[:, None])[labels] - normed
        own_proto = own_proto / (own - 1).clamp(min=1)[:, None]
        cos[torch.arange(len(feats)), labels] = F.cosine_similarity(normed, own_proto, dim=-1)
        return cos

    def export_head(self) -> nn.Module:
        return CentredCosineHead(self.center, self.prototypes)


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

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """(Q, D) -> (Q, C) cosines; all Q queries are used together."""
        if query.shape[0] == 0:
            return query.new_zeros(0, self.n_classes)
        support = F.normalize(self.support_features - self.center, dim=-1)
        q = F.normalize(query - self.center, dim=-1)
        q = F.normalize(q - q.mean(0) + support.mean(0), dim=-1)
        counts = torch.bincount(self.support_labels, minlength=self.n_classes).to(q.dtype)
        sums = counts[:, None] * self.prototypes
        prototypes = self.prototypes
        for _ in range(self.iterations):
            weights = (self.assign_scale * q @ F.normalize(prototypes, dim=-1).T).softmax(-1) * self.query_weight
            prototypes = (sums + weights.T @ q) / (counts + weights.sum(0)).clamp(min=1e-6)[:, None]
        return cosine_logits(q, prototypes, 1.0)

    def export_head(self) -> nn.Module:
        raise NotImplementedError("a transductive method scores a whole batch at once; the exported model is "
                                  "the inductive one")


_METHODS: dict[str, Callable[..., FewShotMethod]] = {}


def register_method(name: str, factory: Callable[..., FewShotMethod]) -> Callable[..., FewShotMethod]:
    """Make `factory` (a FewShotMethod subclass, or anything that builds one from keyword arguments) available
    as `name` everywhere a method is chosen: the classifier, its saved state, evaluation, export."""
    _METHODS[name] = factory
    return factory


def available_methods() -> list[str]:
    return list(_METHODS)


def method_for(name: str, transductive: bool) -> str:
    """The registered method to fit for `name`: itself, or its transductive variant when the whole query batch
    is known (folder labeling) and it has one."""
    return (create_method(name).transductive_variant or name) if transductive else name


def create_method(name: str = "prototypes", **kwargs) -> FewShotMethod:
    if name not in _METHODS:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(_METHODS)}")
    return _METHODS[name](**kwargs)


register_method("prototypes", PrototypeClassifier)
register_method("transductive", TransductivePrototypes)
