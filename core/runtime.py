"""The frozen trunk on the CPU through ONNX Runtime: the same maps as PyTorch's, several times faster.

The trunk (stem + the stages fine-tuning never touches) is exported once per model and input size to
``<cache>/runtime/<model key>-<size>.onnx`` (the embedding caches' folder; PROTOLABEL_CACHE moves it), checked
against PyTorch when made and when opened (a file that disagrees or doesn't load is made again, never trusted),
and run by ONNX Runtime with all graph optimisations and as many threads as torch uses. A second graph,
``<model key>-<size>-features.onnx``, runs the trunk and the backbone's own tail for small batches (live frames;
``Embedder.embed_tensor``). A fine-tuned tail runs in PyTorch from the trunk's maps, as do training and CUDA.

``runtime``: "auto" (ONNX Runtime on the CPU when it is installed and works, else PyTorch with one log line),
"onnxruntime" (the same, but the fallback is logged as a warning), "int8" (the trunk statically quantized by ONNX
Runtime, calibrated on generated pictures: faster, slightly different maps, its own cache key), "torch".
PROTOLABEL_RUNTIME sets the default.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path

__all__ = ["RUNTIMES", "OnnxTrunk", "checked_runtime", "open_trunk"]

RUNTIMES = ("auto", "onnxruntime", "int8", "torch")
OPSET = 17
# The check: PyTorch's and the runtime's maps for the same random batch, flattened per image.
MIN_COSINE = 0.9999
# int8 maps differ more (0.97-0.99 per image on clip art): this only rejects a broken file; accuracy is measured
# with `protolabel evaluate --runtime int8` (docs/benchmarks.md).
MIN_COSINE_INT8 = 0.9
CALIBRATION_IMAGES = 64
log = logging.getLogger(__name__)


def checked_runtime(runtime: str | None, what: str = "runtime") -> str:
    """`runtime`, or PROTOLABEL_RUNTIME when None (else "auto"); ValueError naming `what` for anything else."""
    if runtime is None:
        return checked_runtime(os.environ.get("PROTOLABEL_RUNTIME", "auto").strip().lower() or "auto",
                               "PROTOLABEL_RUNTIME")
    if runtime not in RUNTIMES:
        raise ValueError(f"{what} must be one of {', '.join(RUNTIMES)}; got '{runtime}'")
    return runtime


def _runtime_dir() -> Path:
    from .evaluation import default_cache_dir

    return default_cache_dir().parent / "runtime"


class OnnxTrunk:
    """(B, 3, S, S) float32 -> (B, C, h, w) float32 trunk maps, through an ONNX Runtime session. A file exported
    with the pristine tail too (``open_trunk(..., backbone=)``) also gives the features: ``maps_and_features``."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.has_features = len(self.session.get_outputs()) == 2

    def _run(self, x: torch.Tensor, outputs: list[str] | None) -> list[np.ndarray]:
        return self.session.run(outputs, {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x, ["maps"])[0])

    def maps_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> maps (B, C, h, w), features (B, D) through the backbone's own (not fine-tuned) tail."""
        maps, feats = self._run(x, ["maps", "features"])
        # Copies: a caller keeps one image's row for a long time, and a view would keep the whole output alive.
        return torch.from_numpy(maps), torch.tensor(feats)


class _WithFeatures(torch.nn.Module):
    """What the runtime exports for float inference: trunk maps and the features of the backbone's own tail, in
    one graph (at batch 1 the tail in PyTorch took about a third of a forward's time)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.backbone.trunk(x)
        return maps, self.backbone.forward_tail(maps)


class _StaticPadConv(torch.nn.Module):
    """A TF-"same" convolution (timm's Conv2dSame) for one known input size: a fixed zero pad, then the conv.
    Exported, it is Pad + Conv with constant pads instead of a chain of Shape/Ceil/Sub ops per convolution."""

    def __init__(self, conv: torch.nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pads = pads
        self.conv = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                    conv.dilation, conv.groups, conv.bias is not None)
        self.conv.weight = conv.weight
        self.conv.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pads))


def static_padding(trunk: torch.nn.Module, size: int) -> torch.nn.Module:
    """A copy of `trunk` whose dynamic "same" padding is fixed for (size x size) inputs (same output)."""
    import copy
    import math

    trunk = copy.deepcopy(trunk).eval()
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, module in trunk.named_modules():
        if type(module).__name__ == "Conv2dSame":
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.__setitem__(name, tuple(args[0].shape[-2:]))))
    with torch.no_grad():
        trunk(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in seen.items():
        conv = trunk.get_submodule(name)
        pad = []
        for length, k, st, d in ((iw, conv.kernel_size[1], conv.stride[1], conv.dilation[1]),
                                 (ih, conv.kernel_size[0], conv.stride[0], conv.dilation[0])):
            total = max((math.ceil(length / st) - 1) * st + (k - 1) * d + 1 - length, 0)
            pad += [total // 2, total - total // 2]
        parent_name, _, child = name.rpartition(".")
        setattr(trunk.get_submodule(parent_name) if parent_name else trunk, child, _StaticPadConv(conv, tuple(pad)))
    return trunk


def _export(module: torch.nn.Module, size: int, path: Path) -> None:
    """The trunk (output "maps") or _WithFeatures ("maps", "features") as ONNX for (B, 3, size, size) input."""
    module = static_padding(module, size)
    outputs = ["maps", "features"] if isinstance(module, _WithFeatures) else ["maps"]
    x = torch.randn(2, 3, size, size)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch 2.14 flags the TorchScript exporter
        warnings.filterwarnings("ignore", message=r"Constant folding", category=UserWarning)  # an exporter note
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=outputs, dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})


def _calibration_batches(size: int) -> list[np.ndarray]:
    """Generated pictures (coloured shapes on noisy backgrounds, black glyphs on white), preprocessed like model
    input, in batches of 8: what the int8 quantizer calibrates its activation ranges on (no user data)."""
    from .images import PreprocessConfig, resize_for_model, to_tensor
    from .synthetic import GLYPHS, SHAPE_CLASSES, draw_glyph, draw_shape

    rng = np.random.default_rng(0)
    config = PreprocessConfig(size=size)
    images = [draw_shape(SHAPE_CLASSES[i % len(SHAPE_CLASSES)], rng) if i % 2 else draw_glyph(GLYPHS[i % len(GLYPHS)], rng)
              for i in range(CALIBRATION_IMAGES)]
    x = to_tensor([resize_for_model(im, config) for im in images], config).numpy()
    return [x[i : i + 8] for i in range(0, len(x), 8)]


def _quantize(fp32: Path, size: int, path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(_calibration_batches(size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with atomic_path(path) as tmp:
        quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _agrees(runner: OnnxTrunk, module: torch.nn.Module, size: int) -> float:
    """The smallest per-image cosine between the runtime's maps (and features, for _WithFeatures) and PyTorch's
    for a fixed random batch."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want = module(x)
    pairs = zip(want, runner.maps_and_features(x)) if isinstance(module, _WithFeatures) else [(want, runner(x))]
    worst = 1.0
    for w, g in pairs:
        w, g = w.flatten(1).float(), g.flatten(1)
        if g.shape != w.shape:
            return -1.0
        worst = min(worst, float(F.cosine_similarity(g, w, dim=1).min()))
    return worst


def open_trunk(trunk: torch.nn.Module, model_key: str, size: int, threads: int, runtime: str = "auto",
               folder: Path | None = None, backbone: torch.nn.Module | None = None) -> tuple[OnnxTrunk | None, str]:
    """-> (the runtime's trunk, or None for PyTorch; one line saying which and why). Builds, checks and caches
    the ONNX file; anything that goes wrong leaves PyTorch in charge, and the line says what. `backbone` (whose
    trunk is `trunk`): the float file also computes its own tail's features (``OnnxTrunk.maps_and_features``)."""
    if checked_runtime(runtime) == "torch":
        return None, "trunk: PyTorch (chosen)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "trunk: PyTorch (ONNX Runtime is not installed)"
    folder = folder or _runtime_dir()
    trunk = trunk.eval()
    if backbone is not None and runtime != "int8":
        full = _WithFeatures(backbone).eval()
        return _open_checked(folder / f"{model_key}-{size}-features.onnx", lambda p: _export(full, size, p), full,
                             size, threads, MIN_COSINE)
    fp32 = folder / f"{model_key}-{size}.onnx"
    runner, note = _open_checked(fp32, lambda p: _export(trunk, size, p), trunk, size, threads, MIN_COSINE)
    if runner is None or runtime != "int8":
        return runner, note
    int8 = folder / f"{model_key}-{size}-int8.onnx"
    runner8, note8 = _open_checked(int8, lambda p: _quantize(fp32, size, p), trunk, size, threads, MIN_COSINE_INT8)
    if runner8 is None:
        return runner, f"{note}; int8 failed: {note8}"
    return runner8, note8


def _open_checked(path: Path, make, trunk: torch.nn.Module, size: int, threads: int,
                  min_cosine: float) -> tuple[OnnxTrunk | None, str]:
    """Open the cached file at `path` (made by `make(path)` when missing, or when it doesn't load or disagrees
    with PyTorch, then checked again) -> (runner or None, the line that says what happened)."""
    for attempt in ("cached", "made"):
        try:
            if attempt == "made" or not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                make(path)
                attempt = "made"
            runner = OnnxTrunk(path, threads)
            cosine = _agrees(runner, trunk, size)
            if cosine >= min_cosine:
                return runner, f"trunk: ONNX Runtime ({attempt} {path.name}, agrees with PyTorch to cosine {cosine:.6f})"
            reason = f"its maps disagree with PyTorch's (cosine {cosine:.4f})"
        except Exception as exc:  # a damaged file, an exporter or runtime error: PyTorch stays in charge
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if attempt == "made":
            return None, f"trunk: PyTorch (the ONNX Runtime trunk failed: {reason})"
        log.info("the cached ONNX trunk %s can't be used (%s); making it again", path, reason)
    return None, "trunk: PyTorch"
