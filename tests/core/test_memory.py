"""Peak memory of labeling a big folder, measured in a fresh process (slow: ~5 minutes on 2 CPU cores)."""
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

N_IMAGES = 10_000
LIMIT_MB = 2048

# Runs the real CLI, then reports the process's own peak resident memory (RUSAGE_CHILDREN would mix in
# every other subprocess this test session has waited for).
RUNNER = """
import json, resource, sys
from core.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, fh)
sys.exit(code)
"""


@pytest.mark.slow
def test_labeling_10000_images_keeps_peak_memory_under_2_gb(tmp_path: Path) -> None:
    write_tree(tmp_path / "support", per_class=5, seed=3)
    folder = tmp_path / "photos"
    rng = np.random.default_rng(4)
    for i in range(N_IMAGES):
        kind = SHAPE_CLASSES[i % len(SHAPE_CLASSES)]
        sub = folder / f"{i // 1000:02d}"  # nested, as camera folders are
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"{kind}_{i:05d}.jpg"), draw_shape(kind, rng, size=256)[..., ::-1])
    report = tmp_path / "peak.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(report), "label", "--support", str(tmp_path / "support"),
         "--query", str(folder), "--out", str(tmp_path / "labels.csv"), "--save-project", str(tmp_path / "project"),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak = json.loads(report.read_text())
    with open(tmp_path / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_IMAGES
    right = sum(Path(r["path"]).name.startswith(r["label"] + "_") for r in rows) / len(rows)
    assert right > 0.8, f"only {right:.0%} right: the run did not really label the folder"
    print(f"\n{N_IMAGES} images: peak RSS {peak['peak_mb']:.0f} MB; {result.stderr.strip().splitlines()[-1]}")
    assert peak["peak_mb"] < LIMIT_MB, f"peak resident memory {peak['peak_mb']:.0f} MB labeling {N_IMAGES} images"
