"""Device choice and the out-of-memory fallback (simulated: this machine has no GPU)."""
from __future__ import annotations

import sys

import pytest
import torch

from core import Embedder, select_device
from core.device import is_out_of_memory


def test_auto_picks_an_available_device_and_unavailable_ones_fall_back():
    assert select_device("auto").type in {"cuda", "mps", "cpu"}
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("cuda").type == "cpu"


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_embedder_moves_to_the_cpu_after_out_of_memory(backbone):
    embedder = Embedder(backbone, "cpu")
    embedder.device = torch.device("cuda")  # pretend: the first call "runs on the GPU" and runs out of memory
    seen = []
    embedder.on_message = seen.append
    calls = []

    def work(device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "ok"

    embedder._to_device = lambda device: setattr(embedder, "device", device)  # no real CUDA move here
    assert embedder.run_with_fallback(work) == "ok"
    assert calls == ["cuda", "cpu"] and embedder.device.type == "cpu"
    assert embedder.messages and "continuing on the CPU" in seen[0]


def test_other_errors_are_not_swallowed(backbone):
    embedder = Embedder(backbone, "cpu")

    def broken(device):
        raise ValueError("bad input")

    try:
        embedder.run_with_fallback(broken)
    except ValueError as exc:
        assert "bad input" in str(exc)
    else:
        raise AssertionError("a non-memory error must propagate")


# ------------------------------------------------------------------------------------------------ memory
MALLOC_PROBE = """
import os, resource, sys, torch
import core
from core.device import keep_freed_memory, release_memory
if os.environ.get("PROBE_KEEP") == "1":
    keep_freed_memory()  # what the programs do at their start
def rss_anon_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("RssAnon")) / 1024
for _ in range(2):  # 128 MB, as a batch's activations; glibc faults the second one in too, then reuses it
    x = torch.ones(32 << 20); del x
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(32 << 20); del x
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
kept = rss_anon_mb()
release_memory()
print(faults, kept - rss_anon_mb())
"""


def _malloc_probe(**env: str) -> tuple[int, float]:
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    faults, released = proc.stdout.split()
    return int(faults), float(released)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_tensors_are_reused_without_page_faults_and_given_back_on_request():
    """keep_freed_memory (ProtoLabel's programs call it at their start) keeps freed blocks for reuse: ten more
    128 MB tensors fault in at most a tensor's pages or two (seen: 0, once in 6 runs one tensor's), where
    glibc's default unmaps each and faults ~32,800 pages per tensor. release_memory gives the kept memory back.
    `import core` alone leaves glibc's default (and so shows that the probe measures what it is meant to)."""
    faults, released = _malloc_probe(PROBE_KEEP="1")
    default_faults, _ = _malloc_probe(PROBE_KEEP="0")
    assert default_faults > 300_000, f"{default_faults}: `import core` changed the allocator"
    assert _malloc_probe(PROBE_KEEP="1", PROTOLABEL_MALLOC="default")[0] > 300_000  # the user's choice wins
    assert faults < 70_000, f"{faults} page faults reusing freed tensors"
    assert released > 100, f"release_memory gave back only {released:.0f} MB"


def test_batch_size_follows_the_device_unless_given(backbone):
    assert Embedder(backbone, "cpu").batch_size == 16
    assert Embedder(backbone, "cpu", batch_size=5).batch_size == 5
