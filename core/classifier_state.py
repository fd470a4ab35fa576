"""The classifier's file: one safetensors file, tensors + JSON metadata, read without pickle.

Tensors: ``features`` (N, D) float32, ``maps`` (N, C, h, w) float16, ``images`` (N, S, S, 3) uint8 when every
example has its image, ``tail.<name>`` the fine-tuned tail's weights. Metadata (key ``protolabel``): format and
version, backbone, model key, preprocessing, method, unknown setting, classes, examples (id, class,
source), the fine-tuning summary, the thresholds at save time. Restoring a classifier from it is the
classifier's job (``FewShotClassifier.load``); this module only writes, reads and checks the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path

__all__ = ["STATE_FORMAT_VERSION", "StateError", "StoredState", "read_state", "write_state"]

STATE_FORMAT_VERSION = 1
FORMAT_NAME = "protolabel-classifier"
TAIL_PREFIX = "tail."


class StateError(ValueError):
    """A saved classifier state that can't be used (other format version, other backbone, damaged)."""


@dataclass
class StoredState:
    meta: dict
    features: torch.Tensor | None  # (N, D)
    maps: torch.Tensor | None  # (N, C, h, w)
    images: torch.Tensor | None  # (N, S, S, 3) uint8, or None when not every example had one
    tail_state: dict[str, torch.Tensor]  # empty: the pristine tail


def write_state(path: str | Path, meta: dict, examples: list, tail: torch.nn.Module | None) -> None:
    """meta: the classifier's metadata (format fields are added here); examples: Example objects in order;
    tail: the adapted tail or None. Replaced atomically: a crash leaves the old file or the new one."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    if examples:
        tensors["features"] = torch.stack([e.feature for e in examples]).float().contiguous()
        tensors["maps"] = torch.stack([e.map for e in examples]).to(torch.float16).contiguous()
        if all(e.image is not None for e in examples):
            tensors["images"] = torch.from_numpy(np.stack([e.image for e in examples])).contiguous()
    if tail is not None:
        for k, v in tail.state_dict().items():
            tensors[TAIL_PREFIX + k] = v.detach().cpu().contiguous()
    meta = {"format": FORMAT_NAME, "format_version": STATE_FORMAT_VERSION, **meta}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"protolabel": json.dumps(meta)})


def read_state(path: str | Path, backbone_name: str) -> StoredState:
    """Read and check a classifier file written by `write_state` for a classifier on `backbone_name`.
    Raises StateError for anything else: not ours, damaged, newer format, other backbone."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get("protolabel")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # any reader error means the same to the user
        raise StateError(f"'{path}' is not a ProtoLabel classifier file ({exc})") from exc
    if not meta_text:
        raise StateError(f"'{path}' has no ProtoLabel metadata")
    meta = json.loads(meta_text)
    version = meta.get("format_version")
    if meta.get("format") != FORMAT_NAME or not isinstance(version, int):
        raise StateError(f"'{path}' is not a ProtoLabel classifier file")
    if version > STATE_FORMAT_VERSION:
        raise StateError(f"'{path}' was written by a newer ProtoLabel (format {version}; this one reads up to "
                         f"{STATE_FORMAT_VERSION}); update ProtoLabel")
    if meta["backbone"] != backbone_name:
        raise StateError(f"'{path}' was made with backbone '{meta['backbone']}', not '{backbone_name}'")
    tail = {k[len(TAIL_PREFIX):]: v for k, v in tensors.items() if k.startswith(TAIL_PREFIX)}
    return StoredState(meta, tensors.get("features"), tensors.get("maps"), tensors.get("images"), tail)
