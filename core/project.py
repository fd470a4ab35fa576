"""A project is a folder (DESIGN.md):

  project.json           format version, classes (name, colour, key), settings; written atomically
  classifier.safetensors the support set's embeddings, model-size images, adapted tail, thresholds
  support/<id>.png       each support example as an image file
  labels.sqlite          one row per labeled image (WAL mode; every change is one transaction), and the
                         folder's embedding cache (core.embedding_cache)

Label paths are stored relative to the labeled folder's root (``query_root``), which is stored as given.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .classifier import FewShotClassifier, Prediction, StateError
from .embedding import Embedder
from .embedding_cache import EmbeddingCache

__all__ = [
    "PROJECT_FORMAT_VERSION",
    "Project",
    "ProjectError",
    "EmbeddingCache",
    "LabelStore",
    "StoredLabel",
    "atomic_write_text",
    "class_color",
    "forget_labels",
    "load_project",
    "open_embedding_cache",
    "has_backup",
    "read_project_meta",
    "restore_backup",
    "save_project",
    "store_labels",
]

PROJECT_FORMAT_VERSION = 1
PROJECT_FILE = "project.json"
CLASSIFIER_FILE = "classifier.safetensors"
LABELS_FILE = "labels.sqlite"
SUPPORT_DIR = "support"

# Tableau-like colours, distinguishable and readable on photos.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


class ProjectError(ValueError):
    """A project folder that can't be opened; the message says why. ``backup`` is True when the folder
    holds a backup of the previous save (``restore_backup`` brings it back)."""

    def __init__(self, message: str, backup: bool = False) -> None:
        super().__init__(message)
        self.backup = backup


BACKUP_SUFFIX = ".bak"


def _keep_backup(path: Path) -> None:
    """Before `path` is replaced: its current version becomes `<path>.bak` (a hard link, so no copy; a copy
    where links are impossible). Atomic: the old .bak stays until the new one is complete."""
    if not path.is_file():
        return
    bak = path.with_name(path.name + BACKUP_SUFFIX)
    tmp = path.with_name(f".{path.name}{BACKUP_SUFFIX}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copy2(path, tmp)
    os.replace(tmp, bak)


def has_backup(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / (PROJECT_FILE + BACKUP_SUFFIX)).is_file() and (folder / (CLASSIFIER_FILE + BACKUP_SUFFIX)).is_file()


def restore_backup(folder: str | os.PathLike) -> None:
    """Put the previous save back (project.json and classifier.safetensors); the damaged files are kept as
    `*.damaged` for a closer look. Raises ProjectError when there is no backup."""
    folder = Path(folder)
    if not has_backup(folder):
        raise ProjectError(f"'{folder}' has no backup to restore")
    for name in (CLASSIFIER_FILE, PROJECT_FILE):  # project.json last, as when saving
        path = folder / name
        if path.exists():
            os.replace(path, path.with_name(path.name + ".damaged"))
        import shutil

        with atomic_path(path) as tmp:
            shutil.copy2(folder / (name + BACKUP_SUFFIX), tmp)


def class_color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass
class StoredLabel:
    path: str  # relative to the query root
    label: str
    confidence: float
    similarity: float
    source: str  # predicted | confirmed | support
    topk: list[tuple[str, float]] = field(default_factory=list)


class LabelStore:
    """labels.sqlite: path -> label. WAL mode; each write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS labels (path TEXT PRIMARY KEY, label TEXT NOT NULL, confidence REAL,"
            " similarity REAL, source TEXT NOT NULL, topk TEXT, updated REAL)"
        )
        self.db.commit()

    def put_many(self, labels: Iterable[StoredLabel]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(x.path, x.label, x.confidence, x.similarity, x.source, json.dumps(x.topk), now) for x in labels],
            )

    def delete_many(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM labels WHERE path = ?", [(p,) for p in paths])

    def all(self) -> list[StoredLabel]:
        rows = self.db.execute("SELECT path, label, confidence, similarity, source, topk FROM labels ORDER BY path")
        return [StoredLabel(r[0], r[1], r[2], r[3], r[4], [tuple(x) for x in json.loads(r[5] or "[]")]) for r in rows]

    def close(self) -> None:
        self.db.close()


def open_embedding_cache(folder: str | os.PathLike, embedder: Embedder) -> EmbeddingCache:
    """The embedding cache inside a project folder (created with the folder if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return EmbeddingCache(folder / LABELS_FILE, embedder.model_key())


@dataclass
class Project:
    folder: Path
    name: str
    classes: list[dict]  # [{"name", "color", "key"}]
    query_root: str | None
    settings: dict
    classifier: FewShotClassifier

    def embedding_cache(self) -> EmbeddingCache:
        """The project's cache of trunk maps for the labeled folder (close it when done)."""
        return open_embedding_cache(self.folder, self.classifier.embedder)

    def labels(self) -> list[StoredLabel]:
        store = LabelStore(self.folder / LABELS_FILE)
        try:
            return store.all()
        finally:
            store.close()

    def resolve(self, relative: str) -> Path:
        """A label path -> a file path under the query root; refuses paths that climb out of it."""
        if self.query_root is None:
            raise ProjectError("this project has no labeled folder")
        return _inside(Path(self.query_root), relative)


def _inside(root: Path, relative: str) -> Path:
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise ProjectError(f"path '{relative}' points outside '{root}'")
    return candidate


def _relative(path: str, root: str | None) -> str:
    if root is None:
        return path
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()
    except ValueError:  # other drive on Windows
        return path


def save_project(
    folder: str | os.PathLike,
    classifier: FewShotClassifier,
    labels: Sequence[tuple[str, Prediction, str]] = (),
    query_root: str | os.PathLike | None = None,
    settings: dict | None = None,
    name: str | None = None,
) -> Path:
    """Write (or update) a project folder. labels: (file path, prediction, source). The project file is
    written last, so a crash mid-save leaves the previous project.json pointing at complete data."""
    import cv2

    folder = Path(folder)
    (folder / SUPPORT_DIR).mkdir(parents=True, exist_ok=True)
    for ex in classifier.examples.values():
        target = folder / SUPPORT_DIR / f"{ex.id}.png"
        if ex.image is not None and not target.exists():
            cv2.imwrite(str(target), np.ascontiguousarray(ex.image[..., ::-1]))
    _keep_backup(folder / CLASSIFIER_FILE)
    classifier.save(folder / CLASSIFIER_FILE)
    # Examples removed since the last save: their image files go too (after the classifier no longer names them).
    for png in (folder / SUPPORT_DIR).glob("*.png"):
        if png.stem not in classifier.examples:
            png.unlink(missing_ok=True)
    root = str(Path(query_root).resolve()) if query_root is not None else None
    store_labels(folder, labels, root)
    meta = {
        "format": "protolabel-project",
        "format_version": PROJECT_FORMAT_VERSION,
        "name": name or folder.resolve().name,
        "backbone": classifier.embedder.backbone.name,
        "classes": [
            {"name": c, "color": class_color(i), "key": str(i + 1) if i < 9 else None}
            for i, c in enumerate(classifier.classes)
        ],
        "query_root": root,
        "settings": settings or {},
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _keep_backup(folder / PROJECT_FILE)
    atomic_write_text(folder / PROJECT_FILE, json.dumps(meta, indent=2, ensure_ascii=False))
    return folder


def store_labels(
    folder: str | os.PathLike, labels: Sequence[tuple[str, Prediction, str]], query_root: str | os.PathLike | None
) -> None:
    """Write labels (file path, prediction, source) into the project's labels.sqlite, in one transaction.

    Paths are stored relative to query_root. Cheap enough to call on every correction."""
    if not labels:
        return
    root = str(Path(query_root).resolve()) if query_root is not None else None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = LabelStore(folder / LABELS_FILE)
    try:
        store.put_many(
            StoredLabel(_relative(p, root), pred.label, pred.probability, pred.similarity, source, pred.topk)
            for p, pred, source in labels
        )
    finally:
        store.close()


def forget_labels(folder: str | os.PathLike, paths: Sequence[str], query_root: str | os.PathLike | None) -> None:
    """Remove these files' labels from the project's labels.sqlite (a label taken back that left nothing to show)."""
    if not paths or not (Path(folder) / LABELS_FILE).exists():
        return
    root = str(Path(query_root).resolve()) if query_root is not None else None
    store = LabelStore(Path(folder) / LABELS_FILE)
    try:
        store.delete_many(_relative(p, root) for p in paths)
    finally:
        store.close()


def read_project_meta(folder: str | os.PathLike) -> dict:
    """project.json of a project folder, checked (format, version); no model needed. Raises ProjectError."""
    pfile = Path(folder) / PROJECT_FILE
    if not pfile.is_file():
        raise ProjectError(f"'{folder}' is not a ProtoLabel project (no {PROJECT_FILE})")
    backup = has_backup(folder)
    hint = "; the previous save is kept as a backup" if backup else ""
    try:
        meta = json.loads(pfile.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProjectError(f"'{pfile}' is damaged: {exc}{hint}", backup) from exc
    if not isinstance(meta, dict):
        raise ProjectError(f"'{pfile}' is not a ProtoLabel project file{hint}", backup)
    version = meta.get("format_version")
    if meta.get("format") != "protolabel-project" or not isinstance(version, int) or isinstance(version, bool):
        raise ProjectError(f"'{pfile}' is not a ProtoLabel project file")
    if version > PROJECT_FORMAT_VERSION:
        raise ProjectError(f"'{pfile}' comes from a newer ProtoLabel (format {version}; this one reads up to "
                           f"{PROJECT_FORMAT_VERSION})")
    return meta


def load_project(folder: str | os.PathLike, embedder: Embedder) -> Project:
    folder = Path(folder)
    meta = read_project_meta(folder)
    try:
        classifier = FewShotClassifier.load(folder / CLASSIFIER_FILE, embedder)
    except StateError as exc:
        backup = has_backup(folder)
        hint = "; the previous save is kept as a backup" if backup else ""
        raise ProjectError(f"the classifier of project '{folder}' can't be loaded: {exc}{hint}", backup) from exc
    return Project(folder, meta.get("name", folder.name), meta.get("classes", []), meta.get("query_root"),
                   meta.get("settings", {}), classifier)
