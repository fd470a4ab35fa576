"""Few-shot methods on features: every registered method, plus the episode sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.methods import available_methods, class_means, create_method
from core.training import sample_episode


def _blobs(n_classes=4, per_class=20, dim=32, spread=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g) * 2 + 3.0  # offset: like non-negative pooled features
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


@pytest.mark.parametrize("name", available_methods())
def test_every_method_separates_clear_clusters(name):
    feats, labels = _blobs()
    support = torch.cat([torch.nonzero(labels == c).flatten()[:2] for c in range(4)])
    query = torch.tensor([i for i in range(len(labels)) if i not in set(support.tolist())])
    method = create_method(name)
    method.process_support_set(feats[support], labels[support], 4)
    scores = method(feats[query])
    assert scores.shape == (len(query), 4)
    assert (scores.argmax(-1) == labels[query]).float().mean() > 0.95


def test_transductive_beats_inductive_on_shifted_queries():
    """Queries shifted as a whole (domain shift between support and query): the transductive mode
    re-centres them and refines prototypes; the inductive mode can't."""
    feats, labels = _blobs(n_classes=5, per_class=30, spread=3.0, seed=1)
    support = torch.cat([torch.nonzero(labels == c).flatten()[:1] for c in range(5)])
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[support] = False
    q = feats[mask] + 1.5 * torch.randn(1, feats.shape[1], generator=torch.Generator().manual_seed(9))
    accs = {}
    for name in ("prototypes", "transductive"):
        m = create_method(name)
        m.process_support_set(feats[support], labels[support], 5)
        accs[name] = (m(q).argmax(-1) == labels[mask]).float().mean().item()
    assert create_method("transductive").is_transductive() and not create_method("prototypes").is_transductive()
    assert accs["transductive"] > accs["prototypes"] + 0.2, accs


def test_class_means_handles_empty_class():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    means = class_means(feats, torch.tensor([0, 0]), 2)
    assert torch.equal(means, torch.tensor([[2.0, 0.0], [0.0, 0.0]]))


def test_single_class_is_not_centred_to_zero():
    feats, labels = _blobs(n_classes=1, per_class=3)
    m = create_method("prototypes")
    m.process_support_set(feats, labels, 1)
    assert torch.isfinite(m(feats)).all() and m.prototypes.norm() > 0.5


def test_episode_sampler_properties():
    rng = np.random.default_rng(0)
    items = [list(range(c * 100, c * 100 + n)) for c, n in enumerate([30, 8, 25, 3, 40, 12, 20])]
    for _ in range(50):
        ep = sample_episode(rng, items, way=5, shot=5, query=15)
        assert len(set(ep.classes)) == 5 and 3 not in ep.classes  # class 3 has too few images for 5 shots
        assert len(ep.support) == 25
        assert not set(ep.support) & set(ep.query)
        for label, c in enumerate(ep.classes):
            s = [i for i, y in zip(ep.support, ep.support_labels) if y == label]
            q = [i for i, y in zip(ep.query, ep.query_labels) if y == label]
            assert len(s) == 5 and 1 <= len(q) <= 15
            assert all(i in items[c] for i in s + q)
    with pytest.raises(ValueError, match="classes"):
        sample_episode(rng, items, way=7, shot=5, query=15)
