"""core/_torchvision_guard.py: torchvision imports beside a torch it was not built for (the CPU-only installer
bundle, a low-disk `make install`), and a working pair is left alone."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[2]
GUARD = ROOT / "core" / "_torchvision_guard.py"
# Loads the module by path, without the core package, as the build environment's .pth file does (Makefile).
LOAD_BY_PATH = (f"import importlib.util as u; s = u.spec_from_file_location('protolabel_torchvision_guard', "
                f"{str(GUARD)!r}); g = u.module_from_spec(s); s.loader.exec_module(g)\n")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def _extension_loads() -> bool:
    """Whether this environment's torchvision C++ extension loads (no guard, no torchvision import)."""
    proc = run_python("""
        import importlib.machinery, importlib.util, pathlib, torch
        folder = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
        for ext in sorted(folder.glob("_C*")):
            if ext.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                try:
                    torch.ops.load_library(str(ext)); print("loads"); break
                except (OSError, RuntimeError) as exc:
                    print("fails:", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    return "loads" in proc.stdout


def test_import_core_then_torchvision_works_and_nms_does_what_the_extension_allows():
    """`import core` installs the guard; torchvision then imports. With a working extension (PyPI's torch
    and torchvision) nothing is declared and nms runs; with a mismatched pair, nms raises instead of the import
    failing."""
    proc = run_python("""
        import core, torch, torchvision
        from core import _torchvision_guard as g
        print("declared:", g._LIBRARY is not None)
        try:
            print("nms:", torchvision.ops.nms(torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]),
                                              torch.tensor([0.9, 0.8]), 0.5).tolist())
        except (NotImplementedError, RuntimeError) as exc:
            print("nms raised:", type(exc).__name__)
    """)
    assert proc.returncode == 0, proc.stderr
    if _extension_loads():
        assert proc.stdout.splitlines() == ["declared: False", "nms: [0]"]
    else:
        assert proc.stdout.splitlines()[0] == "declared: True"
        assert proc.stdout.splitlines()[1].startswith("nms raised:")


def test_the_ops_are_declared_when_the_extension_is_missing(tmp_path):
    """As in the CPU-only bundle: no loadable extension. The schemas are declared; the ops then raise torch's
    own error instead of the import failing."""
    proc = run_python(LOAD_BY_PATH + f"""
import torch
from pathlib import Path
assert g.declare_missing_ops(Path({str(tmp_path)!r}))
assert torch.ops.torchvision.nms.default._schema.name == "torchvision::nms"
try:
    torch.ops.torchvision.qnms(torch.zeros(1, 4), torch.zeros(1), 0.5)
except NotImplementedError as exc:
    print("no kernel:", type(exc).__name__)
""")
    assert proc.returncode == 0, proc.stderr
    assert "no kernel: NotImplementedError" in proc.stdout


def test_a_copy_loaded_by_path_and_core_install_one_guard_between_them():
    """The build environment's .pth installs a copy loaded by path; `import core` must not add a second guard
    (two would both declare the ops)."""
    proc = run_python(LOAD_BY_PATH + """
import sys
g.install()
import core
print(sum(getattr(f, "protolabel_torchvision_guard", False) for f in sys.meta_path))
import torchvision
print(sum(getattr(f, "protolabel_torchvision_guard", False) for f in sys.meta_path))
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "0"]
