"""Lets `import torchvision` work beside a torch it was not built for. Stdlib imports only (also loaded by path,
without the `core` package, from a .pth file in `make dist`'s build environment: see the Makefile).

A CPU-only torch beside PyPI's torchvision (built against CUDA torch) is such a pair: torchvision's C++
extension needs libtorch_cuda, and its import then stops at registering a fake kernel for the undefined
`torchvision::nms` ("operator torchvision::nms does not exist"). Declaring the two schemas lets the import
finish; the detection ops (nms, roi_align, ...), which ProtoLabel never calls, then raise torchvision's own
"Couldn't load custom C++ ops". When the extension loads, nothing is declared.

The installer bundle and a low-disk `make install` (README) carry such a pair; `core` installs the guard when
it is imported, before anything imports timm or torchvision."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

FAKE_OPS = ("nms", "qnms")  # torchvision registers fake kernels for these whether or not its extension loaded
_LIBRARY = None  # the torch.library.Library holding the declarations; kept alive here


def declare_missing_ops(torchvision_dir: Path) -> bool:
    """Declare torchvision's fake-kernel ops when its extension can't load. Returns True when it had to."""
    global _LIBRARY
    import torch

    if _LIBRARY is not None:
        return True
    # The extension is _C (torchvision <= 0.28) or _C_stable (0.29, torch's stable ABI): try what is there.
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for ext in sorted(torchvision_dir.glob("_C*")):
        if ext.name.endswith(suffixes):
            try:
                torch.ops.load_library(str(ext))
                return False
            except (OSError, RuntimeError):
                continue
    if all(hasattr(torch.ops.torchvision, op) for op in FAKE_OPS):  # declared by another copy of this module
        return True
    lib = torch.library.Library("torchvision", "DEF")  # kept alive in a module global
    for op in FAKE_OPS:
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True


class _Guard:
    """A meta-path finder that runs declare_missing_ops once, when torchvision is first imported."""

    protolabel_torchvision_guard = True  # recognised across copies of this module (a .pth loads one by path)

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            declare_missing_ops(Path(next(iter(spec.submodule_search_locations))))
        return spec


def _local_version(distribution: str) -> str | None:
    """The local part of an installed distribution's version ("cpu" of 2.14.1+cpu, "" for none); None when its
    metadata can't be read (a frozen app may carry none)."""
    from importlib import metadata

    try:
        return metadata.version(distribution).partition("+")[2]
    except metadata.PackageNotFoundError:
        return None


def needed() -> bool:
    """Whether this environment may hold a mismatched pair: a CPU-only torch beside a torchvision built for
    another (PyPI's Linux torchvision is a CUDA build). Read from the packages' metadata, importing neither;
    unknown counts as possibly."""
    torch_local, vision_local = _local_version("torch"), _local_version("torchvision")
    if torch_local is None or vision_local is None:
        return vision_local is not None or torch_local is None
    return torch_local != vision_local and "cpu" in torch_local


def install() -> None:
    """Arrange for declare_missing_ops before the first `import torchvision` (cheap: nothing is imported now)."""
    if "torchvision" in sys.modules or any(getattr(f, "protolabel_torchvision_guard", False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Guard())
