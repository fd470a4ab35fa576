"""README's "Labeling effort" figures: `protolabel simulate`'s annotator on two folder trees, several loops.

    .venv/bin/python tools/labeling_effort.py [--trials 5] [--out docs/labeling-effort]

Trees: openclipart-png (every folder with >= 10 images; 10 classes x 40 + 2 other classes) and Fashion-MNIST
(dataset-fashion-mnist, 300 test images per class written as PNGs; 8 classes x 40 + 2 other classes: it has
10 classes in all). Loops: the shipped defaults, the same in random review order, prototypes only (every
confirmed label teaching, nothing else), and labeling by hand. Seeded (--seed, default 0): the same
folders and choices every run. Writes <out>.json (every figure) and <out>-<tree>.png (accuracy against
actions), and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app sets it, before torch loads
from core import Embedder, create_default_backbone  # noqa: E402
from core.device import configure_threads, keep_freed_memory  # noqa: E402
from core.evaluation import build_feature_table  # noqa: E402
from core.runs import finish  # noqa: E402
from core.session import SessionOptions  # noqa: E402
from core.simulate import plot_curves, simulate  # noqa: E402

OPENCLIPART = Path("/usr/share/openclipart/png")
LOOPS = {
    "ProtoLabel (defaults)": {},
    "defaults, random review order": {"order": "random"},
    "prototypes only": {"head": "prototypes", "knn_mix": 0.0, "unknown": "column"},
}


def trees(work: Path) -> dict[str, tuple[Path, int]]:
    from train_default_model import fashion_tree

    return {"openclipart": (OPENCLIPART, 10), "fashion-mnist": (fashion_tree(work / "fashion-mnist"), 8)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "protolabel" / "effort")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "labeling-effort")
    args = p.parse_args()
    configure_threads(reserve=0)
    keep_freed_memory()
    embedder = Embedder(create_default_backbone(), "cpu")
    report: dict = {}
    rows = []
    for tree, (root, classes) in trees(args.work).items():
        table = finish(build_feature_table(root, embedder, 10))
        results = {}
        for name, changes in LOOPS.items():
            result = finish(simulate(table, embedder, classes=classes, per_class=40, other_classes=2, start=1,
                                     batch=10, trials=args.trials, seed=args.seed,
                                     options=SessionOptions().with_changes(**changes)))
            results[name] = result
            summary = result.summary()
            report.setdefault(tree, {})[name] = {"options": changes, **summary}
            a = summary["actions_per_image"]
            rows.append(f"| {tree} | {name} | {a['90']:.2f} | {a['95']:.2f} | {a['98']:.2f} | "
                        f"{summary['estimate_error']} | {summary['false_unknown']} | {summary['caught_unknown']} |")
        hand = next(iter(results.values())).hand_labeling()
        report[tree]["by hand"] = hand
        rows.append(f"| {tree} | by hand | {hand['90']:.2f} | {hand['95']:.2f} | {hand['98']:.2f} | - | - | - |")
        plot_curves(results, str(args.out.with_name(f"{args.out.name}-{tree}.png")))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print("| folder | loop | 90% | 95% | 98% | estimate off by (points) | in-class unknown after round 1 (%) | "
          "other-class unknown once 3 marked (%) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
