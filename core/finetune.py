"""Test-time fine-tuning: the inner loop with gradients, after P>M>F (Hu et al., CVPR 2022, models/deploy.py).

Per task, from the backbone's pristine weights: Adam on the tail (the last block stage and the 1x1 head
conv) and a learnable logit scale, a few dozen steps on the augmented support (objective below).
BatchNorm stays in eval mode (running statistics), as in P>M>F.

Difference from P>M>F, on purpose: augmentation acts on the trunk's feature maps (flip, shift by one
cell, channel dropout), not on pixels, so the frozen trunk runs once per image instead of once per
step; this is what makes a few dozen steps fit in seconds on a 2-core CPU.

Objective: pseudo-episodes from the augmented support. Each step splits every class's examples into a
pseudo-support (about half) and pseudo-queries (the rest); prototypes come from the augmented
pseudo-support with gradients, and the loss is the cross-entropy of the augmented pseudo-queries'
cosine logits. A class with one example uses P>M>F's form (clean prototype, augmented copy as query).
On openclipart 5-way 5-shot (40 episodes, lr 1e-3; measured 2026-11-27) this and P>M>F's objective
(prototypes from the whole clean support, every augmented example as query) scored alike (74.6% and
74.3%, from 73.2% without fine-tuning), so only this one is kept.

The learning rate is the most sensitive setting (P>M>F picks it per domain from a small grid). With 2+
examples per class it is chosen by cross-validation on the support (one example per class as prototype, the
rest as validation, lr = 0 kept unless another one wins); with fewer, "auto" keeps the pre-trained weights.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast
from .methods import DEFAULT_SCALE, centred_cosines, centred_prototypes

__all__ = ["FinetuneProgress", "FinetuneResult", "adapted_tail", "finetune_tail", "augment_maps", "LR_GRID"]

LR_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3)


@dataclass
class FinetuneProgress:
    phase: str  # "choosing learning rate" | "fine-tuning"
    step: int
    total_steps: int
    loss: float
    elapsed_s: float


@dataclass
class FinetuneResult:
    tail_state: dict[str, torch.Tensor] | None  # adapted tail weights on the CPU; None: keep the pristine tail
    lr: float
    steps: int
    seconds: float
    cancelled: bool = False
    lr_scores: dict[float, float] = field(default_factory=dict)  # validation accuracy (%) per lr tried
    message: str = ""


def augment_maps(maps: torch.Tensor, generator: torch.Generator | None = None, drop: float = 0.1) -> torch.Tensor:
    """(B, C, h, w) -> same shape: random horizontal flip, shift by up to one cell (replicate padding),
    channel dropout. Cheap stand-ins for P>M>F's flip/translation/colour jitter on pixels."""
    b, c, h, w = maps.shape
    dev = maps.device
    flip = torch.rand(b, device="cpu", generator=generator) < 0.5
    out = torch.where(flip.to(dev)[:, None, None, None], maps.flip(-1), maps)
    padded = F.pad(out, (1, 1, 1, 1), mode="replicate")
    dx = torch.randint(0, 3, (b,), generator=generator).tolist()
    dy = torch.randint(0, 3, (b,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if drop > 0:
        keep = (torch.rand(b, c, 1, 1, generator=generator) >= drop).to(dev, out.dtype) / (1 - drop)
        out = out * keep
    return out


def adapted_tail(backbone: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the backbone's tail carrying fine-tuned weights (from FinetuneResult.tail_state), eval mode."""
    tail = copy.deepcopy(backbone.tail).eval()
    tail.load_state_dict(state)
    return tail


class _TailHead(nn.Module):
    """Adapted tail + learnable log logit scale; computes features (B, D) from trunk maps."""

    def __init__(self, tail: nn.Module, features: Callable[[torch.Tensor, nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.tail = tail
        self.features = features
        self.log_scale = nn.Parameter(torch.tensor(math.log(DEFAULT_SCALE)))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.features(maps, self.tail)


def _pseudo_episode(labels: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask (N,): True = pseudo-support. Each class with 2+ examples gives about half of them
    (at least one) to the pseudo-support and the rest become pseudo-queries; a 1-example class keeps its
    example in both roles (its query is the augmented copy)."""
    mask = torch.ones_like(labels, dtype=torch.bool)
    for c in range(n_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) >= 2:
            order = idx[torch.randperm(len(idx), generator=generator).to(idx.device)]
            mask[order[max(1, len(idx) // 2):]] = False
    return mask


def _episode_logits(head: _TailHead, maps: torch.Tensor, aug: torch.Tensor, labels: torch.Tensor, n_classes: int,
                    support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-episode objective: prototypes from the augmented pseudo-support, logits for the augmented
    pseudo-queries (and for 1-example classes, the augmented copy against the clean prototype).
    -> (Q, C) logits and their (Q,) targets."""
    feats_aug = head(aug)
    single = torch.bincount(labels, minlength=n_classes)[labels] < 2
    proto_src = torch.where(single[:, None], head(maps), feats_aug) if bool(single.any()) else feats_aug
    protos, center = centred_prototypes(proto_src[support], labels[support], n_classes)
    query = ~support | single
    return head.log_scale.exp() * centred_cosines(feats_aug[query], protos, center), labels[query]


def _train(
    head: _TailHead,
    maps: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    lr: float,
    steps: int,
    deadline: float,
    device: torch.device,
    generator: torch.Generator,
    report: Callable[[int, float], None],
    cancel: Callable[[], bool],
) -> tuple[int, bool]:
    """Runs up to `steps` Adam steps before `deadline` (time.perf_counter()). Returns (steps done, cancelled)."""
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    done = 0
    with torch.enable_grad():
        for step in range(steps):
            if cancel():
                return done, True
            if time.perf_counter() >= deadline and done > 0:
                break
            aug = augment_maps(maps, generator)
            support = _pseudo_episode(labels, n_classes, generator)
            with autocast(device):
                logits, targets = _episode_logits(head, maps, aug, labels, n_classes, support)
            loss = F.cross_entropy(logits.float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            report(done, float(loss.detach()))
    return done, False


@torch.no_grad()
def _accuracy(head: _TailHead, train_maps, train_labels, val_maps, val_labels, n_classes: int) -> float:
    feats = head(torch.cat([train_maps, val_maps]))
    tr, va = feats[: len(train_maps)], feats[len(train_maps) :]
    protos, center = centred_prototypes(tr, train_labels, n_classes)
    pred = centred_cosines(va, protos, center).argmax(-1)
    return float((pred == val_labels).float().mean() * 100)


def finetune_tail(
    backbone: nn.Module,
    maps: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int | None = None,
    *,
    budget_s: float = 5.0,
    max_steps: int = 40,
    lr: float | str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[FinetuneProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Adapt a copy of `tail` to the support.

    backbone: a core.backbones.Backbone; its tail is left untouched, a copy is trained.
    maps (N, C, h, w): the support's trunk feature maps; labels (N,) in [0, C).
    Returns the adapted tail's weights (or None when lr = 0 won the cross-validation or nothing ran).
    Stops at `budget_s`; each phase (learning-rate trials, final training) runs at least one step, so a tiny
    budget overshoots by a few steps at most. `cancel()` is checked before every step.
    """
    start = time.perf_counter()
    tail = backbone.tail
    device = torch.device(device)
    cancel = cancel or (lambda: False)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    gen = torch.Generator().manual_seed(seed)
    maps = maps.detach().clone().float().to(device)  # clone: maps cached under inference_mode carry no grad
    labels = labels.detach().clone().long().to(device)
    counts = torch.bincount(labels, minlength=n_classes)
    deadline = start + budget_s

    def make_head() -> _TailHead:
        head = _TailHead(copy.deepcopy(tail), backbone.forward_tail).to(device).eval()
        for p in head.parameters():
            p.requires_grad_(True)
        return head

    def reporter(phase: str, total: int, offset: int = 0) -> Callable[[int, float], None]:
        def report(step: int, loss: float) -> None:
            if progress:
                progress(FinetuneProgress(phase, offset + step, total, loss, time.perf_counter() - start))

        return report

    if not any(p.numel() for p in tail.parameters()):
        return FinetuneResult(None, 0.0, 0, 0.0, message="this backbone has no adaptable tail")

    lr_scores: dict[float, float] = {}
    chosen: float
    if lr == "auto" and int(counts[counts > 0].min()) >= 2 and int((counts > 0).sum()) >= 2:
        # Cross-validation: first example of each class trains, the others validate.
        first = torch.zeros_like(labels, dtype=torch.bool)
        for c in range(n_classes):
            idx = (labels == c).nonzero().flatten()
            if len(idx):
                first[idx[0]] = True
        tr_m, tr_l, va_m, va_l = maps[first], labels[first], maps[~first], labels[~first]
        search_steps = max(5, max_steps // 2)
        total = search_steps * len(LR_GRID)
        search_deadline = start + budget_s * 0.5
        baseline = make_head()
        lr_scores[0.0] = _accuracy(baseline, tr_m, tr_l, va_m, va_l, n_classes)
        for i, candidate in enumerate(LR_GRID):
            if i > 0 and time.perf_counter() >= search_deadline:
                break  # out of search time: decide among the rates tried
            head = make_head()
            per_lr_deadline = time.perf_counter() + max(0.0, search_deadline - time.perf_counter()) / (len(LR_GRID) - i)
            _, stopped = _train(head, tr_m, tr_l, n_classes, candidate, search_steps, per_lr_deadline, device, gen,
                                reporter("choosing learning rate", total, i * search_steps), cancel)
            if stopped:
                return FinetuneResult(None, 0.0, 0, time.perf_counter() - start, True, lr_scores, "cancelled")
            lr_scores[candidate] = _accuracy(head, tr_m, tr_l, va_m, va_l, n_classes)
        best = max(lr_scores.values())
        chosen = 0.0 if lr_scores[0.0] >= best else min(k for k, v in lr_scores.items() if v == best)
    elif lr == "auto":
        # No cross-validation possible. Measured on openclipart 5-way 1-shot (600 episodes, 2026-11-27): a fixed
        # lr of 3e-4 lost 1.0 point (57.1% vs 58.1%), so "auto" keeps the pre-trained weights here.
        return FinetuneResult(None, 0.0, 0, time.perf_counter() - start, False, {},
                              "kept the pre-trained weights: choosing a learning rate needs 2+ examples per class")
    else:
        chosen = float(lr)

    if chosen <= 0:
        return FinetuneResult(None, 0.0, 0, time.perf_counter() - start, False, lr_scores,
                              "kept the pre-trained weights: no learning rate beat them in cross-validation")
    head = make_head()
    steps, stopped = _train(head, maps, labels, n_classes, chosen, max_steps, deadline, device, gen,
                            reporter("fine-tuning", max_steps), cancel)
    seconds = time.perf_counter() - start
    if stopped:
        return FinetuneResult(None, chosen, steps, seconds, True, lr_scores, "cancelled")
    state = {k: v.detach().cpu().clone() for k, v in head.tail.state_dict().items()}
    return FinetuneResult(state, chosen, steps, seconds, False, lr_scores, f"{steps} steps at lr {chosen:g}")
