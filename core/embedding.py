"""Images -> features: the Embedder runs a backbone on a device; files are decoded in parallel with it.

Two outputs per image: the pooled feature (D,) every method uses, and the trunk's feature map
(C, h, w), kept (fp16) where test-time fine-tuning may need to re-run the tail.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .backbones import Backbone
from .device import autocast, is_out_of_memory, select_device
from .images import ImageError, PreprocessConfig, load_image

_log = logging.getLogger(__name__)

__all__ = ["Embedder", "EmbeddedBatch", "Skipped", "CancelToken", "file_stamp", "load_many"]


def file_stamp(path: str | os.PathLike) -> str | None:
    """Size and modification time of a file ("size:mtime_ns"), or None when it can't be stat'ed: cache
    entries made for other contents of the file don't match."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


class CancelToken:
    """A cancel flag shared between the caller (GUI thread, Ctrl-C handler) and a long-running loop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class EmbeddedBatch:
    paths: list[str]
    features: torch.Tensor  # (B, D) float32, CPU
    maps: torch.Tensor | None  # (B, C, h, w) float16, CPU, or None when not asked for
    skipped: list[Skipped] = field(default_factory=list)


def load_for_model(path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
    """A file as the model sees it, (S, S, 3) uint8: the one way every file becomes model input (examples dropped
    on a class, corrections in the grid, folders, the command line), so a file has one feature everywhere."""
    from .images import resize_for_model

    path = str(path)
    # Decode reduced (JPEG scaled decode, integer box reduction) while the side the fit scales to the model's size
    # stays at least that size; the one resize to it is resize_for_model's, as for a camera frame.
    side, which = decode_bound(config)
    if which == "shorter":
        return resize_for_model(load_image(path, None, exact=False, shorter_side=side), config)
    return resize_for_model(load_image(path, side, exact=False), config)


# How files become model input (load_for_model); part of model_key, so caches of features computed the
# old way are not reused. 2: one area resize from the reduced decode (2026-12-01; 1: LANCZOS to 512 first).
# 3: reduced down to the model's size, not 512 px (a 640x480 JPEG decodes at 320x240), and shrinks start with a
# whole-factor box reduction, bilinear for what is left under 2x (images._resize; 4.8 -> ~3 ms a file, 2026-12-01).
DECODE_VERSION = 3


def decode_bound(config: PreprocessConfig) -> tuple[int, str]:
    """The reduced decode's floor for files on the model path (recorded in exported models' metadata):
    (pixels, "longer" or "shorter"), the side that the fit scales to ``config.size`` (pad: the longer one)."""
    return config.size, ("longer" if config.fit == "pad" else "shorter")


def load_many(
    paths: Sequence[str | os.PathLike],
    config: PreprocessConfig,
    batch_size: int = 32,
    workers: int | None = None,
    cancel: CancelToken | None = None,
    prefetch: bool = True,
) -> Iterator[tuple[list[str], list[np.ndarray], list[Skipped]]]:
    """Decode + resize files in a thread pool (PIL and OpenCV release the GIL).
    Yields (paths, (S, S, 3) uint8 arrays, skipped) per batch; unreadable files are reported, never raised.

    ``prefetch``: decode the next batch while the consumer works on this one. Right when the consumer leaves cores
    idle (a GPU forward, torch on fewer threads than cores); when torch's threads fill every core, decoding
    beside them stalls the forward more than it saves (see ``Embedder.prefetch``), so decode in between instead."""
    workers = workers or max(2, min(8, (os.cpu_count() or 2)))
    items = [str(p) for p in paths]
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        def submit(batch: list[str]) -> list[Future]:
            return [pool.submit(load_for_model, p, config) for p in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            current = pending
            if prefetch and index + 1 < len(batches):
                pending = submit(batches[index + 1])  # decode overlaps the consumer's work on this batch
            ok_paths, arrays, skipped = [], [], []
            for path, fut in zip(batch, current):
                try:
                    arrays.append(fut.result())
                    ok_paths.append(path)
                except ImageError as exc:
                    skipped.append(Skipped(path, str(exc)))
                except Exception as exc:  # a bad file must never stop a folder
                    skipped.append(Skipped(path, f"cannot read '{path}': {type(exc).__name__}: {exc}"))
            yield ok_paths, arrays, skipped
            if cancel is not None and cancel.cancelled:
                for fut in pending:
                    fut.cancel()
                return
            if not prefetch and index + 1 < len(batches):
                pending = submit(batches[index + 1])  # every worker decodes while the consumer waits


GRAPH_TAIL_MAX_BATCH = 4  # batches up to this size take the tail from the runtime's graph (see embed_tensor)


class Embedder:
    """A backbone on a device. Prediction runs under inference_mode; CUDA uses bf16 autocast and channels_last.
    A CUDA out-of-memory error moves the model to the CPU, records why in ``messages`` and goes on."""

    def __init__(self, backbone: Backbone, device: str | torch.device = "auto", batch_size: int | None = None,
                 runtime: str | None = None) -> None:
        from .runtime import checked_runtime

        self.backbone = backbone.eval()
        self.device = select_device(device) if isinstance(device, str) else device
        self._batch_size = batch_size
        self.messages: list[str] = []
        self.on_message: Callable[[str], None] | None = None
        self.runtime = checked_runtime(runtime)  # how the trunk runs on the CPU: core.runtime
        # Which runtime runs the trunk on the CPU and why (set at the first CPU forward).
        self.runtime_note = "trunk: PyTorch (chosen)" if self.runtime == "torch" else ""
        self._cpu_runners: dict[tuple, object] = {}  # (size, threads, with features) -> OnnxTrunk or None
        self._notes_said: set[str] = set()
        self._to_device(self.device)

    @property
    def batch_size(self) -> int:
        """Images per forward pass: as given, else 16 on the CPU and 32 on a GPU. On the CPU 16 labeled a
        10,000-image folder at 48 images/s with a 1.34 GB peak, 32 at 53/s with 1.87 GB (CLI, 2-core VM,
        2026-12-01)."""
        if self._batch_size is not None:
            return self._batch_size
        return 32 if self.device.type == "cuda" else 16

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = value

    @property
    def prefetch(self) -> bool:
        """Whether files are decoded while the forward runs (load_many's ``prefetch``): yes unless the forward
        runs on the CPU with a thread on every core. There, decoding beside it stalls the forward more than the
        decode costs: OpenMP's threads wait for the one a decoder displaced. Measured on 2 cores (640x480 JPEGs,
        batch 16, 2026-12-01): forwards beside decoding took 250-290 ms instead of 210-230."""
        if self.device.type != "cpu":
            return True
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            cores = os.cpu_count() or 1
        return torch.get_num_threads() < cores

    @property
    def config(self) -> PreprocessConfig:
        return self.backbone.preprocess_config

    def _to_device(self, device: torch.device) -> None:
        self.device = device
        self.backbone.to(device)
        if device.type == "cuda":
            self.backbone.to(memory_format=torch.channels_last)

    def _fallback(self, exc: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        msg = f"{self.device.type.upper()} ran out of memory ({str(exc).splitlines()[0]}); continuing on the CPU"
        self.messages.append(msg)
        if self.on_message:
            self.on_message(msg)
        self._to_device(torch.device("cpu"))

    def run_with_fallback(self, fn: Callable[[torch.device], torch.Tensor | tuple]) -> torch.Tensor | tuple:
        """fn(device); after a CUDA/MPS out-of-memory error the model moves to the CPU and fn runs again there."""
        try:
            return fn(self.device)
        except Exception as exc:
            if self.device.type == "cpu" or not is_out_of_memory(exc):
                raise
            self._fallback(exc)
            return fn(self.device)

    def _trunk_runner(self, with_features: bool = False):
        """The ONNX Runtime trunk for CPU forwards (opened once per input size and thread count), or None.
        with_features: the graph that also runs the backbone's own tail (small batches, see embed_tensor);
        None for int8, whose tail stays in PyTorch."""
        if with_features and self.runtime == "int8":
            return None
        key = (self.config.size, torch.get_num_threads(), with_features)
        if key not in self._cpu_runners:
            from .runtime import open_trunk

            runner, self.runtime_note = open_trunk(self.backbone.trunk, self._weights_key(), self.config.size,
                                                   torch.get_num_threads(), self.runtime,
                                                   backbone=self.backbone if with_features else None)
            self._cpu_runners[key] = runner
            if self.runtime_note not in self._notes_said:  # one line per outcome, not one per graph
                self._notes_said.add(self.runtime_note)
                if runner is None and self.runtime == "onnxruntime":
                    self.messages.append(self.runtime_note)
                    if self.on_message:
                        self.on_message(self.runtime_note)
                (_log.info if runner is not None else _log.warning)(self.runtime_note)
        return self._cpu_runners[key]

    def forward_trunk(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, S, S) preprocessed -> (B, C, h, w) trunk maps on `device`; on the CPU through ONNX Runtime
        unless the runtime is "torch" or unavailable (core.runtime)."""
        if device.type == "cpu" and self.runtime != "torch":
            runner = self._trunk_runner()
            if runner is not None:
                return runner(x)
        return self.backbone.forward_trunk(self._input(x, device))

    def _input(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x.to(device)

    def embed_tensor(
        self, x: torch.Tensor, with_maps: bool = False, tail: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) preprocessed -> features (B, D) float32 CPU, maps (B, C, h, w) float16 CPU or None.
        `tail`: an adapted copy of the backbone's tail to use instead of its own (one pass, not two)."""

        def run(device: torch.device):
            if (tail is None and device.type == "cpu" and self.runtime != "torch"
                    and x.shape[0] <= GRAPH_TAIL_MAX_BATCH and (graph := self._trunk_runner(True)) is not None):
                # A live frame: trunk and own tail in one graph (at batch 1 PyTorch's tail took ~1/3 of the time).
                # Folder batches keep the trunk-only graph + PyTorch's tail: the graph's maps alone cost 7% more,
                # and with its features glibc's heap grew with the folder in half of the runs (2,000 images:
                # 0.9 or 2.0 GB peak, against 0.9 every time split).
                maps, feats = graph.maps_and_features(x)
                return feats, (maps.to(torch.float16) if with_maps else None)
            if tail is not None:
                tail.to(device)
            with torch.inference_mode(), autocast(device):
                maps = self.forward_trunk(x, device)
                feats = self.backbone.forward_tail(maps, tail)
            return feats.float().cpu(), (maps.to(torch.float16).cpu() if with_maps else None)

        return self.run_with_fallback(run)  # type: ignore[return-value]

    def features_from_maps(self, maps: torch.Tensor, tail: torch.nn.Module | None = None) -> torch.Tensor:
        """(B, C, h, w) trunk maps -> (B, D) float32 CPU, through the backbone's tail or an adapted copy."""
        tail = tail if tail is not None else self.backbone.tail
        out = []

        def run(device: torch.device):
            tail.to(device)
            with torch.inference_mode(), autocast(device):
                for i in range(0, maps.shape[0], 256):
                    m = maps[i : i + 256].to(device).float()
                    out.append(self.backbone.forward_tail(m, tail).float().cpu())
            return torch.cat(out) if out else torch.zeros(0, self.backbone.feature_dim)

        return self.run_with_fallback(run)  # type: ignore[return-value]

    def embed_paths(
        self,
        paths: Sequence[str | os.PathLike],
        with_maps: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[EmbeddedBatch]:
        """Files -> batches of features as they are ready (decoded beside or between forwards: ``prefetch``)."""
        for ok, arrays, skipped in load_many(paths, self.config, self.batch_size, cancel=cancel, prefetch=self.prefetch):
            if arrays:
                from .images import to_tensor

                f, m = self.embed_tensor(to_tensor(arrays, self.config), with_maps)
            else:
                f, m = torch.zeros(0, self.backbone.feature_dim), None
            yield EmbeddedBatch(ok, f, m, skipped)
            if cancel is not None and cancel.cancelled:
                return

    def model_key(self) -> str:
        """Identifies what computes the maps and features, for caches: the weights and preprocessing
        (``_weights_key``), and an int8 trunk, whose maps differ from the float ones."""
        key = self._weights_key()
        if self.runtime == "int8" and self.device.type == "cpu":
            key = hashlib.sha1(f"{key}:int8".encode()).hexdigest()[:16]
        return key

    def _weights_key(self) -> str:
        """Backbone weights + preprocessing (and DECODE_VERSION): sha1 of the tail + trunk parameters."""
        h = hashlib.sha1(f"{self.backbone.name}:{self.backbone.feature_dim}".encode())
        h.update(repr(self.config.to_dict()).encode())
        h.update(f"decode {DECODE_VERSION}".encode())
        for p in list(self.backbone.parameters())[::7]:
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]
