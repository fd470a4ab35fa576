"""Episodes: N-way K-shot tasks sampled from labelled classes (used by evaluation; the outer loop builds on it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Episode", "sample_episode"]


@dataclass(frozen=True)
class Episode:
    classes: list[int]  # the dataset class index of episode class 0..way-1
    support: list[int]  # item indices
    support_labels: list[int]  # episode labels 0..way-1
    query: list[int]
    query_labels: list[int]


def sample_episode(
    rng: np.random.Generator,
    items_per_class: Sequence[Sequence[int]],
    way: int,
    shot: int,
    query: int,
) -> Episode:
    """Pick `way` classes with more than `shot` items; per class `shot` support items and up to `query`
    query items from the rest (support and query are disjoint)."""
    eligible = [c for c, items in enumerate(items_per_class) if len(items) > shot]
    if len(eligible) < way:
        raise ValueError(f"{way}-way {shot}-shot needs {way} classes with more than {shot} images; found {len(eligible)}")
    classes = sorted(rng.choice(eligible, size=way, replace=False).tolist())
    support, support_labels, queries, query_labels = [], [], [], []
    for label, c in enumerate(classes):
        items = np.asarray(items_per_class[c])
        order = rng.permutation(len(items))
        chosen = items[order[:shot]].tolist()
        rest = items[order[shot : shot + query]].tolist()
        support += chosen
        support_labels += [label] * len(chosen)
        queries += rest
        query_labels += [label] * len(rest)
    return Episode(classes, support, support_labels, queries, query_labels)
