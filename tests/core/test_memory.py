"""Peak memory of labeling a big folder, measured in fresh processes.

Labeling 10,000 images took 8 minutes on 2 CPU cores; the test labels 500 and 2,000 instead and bounds the
peak a 10,000-image folder would reach by extending the growth between the two (the peak is the model and one
batch's activations plus a few KB per image: features, records).

The peak is the child's own VmHWM (core.device.peak_memory_mb). An earlier version read ru_maxrss, which on
Linux carries the parent's peak into a child started by subprocess (vfork): inside a long `make test` the
pytest process had peaked near 2.8 GB, and the 10,000-image run "peaked" at 2,781 MB with it (2026-11-27)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from synthetic import SHAPE_CLASSES, draw_shape, write_tree

N_IMAGES = 2_000
SMALL = 500
PROJECTED = 10_000  # the folder size the bound is for
LIMIT_MB = 2048

# Runs the real CLI, then reports the process's own peak resident memory (RUSAGE_CHILDREN would mix in
# every other subprocess this test session has waited for; ru_maxrss, the parent's peak).
RUNNER = """
import json, sys
from core.cli import main
from core.device import peak_memory_mb
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "peak_mb": peak_memory_mb()}, fh)
sys.exit(code)
"""


def _label(tmp_path: Path, folder: Path, name: str) -> tuple[float, list[dict[str, str]]]:
    """The real CLI in a fresh process -> (its peak RSS in MB, the CSV rows)."""
    report = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(report), "label", "--support", str(tmp_path / "support"),
         "--query", str(folder), "--out", str(tmp_path / f"{name}.csv"), "--save-project", str(tmp_path / name),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / f"{name}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    peak = json.loads(report.read_text())["peak_mb"]
    print(f"\n{name}: {len(rows)} images, peak RSS {peak:.0f} MB; {result.stderr.strip().splitlines()[-1]}")
    return peak, rows


@pytest.mark.slow
def test_labeling_10000_images_would_keep_peak_memory_under_2_gb(tmp_path: Path) -> None:
    write_tree(tmp_path / "support", per_class=5, seed=3)
    folder = tmp_path / "photos"
    rng = np.random.default_rng(4)
    for i in range(N_IMAGES):
        kind = SHAPE_CLASSES[i % len(SHAPE_CLASSES)]
        sub = folder / f"{i // 1000:02d}"  # nested, as camera folders are
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"{kind}_{i:05d}.jpg"), draw_shape(kind, rng, size=256)[..., ::-1])
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((folder / "00").iterdir())[:SMALL]:
        (few / path.name).write_bytes(path.read_bytes())
    small_peak, small_rows = _label(tmp_path, few, "small")
    peak, rows = _label(tmp_path, folder, "big")
    assert len(small_rows) == SMALL and len(rows) == N_IMAGES
    right = sum(Path(r["path"]).name.startswith(r["label"] + "_") for r in rows) / len(rows)
    assert right > 0.8, f"only {right:.0%} right: the run did not really label the folder"
    per_image = max(0.0, (peak - small_peak) / (N_IMAGES - SMALL))
    projected = peak + per_image * (PROJECTED - N_IMAGES)
    print(f"{per_image * 1024:.1f} KB per image -> {projected:.0f} MB projected for {PROJECTED:,} images")
    assert projected < LIMIT_MB, (
        f"peak {small_peak:.0f} MB for {SMALL} images, {peak:.0f} MB for {N_IMAGES}: {projected:.0f} MB "
        f"projected for {PROJECTED:,}")
