"""The one cache of what the network computed for image files: trunk feature maps, and files that could not be read.

A SQLite file (WAL mode; every write is one transaction, so a crash loses at most the batch being written):
a project keeps it in its labels.sqlite (core.project), evaluation, simulation and meta-training in the
user's cache folder, one file per model (core.evaluation). An entry holds while the file keeps the stamp
(size + mtime: core.embedding.file_stamp) it was made for and the model key matches, so an edited file or
another model misses.

Maps, not pooled features, are kept: features are derived from them through whichever tail the caller has
(the backbone's own, or one adapted by fine-tuning), so a file is decoded and run through the trunk once.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .embedding import Skipped, file_stamp

__all__ = ["EmbeddingCache"]

# Paths per `IN (...)` query: well under SQLite's limit on bound parameters (999 in older builds).
_CHUNK = 500


class EmbeddingCache:
    """Trunk maps per image file, (C, h, w) float16 each (Lite0: 192 x 7 x 7, 18.8 KB), and the reason each
    unreadable file failed, so it is not decoded again until it changes.

    Tables: ``embeddings`` (path, stamp, model, shape, map) and ``unreadable`` (path, stamp, model, reason),
    one row per path. Safe to use from one thread at a time, whichever thread that is.
    """

    def __init__(self, path: str | os.PathLike, model_key: str) -> None:
        self.path = Path(path)
        self.model_key = model_key
        self.db = sqlite3.connect(str(self.path), check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (path TEXT PRIMARY KEY, stamp TEXT NOT NULL,"
                " model TEXT NOT NULL, shape TEXT NOT NULL, map BLOB NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS unreadable (path TEXT PRIMARY KEY, stamp TEXT NOT NULL,"
                " model TEXT NOT NULL, reason TEXT NOT NULL)"
            )
            self.db.commit()
        except sqlite3.Error:
            self.db.close()
            raise

    def _current(self, table: str, columns: str, paths: Sequence[str]) -> Iterator[tuple[str, tuple]]:
        """(path, the other columns) of this model's rows in `table` whose file still has the stamp they were
        made for."""
        for i in range(0, len(paths), _CHUNK):
            chunk = list(paths[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT path, stamp, {columns} FROM {table} WHERE model = ? AND path IN ({marks})",
                [self.model_key, *chunk],
            ).fetchall()
            for path, stamp, *values in rows:
                if stamp == file_stamp(path):
                    yield path, tuple(values)

    def get_many(self, paths: Sequence[str]) -> dict[str, torch.Tensor]:
        """-> {path: (C, h, w) float16 map} for the paths cached with this model and unchanged since."""
        out: dict[str, torch.Tensor] = {}
        for path, (shape, blob) in self._current("embeddings", "shape, map", paths):
            dims = tuple(int(x) for x in shape.split(","))
            out[path] = torch.from_numpy(np.frombuffer(blob, dtype=np.float16).reshape(dims).copy())
        return out

    def unreadable(self, paths: Sequence[str]) -> dict[str, str]:
        """-> {path: reason} for the paths that could not be read last time and are unchanged since."""
        return {path: reason for path, (reason,) in self._current("unreadable", "reason", paths)}

    def put_many(self, paths: Sequence[str], maps: torch.Tensor) -> None:
        """paths (B,), maps (B, C, h, w): one transaction. Files that can't be stat'ed (gone) are left out."""
        rows = []
        for path, m in zip(paths, maps):
            stamp = file_stamp(path)
            if stamp is None:
                continue
            arr = m.to(torch.float16).contiguous().numpy()
            rows.append((path, stamp, self.model_key, ",".join(map(str, arr.shape)), arr.tobytes()))
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)
            # A file read now is no longer unreadable (it may have failed with the same stamp: a permission fixed).
            self.db.executemany("DELETE FROM unreadable WHERE path = ?", [(r[0],) for r in rows])

    def put_unreadable(self, skipped: Iterable[Skipped]) -> None:
        """Remember files that could not be read, with the reason: one transaction."""
        rows = [(s.path, stamp, self.model_key, s.reason) for s in skipped if (stamp := file_stamp(s.path)) is not None]
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        """Maps cached with this model."""
        return int(self.db.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", [self.model_key]).fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
