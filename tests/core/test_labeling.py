"""Folder labeling with the project's embedding cache: a second pass decodes nothing that is unchanged."""
from __future__ import annotations

import os

import pytest
import torch

from core import FewShotClassifier, load_image
from core.labeling import LabelRun, Progress, label_paths
from core.runs import finish
from core.project import EmbeddingCache
from synthetic import write_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(gen) -> LabelRun:
    progress = []
    run = finish(gen, progress.append)
    assert isinstance(run, LabelRun) and progress and all(isinstance(p, Progress) for p in progress)
    return run


@pytest.fixture(scope="module")
def task(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("cache")
    support = write_tree(root / "support", per_class=3, seed=5, classes=("circle", "square", "star"))
    queries = write_tree(root / "query", per_class=4, seed=6, classes=("circle", "square", "star"))
    clf = FewShotClassifier(embedder)
    for name, files in support.items():
        clf.add_examples(name, [load_image(f) for f in files])
    paths = [str(p) for files in queries.values() for p in files]
    return clf, paths, root


def _count_forwards(embedder, monkeypatch) -> list[int]:
    seen: list[int] = []
    original = embedder.embed_tensor

    def counting(x, *args, **kwargs):
        seen.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed_tensor", counting)
    return seen


def test_second_pass_uses_cached_maps_and_agrees(task, tmp_path, monkeypatch):
    clf, paths, _ = task
    cache = EmbeddingCache(tmp_path / "labels.sqlite", clf.embedder.model_key())
    seen = _count_forwards(clf.embedder, monkeypatch)
    first = _run(label_paths(clf, paths, cache=cache))
    assert sum(seen) == len(paths) and len(cache) == len(paths)
    seen.clear()
    second = _run(label_paths(clf, paths, cache=cache))
    assert seen == []  # nothing decoded, no trunk forward
    assert [r.path for r in second.records] == [r.path for r in first.records] == paths
    assert torch.allclose(first.features, second.features, atol=2e-3)  # maps are stored in float16
    assert [r.prediction.label for r in first.records] == [r.prediction.label for r in second.records]
    cache.close()


def test_cached_maps_go_through_the_fine_tuned_tail(task, tmp_path):
    clf, paths, _ = task
    cache = EmbeddingCache(tmp_path / "labels.sqlite", clf.embedder.model_key())
    _run(label_paths(clf, paths, cache=cache))
    clf.finetune(budget_s=5, max_steps=3, lr=1e-3)
    try:
        cached = _run(label_paths(clf, paths, cache=cache))
        fresh = _run(label_paths(clf, paths))
        assert torch.allclose(cached.features, fresh.features, atol=2e-3)
    finally:
        clf.reset_finetune()
        cache.close()


def test_changed_file_or_other_model_misses(task, tmp_path):
    clf, paths, _ = task
    cache = EmbeddingCache(tmp_path / "labels.sqlite", clf.embedder.model_key())
    _run(label_paths(clf, paths[:4], cache=cache))
    assert set(cache.get_many(paths[:4])) == set(paths[:4])
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert paths[0] not in cache.get_many(paths[:4])
    other = EmbeddingCache(tmp_path / "labels.sqlite", "another-model")
    assert other.get_many(paths[:4]) == {} and len(other) == 0
    other.close()
    cache.close()


def test_transductive_and_cancel(task, monkeypatch):
    clf, paths, _ = task
    run = _run(label_paths(clf, paths, transductive=True))
    assert len(run.records) == len(paths)
    assert sum(r.prediction.best_class == r.path.split(os.sep)[-2] for r in run.records) >= len(paths) - 1

    class Cancelled:
        cancelled = True

    monkeypatch.setattr(clf.embedder, "batch_size", 4)  # cancel is checked between batches
    partial = _run(label_paths(clf, paths, cancel=Cancelled()))
    assert partial.cancelled and len(partial.records) < len(paths)


@pytest.mark.parametrize("prefetch", [True, False])
def test_load_many_prefetch_or_decode_in_between(tmp_path, monkeypatch, prefetch):
    """prefetch: the next batch decodes while the consumer works; without it nothing decodes then (the CPU
    forward has every core), and the next batch is decoded when the consumer asks for it. Same batches either way."""
    import threading

    import numpy as np

    from core import PreprocessConfig, embedding

    decoded: list[str] = []
    lock = threading.Lock()

    def fake_decode(path: str, config: PreprocessConfig) -> np.ndarray:
        with lock:
            decoded.append(path)
        return np.zeros((config.size, config.size, 3), np.uint8)

    monkeypatch.setattr(embedding, "load_for_model", fake_decode)
    paths = [f"img{i}.png" for i in range(10)]
    batches = []
    for ok, _arrays, _skipped in embedding.load_many(paths, PreprocessConfig(size=8), 4, workers=2, prefetch=prefetch):
        batches.append(ok)
        expected_done = min(len(paths), sum(map(len, batches)) + (4 if prefetch else 0))
        for _ in range(200):  # the consumer "works" here; prefetched decodes finish meanwhile
            with lock:
                if len(decoded) >= expected_done:
                    break
            threading.Event().wait(0.005)
        if not prefetch:
            threading.Event().wait(0.05)  # give a wrongly started decode time to show
        with lock:
            assert len(decoded) == expected_done, (prefetch, len(batches), decoded)
    assert batches == [paths[0:4], paths[4:8], paths[8:10]]


def test_embedder_prefetches_unless_cpu_threads_fill_every_core(monkeypatch, embedder):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    assert embedder.device.type == "cpu" and embedder.prefetch is False
    monkeypatch.setattr(torch, "get_num_threads", lambda: max(1, cores - 1))
    assert embedder.prefetch is (cores > 1)
    monkeypatch.setattr(embedder, "device", torch.device("cuda"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    assert embedder.prefetch is True
