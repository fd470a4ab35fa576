"""The trunk on ONNX Runtime (core.runtime): the features PyTorch gives, a fallback that says why, a damaged cached
file made again, and a fine-tuned tail on top predicting as on PyTorch."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import Embedder, FewShotClassifier
from core.images import resize_for_model, to_tensor
from core.runtime import open_trunk, static_padding
from synthetic import SHAPE_CLASSES, draw_shape

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(config, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    kinds = [SHAPE_CLASSES[i % len(SHAPE_CLASSES)] for i in range(n)]
    return to_tensor([resize_for_model(draw_shape(k, rng), config) for k in kinds], config), kinds


def test_runtime_features_match_pytorch(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path / "features"))
    ort_side = Embedder(backbone, "cpu", runtime="onnxruntime")
    torch_side = Embedder(backbone, "cpu", runtime="torch")
    x, _ = _batch(ort_side.config)
    f_ort, m_ort = ort_side.embed_tensor(x, with_maps=True)
    f_torch, m_torch = torch_side.embed_tensor(x, with_maps=True)
    assert ort_side.runtime_note.startswith("trunk: ONNX Runtime (made ") and not ort_side.messages
    assert float(F.cosine_similarity(f_ort, f_torch).min()) >= 0.9999
    assert m_ort.shape == m_torch.shape and m_ort.dtype == torch.float16
    assert float(F.cosine_similarity(m_ort.float().flatten(1), m_torch.float().flatten(1)).min()) >= 0.9999
    files = list((tmp_path / "runtime").glob("*.onnx"))
    stem = f"{ort_side.model_key()}-{ort_side.config.size}"
    assert [f.name for f in files] == [f"{stem}.onnx"]  # a folder's batch: the trunk's graph, PyTorch's tail
    # A live frame (a small batch): the trunk and the backbone's own tail in one graph, the same features.
    f_one, m_one = ort_side.embed_tensor(x[:2], with_maps=True)
    assert float(F.cosine_similarity(f_one, f_torch[:2]).min()) >= 0.9999
    assert float(F.cosine_similarity(m_one.float().flatten(1), m_torch[:2].float().flatten(1)).min()) >= 0.9999
    assert sorted(f.name for f in (tmp_path / "runtime").glob("*.onnx")) == [f"{stem}-features.onnx", f"{stem}.onnx"]
    assert ort_side._trunk_runner(True).has_features and not ort_side._trunk_runner().has_features
    # A second embedder opens the cached file instead of exporting again.
    again = Embedder(backbone, "cpu", runtime="auto")
    again.embed_tensor(x[:1])
    assert again.runtime_note.startswith("trunk: ONNX Runtime (cached ")


def test_static_padding_computes_the_same_maps(backbone):
    """The exported trunk has its TF-"same" padding fixed for the input size: the same numbers, no shape ops."""
    size = backbone.preprocess_config.size
    fixed = static_padding(backbone.trunk, size)
    assert not any(type(m).__name__ == "Conv2dSame" for m in fixed.modules())
    assert any(type(m).__name__ == "Conv2dSame" for m in backbone.trunk.modules())  # the original is untouched
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.allclose(fixed(x), backbone.trunk.eval()(x), atol=1e-5)


def test_without_onnx_runtime_the_trunk_runs_on_pytorch_and_says_so(backbone, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path / "features"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    auto = Embedder(backbone, "cpu", runtime="auto")
    x, _ = _batch(auto.config, n=3)
    with caplog.at_level("WARNING", logger="core.embedding"):
        features, _ = auto.embed_tensor(x)
    assert auto.runtime_note == "trunk: PyTorch (ONNX Runtime is not installed)"
    assert [r.getMessage() for r in caplog.records] == [auto.runtime_note]  # one clear line in the log
    assert not auto.messages  # auto: a quiet fallback
    assert torch.equal(features, Embedder(backbone, "cpu", runtime="torch").embed_tensor(x)[0])
    asked = Embedder(backbone, "cpu", runtime="onnxruntime")
    asked.embed_tensor(x[:1])
    assert asked.messages == [asked.runtime_note]  # asked for by name: the user is told
    assert not (tmp_path / "runtime").exists()


def test_a_damaged_cached_file_is_made_again_not_trusted(backbone, tmp_path):
    key, size = "testkey", backbone.preprocess_config.size
    folder = tmp_path / "runtime"
    runner, note = open_trunk(backbone.trunk, key, size, 1, folder=folder)
    assert runner is not None and "made" in note
    path = folder / f"{key}-{size}.onnx"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # cut short, as by a full disk
    runner, note = open_trunk(backbone.trunk, key, size, 1, folder=folder)
    assert runner is not None and "made" in note and path.read_bytes() == good
    # A file that loads but computes something else (another model's trunk under this key) is not trusted either.
    other = torch.nn.Sequential(torch.nn.Conv2d(3, backbone.trunk_channels, 3, stride=32, padding=1)).eval()
    runner_other, _ = open_trunk(other, key, size, 1, folder=tmp_path / "other")
    (tmp_path / "other" / f"{key}-{size}.onnx").replace(path)
    runner, note = open_trunk(backbone.trunk, key, size, 1, folder=folder)
    assert runner_other is not None and runner is not None and "made" in note and path.read_bytes() == good


def test_a_fine_tuned_tail_on_the_runtime_trunk_predicts_as_on_pytorch(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path / "features"))
    ort_side = Embedder(backbone, "cpu", runtime="onnxruntime")
    clf = FewShotClassifier(ort_side)
    rng = np.random.default_rng(5)
    for kind in SHAPE_CLASSES:
        clf.add_examples(kind, [draw_shape(kind, rng) for _ in range(4)])
    result = clf.finetune(lr=1e-3, max_steps=3)
    assert clf.adapted_tail is not None, result.message
    x, kinds = _batch(ort_side.config, n=15, seed=9)
    f_ort = ort_side.embed_tensor(x, tail=clf.adapted_tail)[0]
    f_torch = Embedder(backbone, "cpu", runtime="torch").embed_tensor(x, tail=clf.adapted_tail)[0]
    assert float(F.cosine_similarity(f_ort, f_torch).min()) >= 0.9999
    p_ort, p_torch = clf.predict_features(f_ort), clf.predict_features(f_torch)
    assert [p.label for p in p_ort] == [p.label for p in p_torch]
    assert max(abs(a.probability - b.probability) for a, b in zip(p_ort, p_torch)) < 1e-3
    assert sum(p.label == k for p, k in zip(p_ort, kinds)) >= 12  # and the predictions are mostly right


def test_the_int8_trunk_is_an_option_with_its_own_cache_key(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLABEL_CACHE", str(tmp_path / "features"))
    int8 = Embedder(backbone, "cpu", runtime="int8")
    fp32 = Embedder(backbone, "cpu", runtime="onnxruntime")
    x, kinds = _batch(int8.config, n=16, seed=4)
    f8, f32 = int8.embed_tensor(x)[0], fp32.embed_tensor(x)[0]
    assert int8.runtime_note.startswith("trunk: ONNX Runtime (made ") and "-int8.onnx" in int8.runtime_note
    assert sorted(p.name for p in (tmp_path / "runtime").glob("*.onnx")) == \
        [f"{fp32.model_key()}-{fp32.config.size}-int8.onnx", f"{fp32.model_key()}-{fp32.config.size}.onnx"]
    # Its maps are not the float ones: caches keep them apart.
    assert int8.model_key() != fp32.model_key() and int8._weights_key() == fp32.model_key()
    assert 0.9 < float(F.cosine_similarity(f8, f32).min()) < 0.99999
    clf = FewShotClassifier(fp32)
    rng = np.random.default_rng(6)
    for kind in SHAPE_CLASSES:
        clf.add_examples(kind, [draw_shape(kind, rng) for _ in range(3)])
    same = sum(a.label == b.label for a, b in zip(clf.predict_features(f8), clf.predict_features(f32)))
    assert same >= 14, same
