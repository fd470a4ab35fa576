"""The `protolabel` command end to end: `core.cli.main([...])` in-process, on generated image trees.

Each `main` call builds its model; the `_session_backbone` fixture hands it the session's backbone (same
weights, same model key) so a call costs its embedding work only. The CLI runs on one torch thread
(`one_torch_thread`: it would otherwise take every core, which is slow on a busy machine). Runs are
shared where tests only read their outputs, and the trees are small.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from core import cli
from core.classifier import UNKNOWN_LABEL
from core.project import ProjectError, load_project
from synthetic import write_tree

MINI_CLASSES = ("circle", "square", "triangle")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(*argv) -> tuple[int, str, str]:
    """main([...]) -> (exit code, stdout, stderr); usable from module-scoped fixtures, unlike capsys."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)  # the CLI sets the process-wide count; leave other tests theirs
    return code, out.getvalue(), err.getvalue()


def exit_code(*argv) -> int:
    """main's return value, or the code of the SystemExit argparse raises for a bad argument."""
    try:
        return run_main(*argv)[0]
    except SystemExit as exc:
        return int(exc.code or 0)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def assert_valid_labels_csv(path: Path, n_rows: int, topk: int = 3) -> list[dict[str, str]]:
    header, rows = read_csv(path)
    assert header[:3] == ["path", "label", "confidence"]
    for k in range(1, topk + 1):
        assert f"top{k}" in header and f"top{k}_confidence" in header
    assert len(rows) == n_rows
    for row in rows:
        assert Path(row["path"]).is_file()
        assert 0.0 <= float(row["confidence"]) <= 1.0
        assert row["top1"] and float(row["top1_confidence"]) >= float(row["top2_confidence"])
    return rows


def correct_fraction(rows: list[dict[str, str]], column: str = "label") -> float:
    return sum(row[column] == Path(row["path"]).parent.name for row in rows) / len(rows)


@pytest.fixture(scope="module", autouse=True)
def _session_backbone(backbone):
    """create_backbone(default) -> the session's backbone: same weights and model key, ~1 s less per call."""
    from core import backbones

    original = backbones.create_backbone

    def create(name=backbones.DEFAULT_BACKBONE, weights=None):
        return backbone if name == backbones.DEFAULT_BACKBONE and weights is None else original(name, weights)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "create_backbone", create)
        yield


@pytest.fixture(scope="module")
def mini_tree(tmp_path_factory) -> Path:
    """support/<class>/ (3 each) and query/<class>/ (2 each), 3 classes: 15 images per `label` run."""
    root = tmp_path_factory.mktemp("mini")
    write_tree(root / "support", per_class=3, seed=11, classes=MINI_CLASSES)
    write_tree(root / "query", per_class=2, seed=12, classes=MINI_CLASSES)
    return root


def n_query(root: Path) -> int:
    """The generated (readable) images under root/query: <class>/<class>_NNN.png."""
    return sum(p.name.startswith(p.parent.name + "_") for p in (root / "query").rglob("*.png"))


# ------------------------------------------------------------------------------------------------ label


@pytest.fixture(scope="module")
def labeled(shapes_tree, tmp_path_factory):
    """One `label --save-project` run on the shapes tree; several tests read its CSV and project."""
    out = tmp_path_factory.mktemp("labeled")
    code, _, stderr = run_main(
        "label", "--support", shapes_tree / "support", "--query", shapes_tree / "query",
        "--out", out / "labels.csv", "--device", "cpu", "--save-project", out / "project",
    )
    return {"code": code, "stderr": stderr, "csv": out / "labels.csv", "project": out / "project",
            "query": shapes_tree / "query"}


def test_label_writes_a_csv_row_per_query_image(labeled, shapes_tree):
    assert labeled["code"] == 0, labeled["stderr"]
    rows = assert_valid_labels_csv(labeled["csv"], n_query(shapes_tree))
    assert correct_fraction(rows) >= 0.9
    assert sorted(Path(r["path"]).resolve() for r in rows) == sorted(
        p.resolve() for p in (shapes_tree / "query").rglob("*.png")
    )
    assert "support: 4 classes, 12 examples" in labeled["stderr"]
    assert "labeled 24 images" in labeled["stderr"] and "0 skipped" in labeled["stderr"]


def test_label_save_project_opens_with_the_same_session(labeled, embedder):
    assert labeled["code"] == 0, labeled["stderr"]
    _, rows = read_csv(labeled["csv"])
    project = load_project(labeled["project"], embedder)
    assert project.classifier.classes == ["circle", "square", "star", "triangle"]
    assert [c["name"] for c in project.classes] == project.classifier.classes
    assert len(project.classifier.examples) == 12
    assert Path(project.query_root) == labeled["query"].resolve()
    stored = project.labels()
    assert len(stored) == len(rows)
    by_path = {s.path: s for s in stored}
    for row in rows:
        rel = Path(row["path"]).resolve().relative_to(labeled["query"].resolve()).as_posix()
        assert by_path[rel].label == row["label"]
        assert by_path[rel].source == "predicted"
        assert project.resolve(rel).is_file()
        assert project.resolve(rel) == Path(row["path"]).resolve()


def test_project_resolve_refuses_paths_outside_the_labeled_folder(labeled, embedder):
    project = load_project(labeled["project"], embedder)
    inside = next(labeled["query"].rglob("*.png"))
    for bad in ("../../etc/passwd", "/etc/passwd", str(inside.resolve()), "circle/../../x.png"):
        with pytest.raises(ProjectError, match="outside"):
            project.resolve(bad)


@pytest.fixture
def mini_with_bad_files(mini_tree, bad_image_dir, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the mini tree: every bad file in query/ (half at the top, half in a class folder) and one in support/."""
    root = tmp_path / "tree"
    shutil.copytree(mini_tree, root)
    bad = sorted(bad_image_dir.iterdir())
    for i, f in enumerate(bad):
        shutil.copy(f, root / "query" / ("circle" if i % 2 else ".") / f.name)
    shutil.copy(bad_image_dir / "text.jpg", root / "support" / "square" / "notes.jpg")
    return root, [f.name for f in bad]


def test_label_skips_and_reports_unreadable_files(mini_with_bad_files, tmp_path):
    root, bad_names = mini_with_bad_files
    out = tmp_path / "labels.csv"
    code, _, err = run_main("label", "--support", root / "support", "--query", root / "query", "--out", out,
                            "--device", "cpu")
    assert code == 0, err
    rows = assert_valid_labels_csv(out, n_query(root))
    assert not {Path(r["path"]).name for r in rows} & set(bad_names)
    assert correct_fraction(rows, "top1") >= 0.8
    assert f"{len(bad_names)} skipped" in err
    # The support's bad file: skipped, counted, named; the other two examples of 'square' still count.
    assert "support: 3 classes, 9 examples, 1 unreadable file skipped" in err
    assert "notes.jpg" in err
    assert "skipped: " in err and ("file is empty" in err or "truncated" in err)
    assert "Traceback" not in err


def test_label_goes_through_a_messy_folder(mini_tree, messy_folder, deny_reading, tmp_path):
    """The issue's whole bad-input list as the query folder: readable oddities labeled, the rest skipped with
    a reason and counted, the symlink loop walked once, no traceback."""
    folder, readable, unreadable, secret = messy_folder
    deny_reading(secret)  # as a user without root would see it
    out = tmp_path / "labels.csv"
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", folder, "--out", out,
                            "--device", "cpu")
    assert code == 0, err
    _, rows = read_csv(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(readable)
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in ("ein Kreis.png", "cmyk.jpg", "exif rotated.jpg"):
        assert by_name[name]["top1"] == "circle", (name, by_name[name])
    assert by_name["das Quadrat 🟦.jpg"]["top1"] == "square"
    assert f"labeled {len(readable)} images" in err and f"{len(unreadable) + 1} skipped" in err
    assert "permission denied" in err and "declares 100000x100000 pixels" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("unknown", ["off", "0.99"])
def test_label_unknown_threshold(mini_tree, tmp_path, unknown):
    out = tmp_path / "labels.csv"
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", mini_tree / "query",
                            "--out", out, "--device", "cpu", "--unknown", unknown)
    assert code == 0, err
    rows = assert_valid_labels_csv(out, n_query(mini_tree))
    unknown_rows = sum(r["label"] == UNKNOWN_LABEL for r in rows)
    if unknown == "off":
        assert unknown_rows == 0
        assert correct_fraction(rows) >= 0.8
    else:
        assert unknown_rows >= 0.9 * len(rows)
        assert correct_fraction(rows, "top1") >= 0.8  # the best class is still reported


def test_label_transductive(mini_tree, tmp_path):
    out = tmp_path / "labels.csv"
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", mini_tree / "query",
                            "--out", out, "--device", "cpu", "--transductive")
    assert code == 0, err
    rows = assert_valid_labels_csv(out, n_query(mini_tree))
    assert correct_fraction(rows, "top1") >= 0.8
    assert {r["label"] for r in rows} <= {*MINI_CLASSES, UNKNOWN_LABEL}


def test_label_finetune(mini_tree, tmp_path):
    out = tmp_path / "labels.csv"
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", mini_tree / "query",
                            "--out", out, "--device", "cpu", "--finetune", "1", "--unknown", "off")
    assert code == 0, err
    assert "fine-tuning: " in err
    rows = assert_valid_labels_csv(out, n_query(mini_tree))
    assert correct_fraction(rows) >= 0.8


@pytest.mark.parametrize("value", ["banana", "1.5"])
def test_label_rejects_a_bad_unknown_value(mini_tree, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        cli.main(["label", "--support", str(mini_tree / "support"), "--query", str(mini_tree / "query"),
                  "--out", str(tmp_path / "x.csv"), "--unknown", value])
    assert exc.value.code == 2
    assert "--unknown" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_label_with_an_empty_support_folder_fails_cleanly(mini_tree, tmp_path):
    support = tmp_path / "support"
    (support / "circle").mkdir(parents=True)
    (support / "circle" / "readme.txt").write_text("not an image")
    code, _, err = run_main("label", "--support", support, "--query", mini_tree / "query",
                            "--out", tmp_path / "labels.csv", "--device", "cpu")
    assert code == 2
    assert err.startswith("error: ") and str(support) in err
    assert "Traceback" not in err
    assert not (tmp_path / "labels.csv").exists()


def test_label_with_only_unreadable_examples_fails_cleanly(mini_tree, bad_image_dir, tmp_path):
    support = tmp_path / "support"
    shutil.copytree(bad_image_dir, support / "circle")
    code, _, err = run_main("label", "--support", support, "--query", mini_tree / "query",
                            "--out", tmp_path / "labels.csv", "--device", "cpu")
    assert code == 2
    assert "error: no readable example images" in err
    assert "skipped: " in err  # and says why
    assert "Traceback" not in err
    assert not (tmp_path / "labels.csv").exists()


def test_label_with_a_missing_query_folder_fails_cleanly(mini_tree, tmp_path):
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", tmp_path / "nope",
                            "--out", tmp_path / "labels.csv", "--device", "cpu")
    assert code == 2
    assert "error: " in err and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "labels.csv").exists()


def test_label_rejects_topk_zero(mini_tree, tmp_path):
    code = exit_code("label", "--support", mini_tree / "support", "--query", mini_tree / "query",
                     "--out", tmp_path / "labels.csv", "--device", "cpu", "--topk", "0")
    assert code == 2


# ------------------------------------------------------------------------------------------------ evaluate


@pytest.fixture(scope="module")
def eval_tree(tmp_path_factory) -> Path:
    """4 classes x 6 images; 'star' one level deeper (classes are found at any depth)."""
    root = tmp_path_factory.mktemp("eval")
    write_tree(root, per_class=6, seed=21, classes=("circle", "square", "triangle"))
    write_tree(root / "more", per_class=6, seed=22, classes=("star",))
    return root


@pytest.fixture
def eval_cache(tmp_path_factory, monkeypatch) -> Path:
    """One feature cache for this module's evaluate runs (after the conftest's autouse setting)."""
    folder = tmp_path_factory.getbasetemp() / "cli-eval-cache"
    monkeypatch.setenv("PROTOLABEL_CACHE", str(folder))
    return folder


EVAL_ARGS = ("--way", "3", "--shot", "1", "2", "--query", "3", "--min-images", "5", "--json", "--device", "cpu")


def check_eval_json(stdout: str, shots=("1", "2"), episodes: int = 20) -> dict:
    result = json.loads(stdout.strip().splitlines()[-1])
    assert sorted(result) == sorted(shots)
    for r in result.values():
        assert 0.0 <= r["accuracy"] <= 100.0
        assert r["ci95"] >= 0.0 and r["adapt_ms_median"] >= 0.0
        assert r["episodes"] == episodes
    return result


def test_evaluate_json_and_feature_cache(eval_tree, eval_cache, monkeypatch):
    from core.embedding import Embedder

    shutil.rmtree(eval_cache, ignore_errors=True)
    calls = []
    original = Embedder.embed_tensor

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Embedder, "embed_tensor", counting)
    code, out1, err = run_main("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "20")
    assert code == 0, err
    assert "4 classes, 24 images" in err
    assert sum(calls) == 24
    first = check_eval_json(out1)
    assert first["1"]["accuracy"] > 50 and first["2"]["accuracy"] > 50  # chance: 33%
    assert "1-shot:" in out1 and "2-shot:" in out1

    calls.clear()
    code, out2, err = run_main("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "20")
    assert code == 0, err
    assert calls == []  # every feature came from the cache
    second = check_eval_json(out2)
    assert {k: (v["accuracy"], v["ci95"]) for k, v in second.items()} == {
        k: (v["accuracy"], v["ci95"]) for k, v in first.items()
    }


def test_evaluate_transductive(eval_tree, eval_cache):
    code, out, err = run_main("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "20", "--transductive")
    assert code == 0, err
    result = check_eval_json(out)
    assert result["2"]["accuracy"] > 50
    assert "transductive" in out


def test_evaluate_finetune(eval_tree, eval_cache):
    code, out, err = run_main("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "3", "--finetune", "0.2",
                              "--finetune-steps", "3")
    assert code == 0, err
    check_eval_json(out, episodes=3)
    assert "fine-tuned 0.2s" in out


def test_evaluate_with_too_few_classes(eval_tree, eval_cache, tmp_path):
    code, out, err = run_main("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "2", "--way", "5")
    assert code != 0
    assert "5-way needs 5 classes" in err and "found 4" in err
    assert "Traceback" not in err
    assert not out.strip()  # no JSON line for a run that did not happen

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    code, _, err = run_main("evaluate", empty, *EVAL_ARGS)
    assert code != 0 and "found 0" in err


@pytest.mark.parametrize("shot, query", [("0", "3"), ("1", "0")])
def test_evaluate_rejects_empty_support_or_query(eval_tree, eval_cache, shot, query):
    code = exit_code("evaluate", eval_tree, "--way", "3", "--shot", shot, "--query", query, "--episodes", "2",
                     "--min-images", "5", "--device", "cpu")
    assert code == 2


def test_evaluate_rejects_zero_episodes(eval_tree, eval_cache):
    assert exit_code("evaluate", eval_tree, *EVAL_ARGS, "--episodes", "0") == 2  # argparse: must be 1 or more


def test_evaluate_missing_folder(tmp_path):
    code, _, err = run_main("evaluate", tmp_path / "nope", *EVAL_ARGS)
    assert code == 2
    assert err.startswith("error: ") and "nope" in err


# ------------------------------------------------------------------------------------------------ misc


def test_backbones_lists_the_registered_backbones(capsys):
    assert cli.main(["backbones"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "efficientnet_lite0" in names and "efficientnet_lite2" in names


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "label" in capsys.readouterr().out


def test_input_size_must_be_a_multiple_of_32(mini_tree, tmp_path):
    code, _, err = run_main("label", "--support", mini_tree / "support", "--query", mini_tree / "query",
                            "--out", tmp_path / "labels.csv", "--device", "cpu", "--input-size", "100")
    assert code == 2 and "multiple of 32" in err
    assert not (tmp_path / "labels.csv").exists()
