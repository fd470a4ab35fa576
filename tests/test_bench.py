"""`make bench` must at least start: its imports and arguments follow the core API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_starts_and_documents_its_flags():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--device", "--quick", "--threads", "--backbone", "--out"):
        assert flag in out.stdout
