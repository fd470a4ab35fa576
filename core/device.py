"""Where the model runs: device choice, autocast, thread settings and the CUDA out-of-memory fallback."""
from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; 'cpu', 'cuda', 'cuda:1', 'mps' are taken as given
    when available, else the CPU with a logged warning."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("CUDA was asked for but is not available; using the CPU")
        return torch.device("cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        log.warning("MPS was asked for but is not available; using the CPU")
        return torch.device("cpu")
    return dev


def configure_threads(reserve: int = 1) -> int:
    """Leave `reserve` cores for capture and the GUI (NOTES: set before the first op). Returns the count used.
    PROTOLABEL_THREADS overrides."""
    env = os.environ.get("PROTOLABEL_THREADS")
    n = int(env) if env else max(1, (os.cpu_count() or 1) - reserve)
    try:
        torch.set_num_threads(n)
    except RuntimeError:  # already running parallel work; keep what is set
        pass
    return torch.get_num_threads()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); nothing on CPU/MPS, where fp32 is faster or safer."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
