"""Label export (core/export.py, `protolabel export labels`): every format round-trips the labels, filters,
unsafe class names, re-export, missing files, the CLI.

One real project (FewShotClassifier + save_project, generated shapes) checks that a project as the app
writes it reads back without loading the model; the rest writes project.json and labels.sqlite directly
(no model needed), with tiny stand-in image files (the exporter never decodes them).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from core import (
    UNKNOWN_LABEL,
    ExportError,
    ExportReport,
    FewShotClassifier,
    LabelSet,
    Prediction,
    cli,
    export_labels,
    iter_export,
    label_paths,
    load_image,
    read_labels,
    save_project,
)
from core.export import MANIFEST_FILE, safe_name
from core.runs import finish
from core.project import LabelStore, StoredLabel
from synthetic import write_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(*argv) -> tuple[int, str]:
    """core.cli.main([...]) -> (exit code, stderr)."""
    import torch

    err = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)  # `export model` sets the process-wide count; leave other tests theirs
    return code, err.getvalue()


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def make_project(folder: Path, query_root: Path, classes: list[str],
                 rows: list[tuple[str, str, float, str]], files: bool = True) -> Path:
    """A project as the app writes it, without a model: project.json and labels.sqlite (rows: path relative
    to query_root, label, confidence, source); files: also a small stand-in file per row under query_root."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "protolabel-project", "format_version": 1, "name": folder.name, "backbone": "efficientnet_lite0",
            "classes": [{"name": c, "color": "#4e79a7", "key": None} for c in classes],
            "query_root": str(query_root.resolve()), "settings": {}, "saved": "2026-11-27T12:00:00"}
    (folder / "project.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    store = LabelStore(folder / "labels.sqlite")
    store.put_many(StoredLabel(p, label, conf, 0.7, source, [(label, conf), ("zebra", 1 - conf)])
                   for p, label, conf, source in rows)
    store.close()
    if files:
        for p, label, _, _ in rows:
            target = query_root / p
            if target.resolve().is_relative_to(query_root.resolve()):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f"image {p} {label}".encode())
    return folder


@pytest.fixture
def small(tmp_path) -> dict:
    """3 classes + unknowns, predicted and confirmed, known confidences, nested query folders."""
    rows = []
    for i in range(6):
        rows.append((f"a/cat_{i}.png", "cat", 0.5 + i * 0.09, "predicted"))
        rows.append((f"b/dog_{i}.jpg", "dog", 0.4 + i * 0.1, "confirmed" if i < 2 else "predicted"))
    rows += [("c/bird_0.png", "bird", 0.95, "predicted"), ("c/bird_1.png", "bird", 0.3, "predicted"),
             ("c/bird_2.png", "bird", 1.0, "confirmed"), ("u/x.png", UNKNOWN_LABEL, 0.2, "predicted"),
             ("u/y.png", UNKNOWN_LABEL, 0.25, "predicted"),
             ("a/dup.png", "cat", 0.9, "predicted"), ("b/dup.png", "cat", 0.9, "predicted")]  # same file name
    query = tmp_path / "photos"
    project = make_project(tmp_path / "proj", query, ["dog", "cat", "bird"], rows)
    return {"project": project, "query": query, "rows": rows, "tmp": tmp_path}


# ------------------------------------------------------------------------------------------------ a real project


@pytest.fixture(scope="module")
def real_project(embedder, tmp_path_factory) -> dict:
    """A project made by the engine: 2 classes from files, 1 example from a 'camera', a labeled folder,
    two labels confirmed (one of them also a support example, as the window does on a correction)."""
    root = tmp_path_factory.mktemp("real")
    support = write_tree(root / "support", per_class=2, seed=1, classes=("circle", "square"))
    query = write_tree(root / "query", per_class=3, seed=2, classes=("circle", "square", "triangle"))
    clf = FewShotClassifier(embedder)
    for name, paths in support.items():
        clf.add_examples(name, [load_image(p) for p in paths], [str(p.resolve()) for p in paths])
    camera_id = clf.add_example("square", load_image(query["square"][0]), "camera:0")
    corrected = query["triangle"][0]
    clf.add_example("circle", load_image(corrected), str(corrected.resolve()))
    dropped = query["square"][1]  # a labeled image also dropped on a class: its row stays a prediction
    clf.add_example("square", load_image(dropped), str(dropped.resolve()))
    paths = [p for ps in query.values() for p in ps]
    run = finish(label_paths(clf, paths))
    labels = [(r.path, r.prediction, "predicted") for r in run.records]
    confirmed = {str(corrected): "circle", str(query["circle"][1]): "circle"}
    labels = [(p, Prediction(confirmed[p], 1.0, [(confirmed[p], 1.0)], pred.similarity, confirmed[p]), "confirmed")
              if p in confirmed else (p, pred, source) for p, pred, source in labels]
    folder = save_project(root / "project", clf, labels, query_root=root / "query")
    return {"folder": folder, "query": query, "support": support, "camera_id": camera_id, "corrected": corrected,
            "dropped": dropped,
            "predictions": {p: pred for p, pred, _ in labels}, "classes": list(clf.classes)}


def test_a_real_project_reads_back_without_the_model(real_project, monkeypatch):
    from core import classifier, project

    def no_model(*a, **k):
        raise AssertionError("read_labels must not load the model")

    monkeypatch.setattr(classifier.FewShotClassifier, "load", no_model)
    monkeypatch.setattr(project, "load_project", no_model)
    labels = read_labels(real_project["folder"])
    assert labels.classes == real_project["classes"] == ["circle", "square"]
    assert labels.rejected == []
    by_path = {r.path: r for r in labels.records}
    assert len(by_path) == len(labels.records)  # one label per file
    query_files = [p for ps in real_project["query"].values() for p in ps]
    for p in query_files:  # every labeled image, with its stored label
        r = by_path[p.resolve()]
        assert r.path.is_absolute()
        if r.source == "predicted" and p != real_project["dropped"]:
            assert r.label == real_project["predictions"][str(p)].label
            assert r.confidence == pytest.approx(real_project["predictions"][str(p)].probability)
    # The correction is a support example and a confirmed label: it counts once, as confirmed.
    assert by_path[real_project["corrected"].resolve()][1:4] == ("circle", 1.0, "confirmed")
    # An example made from a labeled image: a person's label beats the prediction.
    assert by_path[real_project["dropped"].resolve()][1:4] == ("square", 1.0, "support")
    # Support examples from files: their original files; the camera frame: its PNG in the project.
    for name, paths in real_project["support"].items():
        for p in paths:
            assert by_path[p.resolve()][1:4] == (name, 1.0, "support")
    camera_png = (real_project["folder"] / "support" / f"{real_project['camera_id']}.png").resolve()
    assert by_path[camera_png][1:4] == ("square", 1.0, "support")
    assert len(labels.records) == len(query_files) + 4 + 1
    assert labels.metadata["name"] == "project" and labels.metadata["backbone"] == "efficientnet_lite0"


def test_support_example_falls_back_to_the_project_png_when_its_file_is_gone(real_project, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(real_project["folder"], folder)
    original = real_project["support"]["circle"][0]
    original.rename(original.with_suffix(".gone"))
    try:
        labels = read_labels(folder)
    finally:
        original.with_suffix(".gone").rename(original)
    support = [r for r in labels.records if r.source == "support" and r.label == "circle"]
    in_project = [r for r in support if r.path.is_relative_to(folder.resolve() / "support")]
    assert len(in_project) == 1 and in_project[0].path.is_file()


@pytest.mark.parametrize("fmt", ["csv", "json", "imagefolder", "yolo-cls", "labelstudio"])
def test_every_format_exports_a_real_project(real_project, tmp_path, fmt):
    labels = read_labels(real_project["folder"]).filtered()
    out = tmp_path / ("out" if fmt in ("imagefolder", "yolo-cls") else f"labels.{'csv' if fmt == 'csv' else 'json'}")
    report = export_labels(labels, fmt, out)
    assert report.written == len(labels.records) > 0 and report.skipped == []
    assert report.counts == {c: sum(r.label == c for r in labels.records) for c in report.counts}
    assert all(p.exists() for p in report.outputs)


def test_torchvision_imagefolder_reads_the_export(real_project, tmp_path):
    from torchvision.datasets import ImageFolder

    labels = read_labels(real_project["folder"]).filtered(include_unknown=True)
    out = tmp_path / "out"
    report = export_labels(labels, "imagefolder", out)
    dataset = ImageFolder(str(out))
    mapping = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))["classes"]
    assert sorted(dataset.classes) == sorted(mapping) and len(dataset) == report.written
    image, _ = dataset[0]
    assert image.size[0] > 0
    got = {}
    for _, i in dataset.samples:
        got[mapping[dataset.classes[i]]] = got.get(mapping[dataset.classes[i]], 0) + 1
    assert got == report.counts


# ------------------------------------------------------------------------------------------------ formats


def test_csv_round_trips(small, tmp_path):
    labels = read_labels(small["project"]).filtered(include_unknown=True)
    out = tmp_path / "labels.csv"
    report = export_labels(labels, "csv", out)
    assert report.outputs == [out] and report.written == len(small["rows"])
    rows = read_csv_rows(out)
    # One schema: what `protolabel label` and the window's Export labels (CSV) write (core/labels_csv.py).
    assert list(rows[0]) == ["path", "label", "confidence", "similarity", "source",
                             "top1", "top1_confidence", "top2", "top2_confidence", "top3", "top3_confidence"]
    want = {str((small["query"] / p).resolve()): (label, round(conf, 4), source) for p, label, conf, source in small["rows"]}
    assert {r["path"]: (r["label"], float(r["confidence"]), r["source"]) for r in rows} == want
    again = read_labels(out)  # the exported CSV is itself a source, alternatives and similarity included
    key = lambda r: (r.path, r.label, r.source, r.similarity and round(r.similarity, 4),  # noqa: E731
                     tuple((n, round(p, 4)) for n, p in r.topk))
    assert [key(r) for r in again.records] == [key(r) for r in labels.records]
    assert again.classes == ["cat", "dog", "bird"]  # a CSV has no class order: first appearance


def test_csv_keeps_class_names_exactly(tmp_path):
    names = ["  spaces  ", "a,b", 'q"uote', "猫", "multi\nline"]
    project = make_project(tmp_path / "p", tmp_path / "q", names,
                           [(f"{i}.png", n, 0.9, "predicted") for i, n in enumerate(names)])
    export_labels(read_labels(project).filtered(), "csv", tmp_path / "l.csv")
    assert read_labels(tmp_path / "l.csv").classes == names


def test_json_round_trips(small, tmp_path):
    labels = read_labels(small["project"]).filtered()
    out = tmp_path / "labels.json"
    export_labels(labels, "json", out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["format"] == "protolabel-labels" and doc["version"] == 1
    assert doc["classes"] == ["dog", "cat", "bird"]  # project order
    assert doc["project"]["name"] == "proj" and doc["project"]["query_root"] == str(small["query"].resolve())
    assert doc["project"]["filters"]["include_unknown"] is False
    assert [(d["path"], d["label"], d["confidence"], d["source"]) for d in doc["labels"]] == [
        (str(r.path), r.label, round(r.confidence, 6), r.source) for r in labels.records]
    assert all(d["label"] != UNKNOWN_LABEL for d in doc["labels"])


@pytest.mark.parametrize("link", ["copy", "hardlink", "symlink"])
def test_imagefolder_holds_each_class_in_its_folder(small, tmp_path, link):
    labels = read_labels(small["project"]).filtered()
    out = tmp_path / "out"
    report = export_labels(labels, "imagefolder", out, link=link)
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["classes"] == {"dog": "dog", "cat": "cat", "bird": "bird"} and manifest["complete"] is True
    for folder, name in manifest["classes"].items():
        files = sorted((out / folder).iterdir())
        assert len(files) == sum(r.label == name for r in labels.records) == manifest["counts"][folder]
        for f in files:  # each file is one of the class's images, byte for byte
            assert f.read_bytes().decode().endswith(f" {name}")
            if link == "symlink":
                assert f.is_symlink() and f.resolve().is_relative_to(small["query"].resolve())
            elif link == "hardlink":
                assert f.stat().st_nlink == 2
            else:
                assert not f.is_symlink() and f.stat().st_nlink == 1
    # two cat images named dup.png: both kept, neither overwritten
    assert sorted(p.name for p in (out / "cat").iterdir() if "dup" in p.name) == ["dup.png", "dup_2.png"]
    assert sorted(manifest["files"]) == sorted(p.relative_to(out).as_posix() for p in files_under(out)
                                               if p.name != MANIFEST_FILE)
    assert report.outputs == [out, out / MANIFEST_FILE] and report.written == len(labels.records)
    assert not (out / UNKNOWN_LABEL).exists()


def test_hardlinks_across_file_systems_are_copied_and_counted(small, tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    labels = read_labels(small["project"]).filtered()
    report = export_labels(labels, "imagefolder", tmp_path / "out", link="hardlink")
    assert report.copied_instead == report.written == len(labels.records)
    assert all(p.stat().st_nlink == 1 and not p.is_symlink() for p in files_under(tmp_path / "out" / "cat"))


def test_yolo_split_is_stratified_disjoint_and_seeded(small, tmp_path):
    labels = read_labels(small["project"]).filtered(include_unknown=True)
    out = tmp_path / "yolo"
    report = export_labels(labels, "yolo-cls", out, val_split=0.3, seed=1)
    per_class = {}
    for r in labels.records:
        per_class[r.label] = per_class.get(r.label, 0) + 1
    assert set(os.listdir(out)) == {"train", "val", MANIFEST_FILE}
    train = {p.relative_to(out / "train").as_posix() for p in files_under(out / "train")}
    val = {p.relative_to(out / "val").as_posix() for p in files_under(out / "val")}
    assert not train & val  # disjoint (names are unique per class folder)
    contents = [p.read_bytes() for p in files_under(out / "train") + files_under(out / "val")]
    assert len(set(contents)) == len(contents) == len(labels.records)  # every image exactly once
    for name, n in per_class.items():
        n_val = len(list((out / "val" / name).iterdir())) if (out / "val" / name).exists() else 0
        n_train = len(list((out / "train" / name).iterdir()))
        assert n_train + n_val == n
        assert n_val == max(1, round(n * 0.3)) if n >= 2 else n_val == 0
        assert report.splits["val"].get(name, 0) == n_val and report.splits["train"][name] == n_train
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["counts"]["val"]["cat"] == report.splits["val"]["cat"]
    assert manifest["val_split"] == 0.3 and manifest["seed"] == 1
    # the same seed gives the same split; another seed, another one
    same = export_labels(labels, "yolo-cls", tmp_path / "yolo2", val_split=0.3, seed=1)
    assert same.splits == report.splits
    assert {p.name for p in files_under(tmp_path / "yolo2" / "val")} == {p.name for p in files_under(out / "val")}
    vals = {frozenset(p.name for p in files_under(tmp_path / f"s{s}" / "val"))
            for s in range(4) if export_labels(labels, "yolo-cls", tmp_path / f"s{s}", val_split=0.3, seed=s)}
    assert len(vals) > 1


def test_yolo_keeps_a_single_image_class_in_train(tmp_path):
    project = make_project(tmp_path / "p", tmp_path / "q", ["one", "two"],
                           [("one.png", "one", 0.9, "predicted"), ("t1.png", "two", 0.9, "predicted"),
                            ("t2.png", "two", 0.9, "predicted")])
    report = export_labels(read_labels(project).filtered(), "yolo-cls", tmp_path / "y", val_split=0.1)
    assert report.splits == {"train": {"one": 1, "two": 1}, "val": {"two": 1}}


LS_URL = "/data/local-files/?d="


def add_examples(project: Path, examples: list[tuple[str, str, str]]) -> None:
    """The classifier file's example list (id, class, source) as the app writes it, without a model; an
    example whose source isn't a file reads as the project's own copy, support/<id>.png."""
    import torch
    from safetensors.torch import save_file

    doc = {"examples": [{"id": i, "class": c, "source": s} for i, c, s in examples]}
    save_file({"x": torch.zeros(1)}, str(project / "classifier.safetensors"), metadata={"protolabel": json.dumps(doc)})


@pytest.fixture
def studio(tmp_path) -> dict:
    """A project whose labeled folder is root/data/photos and whose examples lie outside root: two example
    files in tmp/examples, one camera example saved in the project (tmp/proj/support)."""
    rows = [("a/cat_0.png", "cat", 0.9, "predicted"), ("a/cat_1.png", "cat", 0.6, "confirmed"),
            ("b/dog 0.png", "dog", 0.8, "predicted"), ("b/dog#1.png", "dog", 0.7, "predicted")]
    root = tmp_path / "root"
    query = root / "data" / "photos"
    project = make_project(tmp_path / "proj", query, ["cat", "dog"], rows)
    examples = tmp_path / "examples"
    for cls in ("cat", "dog"):
        (examples / cls).mkdir(parents=True)
        (examples / cls / "0.png").write_bytes(f"example {cls}".encode())  # the same name in both classes
    (project / "support").mkdir()
    (project / "support" / "cam1.png").write_bytes(b"example camera dog")
    add_examples(project, [("e1", "cat", str(examples / "cat" / "0.png")), ("e2", "dog", str(examples / "dog" / "0.png")),
                           ("cam1", "dog", "camera:0")])
    return {"project": project, "root": root, "query": query, "examples": examples, "tmp": tmp_path}


def served(url: str, report: ExportReport) -> Path:
    """The file Label Studio serves for a task's image URL with the report's document root and storage: its
    rule is that the folder of <root>/<d> lies in the storage folder, which lies strictly below the root."""
    from urllib.parse import unquote

    assert url.startswith(LS_URL)
    root, storage = report.document_root, report.storage_path
    assert root in storage.parents and storage.is_dir()
    path = Path(os.path.normpath(root / unquote(url[len(LS_URL):])))
    assert path.parent == storage or storage in path.parent.parents, f"{path} is not in the storage {storage}"
    assert path.is_file()
    return path


def test_labelstudio_tasks_and_config(small, tmp_path):
    labels = read_labels(small["project"]).filtered(include_unknown=True)
    out = tmp_path / "ls" / "tasks.json"
    report = export_labels(labels, "labelstudio", out)
    config_path = tmp_path / "ls" / "tasks.label_config.xml"
    assert report.outputs == [out, config_path, tmp_path / "ls" / "tasks.local_storage.json"]
    # No examples: nothing copied; the storage is the folder holding the images and the tasks, the root above it
    assert (report.storage_path, report.document_root) == (tmp_path.resolve(), tmp_path.resolve().parent)
    assert not (tmp_path / "ls" / "tasks-files").exists()
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(tasks, list) and len(tasks) == len(labels.records) == report.written
    by_image = {t["data"]["image"]: t for t in tasks}
    for r in labels.records:
        task = by_image[f"{LS_URL}{tmp_path.name}/photos/{r.path.relative_to(small['query'].resolve()).as_posix()}"]
        key = "annotations" if r.source in ("confirmed", "support") else "predictions"
        assert set(task) == {"data", key}
        [entry] = task[key]
        assert entry["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                    "value": {"choices": [r.label]}}]
        if key == "predictions":
            assert entry["model_version"] == "protolabel" and entry["score"] == pytest.approx(r.confidence)
        assert served(task["data"]["image"], report) == r.path
    view = ET.parse(config_path).getroot()
    assert view.tag == "View"
    image, choices = list(view)
    assert (image.tag, image.get("name"), image.get("value")) == ("Image", "image", "$image")
    assert (choices.tag, choices.get("name"), choices.get("toName")) == ("Choices", "label", "image")
    assert [c.get("value") for c in choices] == ["dog", "cat", "bird", UNKNOWN_LABEL]


def test_labelstudio_places_files_outside_the_storage_beside_the_tasks(studio):
    """The default: the labeled images stay, the examples (elsewhere) are hard-linked into tasks-files/<class>/,
    one storage serves both, and the report, its notes and tasks.local_storage.json say which root and storage."""
    labels = read_labels(studio["project"]).filtered()
    out = studio["root"] / "data" / "ls" / "tasks.json"
    report = export_labels(labels, "labelstudio", out)
    data = (studio["root"] / "data").resolve()
    assert (report.document_root, report.storage_path) == (data.parent, data)
    files = out.parent / "tasks-files"
    assert report.outputs == [out, out.parent / "tasks.label_config.xml", out.parent / "tasks.local_storage.json",
                              files, files / MANIFEST_FILE]
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert len(tasks) == report.written == len(labels.records) == 7
    got = {}
    for t in tasks:
        path = served(t["data"]["image"], report)
        kind = "predictions" if "predictions" in t else "annotations"
        got[path.read_bytes().decode()] = (t[kind][0]["result"][0]["value"]["choices"][0], kind)
    assert got == {"image a/cat_0.png cat": ("cat", "predictions"), "image a/cat_1.png cat": ("cat", "annotations"),
                   "image b/dog 0.png dog": ("dog", "predictions"), "image b/dog#1.png dog": ("dog", "predictions"),
                   "example cat": ("cat", "annotations"), "example dog": ("dog", "annotations"),
                   "example camera dog": ("dog", "annotations")}
    images = {t["data"]["image"] for t in tasks}
    assert f"{LS_URL}data/photos/b/dog%200.png" in images and f"{LS_URL}data/photos/b/dog%231.png" in images
    assert {i for i in images if "/ls/" in i} == {f"{LS_URL}data/ls/tasks-files/cat/0.png",
                                                  f"{LS_URL}data/ls/tasks-files/dog/0.png",
                                                  f"{LS_URL}data/ls/tasks-files/dog/cam1.png"}
    assert (files / "cat" / "0.png").stat().st_nlink == 2  # hard links: no second copy of the examples
    assert sorted(json.loads((files / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]) == [
        "cat/0.png", "dog/0.png", "dog/cam1.png"]
    setup = json.loads((out.parent / "tasks.local_storage.json").read_text(encoding="utf-8"))
    assert setup["environment"] == {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data.parent)}
    assert setup["local_storage"] == {"path": str(data), "path_in_document_root": "data"}
    assert setup["copies"] == {"folder": str(files), "files": 3} and setup["tasks"] == str(out)
    notes = "\n".join(report.notes)
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={data.parent}" in notes
    assert f"Local files source storage with the absolute local path {data} " in notes
    assert "3 file(s)" in notes and str(files) in notes
    assert report.to_dict()["storage_path"] == str(data)


def test_labelstudio_document_root_given(studio):
    """Files outside the given root are placed under it; the labeled images under it stay where they are."""
    labels = read_labels(studio["project"]).filtered()
    out = studio["root"] / "data" / "ls" / "tasks.json"
    report = export_labels(labels, "labelstudio", out, document_root=studio["root"])
    assert (report.document_root, report.storage_path) == (studio["root"].resolve(), (studio["root"] / "data").resolve())
    images = [t["data"]["image"] for t in json.loads(out.read_text(encoding="utf-8"))]
    assert all(served(i, report).is_relative_to(studio["root"].resolve()) for i in images)
    assert sum(i.startswith(f"{LS_URL}data/photos/") for i in images) == 4
    assert sum(i.startswith(f"{LS_URL}data/ls/tasks-files/") for i in images) == 3


def test_labelstudio_storage_below_a_root_that_holds_everything_side_by_side(studio):
    """Root = the labeled folder's parent and the tasks beside the labeled folder: the only folder below the
    root holding both would be the root itself, which Label Studio refuses as a storage. So every file is
    linked into tasks-files/, which becomes the storage."""
    labels = read_labels(studio["project"]).filtered()
    data = studio["root"] / "data"
    out = data / "tasks.json"
    report = export_labels(labels, "labelstudio", out, document_root=data)
    assert (report.document_root, report.storage_path) == (data.resolve(), (data / "tasks-files").resolve())
    images = [t["data"]["image"] for t in json.loads(out.read_text(encoding="utf-8"))]
    assert len(images) == 7 and all(i.startswith(f"{LS_URL}tasks-files/") for i in images)
    assert sorted(served(i, report).read_bytes() for i in images) == sorted(
        [r.path.read_bytes() for r in labels.records])


def test_labelstudio_root_must_hold_the_tasks_file(studio, tmp_path):
    labels = read_labels(studio["project"]).filtered()
    out = tmp_path / "elsewhere" / "tasks.json"
    with pytest.raises(ExportError, match="is not inside --document-root .*write the tasks file inside"):
        export_labels(labels, "labelstudio", out, document_root=studio["root"])
    with pytest.raises(ExportError, match="is not a folder"):
        export_labels(labels, "labelstudio", out, document_root=studio["root"] / "nope")
    assert not (tmp_path / "elsewhere").exists()


def test_labelstudio_refuses_copies_into_the_labeled_folder(studio):
    labels = read_labels(studio["project"]).filtered()
    out = studio["query"] / "tasks.json"
    with pytest.raises(ExportError, match="inside the labeled folder"):
        export_labels(labels, "labelstudio", out)
    assert sorted(p.name for p in studio["query"].iterdir()) == ["a", "b"]


def test_labelstudio_needs_a_folder_below_the_top_one(small):
    labels = read_labels(small["project"]).filtered()
    out = Path("/protolabel-no-such-folder/tasks.json")  # shares only "/" with the labeled images
    with pytest.raises(ExportError, match="share no folder but the top one"):
        export_labels(labels, "labelstudio", out)
    assert not out.parent.exists()


@pytest.mark.parametrize("name, written", [("tasks", "tasks.json"), ("tasks.txt", "tasks.txt.json"),
                                           ("Tasks.JSON", "Tasks.JSON")])
def test_labelstudio_tasks_file_ends_in_json(small, tmp_path, name, written):
    report = export_labels(read_labels(small["project"]).filtered(), "labelstudio", tmp_path / name)
    stem = written[:-len(".json")]
    assert report.out == tmp_path / written
    assert report.outputs == [tmp_path / written, tmp_path / f"{stem}.label_config.xml",
                              tmp_path / f"{stem}.local_storage.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(p.name for p in report.outputs)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export_labels(read_labels(small["project"]).filtered(), "labelstudio", tmp_path / "folder")


def test_labelstudio_overwrite_replaces_only_what_it_wrote(studio):
    labels = read_labels(studio["project"]).filtered()
    out = studio["root"] / "data" / "ls" / "tasks.json"
    files = out.parent / "tasks-files"
    export_labels(labels, "labelstudio", out)
    (files / "dog" / "mine.png").write_bytes(b"a user's file")
    before = out.read_bytes()
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export_labels(labels, "labelstudio", out)
    for name in ("tasks.json", "tasks.label_config.xml", "tasks.local_storage.json"):
        (out.parent / name).unlink()  # the tasks gone, their copies still there: still refused
    with pytest.raises(ExportError, match="not empty; .*--overwrite"):
        export_labels(labels, "labelstudio", out)
    assert not out.exists() and len(files_under(files)) == 5
    export_labels(labels, "labelstudio", out, overwrite=True)
    assert out.read_bytes() == before
    assert sorted(p.relative_to(files).as_posix() for p in files_under(files)) == [
        "cat/0.png", MANIFEST_FILE, "dog/0.png", "dog/cam1.png", "dog/mine.png"]
    # Without the examples nothing needs copying: overwrite removes the earlier copies, keeps the user's file.
    from dataclasses import replace

    report = export_labels(replace(labels, records=[r for r in labels.records if r.source != "support"]),
                           "labelstudio", out, overwrite=True)
    assert report.written == 4 and files_under(files) == [files / "dog" / "mine.png"]
    (files / "dog" / "mine.png").unlink()
    export_labels(labels, "labelstudio", out, overwrite=True)
    export_labels(replace(labels, records=[r for r in labels.records if r.source != "support"]),
                  "labelstudio", out, overwrite=True)
    assert not files.exists()


def test_labelstudio_copies_when_hard_links_are_impossible(studio, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    out = studio["root"] / "data" / "ls" / "tasks.json"
    report = export_labels(read_labels(studio["project"]).filtered(), "labelstudio", out)
    assert report.copied_instead == 3 and "(3 copied: no hard link possible)" in report.notes[0]
    assert all(p.stat().st_nlink == 1 for p in files_under(out.parent / "tasks-files"))


def test_labelstudio_cancelled_writes_no_tasks(studio):
    class Token:
        cancelled = False

    token = Token()
    out = studio["root"] / "data" / "ls" / "tasks.json"
    report = finish(iter_export(read_labels(studio["project"]).filtered(), "labelstudio", out, cancel=token),
                    lambda progress: setattr(token, "cancelled", True))
    assert report.cancelled and report.written == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["tasks-files"]


def test_cli_export_labelstudio(studio):
    out = studio["root"] / "data" / "ls" / "tasks"
    code, err = run_main("export", "labels", studio["project"], "--format", "labelstudio", "--out", out,
                         "--document-root", studio["root"])
    assert code == 0, err
    written = out.with_name("tasks.json")
    assert f"exported 7 labels as labelstudio -> {written}" in err
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={studio['root'].resolve()}" in err
    assert f"absolute local path {(studio['root'] / 'data').resolve()}" in err
    assert f"Label Studio settings: {out.with_name('tasks.local_storage.json')}" in err
    assert len(json.loads(written.read_text(encoding="utf-8"))) == 7
    code, err = run_main("export", "labels", studio["project"], "--format", "labelstudio", "--out", out,
                         "--link", "copy")
    assert code == 2 and "--link does not apply to --format labelstudio" in err


def test_labelstudio_class_names_xml_can_not_carry(tmp_path):
    names = ["a<b>&\"c'", "bell\x07", "tab\tkept"]
    project = make_project(tmp_path / "p", tmp_path / "q", names,
                           [(f"{i}.png", n, 0.9, "predicted") for i, n in enumerate(names)])
    out = tmp_path / "t.json"
    export_labels(read_labels(project).filtered(), "labelstudio", out)
    values = [c.get("value") for c in ET.parse(tmp_path / "t.label_config.xml").getroot()[1]]
    assert values == ["a<b>&\"c'", "bell_", "tab\tkept"]
    used = {t["predictions"][0]["result"][0]["value"]["choices"][0] for t in json.loads(out.read_text(encoding="utf-8"))}
    assert used == set(values)


# ------------------------------------------------------------------------------------------------ filters


def test_filters(small):
    labels = read_labels(small["project"])
    assert len(labels.records) == len(small["rows"])
    default = labels.filtered()
    assert {r.label for r in default.records} == {"cat", "dog", "bird"}
    assert len(default.records) == len(small["rows"]) - 2
    assert {r.label for r in labels.filtered(include_unknown=True).records} == {"cat", "dog", "bird", UNKNOWN_LABEL}
    confirmed = labels.filtered(only_confirmed=True)
    assert sorted(r.path.name for r in confirmed.records) == ["bird_2.png", "dog_0.jpg", "dog_1.jpg"]
    high = labels.filtered(min_confidence=0.8)
    want = {p for p, label, conf, source in small["rows"] if label != UNKNOWN_LABEL and (conf >= 0.8 or source == "confirmed")}
    assert {r.path.relative_to(small["query"].resolve()).as_posix() for r in high.records} == want
    assert any(r.confidence < 0.8 for r in high.records)  # dog_0 (0.4) is confirmed: a person's label passes
    with pytest.raises(ExportError, match="min-confidence"):
        labels.filtered(min_confidence=1.5)


def test_paths_that_climb_out_of_the_labeled_folder_are_refused(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    project = make_project(tmp_path / "p", tmp_path / "q", ["a"],
                           [("ok.png", "a", 0.9, "predicted"), ("../secret.png", "a", 0.9, "predicted"),
                            (str(outside), "a", 0.9, "predicted")])
    labels = read_labels(project)
    assert [r.path.name for r in labels.records] == ["ok.png"]
    assert len(labels.rejected) == 2 and all("outside" in s.reason for s in labels.rejected)


def test_csv_from_protolabel_label_with_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    for n in ("a.png", "b.png"):
        (tmp_path / "photos" / n).write_bytes(b"x")
    src = tmp_path / "labels.csv"
    src.write_text("path,label,confidence,similarity,source,top1,top1_confidence\n"
                   "photos/a.png,cat,0.9000,0.8,predicted,cat,0.9\n"
                   "photos/b.png,unknown,0.4000,0.2,predicted,cat,0.4\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # where `protolabel label` ran
    labels = read_labels("labels.csv")
    assert [(r.path, r.label, r.confidence) for r in labels.records] == [
        (tmp_path / "photos" / "a.png", "cat", 0.9), (tmp_path / "photos" / "b.png", UNKNOWN_LABEL, 0.4)]
    assert labels.classes == ["cat"]
    monkeypatch.chdir(tmp_path / "photos")  # elsewhere: found next to the CSV
    assert read_labels(tmp_path / "labels.csv").records[0].path == tmp_path / "photos" / "a.png"


def test_not_a_labels_source(tmp_path):
    (tmp_path / "notes.csv").write_text("name,value\nx,1\n", encoding="utf-8")
    with pytest.raises(ExportError, match="needs the columns path and label"):
        read_labels(tmp_path / "notes.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a ProtoLabel project"):
        read_labels(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_labels(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ unsafe names

UNSAFE = ["../x", "a/b", "a\\b", "CON", "con", "nul.txt", "", "..", ".", ".hidden", "x" * 300, "y" * 299 + "z",
          "tab\there", "nul\x00byte", "newline\nname", "trailing.", "trailing ", "trailing", "Cat", "cat", "CAT",
          unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "猫", "é",
          "a:b*c?d\"e<f>g|h", "zero\u200bwidth", "rtl\u202eevil", "classes.json", "COM1.tar.gz", "lpt¹",
          "unnamed", "/abs", "~", "  spaces  "]


@pytest.mark.parametrize("fmt", ["imagefolder", "yolo-cls"])
def test_unsafe_class_names_stay_inside_and_map_back(tmp_path, fmt):
    rows = [(f"img_{i:02d}_{j}.png", name, 0.9, "predicted") for i, name in enumerate(UNSAFE) for j in range(2)]
    project = make_project(tmp_path / "p", tmp_path / "q", UNSAFE, rows)
    labels = read_labels(project).filtered()
    assert labels.classes == UNSAFE and len(labels.records) == len(rows) - 2  # "" is no label: rejected
    out = tmp_path / "out"
    report = export_labels(labels, fmt, out)
    assert report.written == len(labels.records) and not report.skipped
    # nothing outside out: every entry under the test folder that isn't an input is inside out
    inputs = {p.resolve() for p in (tmp_path / "q").rglob("*")} | {p.resolve() for p in (tmp_path / "p").rglob("*")}
    for p in tmp_path.rglob("*"):
        assert p.resolve() in inputs or p.resolve().is_relative_to(out.resolve()) or p in (tmp_path / "q", tmp_path / "p")
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    mapping = manifest["classes"]
    exported = [n for n in UNSAFE if n]
    assert sorted(mapping.values()) == sorted(exported)  # exact original names, each once
    keys = {unicodedata.normalize("NFC", f).casefold() for f in mapping}
    assert len(keys) == len(mapping)  # unique even on case-insensitive, normalising file systems
    assert _name_key_clash_free(mapping)
    for folder in mapping:
        assert folder == safe_name(folder)  # already safe: a fixed point
        assert len(folder.encode()) <= 100 and folder not in ("", ".", "..")
        assert not set(folder) & set('<>:"/\\|?*') and all(ord(c) >= 32 for c in folder)
        assert not folder.endswith((".", " ")) and not folder.startswith((".", " "))
        assert folder.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT¹"}
        assert fmt != "imagefolder" or folder.casefold() != MANIFEST_FILE
    folder_of = {name: folder for folder, name in mapping.items()}
    for readable in ("猫", "é", unicodedata.normalize("NFC", "café"), "Cat", "trailing.", "~"):
        assert folder_of[readable] == readable.rstrip(".")  # readable names stay as they are
    parents = [out] if fmt == "imagefolder" else [out / "train", out / "val"]
    for folder, name in mapping.items():
        files = [p for parent in parents for p in (parent / folder).glob("*")]
        assert len(files) == 2 and all(p.read_bytes().endswith(f" {name}".encode()) for p in files)
    assert sorted(os.listdir(out)) == sorted([*mapping, MANIFEST_FILE] if fmt == "imagefolder"
                                             else ["train", "val", MANIFEST_FILE])


def _name_key_clash_free(mapping: dict[str, str]) -> bool:
    """The folder names also stay distinct with Windows' upper-casing."""
    return len({f.upper() for f in mapping}) == len(mapping)


def test_unsafe_file_names_are_made_safe(tmp_path):
    project = make_project(tmp_path / "p", tmp_path / "q", ["a"],
                           [("CON.png", "a", 0.9, "predicted"), ("x:y.png", "a", 0.9, "predicted"),
                            (("n" * 250) + ".png", "a", 0.9, "predicted"), ("con.PNG", "a", 0.9, "predicted")])
    out = tmp_path / "out"
    export_labels(read_labels(project).filtered(), "imagefolder", out)
    names = sorted(os.listdir(out / "a"))
    assert len(names) == 4
    long = [n for n in names if n.startswith("nnn")]
    assert len(long) == 1 and long[0].endswith(".png") and len(long[0].encode()) <= 150
    # con.PNG is CON.png on Windows: after CON_.png, it gets a suffix
    assert sorted(set(names) - set(long)) == ["CON_.png", "con__2.PNG", "x_y.png"]


# ------------------------------------------------------------------------------------------------ re-export


def test_reexport_refuses_then_overwrites_only_its_own_files(small, tmp_path):
    labels = read_labels(small["project"]).filtered()
    out = tmp_path / "out"
    first = export_labels(labels, "imagefolder", out)
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        export_labels(labels, "imagefolder", out)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "cat" / "my_own.png").write_bytes(b"mine too")
    (out / "mine").mkdir()
    (out / "mine" / "cat_0.png").write_bytes(b"also mine")
    fewer = labels.filtered(only_confirmed=True)  # dog and bird only: cat's exported files must go
    second = export_labels(fewer, "imagefolder", out, overwrite=True)
    assert second.written == len(fewer.records) < first.written
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "cat" / "my_own.png").read_bytes() == b"mine too"
    assert (out / "mine" / "cat_0.png").read_bytes() == b"also mine"
    assert sorted(os.listdir(out / "cat")) == ["my_own.png"]
    assert len(os.listdir(out / "dog")) == 2 and len(os.listdir(out / "bird")) == 1
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert set(manifest["classes"]) == {"dog", "bird"}
    # a third export over it: the class folders of the second are emptied and removed, user files kept
    export_labels(labels, "yolo-cls", out, overwrite=True)
    assert not (out / "dog").exists() and not (out / "bird").exists()
    assert (out / "notes.txt").exists() and (out / "cat" / "my_own.png").exists()


def test_a_folder_export_stays_out_of_the_project(small):
    labels = read_labels(small["project"]).filtered()
    with pytest.raises(ExportError, match="inside the project folder"):
        export_labels(labels, "imagefolder", small["project"] / "export", overwrite=True)
    assert not (small["project"] / "export").exists()


def test_reexport_of_files_refuses_without_overwrite(small, tmp_path):
    labels = read_labels(small["project"]).filtered()
    for fmt, name in (("csv", "l.csv"), ("json", "l.json"), ("labelstudio", "t.json")):
        export_labels(labels, fmt, tmp_path / name)
        before = (tmp_path / name).read_bytes()
        with pytest.raises(ExportError, match="exists; pass --overwrite"):
            export_labels(labels.filtered(only_confirmed=True), fmt, tmp_path / name)
        assert (tmp_path / name).read_bytes() == before
        export_labels(labels.filtered(only_confirmed=True), fmt, tmp_path / name, overwrite=True)
        assert (tmp_path / name).read_bytes() != before


def test_a_folder_with_someone_elses_classes_json_is_left_alone(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_FILE).write_text('{"cat": 1}', encoding="utf-8")
    with pytest.raises(ExportError, match="not a ProtoLabel export manifest"):
        export_labels(read_labels(small["project"]).filtered(), "imagefolder", out, overwrite=True)
    assert (out / MANIFEST_FILE).read_text(encoding="utf-8") == '{"cat": 1}' and os.listdir(out) == [MANIFEST_FILE]


def test_an_interrupted_export_is_still_replaced_by_overwrite(small, tmp_path, monkeypatch):
    from core import export

    labels = read_labels(small["project"]).filtered()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    real, calls = export._place_file, []

    def crash_on_third(src, dest, link):
        calls.append(dest)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a crash mid-export: no final manifest
        return real(src, dest, link)

    monkeypatch.setattr(export, "_place_file", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        export_labels(labels, "imagefolder", out, overwrite=True)
    monkeypatch.setattr(export, "_place_file", real)
    assert len(files_under(out)) == 2 + 2  # two images, keep.txt, the planned manifest
    export_labels(labels.filtered(only_confirmed=True), "imagefolder", out, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in files_under(out)) == sorted(
        ["keep.txt", MANIFEST_FILE, "dog/dog_0.jpg", "dog/dog_1.jpg", "bird/bird_2.png"])


def test_cancel_stops_between_files(small, tmp_path):
    class Token:
        cancelled = False

    token = Token()
    labels = read_labels(small["project"]).filtered()
    report = finish(iter_export(labels, "imagefolder", tmp_path / "out", cancel=token),
                    lambda progress: setattr(token, "cancelled", True))
    assert isinstance(report, ExportReport) and report.cancelled and report.written == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["complete"] is False and manifest["files"] == []


# ------------------------------------------------------------------------------------------------ missing files


@pytest.mark.parametrize("fmt", ["csv", "imagefolder", "yolo-cls", "labelstudio"])
def test_missing_files_are_skipped_and_named(small, tmp_path, fmt):
    labels = read_labels(small["project"]).filtered()
    gone = [small["query"] / "a" / "cat_1.png", small["query"] / "c" / "bird_0.png"]
    for p in gone:
        p.unlink()
    out = tmp_path / ("out" if fmt in ("imagefolder", "yolo-cls") else "labels.json")
    report = export_labels(labels, fmt, out)
    assert report.written == len(labels.records) - 2
    assert sorted(s.path for s in report.skipped) == sorted(str(p.resolve()) for p in gone)
    assert all("missing" in s.reason for s in report.skipped)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_labels(small, tmp_path):
    out = tmp_path / "yolo"
    (small["query"] / "b" / "dog_5.jpg").unlink()
    code, err = run_main("export", "labels", small["project"], "--format", "yolo-cls", "--out", out,
                         "--val-split", "0.5", "--seed", "3", "--link", "hardlink")
    assert code == 0, err
    assert "exported 16 labels as yolo-cls" in err and "1 skipped" in err
    assert f"skipped: {(small['query'] / 'b' / 'dog_5.jpg').resolve()}: missing" in err
    assert json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))["seed"] == 3
    code, err = run_main("export", "labels", small["project"], "--format", "yolo-cls", "--out", out)
    assert code == 2 and "error:" in err and "--overwrite" in err
    code, err = run_main("export", "labels", small["project"], "--format", "yolo-cls", "--out", out, "--overwrite",
                         "--only-confirmed")
    assert code == 0, err
    csv_out = tmp_path / "l.csv"
    code, err = run_main("export", "labels", small["project"], "--format", "csv", "--out", csv_out,
                         "--min-confidence", "0.9", "--include-unknown")
    assert code == 0, err
    assert {r["label"] for r in read_csv_rows(csv_out)} == {"cat", "dog", "bird"}
    code, err = run_main("export", "labels", csv_out, "--format", "imagefolder", "--out", tmp_path / "from-csv")
    assert code == 0, err
    assert len(files_under(tmp_path / "from-csv")) == len(read_csv_rows(csv_out)) + 1


@pytest.mark.parametrize("argv, message", [
    (["--format", "csv", "--out", "{tmp}/x.csv", "--val-split", "0.3"], "--val-split does not apply to --format csv"),
    (["--format", "yolo-cls", "--out", "{tmp}/y", "--val-split", "1.5"], "--val-split must be between 0 and 1"),
    (["--format", "csv", "--out", "{tmp}/x.csv", "--min-confidence", "2"], "--min-confidence must be between"),
    (["--format", "csv", "--out", "{tmp}/x.csv", "--only-confirmed", "--min-confidence", "1"], None),
])
def test_cli_export_labels_errors(small, tmp_path, argv, message):
    code, err = run_main("export", "labels", small["project"], *[a.format(tmp=tmp_path) for a in argv])
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and f"error: {message}" in err


def test_cli_names_labels_it_does_not_use(tmp_path):
    project = make_project(tmp_path / "p", tmp_path / "q", ["a"],
                           [("ok.png", "a", 0.9, "predicted"), ("../../etc/passwd", "a", 0.9, "predicted")])
    code, err = run_main("export", "labels", project, "--format", "csv", "--out", tmp_path / "x.csv")
    assert code == 0, err
    assert "1 unusable" in err and "not used: path '../../etc/passwd' points outside" in err
    assert [r["path"] for r in read_csv_rows(tmp_path / "x.csv")] == [str((tmp_path / "q" / "ok.png").resolve())]


def test_cli_export_labels_from_nothing(tmp_path):
    code, err = run_main("export", "labels", tmp_path / "nope", "--format", "csv", "--out", tmp_path / "x.csv")
    assert code == 2 and "neither a project folder nor a labels CSV" in err
    project = make_project(tmp_path / "p", tmp_path / "q", ["a"], [("u.png", UNKNOWN_LABEL, 0.1, "predicted")])
    code, err = run_main("export", "labels", project, "--format", "csv", "--out", tmp_path / "x.csv")
    assert code == 2 and "nothing to export" in err and "--include-unknown" in err
    assert not (tmp_path / "x.csv").exists()


def test_cli_export_model_arguments():
    args = cli.build_parser().parse_args(["export", "model", "proj", "--format", "onnx", "--out", "m.onnx",
                                          "--device", "cpu"])
    assert (args.command, args.export_command, args.project, args.format, args.out) == (
        "export", "model", "proj", "onnx", "m.onnx")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["export", "model", "proj", "--format", "tflite", "--out", "m"])


def test_cli_export_model_end_to_end(real_project, tmp_path):
    """The `export model` entry calls core.export_model.export_model with the project and an embedder."""
    pytest.importorskip("core.export_model")
    out = tmp_path / "model.pt"
    code, err = run_main("export", "model", real_project["folder"], "--format", "torchscript", "--out", out,
                         "--device", "cpu")
    assert code == 0, err
    assert out.is_file() and f"model written to {out}" in err
    code, err = run_main("export", "model", tmp_path / "not-a-project", "--format", "torchscript", "--out", out,
                         "--device", "cpu")
    assert code == 2 and "error:" in err


def test_labelset_is_core_api():
    import core

    for name in ("LabelSet", "LabelEntry", "ExportReport", "ExportError", "read_labels", "export_labels",
                 "iter_export", "LABEL_FORMATS"):
        assert name in core.__all__
    assert core.LABEL_FORMATS == ("csv", "json", "imagefolder", "yolo-cls", "labelstudio")
    assert isinstance(LabelSet([], []).filtered(), LabelSet)
