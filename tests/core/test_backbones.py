"""The embedded backbone: weight mapping proven on real photos, registry, model files."""
from __future__ import annotations

import pytest
import torch

from core import PreprocessConfig, WeightsNotFoundError, create_backbone, preprocess
from core.backbones import ModelFileError, load_model_file, read_model_metadata, save_model_file

skimage_data = pytest.importorskip("skimage.data")


@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_imagenet_head_names_real_photos(backbone, photo, classes):
    """chelsea is a cat (ImageNet 281-285); coffee is an espresso (967). Proves the lukemelas->timm mapping."""
    image = getattr(skimage_data, photo)()
    with torch.inference_mode():
        logits = backbone.imagenet_logits(preprocess([image], backbone.preprocess_config))
    probs = logits.softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5


def test_surface_and_shapes(backbone):
    x = torch.zeros(2, 3, 224, 224)
    with torch.inference_mode():
        maps = backbone.forward_trunk(x)
        feats = backbone.forward_tail(maps)
        direct = backbone(x)
    assert maps.shape == (2, 192, 7, 7)
    assert feats.shape == (2, backbone.feature_dim) == (2, 1280 + 192)  # tail output + pooled trunk map
    assert torch.allclose(feats, direct)
    assert backbone.preprocess_config.mean == (127.0, 127.0, 127.0)
    assert backbone.preprocess_config.std == (128.0, 128.0, 128.0)


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        create_backbone("no_such_net")


def test_missing_weights_name_the_file_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOLABEL_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("torchvision/resnet18")
    text = str(err.value)
    assert str(tmp_path / "resnet18.safetensors") in text
    assert "https://" in text


def test_model_file_round_trip(backbone, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model_file(backbone, path, {"note": "test"})
    meta = read_model_metadata(path)
    assert meta["backbone"] == "efficientnet_lite0" and meta["note"] == "test"
    loaded = load_model_file(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        a, b = backbone(x), loaded(x)
    # fp16 storage: features agree closely, not bit for bit.
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.999
    assert path.stat().st_size < 12e6


def test_model_file_from_other_format_version_is_refused(backbone, tmp_path):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"protolabel": json.dumps(
        {"format": "protolabel-model", "format_version": 99, "backbone": "efficientnet_lite0"})})
    with pytest.raises(ModelFileError, match="version 99"):
        load_model_file(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        load_model_file(junk)


def test_preprocess_config_round_trip():
    cfg = PreprocessConfig(size=260, fit="crop")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------------------ folded trunk
def test_inference_runs_a_trunk_with_batch_norm_folded_in(backbone):
    """Same maps as the trunk itself (real photo), no batch norm left in the copy, nothing new in the
    state dict (model files and the embedding cache's model key stay as they were)."""
    import copy

    model = copy.deepcopy(backbone).eval()
    keys = set(model.state_dict())
    x = preprocess([skimage_data.chelsea(), skimage_data.coffee()], model.preprocess_config)
    with torch.inference_mode():
        folded = model.forward_trunk(x)
        plain = model.trunk(x)
    assert torch.allclose(folded, plain, atol=1e-3, rtol=1e-3)
    copy_ = model.__dict__["_folded"][1]
    assert copy_ is not model.trunk
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy_.modules())
    assert set(model.state_dict()) == keys


def test_folded_trunk_follows_changed_weights(backbone):
    """An optimizer step or load_state_dict changes trunk tensors in place: the next inference folds again."""
    import copy

    model = copy.deepcopy(backbone).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = model.forward_trunk(x)
    with torch.no_grad():
        model.trunk[0].weight.mul_(0.5)  # the stem convolution
    with torch.inference_mode():
        after, plain = model.forward_trunk(x), model.trunk(x)
    assert not torch.allclose(before, after, atol=1e-2)
    assert torch.allclose(after, plain, atol=1e-3, rtol=1e-3)


def test_folding_is_refused_when_the_check_fails():
    """Children registered conv-then-norm but not run that way: folding them would be wrong, the check on a
    random input catches it and the trunk runs as it is."""
    from core.backbones import fold_batchnorm

    class SideBySide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)
            with torch.no_grad():
                self.bn.running_mean.fill_(0.3)
                self.bn.running_var.fill_(2.0)

        def forward(self, x):
            return self.conv(x) + self.bn(x)

    assert fold_batchnorm(SideBySide().eval(), size=16) is None
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(plain, size=16) is not None
    assert fold_batchnorm(plain.train(), size=16) is None  # training: batch statistics, nothing to fold


def test_weights_made_under_inference_mode_run_unfolded():
    """Such tensors have no version counter to watch: the trunk runs as it is, no error."""
    import torch.nn as nn

    from core.backbones import Backbone

    with torch.inference_mode():
        trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
        model = Backbone("t", trunk, nn.Identity(), 4, PreprocessConfig(size=16)).eval()
        x = torch.randn(1, 3, 16, 16)
        assert torch.equal(model.forward_trunk(x), trunk(x))
    assert model._folded_trunk() is trunk
