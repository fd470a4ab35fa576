"""Peak memory of labeling a big folder, measured in fresh processes (slow: ~7 minutes on 2 CPU cores).

Not part of `make test` (CI): `make test-memory` runs it. Measured on the 2-core VM, 2026-11-27: the 10,000-image
run peaked at 1,553 MB once (another build running beside it) and at 2,781 MB once (a fresh-clone `make test`,
machine otherwise idle), while 100 images peak at 1.39-1.53 GB; the cause of the big run's spread is not found
yet, so this test may fail, and issue 6 stays open on it."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from synthetic import SHAPE_CLASSES, draw_shape, write_tree

N_IMAGES = 10_000
SMALL = 100
LIMIT_MB = 2048  # the bound

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
@pytest.mark.skipif(os.environ.get("PROTOLABEL_TEST_MEMORY") != "1",
                    reason="the 10,000-image memory test runs with `make test-memory` (PROTOLABEL_TEST_MEMORY=1)")
def test_labeling_10000_images_keeps_peak_memory_under_2_gb(tmp_path: Path) -> None:
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
    assert peak < LIMIT_MB, (
        f"peak resident memory {peak:.0f} MB labeling {N_IMAGES} images ({small_peak:.0f} MB for {SMALL})")
