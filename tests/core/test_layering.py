"""core/ never imports Qt (the layering rule: docs/design.md), and importing it changes nothing process-wide."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
FORBIDDEN = ("PySide6", "shiboken6", "PyQt5", "PyQt6", "desktop", "superqt")


def test_no_qt_or_desktop_import_in_core_sources():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_core_imports_and_runs_with_qt_blocked_and_changes_nothing_process_wide():
    """Import core and run its CLI parser in a process where importing PySide6 fails. The import leaves the
    environment and the import machinery as they were (the allocator: tests/core/test_device.py), except for
    the torchvision guard in the environments that need one (a CPU-only torch beside a CUDA torchvision)."""
    code = (
        "import os, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('PySide6', 'shiboken6', 'desktop'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cv2, numpy, PIL.Image, torch  # their own import-time settings (cv2 extends LD_LIBRARY_PATH)\n"
        "env, finders = dict(os.environ), list(sys.meta_path)\n"
        "import core, core.cli\n"
        "from core import _torchvision_guard as guard\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "added = [f for f in sys.meta_path if f not in finders]\n"
        "assert len(added) == guard.needed() and all(f.protolabel_torchvision_guard for f in added), added\n"
        "core.cli.build_parser().parse_args(['backbones'])\n"
        "assert not any(m.startswith(('PySide6', 'desktop')) for m in sys.modules)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # what core used to set
    out = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
