"""Experiment: a light learned transform on the frozen features, meta-trained episodically across domains.

    .venv/bin/python tools/feature_transform_experiment.py [--work build/default-model] [--episodes 6000]

The outer loop on cached features only (no network pass): a linear map f -> f + A f on the pooled features
(A starts at zero, weight decay pulls it back to zero), trained with the prototypical loss (the prototypes
method: centred cosine, scale 10) on 5-way 5-shot episodes drawn per domain from the training classes that
tools/train_default_model.py uses, validated on each domain's validation classes (the same split as
`protolabel metatrain --domains`), early stopping on the mean over domains. Cf. URL's pre-classifier
alignment (Li et al. 2022), here learned once across domains instead of per task.

Prints the validation figures and writes WORK/feature-transform.json; held-out sets are scored only with
--held-out (the choice between this and the tail must be made on validation figures).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from core import Embedder, create_backbone  # noqa: E402
from core.evaluation import FeatureTable, build_feature_table  # noqa: E402
from core.metatrain import MetaTrainConfig, _groups, _sample, _subset, split_by_domain  # noqa: E402
from core.methods import centred_cosines, centred_prototypes  # noqa: E402
from core.runs import finish  # noqa: E402
from train_default_model import HELD_OUT_SETS, MIN_IMAGES, held_out_root, training_root  # noqa: E402


def _accuracy(feats: torch.Tensor, episodes) -> float:
    accs = []
    for ep in episodes:
        protos, center = centred_prototypes(feats[ep.support], torch.as_tensor(ep.support_labels), len(ep.classes))
        pred = centred_cosines(feats[ep.query], protos, center).argmax(-1)
        accs.append(float((pred == torch.as_tensor(ep.query_labels)).float().mean() * 100))
    return float(np.mean(accs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "default-model")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--episodes", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decay", type=float, default=1e-3, help="weight of |A|^2")
    ap.add_argument("--rank", type=int, default=0, help="0: a full D x D map; else A = U V^T of this rank")
    ap.add_argument("--held-out", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = args.data or args.work / "data"
    root, _ = training_root(data, args.work)
    embedder = Embedder(create_backbone("efficientnet_lite0"), "cpu")
    table = finish(build_feature_table(root, embedder, MIN_IMAGES, with_maps=False))
    cfg = MetaTrainConfig(way=5, shot=5, query=15, domains=True)
    train_c, val_c = split_by_domain(table.class_names, cfg.val_split, cfg.way, cfg.seed, True)
    train_x, train_items = _subset(table, train_c, table.features.float())
    val_x, val_items = _subset(table, val_c, table.features.float())
    train_groups, val_groups = _groups(train_c, True), _groups(val_c, True)
    domains = sorted({c.split("/", 1)[0] for c in val_c})
    val_eps = {}
    for shot in (1, 5):
        rng = np.random.default_rng(1 + shot)
        one = MetaTrainConfig(way=5, shot=shot, query=15)
        val_eps[shot] = [[_sample(rng, val_items, [g], one) for _ in range(150)] for g in val_groups]

    dim = train_x.shape[1]
    if args.rank:
        u = torch.nn.Parameter(torch.randn(dim, args.rank) * 1e-3)
        v = torch.nn.Parameter(torch.zeros(dim, args.rank))
        params = [u, v]

        def transform(x: torch.Tensor) -> torch.Tensor:
            return x + (x @ v) @ u.T
    else:
        a = torch.nn.Parameter(torch.zeros(dim, dim))
        params = [a]

        def transform(x: torch.Tensor) -> torch.Tensor:
            return x + x @ a.T

    def validate() -> dict:
        with torch.no_grad():
            z = transform(val_x)
        out = {}
        for shot in (1, 5):
            per = [_accuracy(z, group) for group in val_eps[shot]]
            out[shot] = {"mean": round(float(np.mean(per)), 2), **{d: round(p, 2) for d, p in zip(domains, per)}}
        out["score"] = round((out[1]["mean"] + out[5]["mean"]) / 2, 2)
        return out

    opt = torch.optim.Adam(params, lr=args.lr)
    rng = np.random.default_rng(0)
    baseline = validate()
    best, best_state, best_ep, bad = baseline, [p.detach().clone() for p in params], 0, 0
    history = [{"episode": 0, **baseline}]
    t0 = time.perf_counter()
    for episode in range(1, args.episodes + 1):
        ep = _sample(rng, train_items, train_groups, cfg)
        idx = torch.as_tensor(ep.support + ep.query)
        z = transform(train_x[idx])
        n_s = len(ep.support)
        protos, center = centred_prototypes(z[:n_s], torch.as_tensor(ep.support_labels), cfg.way)
        logits = 10.0 * centred_cosines(z[n_s:], protos, center)
        loss = F.cross_entropy(logits, torch.as_tensor(ep.query_labels))
        loss = loss + args.decay * sum((p ** 2).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if episode % 250 == 0:
            val = validate()
            history.append({"episode": episode, **val, "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(history[-1]), flush=True)
            if val["score"] > best["score"]:
                best, best_state, best_ep, bad = val, [p.detach().clone() for p in params], episode, 0
            else:
                bad += 1
                if bad >= 8:
                    break
    report = {"config": vars(args) | {"work": str(args.work), "data": str(data)}, "baseline": baseline,
              "best": best, "best_episode": best_ep, "history": history}
    if args.held_out:
        with torch.no_grad():
            for p, s in zip(params, best_state):
                p.copy_(s)
        report["held_out"] = {}
        for name, domain in HELD_OUT_SETS.items():
            t = finish(build_feature_table(held_out_root(data, domain, args.work), embedder, MIN_IMAGES))
            from core.evaluation import evaluate

            with torch.no_grad():
                moved = FeatureTable(t.class_names, t.paths, t.labels, transform(t.features.float()), None)
            res = {k: finish(evaluate(x, shots=(1, 5), episodes=600, seed=0)) for k, x in (("pretrained", t), ("transform", moved))}
            report["held_out"][name] = {k: {s: r.to_dict() for s, r in v.items()} for k, v in res.items()}
            print(name, json.dumps(report["held_out"][name]), flush=True)
    (args.work / "feature-transform.json").write_text(json.dumps(report, indent=1))
    print("baseline", json.dumps(baseline), "\nbest", json.dumps(best), "at episode", best_ep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
