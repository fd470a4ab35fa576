"""Folder labeling as generators: the CLI draws a progress bar from them, the GUI runs them in a worker.

Every function yields progress objects and returns its result (core.runs.finish); a cancel token is checked
between batches. Unreadable files are skipped and reported, never raised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generator, Sequence

import torch

from .atomic import atomic_write_text
from .classifier import FewShotClassifier, Prediction
from .embedding import CancelToken, Skipped, load_many
from .images import class_folders, list_images, to_tensor
from .labels_csv import DEFAULT_TOPK, labels_csv_text

if TYPE_CHECKING:
    from .embedding_cache import EmbeddingCache

__all__ = ["Progress", "LabelRecord", "LabelRun", "SupportRun", "add_support_tree", "label_paths", "query_paths", "write_labels_csv"]


@dataclass
class Progress:
    stage: str  # what is happening, for a progress bar's description
    done: int
    total: int
    skipped: int = 0


@dataclass
class LabelRecord:
    path: str
    prediction: Prediction
    source: str = "predicted"  # predicted | confirmed | support


@dataclass
class LabelRun:
    records: list[LabelRecord]
    skipped: list[Skipped] = field(default_factory=list)
    cancelled: bool = False
    features: torch.Tensor | None = None  # (N, D) features of the files that could be read, in `paths` order
    paths: list[str] = field(default_factory=list)  # the files that could be read, in the order of `paths`


@dataclass
class SupportRun:
    added: dict[str, int]  # class -> examples added
    skipped: list[Skipped] = field(default_factory=list)
    cancelled: bool = False


def add_support_tree(
    classifier: FewShotClassifier, root: str | os.PathLike, cancel: CancelToken | None = None
) -> Generator[Progress, None, SupportRun]:
    """One folder per class (any depth; the folder's relative path is the class name) -> support examples."""
    folders = class_folders(root, min_images=1)
    if not folders:
        raise ValueError(f"no class folders with images under '{root}' (expected one folder per class)")
    owner = {str(p): name for name in sorted(folders) for p in folders[name]}
    total = len(owner)
    run = SupportRun({})
    done = 0
    yield Progress("embedding examples", 0, total)
    # One stream over every class: full batches (one launch per batch on a GPU).
    embedder = classifier.embedder
    for ok, arrays, skipped in load_many(list(owner), embedder.config, embedder.batch_size, cancel=cancel,
                                         prefetch=embedder.prefetch):
        run.skipped += skipped
        if arrays:
            classifier.add_labeled_examples([owner[p] for p in ok], arrays, ok)
        for p in ok:
            run.added[owner[p]] = run.added.get(owner[p], 0) + 1
        done += len(ok) + len(skipped)
        yield Progress("embedding examples", done, total, len(run.skipped))
        if cancel is not None and cancel.cancelled:
            run.cancelled = True
            return run
    return run


def label_paths(
    classifier: FewShotClassifier,
    paths: Sequence[str | os.PathLike],
    transductive: bool = False,
    cancel: CancelToken | None = None,
    cache: "EmbeddingCache | None" = None,
    predict: bool = True,
) -> Generator[Progress, None, LabelRun]:
    """Embed and classify files. Inductive: each batch is classified as it arrives. Transductive: all
    features first, then one joint prediction (the whole folder is known in advance).

    A classifier with no examples yet (or predict=False) only embeds: `features` and `paths` are filled,
    `records` stays empty.

    With a cache (a project's EmbeddingCache), files embedded before are neither decoded nor run through
    the trunk: their cached maps go through the current (possibly fine-tuned) tail; new files are added.
    Records come back in the order of `paths`."""
    items = [str(p) for p in paths]
    run = LabelRun([])
    found: dict[str, torch.Tensor] = {}  # path -> feature
    records: dict[str, LabelRecord] = {}
    done = 0
    predicting = predict and classifier.ready()
    stage = "embedding" if transductive or not predicting else "labeling"

    def take(batch_paths: list[str], feats: torch.Tensor) -> None:
        for p, f in zip(batch_paths, feats):
            found[p] = f
        if predicting and not transductive:
            for p, pred in zip(batch_paths, classifier.predict_features(feats)):
                records[p] = LabelRecord(p, pred)

    yield Progress(stage, 0, len(items))
    cached = cache.get_many(items) if cache is not None else {}
    hits = [p for p in items if p in cached]
    for i in range(0, len(hits), 256):
        chunk = hits[i : i + 256]
        take(chunk, classifier.features_from_maps(torch.stack([cached[p] for p in chunk])))
        done += len(chunk)
        yield Progress(stage, done, len(items))
    todo = [p for p in items if p not in cached]
    embedder = classifier.embedder
    for ok, arrays, skipped in load_many(todo, embedder.config, embedder.batch_size, cancel=cancel,
                                         prefetch=embedder.prefetch):
        run.skipped += skipped
        if arrays:
            batch = to_tensor(arrays, embedder.config)
            if cache is None:
                take(ok, classifier.embed_tensor(batch))
            else:
                feats, maps = classifier.embed_tensor_with_maps(batch)
                take(ok, feats)
                cache.put_many(ok, maps)
        done += len(ok) + len(skipped)
        yield Progress(stage, done, len(items), len(run.skipped))
        if cancel is not None and cancel.cancelled:
            run.cancelled = True
            break
    ok_paths = [p for p in items if p in found]
    run.features = (torch.stack([found[p] for p in ok_paths]) if ok_paths
                    else torch.zeros(0, classifier.embedder.backbone.feature_dim))
    run.paths = ok_paths
    if predicting and transductive and ok_paths and not run.cancelled:
        records = {p: LabelRecord(p, pred) for p, pred in zip(ok_paths, classifier.predict_features(run.features, True))}
    run.records = [records[p] for p in ok_paths if p in records]
    return run


def query_paths(root: str | os.PathLike) -> list[Path]:
    """All images under a folder (recursive), sorted; a single image file is a one-item list."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}' is neither a folder nor an image file")
    return list_images(root)


def write_labels_csv(records: Sequence[LabelRecord], out: str | os.PathLike, topk: int = DEFAULT_TOPK) -> None:
    """The labels CSV (core.labels_csv: one schema for every writer), written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = ((r.path, r.prediction.label, r.prediction.probability, r.prediction.similarity, r.source,
             r.prediction.topk) for r in records)
    atomic_write_text(out, labels_csv_text(rows, topk))
