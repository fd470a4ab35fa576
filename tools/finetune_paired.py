"""Does fine-tuning at labeling time beat plain prototypes? A paired comparison on the same episodes.

`protolabel evaluate` draws the same episodes in every mode (they depend only on seed and shot), so the
per-episode difference fine-tuned - prototypes has a much tighter interval than the two accuracies' own.
Usage: python tools/finetune_paired.py ROOT [--shot 5] [--episodes 200] [--finetune 2] [--steps 20] [--out F]
ROOT: one folder per class (e.g. a folder of symlinks to openclipart's held-out classes, tools/train_default_model.py
`held_out_root`). Prints and writes (--out) the two accuracies and the mean difference with its 95% interval.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import Embedder, create_default_backbone
from core.evaluation import build_feature_table, evaluate
from core.runs import finish


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--shot", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--finetune", type=float, default=2.0, help="fine-tuning budget per episode, seconds")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    embedder = Embedder(create_default_backbone(), "cpu")
    table = finish(build_feature_table(args.root, embedder, 10, with_maps=True))
    runs = {}
    for name, budget in (("prototypes", 0.0), ("fine-tuned", args.finetune)):
        res = finish(evaluate(table, shots=(args.shot,), episodes=args.episodes, seed=args.seed, finetune_s=budget,
                              embedder=embedder, finetune_steps=args.steps))[args.shot]
        runs[name] = res
        print(f"{name}: {res.accuracy:.2f} +- {res.ci95:.2f} ({res.adapt_ms_median:.0f} ms per episode)", flush=True)
    diff = np.asarray(runs["fine-tuned"].per_episode) - np.asarray(runs["prototypes"].per_episode)
    ci = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    verdict = "better" if diff.mean() - ci > 0 else "worse" if diff.mean() + ci < 0 else "not measurably different"
    print(f"paired difference: {diff.mean():+.2f} +- {ci:.2f} points over {len(diff)} episodes "
          f"(better in {int((diff > 0).sum())}, worse in {int((diff < 0).sum())}): {verdict}")
    if args.out:
        args.out.write_text(json.dumps({
            "root": str(args.root), "shot": args.shot, "episodes": args.episodes, "finetune_s": args.finetune,
            "finetune_steps": args.steps, "seed": args.seed,
            **{k: r.to_dict() for k, r in runs.items()},
            "difference": {"mean": round(float(diff.mean()), 3), "ci95": round(float(ci), 3),
                           "better_episodes": int((diff > 0).sum()), "worse_episodes": int((diff < 0).sum()),
                           "verdict": verdict}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
