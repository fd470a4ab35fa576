"""Few-shot accuracy on a folder tree: `protolabel evaluate`.

Every folder under ROOT holding at least `min_images` images directly is a class. Images are embedded
once (their trunk maps cached per model in the user's cache folder: core.embedding_cache); episodes then
run on features derived from them (and on the maps themselves when fine-tuning), so 600 episodes cost
seconds, not hours.
"""
from __future__ import annotations

import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import numpy as np
import torch

from .embedding import CancelToken, Embedder, Skipped
from .embedding_cache import EmbeddingCache
from .finetune import adapted_tail, finetune_tail
from .images import class_folders
from .methods import create_method, method_for
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


def _open_cache(cache_dir: Path | None, embedder: Embedder) -> EmbeddingCache | None:
    """The feature cache for this model: <cache_dir>/<model key>.sqlite (None when cache_dir is False)."""
    if cache_dir is False:
        return None
    folder = Path(cache_dir or default_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    key = embedder.model_key()
    # The format before core.embedding_cache (safetensors + JSON index): never read again, so not left to fill the disk.
    for old in (folder / f"{key}.safetensors", folder / f"{key}.json"):
        old.unlink(missing_ok=True)
    path = folder / f"{key}.sqlite"
    try:
        return EmbeddingCache(path, key)
    except sqlite3.DatabaseError:  # a damaged cache is rebuilt, never fatal
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        return EmbeddingCache(path, key)


def build_feature_table(
    root: str | os.PathLike,
    embedder: Embedder,
    min_images: int = 10,
    with_maps: bool = False,
    cache_dir: Path | None = None,
    cancel: CancelToken | None = None,
) -> Generator[EmbedProgress, None, FeatureTable | None]:
    """Yields EmbedProgress while embedding, returns the FeatureTable (None when cancelled; core.runs.finish).

    Trunk maps are cached per model (cache_dir: a folder, None for default_cache_dir(), False for no cache), with
    the files that could not be read and why; cached files are not decoded again. `with_maps` says whether the
    table carries the maps. Features always come from the float16 maps through the backbone's own tail, cached
    or not, so a table does not depend on what the cache held."""
    folders = class_folders(root, min_images=min_images)
    class_names = sorted(folders)
    paths = [str(p) for name in class_names for p in folders[name]]
    labels_all = [i for i, name in enumerate(class_names) for _ in folders[name]]
    cache = _open_cache(cache_dir, embedder)
    try:
        found = yield from _features(paths, embedder, cache, with_maps, cancel)
    finally:
        if cache is not None:
            cache.close()
    if found is None:
        return None
    feats, maps, skipped = found
    ok = [(p, c) for p, c in zip(paths, labels_all) if p in feats]
    ok_paths = [p for p, _ in ok]
    features = torch.stack([feats[p] for p in ok_paths]) if ok_paths else torch.zeros(0, embedder.backbone.feature_dim)
    map_tensor = torch.stack([maps[p] for p in ok_paths]) if with_maps and ok_paths else None
    return FeatureTable(class_names, ok_paths, np.asarray([c for _, c in ok], dtype=np.int64), features,
                       map_tensor, skipped)


def _features(
    paths: list[str], embedder: Embedder, cache: EmbeddingCache | None, with_maps: bool, cancel: CancelToken | None
) -> Generator[EmbedProgress, None, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[Skipped]] | None]:
    """-> ({path: (D,) feature}, {path: (C, h, w) float16 map} when with_maps, skipped files); None when cancelled.
    Cached maps first (decoded by nobody), then the other files, each batch written to the cache as it is done."""
    feats: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    skipped: list[Skipped] = []

    def take(batch_paths: list[str], batch_maps: torch.Tensor) -> None:
        for p, f, m in zip(batch_paths, embedder.features_from_maps(batch_maps), batch_maps):
            feats[p] = f
            if with_maps:
                maps[p] = m

    todo = list(paths) if cache is None else []
    done = 0
    yield EmbedProgress(done, len(paths), 0)
    if cache is not None:
        for i in range(0, len(paths), 512):
            chunk = paths[i : i + 512]
            cached = cache.get_many(chunk)
            hits = [p for p in chunk if p in cached]
            if hits:
                take(hits, torch.stack([cached[p] for p in hits]))
            reasons = cache.unreadable([p for p in chunk if p not in cached])
            skipped += [Skipped(p, reasons[p]) for p in chunk if p in reasons]
            todo += [p for p in chunk if p not in cached and p not in reasons]
            done += len(hits) + sum(p in reasons for p in chunk)
            yield EmbedProgress(done, len(paths), len(skipped))
            if cancel is not None and cancel.cancelled:
                return None
    for batch in embedder.embed_paths(todo, with_maps=True, cancel=cancel):
        if batch.paths and batch.maps is not None:
            take(batch.paths, batch.maps)  # not batch.features: through the float16 maps, as for cached files
            if cache is not None:
                cache.put_many(batch.paths, batch.maps)
        skipped += batch.skipped
        if cache is not None:
            cache.put_unreadable(batch.skipped)  # so a huge unreadable file is not decoded again on every run
        done += len(batch.paths) + len(batch.skipped)
        yield EmbedProgress(done, len(paths), len(skipped))
    if cancel is not None and cancel.cancelled:
        return None
    return feats, maps, skipped


@dataclass
class EvalResult:
    shot: int
    accuracy: float  # percent
    ci95: float  # percent, 1.96 * std / sqrt(episodes)
    adapt_ms_median: float
    episodes: int
    per_episode: tuple[float, ...] = ()  # accuracy of each episode (the same episodes in every mode: paired)

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
    name = method_for(method, transductive)
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
        results[shot] = EvalResult(shot, float(arr.mean()), float(ci), float(statistics.median(times)), len(arr),
                                   tuple(accs))
    return results
