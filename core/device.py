"""Where the model runs: device choice, autocast, thread settings and the CUDA out-of-memory fallback."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

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
    """Leave `reserve` cores for capture and the GUI (torch must be told before its first op). Returns the count used.
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


def peak_memory_mb() -> float:
    """This process's own peak resident memory in MB.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: the kernel carries the parent's peak into a child
    started with vfork (as Python's subprocess does), so a child of a 2 GB process reported 2 GB before doing
    anything (checked 2026-12-01). Elsewhere ru_maxrss (KiB, bytes on macOS), which has no such problem there."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
MALLOC_KEEP_BYTES = 1 << 30  # freed heap memory kept for reuse, up to this much, instead of returned at once


def keep_freed_memory() -> bool:
    """Let glibc reuse the memory of freed tensors instead of unmapping it (Linux with glibc; elsewhere a no-op
    returning False). Returns whether it was set.

    By default glibc serves blocks over 32 MB (a batch's activations) with mmap and unmaps them on free, so
    every forward pass page-faults its activations in afresh: on the 2-core VM, labeling at batch 32 spent more
    time in the kernel than computing (2.4 M page faults for 128 images; 7.5 s system vs 5.6 s user) and ran
    at 19-21 images/s, 71-75 with this (2026-12-01, a microbenchmark of trunk+tail). No mmap (M_MMAP_MAX 0) and
    no trimming below MALLOC_KEEP_BYTES: memory a batch freed serves the next one. Skipped when the user set
    MALLOC_MMAP_MAX_ or MALLOC_TRIM_THRESHOLD_ (theirs win) or PROTOLABEL_MALLOC=default. `release_memory`
    gives the kept memory back after long operations."""
    if (not sys.platform.startswith("linux") or os.environ.get("PROTOLABEL_MALLOC") == "default"
            or "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES))


def release_memory() -> None:
    """Return freed heap memory to the system (glibc malloc_trim); a no-op elsewhere. For the end of long
    operations (a folder labeled, fine-tuning done), when keep_freed_memory holds on to it."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    """libc with mallopt and malloc_trim, loaded once (release_memory runs after every long job); None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - musl and others lack them
    except (OSError, AttributeError):
        return None
    return libc
