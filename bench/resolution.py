#!/usr/bin/env python
"""Input resolution vs accuracy vs live frames per second: the table users trade one for the other with.

    .venv/bin/python bench/resolution.py [--sizes 128 160 192 224 256 288] [--root DIR] [--episodes 600]
                                         [--skip-speed] [--out PATH]

For each square input size (the backbone's `--input-size`):
  accuracy  5-way 1-shot and 5-shot prototypes over the class folders under --root (default: the openclipart
            collection, as README's accuracy table), `core.evaluation` with 15 queries per class, seeds fixed;
            features are cached (~/.cache/protolabel/features), so a second run only measures speed
  speed     the GUI's live path (bench/run.py GuiLive: engine thread -> overlay rendered) and the bare backbone
            forward at batch 1, interleaved, with the GUI's torch threads; medians over `--frames` frames

Prints one JSON object (and a Markdown table on stderr); writes it to bench/results/resolution-<host>-<date>.json
unless --out names another path. Accuracy does not need an idle machine; speed does.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # (bench/run.py: the test images, GuiLive, bare_forward, machine_info)

import core
from core.evaluation import build_feature_table, evaluate
from core.runs import finish

DEFAULT_ROOT = Path("/usr/share/openclipart/png")


def embedder_at(size: int, device: str) -> core.Embedder:
    backbone = core.create_backbone(bench.BACKBONE)
    backbone.preprocess_config = dataclasses.replace(backbone.preprocess_config, size=size)
    return core.Embedder(backbone, device=device)


def accuracy(embedder: core.Embedder, root: Path, episodes: int) -> dict:
    logged = 0

    def log(item) -> None:
        nonlocal logged
        if item.done - logged >= 1000:
            logged = item.done
            bench.log(f"  embedding {item.done}/{item.total}")

    table = finish(build_feature_table(root, embedder), log)
    results = finish(evaluate(table, 5, (1, 5), 15, episodes, seed=0))
    return {"classes": len(table.class_names), "images": len(table.paths),
            **{f"5way{shot}shot": r.to_dict() for shot, r in results.items()}}


def speed(embedder: core.Embedder, data: bench.TestData, tmp: Path, frames: int) -> dict:
    settings = dataclasses.replace(bench.Settings(), live_frames=frames // 2, live_rounds=2)
    out = bench.bench_live_gui(embedder, data, tmp, settings)
    return {k: out[k] for k in ("fps", "bare_forward_fps", "live_over_bare", "threads", "right")}


def markdown(rows: list[dict]) -> str:
    lines = ["| input (px) | 5-way 1-shot | 5-way 5-shot | live frames/s | bare forward frames/s |",
             "|---|---|---|---|---|"]

    def cell(acc: dict, k: str) -> str:
        return f"{acc[k]['accuracy']:.1f} ± {acc[k]['ci95']:.1f}" if k in acc else "-"

    for r in rows:
        acc = r.get("accuracy") or {}
        sp = r.get("speed") or {}
        lines.append(f"| {r['size']} | {cell(acc, '5way1shot')} | {cell(acc, '5way5shot')} | {sp.get('fps', '-')} | "
                     f"{sp.get('bare_forward_fps', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 224, 256, 288])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="class folders for the accuracy column")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--frames", type=int, default=60, help="timed live frames per size (and as many bare forwards)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-speed", action="store_true", help="only the accuracy column (fills the feature cache)")
    p.add_argument("--skip-accuracy", action="store_true", help="only the speed columns")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if any(s % 32 for s in args.sizes):
        p.error("sizes must be multiples of 32")
    if not args.skip_accuracy and not args.root.is_dir():
        p.error(f"{args.root} does not exist: install openclipart-png (make openclipart) or pass --root DIR "
                "or --skip-accuracy")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="protolabel-resolution-") as tmp_name:
        tmp = Path(tmp_name)
        data = bench.make_test_data(tmp, 0)
        for size in args.sizes:
            row: dict = {"size": size}
            if not args.skip_accuracy:
                bench.log(f"{size} px: accuracy on {args.root}")
                bench.set_threads(None)
                row["accuracy"] = accuracy(embedder_at(size, args.device), args.root, args.episodes)
            if not args.skip_speed:
                bench.log(f"{size} px: live path and bare forward")
                bench.warn_if_busy()
                row["speed"] = speed(embedder_at(size, args.device), data, tmp / f"s{size}", args.frames)
            rows.append(row)
            bench.log(json.dumps(row))
    embedder = embedder_at(args.sizes[0], args.device)
    result = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": bench.machine_info(embedder), "root": str(args.root), "episodes": args.episodes,
              "rows": rows, "wall_s": round(time.perf_counter() - started, 1)}
    out = args.out or bench.ROOT / "bench" / "results" / (
        f"resolution-{socket.gethostname()}-{dt.datetime.now():%Y-%m-%d_%H%M%S}.json")
    bench.write_result(result, out)
    print(markdown(rows), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
