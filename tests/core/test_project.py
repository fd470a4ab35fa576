"""Project folders: save_project / load_project round trip, format versions, damaged files, atomic writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core import FewShotClassifier
from core.project import (
    PROJECT_FORMAT_VERSION,
    ProjectError,
    atomic_write_text,
    load_project,
    save_project,
)
from synthetic import draw_shape

CLASSES = ("circle", "square", "triangle")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(embedder, tmp_path_factory):
    """A fine-tuned 3-class classifier (3 examples each) saved with one predicted label per query file."""
    rng = np.random.default_rng(7)
    clf = FewShotClassifier(embedder)
    for kind in CLASSES:
        clf.add_examples(kind, [draw_shape(kind, rng) for _ in range(3)], [f"cam/{kind}/{i}" for i in range(3)])
    result = clf.finetune(budget_s=1, max_steps=3, lr=1e-3)
    assert result.tail_state is not None and clf.adapted_tail is not None

    query_root = tmp_path_factory.mktemp("query")
    queries, paths = [], []
    for kind in CLASSES:
        img = draw_shape(kind, rng)
        path = query_root / kind / "q.png"
        path.parent.mkdir()
        cv2.imwrite(str(path), img[..., ::-1])
        queries.append(img)
        paths.append(str(path))
    predictions = clf.predict(queries)
    folder = tmp_path_factory.mktemp("projects") / "shapes"
    save_project(folder, clf, [(p, pred, "predicted") for p, pred in zip(paths, predictions)],
                 query_root=query_root, settings={"transductive": False, "unknown": "auto"})
    return {"folder": folder, "classifier": clf, "queries": queries, "paths": paths,
            "predictions": predictions, "query_root": query_root}


@pytest.fixture
def project_copy(saved, tmp_path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(saved["folder"], folder)
    return folder


def test_project_json_layout(saved):
    folder = saved["folder"]
    meta = json.loads((folder / "project.json").read_text(encoding="utf-8"))
    assert meta["format"] == "protolabel-project"
    assert meta["format_version"] == PROJECT_FORMAT_VERSION
    assert meta["name"] == "shapes"
    assert meta["backbone"] == saved["classifier"].embedder.backbone.name
    assert [c["name"] for c in meta["classes"]] == list(CLASSES)
    colors = [c["color"] for c in meta["classes"]]
    assert all(len(c) == 7 and c.startswith("#") for c in colors) and len(set(colors)) == len(colors)
    assert [c["key"] for c in meta["classes"]] == ["1", "2", "3"]
    assert Path(meta["query_root"]).is_absolute()
    assert meta["settings"] == {"transductive": False, "unknown": "auto"}
    assert {p.name for p in folder.iterdir()} >= {"project.json", "classifier.safetensors", "labels.sqlite", "support"}
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_support_examples_are_saved_as_images(saved):
    clf = saved["classifier"]
    files = sorted((saved["folder"] / "support").iterdir())
    assert [f.name for f in files] == sorted(f"{ex_id}.png" for ex_id in clf.examples)
    for ex in clf.examples.values():
        bgr = cv2.imread(str(saved["folder"] / "support" / f"{ex.id}.png"))
        assert bgr is not None
        assert np.array_equal(bgr[..., ::-1], ex.image)  # PNG is lossless: the image the model saw


def test_reopening_restores_the_session(saved, embedder):
    original: FewShotClassifier = saved["classifier"]
    project = load_project(saved["folder"], embedder)
    clf = project.classifier
    assert project.name == "shapes"
    assert clf.classes == original.classes
    assert [c["name"] for c in project.classes] == original.classes
    assert {k: (e.class_name, e.source) for k, e in clf.examples.items()} == {
        k: (e.class_name, e.source) for k, e in original.examples.items()
    }
    # Fine-tuning survives: the same adapted tail, the same support features.
    assert clf.adapted_tail is not None
    assert clf.finetune_info == original.finetune_info and clf.finetune_info["steps"] >= 1
    for (name, a), b in zip(clf.adapted_tail.state_dict().items(), original.adapted_tail.state_dict().values()):
        assert torch.equal(a, b), name
    for k, e in clf.examples.items():
        assert torch.allclose(e.feature, original.examples[k].feature, atol=1e-4)
    # Predictions from the reopened project match the ones saved with it.
    again = clf.predict(saved["queries"])
    for before, after in zip(saved["predictions"], again):
        assert after.label == before.label
        assert after.probability == pytest.approx(before.probability, abs=1e-3)
    stored = {s.path: s for s in project.labels()}
    assert sorted(stored) == [f"{k}/q.png" for k in CLASSES]
    for path, pred in zip(saved["paths"], saved["predictions"]):
        rel = Path(path).relative_to(saved["query_root"]).as_posix()
        assert stored[rel].label == pred.label and stored[rel].source == "predicted"
        assert stored[rel].confidence == pytest.approx(pred.probability)
        assert [name for name, _ in stored[rel].topk] == [name for name, _ in pred.topk]
        assert project.resolve(rel) == Path(path).resolve()


def test_a_newer_format_version_is_refused(project_copy, embedder):
    pfile = project_copy / "project.json"
    meta = json.loads(pfile.read_text(encoding="utf-8"))
    meta["format_version"] = PROJECT_FORMAT_VERSION + 1
    pfile.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ProjectError, match="newer"):
        load_project(project_copy, embedder)


def test_a_truncated_project_file_is_refused(project_copy, embedder):
    pfile = project_copy / "project.json"
    text = pfile.read_text(encoding="utf-8")
    pfile.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ProjectError, match="damaged"):
        load_project(project_copy, embedder)


@pytest.mark.parametrize("content", [None, '{"format": "something-else", "format_version": 1}',
                                     '{"format": "protolabel-project", "format_version": "1"}'])
def test_a_folder_that_is_not_a_project_is_refused(tmp_path, embedder, content):
    if content is not None:
        (tmp_path / "project.json").write_text(content, encoding="utf-8")
    with pytest.raises(ProjectError, match="not a ProtoLabel project"):
        load_project(tmp_path, embedder)


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null"])
def test_a_project_file_that_is_not_a_json_object_is_refused(tmp_path, embedder, content):
    (tmp_path / "project.json").write_text(content, encoding="utf-8")
    with pytest.raises(ProjectError):
        load_project(tmp_path, embedder)


def test_a_damaged_classifier_file_is_refused(project_copy, embedder):
    (project_copy / "classifier.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="classifier.safetensors"):
        load_project(project_copy, embedder)


def test_resolve_without_a_labeled_folder(saved, embedder, tmp_path):
    folder = save_project(tmp_path / "bare", saved["classifier"])
    project = load_project(folder, embedder)
    assert project.query_root is None and project.labels() == []
    with pytest.raises(ProjectError, match="no labeled folder"):
        project.resolve("circle/q.png")


def test_atomic_write_text_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second, longer than the first")
    assert target.read_text(encoding="utf-8") == "second, longer than the first"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
