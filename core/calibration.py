"""Calibration from the support set alone: pure functions over tensors, no state.

Two things are calibrated, both by leave-one-out on the support (each example scored as if it were new):
- the softmax temperature (logit scale) of the method's scores, from the method's held-out scores;
- per-class unknown thresholds on the raw-feature similarity to the class prototype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .methods import DEFAULT_SCALE, FewShotMethod, class_means

__all__ = [
    "Calibration",
    "DEFAULT_UNKNOWN_SIMILARITY",
    "SINGLE_CLASS_TEMPERATURE",
    "calibrate",
    "fit_logit_scale",
    "held_out_similarities",
    "lower_prediction_bound",
    "single_class_probability",
    "unknown_thresholds",
]

# Fallback similarity threshold (cosine of raw features to the best prototype) for classes with fewer than
# 3 examples. Measured on openclipart, 1-shot prototypes, 300 episodes (2026-11-27): 0.50 calls 3.6% of same-class
# queries unknown (0.55: 11%). Clip art of *other* classes is as close as same-class clip art there, so
# this threshold catches pictures from another world (photos among drawings), not near neighbours.
DEFAULT_UNKNOWN_SIMILARITY = 0.50
UNKNOWN_PERCENTILE = 5.0
MIN_SIMILARITY_SPREAD = 0.04
# With one class a softmax is always 1: the probability is instead sigmoid((similarity - threshold) / this),
# 0.5 at the threshold, ~0.95 at +0.09 cosine above it.
SINGLE_CLASS_TEMPERATURE = 0.03
# One-sided 99% Student t quantiles by degrees of freedom (larger df: the normal 2.326).
_T99 = {2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821, 10: 2.764, 12: 2.681,
        15: 2.602, 20: 2.528, 30: 2.457}


@dataclass
class Calibration:
    scale: float = DEFAULT_SCALE  # softmax scale of the method's scores
    thresholds: dict[str, float] = field(default_factory=dict)  # class -> unknown below this raw similarity


def fit_logit_scale(cos: torch.Tensor, target: torch.Tensor) -> float:
    """(N, C) held-out cosines, (N,) their classes -> the logit scale (1 to 200, log grid) with the least NLL.

    Label smoothing 1/(n+2) (Laplace's rule of succession): n held-out examples all right do not justify
    certainty; without it a separable support drove the scale to the grid's end and every prediction read
    99-100%, which made "least confident first" useless (desktop screenshots)."""
    grid = torch.logspace(0, 2.3, 40)
    smooth = 1.0 / (len(target) + 2)
    nll = torch.stack([F.cross_entropy(t * cos, target, label_smoothing=smooth) for t in grid])
    return float(grid[int(nll.argmin())])


def lower_prediction_bound(sims: Sequence[float]) -> float:
    """99% lower prediction bound of the next same-class similarity from n held-out ones (normal model).

    With 3-5 examples a low percentile is just the minimum of a tiny sample and sits far too high: with 3
    shapes per class it called 4 in 10 new same-class frames unknown (desktop test, 2026-11-27). The t
    quantile widens the bound while few examples say little about the spread, and tightens as they come."""
    n = len(sims)
    df = n - 1
    t = next((v for k, v in sorted(_T99.items()) if df <= k), 2.326)
    # Near-duplicate examples (a held capture key on a still scene) have almost no spread; the floor keeps
    # the bound from closing in on 1.0 and calling every new view unknown.
    spread = max(float(np.std(sims, ddof=1)), MIN_SIMILARITY_SPREAD)
    return float(np.mean(sims) - t * spread * np.sqrt(1 + 1 / n))


def held_out_similarities(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[list[float]]:
    """(N, D) raw support features, (N,) labels -> per class, the cosine of each of its examples to the class
    mean without that example (closed form); classes with one example get none."""
    counts = torch.bincount(labels, minlength=n_classes).to(features.dtype)
    own = counts[labels]
    sums = class_means(features, labels, n_classes) * counts[:, None]
    loo_proto = (sums[labels] - features) / (own - 1).clamp(min=1)[:, None]
    sims = F.cosine_similarity(features, loo_proto, dim=-1)
    out: list[list[float]] = [[] for _ in range(n_classes)]
    for i in (own >= 2).nonzero().flatten().tolist():
        out[int(labels[i])].append(float(sims[i]))
    return out


def unknown_thresholds(held_out: list[list[float]], names: Sequence[str],
                       fallback: float = DEFAULT_UNKNOWN_SIMILARITY) -> dict[str, float]:
    """Per class: a low percentile of its held-out similarities (or the t bound, whichever is lower); small
    classes get the fallback, lowered below their own examples."""
    thresholds = {}
    for sims, name in zip(held_out, names):
        if len(sims) >= 3:
            thresholds[name] = min(float(np.percentile(sims, UNKNOWN_PERCENTILE)) - 0.02, lower_prediction_bound(sims))
        elif sims:
            thresholds[name] = min(fallback, min(sims) - 0.05)
        else:
            thresholds[name] = fallback
    return thresholds


def calibrate(method: FewShotMethod, features: torch.Tensor, labels: torch.Tensor,
              names: Sequence[str]) -> Calibration:
    """A method fitted to the support (N, D) features, (N,) labels of the classes `names` -> its Calibration.
    The scale needs two classes and four examples whose class keeps another example; else the default."""
    cal = Calibration()
    if not names:
        return cal
    n_classes = len(names)
    held = torch.bincount(labels, minlength=n_classes)[labels] >= 2
    if n_classes >= 2 and int(held.sum()) >= 4:
        scores = method.held_out_scores()
        cal.scale = fit_logit_scale(scores[held], labels[held])
    cal.thresholds = unknown_thresholds(held_out_similarities(features, labels, n_classes), names)
    return cal


def single_class_probability(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """Raw similarities to the one class (any shape) -> how clearly they clear its unknown threshold, in (0, 1)."""
    return torch.sigmoid((similarity - threshold) / SINGLE_CLASS_TEMPERATURE)
