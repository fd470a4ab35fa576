"""Device choice and the out-of-memory fallback (simulated: this machine has no GPU)."""
from __future__ import annotations

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
