"""Model export (core.export_model): ONNX and TorchScript files give what the project's classifier gives.

Projects are built the way the CLI builds them (add_support_tree over a folder of generated shapes), once
plain and once fine-tuned (so an adapted tail is exported). Queries: generated shapes plus scikit-image's
bundled photos, which sit far from every shape class and so exercise the unknown rule; one photo is a JPEG
with an EXIF rotation, one a transparent PNG, one needs a reduced decode. The standalone example
(examples/predict_onnx.py) runs in a subprocess and must label like `protolabel label` on the same folders.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import core
import core.calibration
import core.methods
from core.classifier import FewShotClassifier
from core.export_model import METADATA_KEY, TORCHSCRIPT_EXTRA_FILE, export_model, read_exported_metadata
from core.images import list_images, load_image, preprocess
from core.labeling import add_support_tree
from core.project import load_project, save_project
from synthetic import write_tree

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "predict_onnx.py"
CLASSES = ("circle", "square", "triangle")
AGREEMENT = 1e-3  # max |probability difference| allowed between an exported model and PyTorch

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """support/<shape>/ (3 each); query/<shape>/ (2 each), query/photos/ (4 photos), query/broken.jpg."""
    from skimage import data

    root = tmp_path_factory.mktemp("export")
    write_tree(root / "support", per_class=3, seed=21, classes=CLASSES)
    write_tree(root / "query", per_class=2, seed=22, classes=CLASSES)
    photos = root / "query" / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    # 600x400 -> over the decode limit (512): reduced with LANCZOS before the model's resize.
    Image.fromarray(data.coffee()).save(photos / "coffee.jpg", quality=92)
    cat = Image.fromarray(data.chelsea())
    exif = cat.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    cat.save(photos / "chelsea_rotated.jpg", exif=exif, quality=92)
    alpha = np.linspace(0, 255, 200, dtype=np.uint8)[None, :].repeat(150, 0)
    Image.fromarray(np.dstack([data.astronaut()[100:250, 150:350], alpha])).save(photos / "transparent.png")
    (root / "query" / "broken.jpg").write_text("not an image\n")
    return root


def _readable(tree: Path) -> list[Path]:
    return [p for p in list_images(tree / "query") if p.name != "broken.jpg"]


def _project(folder: Path, embedder, support: Path, finetune: bool) -> Path:
    clf = FewShotClassifier(embedder)
    for _ in add_support_tree(clf, support):
        pass
    if finetune:
        result = clf.finetune(lr=1e-3, max_steps=3)
        assert clf.adapted_tail is not None, result.message
    save_project(folder, clf, name=folder.name)
    return folder


@pytest.fixture(scope="module")
def exported(tree, embedder, tmp_path_factory):
    """{"plain" | "finetuned": (project folder, ONNX info)}, plus a TorchScript export of the plain project."""
    base = tmp_path_factory.mktemp("exports")
    out = {}
    for kind in ("plain", "finetuned"):
        folder = _project(base / f"{kind}-project", embedder, tree / "support", finetune=kind == "finetuned")
        out[kind] = (folder, export_model(folder, "onnx", base / f"{kind}.onnx", embedder))
    out["torchscript"] = (out["plain"][0], export_model(out["plain"][0], "torchscript", base / "plain.pt", embedder))
    return out


@pytest.fixture(scope="module")
def query_images(tree) -> tuple[list[Path], list[np.ndarray]]:
    paths = _readable(tree)
    return paths, [load_image(p) for p in paths]


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _labels(probs: np.ndarray, sims: np.ndarray, meta: dict) -> list[str]:
    """The unknown rule, from the outputs and the metadata only."""
    out = []
    for p, s in zip(probs, sims):
        best = int(np.argmax(p))
        name = meta["classes"][best]
        out.append(meta["unknown_label"] if name in meta["thresholds"] and s[best] < meta["thresholds"][name] else name)
    return out


def _compare(probs: np.ndarray, sims: np.ndarray, meta: dict, predictions) -> float:
    """Exported outputs vs FewShotClassifier predictions -> max |probability difference|; labels must match."""
    classes = meta["classes"]
    expected = np.zeros_like(probs)
    for i, pred in enumerate(predictions):
        for name, p in pred.topk:  # topk covers every class here (3 classes, topk 3)
            expected[i, classes.index(name)] = p
        best = classes.index(pred.best_class)
        assert sims[i, best] == pytest.approx(pred.similarity, abs=1e-4)
    assert _labels(probs, sims, meta) == [p.label for p in predictions]
    return float(np.abs(probs - expected).max())


@pytest.mark.parametrize("kind", ["plain", "finetuned"])
def test_onnx_agrees_with_the_project_classifier(exported, embedder, query_images, kind):
    folder, info = exported[kind]
    classifier = load_project(folder, embedder).classifier
    assert (classifier.adapted_tail is not None) == (kind == "finetuned") == info.metadata["finetuned"]
    paths, images = query_images
    predictions = classifier.predict(images)
    labels = [p.label for p in predictions]
    assert "unknown" in labels and set(CLASSES) <= set(labels)  # both sides of the unknown rule are exercised
    probs, sims = _session(info.path).run(["probabilities", "similarities"],
                                          {"image": preprocess(images, embedder.config).numpy()})
    assert probs.shape == sims.shape == (len(images), 3)
    assert _compare(probs, sims, info.metadata, predictions) < AGREEMENT


def test_onnx_file_has_a_dynamic_batch_and_a_fixed_size(exported, embedder):
    model = onnx.load(str(exported["plain"][1].path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    size = embedder.config.size
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, size, size]
    session = _session(exported["plain"][1].path)
    for batch in (1, 5):
        probs, sims = session.run(None, {"image": np.zeros((batch, 3, size, size), np.float32)})
        assert probs.shape == sims.shape == (batch, 3)


def test_torchscript_loads_and_agrees(exported, embedder, query_images):
    folder, info = exported["torchscript"]
    assert info.format == "torchscript"
    model = torch.jit.load(str(info.path))
    _, images = query_images
    predictions = load_project(folder, embedder).classifier.predict(images)
    x = preprocess(images, embedder.config)
    with torch.no_grad():
        probs, sims = (t.numpy() for t in model(x))
        one_probs, _ = model(x[:1])
    assert one_probs.shape == (1, 3) and np.allclose(one_probs.numpy(), probs[:1], atol=1e-5)
    assert _compare(probs, sims, info.metadata, predictions) < AGREEMENT


def test_metadata_round_trips(exported, embedder):
    folder, info = exported["plain"]
    project = load_project(folder, embedder)
    meta = info.metadata
    assert meta["format_version"] == 1 and meta["protolabel_version"] == core.__version__
    assert meta["project"] == "plain-project" and meta["backbone"] == embedder.backbone.name
    assert meta["classes"] == list(CLASSES)
    assert meta["thresholds"] == pytest.approx(project.classifier.thresholds())
    assert meta["preprocess"] == embedder.config.to_dict()
    onnx_meta = {p.key: p.value for p in onnx.load(str(info.path)).metadata_props}
    assert json.loads(onnx_meta[METADATA_KEY]) == meta
    assert _session(info.path).get_modelmeta().custom_metadata_map[METADATA_KEY] == onnx_meta[METADATA_KEY]
    assert json.loads(info.sidecar.read_text()) == meta and info.sidecar.name == "plain.onnx.json"
    assert read_exported_metadata(info.path) == meta
    ts = exported["torchscript"][1]
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    torch.jit.load(str(ts.path), _extra_files=extra)
    ts_meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE])
    assert ts_meta == read_exported_metadata(ts.path) == json.loads(ts.sidecar.read_text())
    assert ts_meta["model_format"] == "torchscript" and {**ts_meta, "model_format": "onnx"} == meta
    assert exported["finetuned"][1].metadata["finetuned"] is True and meta["finetuned"] is False


def test_one_class_project_exports_its_sigmoid_confidence(tmp_path, embedder, tree, query_images):
    clf = FewShotClassifier(embedder)
    clf.add_examples("circle", [load_image(p) for p in sorted((tree / "support" / "circle").glob("*.png"))])
    save_project(tmp_path / "one", clf)
    info = export_model(tmp_path / "one", "onnx", tmp_path / "one.onnx", embedder)
    _, images = query_images
    predictions = load_project(tmp_path / "one", embedder).classifier.predict(images)
    probs, sims = _session(info.path).run(None, {"image": preprocess(images, embedder.config).numpy()})
    assert probs.shape == (len(images), 1)
    assert {p.label for p in predictions} == {"circle", "unknown"}
    assert _compare(probs, sims, info.metadata, predictions) < AGREEMENT


def test_refuses_a_project_without_examples_and_unknown_formats(tmp_path, embedder, exported):
    clf = FewShotClassifier(embedder)
    clf.add_class("empty")
    save_project(tmp_path / "empty", clf)
    with pytest.raises(ValueError, match="no class with examples"):
        export_model(tmp_path / "empty", "onnx", tmp_path / "x.onnx", embedder)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(exported["plain"][0], "tflite", tmp_path / "x.tflite", embedder)
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".x.*"))


# ------------------------------------------------------------------------------------------- a third method


class _NearestHead(torch.nn.Module):
    """(B, D) -> (B, C): the best cosine to any support example of each class."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("support", torch.nn.functional.normalize(features.detach().float().clone(), dim=-1))
        self.register_buffer("other", torch.nn.functional.one_hot(labels, n_classes).T == 0)  # (C, N)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sims = torch.nn.functional.normalize(features, dim=-1) @ self.support.T  # (B, N)
        return sims[:, None, :].masked_fill(self.other, -2.0).amax(-1)


class _NearestExample(core.methods.FewShotMethod):
    """Nearest support example: a method that is one small class (no closed-form leave-one-out, no
    transductive variant), to prove the registry is the only place a method has to be made known."""

    def process_support_set(self, features, labels, n_classes=None):
        super().process_support_set(features, labels, n_classes)
        self.head = _NearestHead(features, labels, self.n_classes)

    def scores(self, query):
        return self.head(query)

    def export_head(self):
        return _NearestHead(self.support_features, self.support_labels, self.n_classes)


@pytest.fixture
def nearest_method():
    name = "nearest-example"
    core.methods.register_method(name, _NearestExample)
    yield name
    del core.methods._METHODS[name]


def test_a_registered_method_predicts_calibrates_saves_and_exports(tmp_path, tree, embedder, query_images,
                                                                  nearest_method):
    clf = FewShotClassifier(embedder, method=nearest_method)
    for _ in add_support_tree(clf, tree / "support"):
        pass
    paths, images = query_images
    predictions = clf.predict(images)
    shapes = [(p.parent.name, pred.label) for p, pred in zip(paths, predictions) if p.parent.name in CLASSES]
    assert len(shapes) == 6 and all(want == got for want, got in shapes), shapes
    # Calibration goes through the method's generic leave-one-out (a refit per example): an example's score
    # for its own class is its best cosine to the *other* examples of that class, not 1 (itself).
    method = clf.fitted_method()
    assert isinstance(method, _NearestExample)
    feats, labels = method.support_features, method.support_labels
    held = method.held_out_scores()
    sims = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(feats, dim=-1).T
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if labels[j] == labels[i] and j != i]
        assert float(held[i, labels[i]]) == pytest.approx(float(sims[i, others].max()), abs=1e-5)
        assert float(method.scores(feats[i : i + 1])[0, labels[i]]) == pytest.approx(1.0, abs=1e-5)
    assert clf.calibration().scale == core.calibration.fit_logit_scale(held, labels)
    # No transductive variant: folder labeling falls back to the method itself.
    assert [p.label for p in clf.predict(images, transductive=True)] == [p.label for p in predictions]
    # Saved and loaded by name.
    save_project(tmp_path / "nearest", clf, name="nearest")
    loaded = load_project(tmp_path / "nearest", embedder).classifier
    assert loaded.method_name == nearest_method
    again = loaded.predict(images)
    assert [(p.label, p.topk) for p in again] == [(p.label, p.topk) for p in predictions]
    # Exported: ONNX gives the classifier's probabilities and labels.
    info = export_model(tmp_path / "nearest", "onnx", tmp_path / "nearest.onnx", embedder)
    assert info.metadata["method"] == nearest_method
    probs, sims_out = _session(info.path).run(None, {"image": preprocess(images, embedder.config).numpy()})
    assert _compare(probs, sims_out, info.metadata, predictions) < AGREEMENT
    # Without the method installed, the project says which method it needs.
    del core.methods._METHODS[nearest_method]
    try:
        with pytest.raises(core.ProjectError, match=nearest_method):
            load_project(tmp_path / "nearest", embedder)
    finally:
        core.methods.register_method(nearest_method, _NearestExample)


def test_transductive_methods_are_not_the_inductive_method(embedder):
    with pytest.raises(ValueError, match="transductive"):
        FewShotClassifier(embedder, method="transductive")
    with pytest.raises(KeyError, match="unknown method"):
        FewShotClassifier(embedder, method="no-such-method")


# ------------------------------------------------------------------------------------------------ the example


def _example_module():
    spec = importlib.util.spec_from_file_location("predict_onnx", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_imports_nothing_of_protolabel():
    import ast

    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "PIL"}


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_example_preprocessing_matches_core(tree, embedder, fit):
    """Same decode (EXIF, alpha, reduced decode) and resize as core, pixel for pixel: the example redoes
    OpenCV's area and bilinear filters with their rounding."""
    import dataclasses

    from core.embedding import decode_bound, load_for_model
    from core.images import to_tensor

    example = _example_module()
    config = dataclasses.replace(embedder.config, fit=fit)
    pixels, side = decode_bound(config)
    want, got = [], []
    for path in _readable(tree):
        want.append(load_for_model(str(path), config))  # the model path's decode and resize
        got.append(example.fit(example.load_image(path, pixels, side), config.size, config.fit, config.pad_value))
        assert np.array_equal(got[-1], want[-1]), path.name
    assert np.allclose(example.to_input(got, config.to_dict()), to_tensor(want, config).numpy(), atol=1e-6)
    # Arrays bigger than twice the input (camera frames) take a whole-factor reduction first, in both.
    from core.images import resize_for_model

    rng = np.random.default_rng(1)
    for h, w in ((480, 640), (481, 643), (1080, 1920), (97, 1500)):
        array = rng.integers(0, 256, (h, w, 3), np.uint8)
        assert np.array_equal(example.fit(array, config.size, config.fit, config.pad_value),
                              resize_for_model(array, config)), (h, w)


def _rows(text: str) -> dict[str, dict[str, str]]:
    return {str(Path(r["path"]).resolve()): r for r in csv.DictReader(io.StringIO(text))}


def test_example_script_labels_like_the_label_command(exported, tree, tmp_path):
    env = dict(os.environ, PROTOLABEL_THREADS="1", OMP_NUM_THREADS="1", PROTOLABEL_DEFAULT_MODEL="",
               PYTHONPATH=str(REPO))
    cli = subprocess.run([sys.executable, "-m", "core.cli", "label", "--support", str(tree / "support"),
                          "--query", str(tree / "query"), "--out", str(tmp_path / "x.csv"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    script = subprocess.run([sys.executable, str(EXAMPLE), str(exported["plain"][1].path), str(tree / "query")],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert script.returncode == 0, script.stderr[-2000:]
    assert script.stdout.splitlines()[0] == "path,label,confidence"
    assert "broken.jpg" in script.stderr and "broken.jpg" not in script.stdout
    want = _rows((tmp_path / "x.csv").read_text(encoding="utf-8"))
    got = _rows(script.stdout)
    assert sorted(got) == sorted(want) == sorted(str(p.resolve()) for p in _readable(tree))
    assert {p: r["label"] for p, r in got.items()} == {p: r["label"] for p, r in want.items()}
    for p in got:
        assert float(got[p]["confidence"]) == pytest.approx(float(want[p]["confidence"]), abs=2e-4), p
    assert {r["label"] for r in got.values()} >= {"unknown", *CLASSES}


def test_core_imports_onnx_only_when_exporting():
    """onnx and onnxruntime are imported where they are used, never at module level in core: `import core` stays
    light, and a broken or missing runtime falls back to PyTorch (core.runtime) instead of failing the import."""
    import ast

    for path in (REPO / "core").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("onnx", "onnxruntime", "onnxscript") for n in names), path.name
