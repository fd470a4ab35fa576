"""A project's classifier as one standalone model file: ONNX or TorchScript, with its metadata inside.

The exported network maps a preprocessed batch (B, 3, S, S) float32 (what ``images.preprocess`` makes) to

  probabilities (B, C): the calibrated inductive softmax, what ``FewShotClassifier.predict_features`` reports
                        (with one class: the sigmoid of the margin over its unknown threshold, as there)
  similarities  (B, C): cosine similarity of the raw features to each class's raw prototype

through the trunk, the (possibly fine-tuned) tail, the method's export head (``FewShotMethod.export_head``:
for the prototypes method its centre and prototypes as buffers) and the calibrated scale, all fp32. The unknown rule needs nothing else: best = argmax(probabilities);
the label is classes[best], or "unknown" when similarities[best] < thresholds[classes[best]].

The metadata (JSON; ``METADATA_KEY`` in ONNX ``metadata_props``, ``TORCHSCRIPT_EXTRA_FILE`` in TorchScript's
extra files, and a sidecar ``<out>.json``) holds the class names, thresholds, the preprocessing config,
how files are decoded, the backbone, the project and the versions. Transductive labeling uses the whole
query folder at once and is not part of the exported model: it reproduces inductive predictions.

``onnx`` is imported only when exporting ONNX (``pip install onnx``); ``onnxruntime``, when installed,
checks the written file against PyTorch.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_path
from .backbones import Backbone
from .calibration import DEFAULT_UNKNOWN_SIMILARITY, single_class_probability
from .classifier import UNKNOWN_LABEL
from .embedding import Embedder, decode_bound

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "EXPORT_FORMATS",
    "METADATA_KEY",
    "TORCHSCRIPT_EXTRA_FILE",
    "ExportedClassifier",
    "ExportedModelInfo",
    "build_export_module",
    "export_model",
    "read_exported_metadata",
]

EXPORT_FORMAT_VERSION = 1
EXPORT_FORMATS = ("onnx", "torchscript")
METADATA_KEY = "protolabel"  # ONNX metadata_props key
TORCHSCRIPT_EXTRA_FILE = "protolabel.json"  # torch.jit.save _extra_files name
ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "similarities")


@dataclass
class ExportedModelInfo:
    path: Path  # the model file
    format: str  # "onnx" | "torchscript"
    sidecar: Path  # <path>.json, the same metadata as inside the file
    metadata: dict

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.metadata["thresholds"])


class ExportedClassifier(nn.Module):
    """(B, 3, S, S) preprocessed float32 -> probabilities (B, C), similarities (B, C).

    features: a Backbone (trunk + the tail to export); head: the method's export head, (B, D) -> (B, C) scores;
    raw_prototypes (C, D) mean raw features; scale: the calibrated softmax scale. single_threshold: with one
    class, its unknown threshold (the probability is then a sigmoid of the margin over it)."""

    def __init__(self, features: Backbone, head: nn.Module, raw_prototypes: torch.Tensor, scale: float,
                 single_threshold: float | None = None) -> None:
        super().__init__()
        self.features = features
        self.head = head
        # clone(): tensors made under inference_mode can't be saved in a traced graph.
        self.register_buffer("raw_prototypes", F.normalize(raw_prototypes.detach().float().cpu().clone(), dim=-1))
        self.scale = float(scale)
        self.single_threshold = single_threshold

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)  # (B, D)
        sims = F.normalize(feats, dim=-1) @ self.raw_prototypes.T  # (B, C)
        if self.single_threshold is None:
            probs = (self.scale * self.head(feats)).softmax(-1)
        else:
            probs = single_class_probability(sims, self.single_threshold)
        return probs, sims


def build_export_module(classifier) -> tuple[ExportedClassifier, list[str], dict[str, float], float]:
    """A FewShotClassifier -> (module on the CPU in fp32 eval mode, class names, thresholds, scale).

    The backbone's trunk and the current tail (adapted or pristine) are copied: the live model is left as it is."""
    if not classifier.ready():
        raise ValueError("nothing to export: the project has no class with examples (add at least one example)")
    raw_protos, used = classifier.prototypes()
    try:
        head = classifier.fitted_method().export_head()
    except NotImplementedError as exc:
        raise ValueError(f"method '{classifier.method_name}' can't be exported: {exc}") from exc
    calibration = classifier.calibration()
    backbone: Backbone = classifier.embedder.backbone
    tail = classifier.adapted_tail if classifier.adapted_tail is not None else backbone.tail
    features = Backbone(backbone.name, copy.deepcopy(backbone.trunk), copy.deepcopy(tail), backbone.head_dim,
                        backbone.preprocess_config, classifier=None, trunk_channels=backbone.trunk_channels)
    single = None
    if len(used) == 1:
        single = calibration.thresholds.get(used[0], DEFAULT_UNKNOWN_SIMILARITY)
    module = ExportedClassifier(features, head, raw_protos, calibration.scale, single)
    module = module.float().cpu().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, used, classifier.thresholds(), calibration.scale


def _metadata(project, classes: list[str], thresholds: dict[str, float], scale: float, fmt: str) -> dict:
    from . import __version__

    clf = project.classifier
    config = clf.embedder.config
    s = config.size
    return {
        "format": "protolabel-exported-model",
        "format_version": EXPORT_FORMAT_VERSION,
        "protolabel_version": __version__,
        "model_format": fmt,
        "project": project.name,
        "backbone": clf.embedder.backbone.name,
        "method": clf.method_name,
        "finetuned": clf.adapted_tail is not None,
        "classes": classes,
        "thresholds": {c: float(thresholds[c]) for c in classes if c in thresholds},
        "unknown_label": UNKNOWN_LABEL,
        "unknown_rule": "best = argmax(probabilities); label = classes[best], or unknown_label when "
                        "similarities[best] < thresholds[classes[best]] (a class without a threshold is never unknown)",
        "scale": scale,
        "preprocess": config.to_dict(),
        # Files are decoded reduced (JPEG scaled decode, integer box reduction) while the named side stays at
        # least that many pixels, then resized once to the input size (embedding.load_for_model).
        "decode_bound": dict(zip(("pixels", "side"), decode_bound(config))),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, s, s], "dtype": "float32",
                  "description": "RGB, (pixel - mean) / std on 0-255 values, NCHW"},
        "outputs": {
            OUTPUT_NAMES[0]: {"shape": ["batch", len(classes)], "description": "calibrated class probabilities"},
            OUTPUT_NAMES[1]: {"shape": ["batch", len(classes)],
                              "description": "cosine similarity of the raw features to each class prototype"},
        },
    }


def _example_input(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_close(name: str, got, want: tuple[torch.Tensor, torch.Tensor], batch: int) -> None:
    for g, w, out in zip(got, want, OUTPUT_NAMES):
        g = torch.as_tensor(g)
        if g.shape != w.shape or not torch.allclose(g, w, atol=1e-4, rtol=1e-4):
            diff = float((g - w).abs().max()) if g.shape == w.shape else float("nan")
            raise RuntimeError(f"the exported {name} model disagrees with PyTorch on {out} for a batch of {batch} "
                               f"(shape {tuple(g.shape)} vs {tuple(w.shape)}, max difference {diff:g})")


def _export_onnx(module: ExportedClassifier, size: int, tmp: Path, meta_text: str) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeError("ONNX export needs the onnx package: pip install onnx") from exc
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy (TorchScript-based) exporter is the one checked against onnxruntime; torch 2.14 flags it
        # deprecated.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            module, (_example_input(size, 2),), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
        )
    model = onnx.load(str(tmp))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta_text
    model.doc_string = "ProtoLabel classifier: image (B, 3, S, S) -> probabilities (B, C), similarities (B, C)"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    try:
        import onnxruntime as ort
    except ImportError:  # the file is written; checking it against PyTorch needs onnxruntime
        return
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = _example_input(size, batch, seed=batch)
        with torch.no_grad():
            want = module(x)
        _check_close("ONNX", session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()}), want, batch)


@contextlib.contextmanager
def _quiet_jit():
    """torch 2.14 flags every torch.jit call as deprecated (FutureWarning); TorchScript is still what the
    format asks for, and the warning would only be noise for whoever exports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _export_torchscript(module: ExportedClassifier, size: int, tmp: Path, meta_text: str) -> None:
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(module, (_example_input(size, 2),))
        for batch in (1, 5):  # the trace must not have baked in the example's batch size
            x = _example_input(size, batch, seed=batch)
            _check_close("TorchScript", traced(x), module(x), batch)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta_text})


def export_model(project_folder: str | os.PathLike, fmt: str, out: str | os.PathLike,
                 embedder: Embedder) -> ExportedModelInfo:
    """Load the project in `project_folder` with `embedder` and write its classifier to `out` as `fmt`
    ("onnx" | "torchscript"), plus the metadata sidecar `<out>.json`. Files are replaced atomically.

    Raises ValueError for an unknown format or a project without any class with examples, ProjectError for a
    folder that isn't a project."""
    from .project import atomic_write_text, load_project

    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}")
    project = load_project(project_folder, embedder)
    module, classes, thresholds, scale = build_export_module(project.classifier)
    meta = _metadata(project, classes, thresholds, scale, fmt)
    meta_text = json.dumps(meta, ensure_ascii=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _export_onnx(module, embedder.config.size, tmp, meta_text)
        else:
            _export_torchscript(module, embedder.config.size, tmp, meta_text)
    sidecar = out.with_name(out.name + ".json")
    atomic_write_text(sidecar, json.dumps(meta, indent=2, ensure_ascii=False))
    return ExportedModelInfo(out, fmt, sidecar, meta)


def read_exported_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored inside an exported model file (ONNX or TorchScript)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":  # TorchScript files are zip archives
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        with _quiet_jit():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[TORCHSCRIPT_EXTRA_FILE]
    else:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "")
    if not text:
        raise ValueError(f"'{path}' holds no ProtoLabel metadata")
    return json.loads(text)
