"""The one embedding cache (core.embedding_cache) as evaluation uses it: a second run decodes nothing, unreadable
files are remembered with their reason until they change. The project's side: tests/core/test_labeling.py."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core import embedding
from core.embedding import Skipped
from core.embedding_cache import EmbeddingCache
from core.evaluation import FeatureTable, build_feature_table
from core.runs import finish
from synthetic import draw_shape, write_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tree(tmp_path) -> Path:
    """3 classes x 3 generated images, and a text file named like a picture among the circles."""
    root = tmp_path / "tree"
    write_tree(root, per_class=3, seed=7, classes=("circle", "square", "triangle"))
    (root / "circle" / "notes.png").write_text("saved with the wrong name\n", encoding="utf-8")
    return root


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The files core.embedding decodes from now on."""
    seen: list[str] = []
    original = embedding.load_for_model

    def counting(path, config):
        seen.append(str(path))
        return original(path, config)

    monkeypatch.setattr(embedding, "load_for_model", counting)
    return seen


def _table(root: Path, embedder, cache_dir, with_maps: bool = False) -> FeatureTable:
    table = finish(build_feature_table(root, embedder, min_images=1, with_maps=with_maps, cache_dir=cache_dir))
    assert isinstance(table, FeatureTable)
    return table


def test_a_second_evaluation_decodes_nothing_and_gives_the_same_table(tree, embedder, tmp_path, decoded):
    cache_dir = tmp_path / "cache"
    first = _table(tree, embedder, cache_dir)
    assert len(decoded) == 10 and len(first.paths) == 9 and first.maps is None
    assert [s.path for s in first.skipped] == [str(tree / "circle" / "notes.png")]
    assert sorted(os.listdir(cache_dir)) == [f"{embedder.model_key()}.sqlite"]

    decoded.clear()
    second = _table(tree, embedder, cache_dir, with_maps=True)
    assert decoded == []  # maps and the unreadable file both came from the cache
    assert second.paths == first.paths and second.skipped == first.skipped
    assert torch.equal(second.features, first.features)
    assert second.maps is not None and second.maps.dtype == torch.float16 and second.maps.shape[0] == 9

    # Features come from the float16 maps, cached or not: without a cache the table is the same, and it is
    # what direct embedding gives to float16's precision.
    uncached = _table(tree, embedder, False)
    assert len(decoded) == 10 and torch.equal(uncached.features, first.features)
    direct = torch.cat([b.features for b in embedder.embed_paths(first.paths)])
    assert torch.allclose(direct, first.features, atol=2e-3)
    assert sorted(os.listdir(cache_dir)) == [f"{embedder.model_key()}.sqlite"]


def test_an_unreadable_file_is_remembered_with_its_reason_until_it_changes(tree, embedder, tmp_path, decoded):
    cache_dir = tmp_path / "cache"
    bad = tree / "circle" / "notes.png"
    first = _table(tree, embedder, cache_dir)
    (reason,) = [s.reason for s in first.skipped]
    assert "notes.png" in reason

    decoded.clear()
    again = _table(tree, embedder, cache_dir)
    assert decoded == [] and again.skipped == [Skipped(str(bad), reason)]  # not decoded, still reported

    cv2.imwrite(str(bad), draw_shape("circle", np.random.default_rng(3))[..., ::-1])  # a new stamp: tried again
    fixed = _table(tree, embedder, cache_dir)
    assert decoded == [str(bad)]
    assert fixed.skipped == [] and str(bad) in fixed.paths and len(fixed.paths) == 10
    with EmbeddingCache(cache_dir / f"{embedder.model_key()}.sqlite", embedder.model_key()) as cache:
        assert cache.unreadable([str(bad)]) == {} and str(bad) in cache.get_many([str(bad)])


def test_a_damaged_cache_is_rebuilt_and_the_old_format_goes(tree, embedder, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = embedder.model_key()
    (cache_dir / f"{key}.sqlite").write_bytes(b"not a database, " * 100)
    (cache_dir / f"{key}.safetensors").write_bytes(b"\0" * 64)  # the format before one cache
    (cache_dir / f"{key}.json").write_text("{}")
    table = _table(tree, embedder, cache_dir)
    assert len(table.paths) == 9
    assert sorted(os.listdir(cache_dir)) == [f"{key}.sqlite"]
    with EmbeddingCache(cache_dir / f"{key}.sqlite", key) as cache:
        assert len(cache) == 9


def test_unreadable_entries_follow_the_stamp_and_the_model(tmp_path):
    """EmbeddingCache alone: a reason holds for the stamp it was made for and this model; a map put for the
    file clears it (a file read now is not unreadable, even with the same stamp: a permission fixed)."""
    f = tmp_path / "a.png"
    f.write_bytes(b"x")
    path = str(f)
    with EmbeddingCache(tmp_path / "c.sqlite", "model-a") as cache, \
            EmbeddingCache(tmp_path / "c.sqlite", "model-b") as other:
        cache.put_unreadable([Skipped(path, "broken"), Skipped(str(tmp_path / "gone.png"), "missing")])
        assert cache.unreadable([path, str(tmp_path / "gone.png")]) == {path: "broken"}  # no stamp: not kept
        assert other.unreadable([path]) == {}
        f.write_bytes(b"xy")
        assert cache.unreadable([path]) == {}
        cache.put_unreadable([Skipped(path, "still broken")])
        assert cache.unreadable([path]) == {path: "still broken"}
        cache.put_many([path], torch.ones(1, 4, 2, 2))
        assert cache.unreadable([path]) == {} and cache.get_many([path])[path].dtype == torch.float16
        assert len(cache) == 1 and len(other) == 0


def test_the_project_cache_is_the_same_class(tmp_path, embedder):
    from core.project import EmbeddingCache as FromProject, open_embedding_cache

    assert FromProject is EmbeddingCache
    with open_embedding_cache(tmp_path / "project", embedder) as cache:
        assert cache.path == tmp_path / "project" / "labels.sqlite" and cache.model_key == embedder.model_key()
