"""Few-shot accuracy on a folder tree: `protolabel evaluate`.

Every folder under ROOT holding at least `min_images` images directly is a class. Images are embedded
once (cached on disk per model); episodes then run on cached features (and cached trunk maps when
fine-tuning), so 600 episodes cost seconds, not hours.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import numpy as np
import torch

from .atomic import atomic_path, atomic_write_text
from .embedding import CancelToken, Embedder, Skipped, file_stamp
from .finetune import adapted_tail, finetune_tail
from .images import class_folders
from .methods import create_method
from .training import sample_episode

__all__ = ["FeatureTable", "EvalResult", "build_feature_table", "evaluate", "default_cache_dir"]


def default_cache_dir() -> Path:
    env = os.environ.get("PROTOLABEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "protolabel" / "features"


@dataclass
class FeatureTable:
    class_names: list[str]
    paths: list[str]
    labels: np.ndarray  # (N,) class index
    features: torch.Tensor  # (N, D) float32
    maps: torch.Tensor | None  # (N, C, h, w) float16, or None
    skipped: list[Skipped] = field(default_factory=list)

    def items_per_class(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.class_names]
        for i, c in enumerate(self.labels.tolist()):
            out[c].append(i)
        return out


@dataclass
class EmbedProgress:
    done: int
    total: int
    skipped: int


class _DiskCache:
    """Per-model cache of features (+ trunk maps): <dir>/<model_key>.safetensors and a JSON index."""

    def __init__(self, folder: Path, key: str) -> None:
        self.tensors_path = folder / f"{key}.safetensors"
        self.index_path = folder / f"{key}.json"
        self.index: dict[str, list] = {}  # path -> [stamp, row]
        self.features: torch.Tensor | None = None
        self.maps: torch.Tensor | None = None
        if self.tensors_path.is_file() and self.index_path.is_file():
            try:
                from safetensors.torch import load_file

                data = load_file(str(self.tensors_path))
                self.features, self.maps = data["features"], data.get("maps")
                self.index = json.loads(self.index_path.read_text())
            except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
                self.index, self.features, self.maps = {}, None, None

    def get(self, path: str, need_maps: bool) -> tuple[torch.Tensor, torch.Tensor | None] | str | None:
        """-> (feature, map), the reason a file was unreadable last time (str), or None (not cached)."""
        entry = self.index.get(path)
        if entry is None:
            return None
        if entry[0] != file_stamp(path):
            return None
        if entry[1] < 0:
            return str(entry[2]) if len(entry) > 2 else "unreadable"
        if self.features is None:
            return None
        if need_maps and self.maps is None:
            return None
        row = entry[1]
        return self.features[row], (self.maps[row] if self.maps is not None else None)

    def save(self, paths: list[str], features: torch.Tensor, maps: torch.Tensor | None, bad: list[Skipped]) -> None:
        """Write these rows plus every still-valid cached row of other files (other folders stay cached)."""
        from safetensors.torch import save_file

        fresh = set(paths)
        keep = [(p, e[1]) for p, e in self.index.items()
                if p not in fresh and e[1] >= 0 and self.features is not None and e[0] == file_stamp(p)]
        if keep:
            rows = torch.as_tensor([r for _, r in keep])
            paths = paths + [p for p, _ in keep]
            features = torch.cat([features, self.features[rows]])
            # Older rows without maps are kept rather than the new maps (a table has maps for all or none).
            maps = torch.cat([maps, self.maps[rows]]) if maps is not None and self.maps is not None else None

        self.tensors_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.contiguous()}
        if maps is not None:
            tensors["maps"] = maps.contiguous()
        index = {}
        for row, p in enumerate(paths):
            stamp = file_stamp(p)
            if stamp is not None:
                index[p] = [stamp, row]
        for skip in bad:  # remembered, so a huge unreadable file is not decoded again on every run
            stamp = file_stamp(skip.path)
            if stamp is not None:
                index[skip.path] = [stamp, -1, skip.reason]
        with atomic_path(self.tensors_path) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(self.index_path, json.dumps(index))


def build_feature_table(
    root: str | os.PathLike,
    embedder: Embedder,
    min_images: int = 10,
    with_maps: bool = False,
    cache_dir: Path | None = None,
    cancel: CancelToken | None = None,
) -> Generator[EmbedProgress, None, FeatureTable | None]:
    """Yields EmbedProgress while embedding, returns the FeatureTable (None when cancelled; core.runs.finish). Cached files are not decoded again.
    Trunk maps are always cached (so a later fine-tuned evaluation finds them); `with_maps` says whether
    the table carries them."""
    folders = class_folders(root, min_images=min_images)
    class_names = sorted(folders)
    paths = [str(p) for name in class_names for p in folders[name]]
    labels_all = [i for i, name in enumerate(class_names) for _ in folders[name]]
    cache = _DiskCache(cache_dir or default_cache_dir(), embedder.model_key()) if cache_dir is not False else None
    feats: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor | None] = {}
    todo = []
    skipped: list[Skipped] = []
    for p in paths:
        hit = cache.get(p, with_maps) if cache else None
        if hit is None:
            todo.append(p)
        elif isinstance(hit, str):
            skipped.append(Skipped(p, hit))
        else:
            feats[p], maps[p] = hit
    done = len(paths) - len(todo)
    yield EmbedProgress(done, len(paths), len(skipped))
    for batch in embedder.embed_paths(todo, with_maps=True, cancel=cancel):
        for i, p in enumerate(batch.paths):
            feats[p] = batch.features[i]
            maps[p] = batch.maps[i] if batch.maps is not None else None
        skipped += batch.skipped
        done += len(batch.paths) + len(batch.skipped)
        yield EmbedProgress(done, len(paths), len(skipped))
    if cancel is not None and cancel.cancelled:
        return
    ok = [(p, c) for p, c in zip(paths, labels_all) if p in feats]
    ok_paths = [p for p, _ in ok]
    features = torch.stack([feats[p] for p in ok_paths]) if ok_paths else torch.zeros(0, embedder.backbone.feature_dim)
    # Rows served from an older cache may have no maps; then the table has none (fine-tuned runs asked for
    # maps, so their cache lookups missed and those files were embedded again with maps).
    have_maps = bool(ok_paths) and all(maps.get(p) is not None for p in ok_paths)
    map_tensor = torch.stack([maps[p] for p in ok_paths]) if have_maps else None  # type: ignore[misc]
    if cache is not None and todo and ok_paths:
        new = set(todo)
        cache.save(ok_paths, features, map_tensor, [s for s in skipped if s.path in new])
    return FeatureTable(class_names, ok_paths, np.asarray([c for _, c in ok], dtype=np.int64), features,
                       map_tensor if with_maps else None, skipped)


@dataclass
class EvalResult:
    shot: int
    accuracy: float  # percent
    ci95: float  # percent, 1.96 * std / sqrt(episodes)
    adapt_ms_median: float
    episodes: int

    def to_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 2), "ci95": round(self.ci95, 2),
                "adapt_ms_median": round(self.adapt_ms_median, 2), "episodes": self.episodes}


@dataclass
class EpisodeProgress:
    shot: int
    episode: int
    episodes: int
    accuracy: float


def evaluate(
    table: FeatureTable,
    way: int = 5,
    shots: tuple[int, ...] = (1, 5),
    query: int = 15,
    episodes: int = 600,
    seed: int = 0,
    transductive: bool = False,
    finetune_s: float = 0.0,
    embedder: Embedder | None = None,
    finetune_steps: int = 40,
    cancel: CancelToken | None = None,
    method_kwargs: dict | None = None,
    method: str = "prototypes",
) -> Generator[EpisodeProgress, None, dict[int, EvalResult] | None]:
    """Yields EpisodeProgress, returns {shot: EvalResult} (None when cancelled). The episode list depends only on (seed, shot),
    so every mode sees the same episodes. method: a registered method; transductive: its transductive variant.
    Adaptation time: from cached features to query predictions
    (fine-tuning and re-running the tail included when fine-tuning)."""
    if min(shots, default=0) < 1 or query < 1 or episodes < 1 or way < 2:
        raise ValueError("evaluate needs --way >= 2 and --shot, --query, --episodes >= 1")
    if finetune_s > 0 and (embedder is None or table.maps is None):
        raise ValueError("fine-tuned evaluation needs the embedder and trunk maps")
    items = table.items_per_class()
    results: dict[int, EvalResult] = {}
    name = (create_method(method).transductive_variant or method) if transductive else method
    for shot in shots:
        rng = np.random.default_rng([seed, shot])
        accs: list[float] = []
        times: list[float] = []
        for e in range(episodes):
            if cancel is not None and cancel.cancelled:
                return
            ep = sample_episode(rng, items, way, shot, query)
            s_idx = torch.as_tensor(ep.support)
            q_idx = torch.as_tensor(ep.query)
            s_lab = torch.as_tensor(ep.support_labels)
            q_lab = torch.as_tensor(ep.query_labels)
            t0 = time.perf_counter()
            if finetune_s > 0:
                if embedder is None or table.maps is None:
                    raise ValueError("fine-tuned evaluation needs the embedder and a table built with_maps=True")
                res = finetune_tail(embedder.backbone, table.maps[s_idx], s_lab, way,
                                    budget_s=finetune_s, max_steps=finetune_steps, device=embedder.device, seed=e)
                if res.tail_state is not None:
                    tail = adapted_tail(embedder.backbone, res.tail_state)
                    s_feat = embedder.features_from_maps(table.maps[s_idx], tail)
                    q_feat = embedder.features_from_maps(table.maps[q_idx], tail)
                else:
                    s_feat, q_feat = table.features[s_idx], table.features[q_idx]
            else:
                s_feat, q_feat = table.features[s_idx], table.features[q_idx]
            fitted = create_method(name, **(method_kwargs or {}))
            with torch.inference_mode():
                fitted.process_support_set(s_feat, s_lab, way)
                pred = fitted(q_feat).argmax(-1)
            times.append((time.perf_counter() - t0) * 1000)
            accs.append(float((pred == q_lab).float().mean()) * 100)
            yield EpisodeProgress(shot, e + 1, episodes, float(np.mean(accs)))
        arr = np.asarray(accs)
        ci = 1.96 * arr.std() / np.sqrt(len(arr)) if len(arr) > 1 else 0.0
        results[shot] = EvalResult(shot, float(arr.mean()), float(ci), float(statistics.median(times)), len(arr))
    return results
