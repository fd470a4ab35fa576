"""The outer loop: episode sampler properties, a tiny meta-training run that must raise held-out accuracy,
resume, the command line, and DistributedDataParallel with 2 gloo processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import load_model_file
from core.backbones import read_model_metadata
from core.metatrain import MetaResult, MetaTrainConfig, _groups, _sample, metatrain, split_by_domain, split_classes
from core.runs import finish
from core.training import sample_episode
from synthetic import write_glyph_tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glyphs")
    write_glyph_tree(root, per_class=8, seed=0)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


def _run(root, out, embedder, cache, **kw) -> MetaResult:
    resume = kw.pop("resume", False)
    cfg = MetaTrainConfig(**{"way": 5, "shot": 1, "query": 5, "episodes": 120, "val_every": 40, "val_episodes": 60,
                             "lr": 1e-4, "min_images": 5, **kw})
    result = finish(metatrain(root, out, embedder, cfg, resume=resume, cache_dir=cache))
    assert isinstance(result, MetaResult)
    return result


@pytest.mark.parametrize("way,shot,query", [(5, 1, 15), (3, 5, 2), (10, 2, 4)])
def test_episodes_are_n_way_k_shot_with_disjoint_support_and_query(way, shot, query):
    rng = np.random.default_rng(0)
    items = [list(range(c * 30, c * 30 + 30)) for c in range(12)]
    owner = {i: c for c, its in enumerate(items) for i in its}
    for _ in range(50):
        ep = sample_episode(rng, items, way, shot, query)
        assert len(set(ep.classes)) == way
        assert len(ep.support) == way * shot and len(ep.query) == way * query
        assert not set(ep.support) & set(ep.query)
        for idx, label in zip(ep.support + ep.query, ep.support_labels + ep.query_labels):
            assert owner[idx] == ep.classes[label]
        assert sorted(ep.support_labels) == sorted(list(range(way)) * shot)


def test_split_keeps_training_and_validation_classes_apart():
    names = [f"c{i}" for i in range(40)]
    train, val = split_classes(names, 0.2, 5, seed=3)
    assert not set(train) & set(val) and set(train) | set(val) == set(names)
    assert len(val) == 8 and split_classes(names, 0.2, 5, seed=3) == (train, val)
    assert split_classes(names, 0.2, 5, seed=4) != (train, val)
    with pytest.raises(ValueError, match="at least 10 classes"):
        split_classes(names[:9], 0.2, 5, seed=0)


def test_domains_each_keep_validation_classes_and_episodes_never_mix_domains():
    names = [f"glyphs/g{i}" for i in range(30)] + [f"icons/i{i}" for i in range(12)] + [f"cards/c{i}" for i in range(10)]
    train, val = split_by_domain(names, 0.2, 5, seed=0, domains=True)
    assert not set(train) & set(val) and set(train) | set(val) == set(names)
    for d, n in (("glyphs", 30), ("icons", 12), ("cards", 10)):
        assert len([v for v in val if v.startswith(d + "/")]) == max(5, min(round(0.2 * n), n - 5))
    assert split_by_domain(names, 0.2, 5, seed=0, domains=False) == split_classes(names, 0.2, 5, seed=0)
    cfg = MetaTrainConfig(way=5, shot=1, query=2)
    items = [list(range(k * 10, k * 10 + 10)) for k in range(len(train))]
    groups = _groups(train, True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        ep = _sample(rng, items, groups, cfg)
        domains = {train[c].split("/")[0] for c in ep.classes}
        assert len(domains) == 1 and len(set(ep.classes)) == 5
        for idx, label in zip(ep.support + ep.query, ep.support_labels + ep.query_labels):
            assert idx in items[ep.classes[label]]
        seen |= domains
    assert seen == {"glyphs", "icons", "cards"}  # uniform over domains: the small ones are drawn too
    # Without domains the episodes are sample_episode's, draw for draw (runs before this option are unchanged).
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(20):
        assert _sample(a, items, _groups(train, False), cfg) == sample_episode(b, items, 5, 1, 2)


def test_a_tiny_run_raises_held_out_accuracy(glyphs, tmp_path, embedder, cache):
    out = tmp_path / "glyphs.safetensors"
    result = _run(glyphs, out, embedder, cache)
    assert not set(result.train_classes) & set(result.val_classes)
    assert result.best_val_acc >= result.baseline_val_acc + 2.0, (result.baseline_val_acc, result.history)
    assert result.best_episode > 0 and [h["episode"] for h in result.history] == [40, 80, 120]
    # The checkpoint is a model file: metadata says what it was trained on, and --model loads it.
    meta = read_model_metadata(out)["metatrain"]
    assert meta["val_classes"] == result.val_classes and meta["metrics"]["best_val_acc"] == round(result.best_val_acc, 2)
    assert load_model_file(out).name == embedder.backbone.name
    log = json.loads(result.log_path.read_text())
    assert log["history"] == result.history
    assert result.curve_path.stat().st_size > 1000


def test_a_run_over_domains_validates_each_and_records_them(tmp_path, embedder, cache):
    """Two domains (capitals, and lower case with digits and signs): a short run keeps validation classes in
    both, logs each one's accuracy, and the model file says what it was trained on."""
    root = tmp_path / "domains"
    write_glyph_tree(root / "upper", chars="ABCDEFGHJKLMNPQR", per_class=6, seed=2)
    write_glyph_tree(root / "lower", chars="abdefghijkmnq2345", per_class=6, seed=3)
    result = _run(root, tmp_path / "two.safetensors", embedder, cache, episodes=20, val_every=10, val_episodes=10,
                  domains=True)
    assert {c.split("/")[0] for c in result.val_classes} == {"upper", "lower"}
    assert not set(result.train_classes) & set(result.val_classes)
    assert [h["episode"] for h in result.history] == [10, 20]
    for h in result.history:
        by_domain = h["val_acc_by_domain"]
        assert set(by_domain) == {"lower", "upper"}
        assert h["val_acc"] == pytest.approx(sum(by_domain.values()) / 2, abs=0.01)
    meta = read_model_metadata(tmp_path / "two.safetensors")["metatrain"]
    assert meta["config"]["domains"] is True
    assert set(meta["metrics"]["baseline_val_acc_by_domain"]) == {"lower", "upper"}


def test_resume_continues_where_it_stopped(glyphs, tmp_path, embedder, cache):
    small = {"val_every": 20, "val_episodes": 20}
    whole = _run(glyphs, tmp_path / "whole.safetensors", embedder, cache, episodes=40, **small)
    first = _run(glyphs, tmp_path / "parts.safetensors", embedder, cache, episodes=20, **small)
    assert [h["episode"] for h in first.history] == [20]
    rest = _run(glyphs, tmp_path / "parts.safetensors", embedder, cache, episodes=40, resume=True, **small)
    assert [h["episode"] for h in rest.history] == [20, 40]
    # Same sampler and augmentation streams, same optimiser state: the same numbers as one run.
    assert [h["val_acc"] for h in rest.history] == pytest.approx([h["val_acc"] for h in whole.history], abs=1e-6)
    with pytest.raises(ValueError, match="same data, split and settings"):
        _run(glyphs, tmp_path / "parts.safetensors", embedder, cache, episodes=40, resume=True, seed=1, **small)
    with pytest.raises(ValueError, match="nothing to resume"):
        _run(glyphs, tmp_path / "never.safetensors", embedder, cache, resume=True)


def _cli_env(cache: Path) -> dict:
    return dict(os.environ, PROTOLABEL_CACHE=str(cache), PROTOLABEL_THREADS="1", OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO))


def test_the_command_writes_model_log_and_curve(glyphs, tmp_path, cache):
    out = tmp_path / "cli.safetensors"
    held_out = sorted(p.name for p in glyphs.iterdir())[:6]
    (tmp_path / "test-classes.txt").write_text("\n".join(held_out) + "\n")
    proc = subprocess.run([sys.executable, "-m", "core.cli", "metatrain", str(glyphs), "--out", str(out),
                           "--exclude", str(tmp_path / "test-classes.txt"), "--episodes", "40", "--val-every", "20", "--val-episodes", "20", "--shot", "1", "--query", "3",
                           "--min-images", "5", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          env=_cli_env(cache), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out classes" in proc.stderr and out.is_file()
    assert Path(str(out) + ".curve.png").is_file()
    log = json.loads(Path(str(out) + ".log.json").read_text())
    used = set(log["train_classes"]) | set(log["val_classes"])
    assert not used & set(held_out) and len(used) == len(list(glyphs.iterdir())) - 6


@pytest.mark.slow
def test_distributed_data_parallel_with_two_gloo_processes(glyphs, tmp_path, cache):
    out = tmp_path / "ddp.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "core.cli", "metatrain", str(glyphs), "--out", str(out), "--episodes", "40",
                           "--val-every", "20", "--val-episodes", "20", "--shot", "1", "--query", "3", "--min-images", "5",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, env=_cli_env(cache),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads(Path(str(out) + ".log.json").read_text())
    assert [h["episode"] for h in log["history"]] == [20, 40]
    assert proc.stderr.count("held-out classes") == 1  # rank 0 reports; rank 1 trains silently
    assert load_model_file(out) is not None
