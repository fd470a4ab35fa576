"""Faults and untrusted files: backups of the previous save, a process killed while saving, pickles that carry
code, paths that climb out of a project."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core import FewShotClassifier, ModelFileError, ProjectError, load_model_file, load_project, save_project
from core.project import has_backup, restore_backup
from synthetic import draw_shape

REPO = Path(__file__).resolve().parents[2]


class _Evil:
    """Unpickling this runs a command: what a malicious model or project file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _classifier(embedder, n: int) -> FewShotClassifier:
    c = FewShotClassifier(embedder)
    rng = np.random.default_rng(0)
    for i in range(n):
        c.add_example(("circle", "square")[i % 2], draw_shape(("circle", "square")[i % 2], rng))
    return c


def test_a_damaged_project_offers_the_previous_save(tmp_path, embedder):
    folder = tmp_path / "p"
    save_project(folder, _classifier(embedder, 2))
    assert not has_backup(folder)  # nothing to back up on the first save
    save_project(folder, _classifier(embedder, 4))
    assert has_backup(folder)
    (folder / "project.json").write_text('{"format": "protolabel-pro')  # cut short by something outside
    with pytest.raises(ProjectError, match="damaged.*backup") as info:
        load_project(folder, embedder)
    assert info.value.backup
    restore_backup(folder)
    assert len(load_project(folder, embedder).classifier.examples) == 2  # the save before the last one
    assert (folder / "project.json.damaged").is_file()


def test_a_damaged_classifier_file_offers_the_previous_save(tmp_path, embedder):
    folder = tmp_path / "p"
    save_project(folder, _classifier(embedder, 2))
    save_project(folder, _classifier(embedder, 4))
    data = bytearray((folder / "classifier.safetensors").read_bytes())
    (folder / "classifier.safetensors").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ProjectError, match="can't be loaded.*backup") as info:
        load_project(folder, embedder)
    assert info.value.backup
    restore_backup(folder)
    assert len(load_project(folder, embedder).classifier.examples) == 2


_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from core import Embedder, FewShotClassifier, create_backbone, save_project
    from synthetic import draw_shape
    c = FewShotClassifier(Embedder(create_backbone("efficientnet_lite0"), "cpu"))
    rng = np.random.default_rng(0)
    for i in range(10_000):
        c.add_example(("circle", "square")[i % 2], draw_shape(("circle", "square")[i % 2], rng))
        save_project({folder!r}, c)
        print("saved", len(c.examples), flush=True)
""")


@pytest.mark.slow
def test_sigkill_while_saving_leaves_a_project_that_loads(tmp_path, embedder):
    """Kill the saving process at several moments; every time the folder opens with a complete earlier save."""
    folder = tmp_path / "project"
    script = _SAVER.format(tests=str(REPO / "tests"), folder=str(folder))
    env = dict(os.environ, PYTHONPATH=str(REPO), PROTOLABEL_THREADS="1")
    for k, delay in enumerate((0.0, 0.013, 0.037, 0.071, 0.11)):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 3 + k and time.monotonic() < deadline:  # a few saves in, then kill at a varying moment
            line = proc.stdout.readline()
            if line.startswith("saved"):
                seen += 1
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert seen >= 3 + k, "the saving process did not get going"
        project = load_project(folder, embedder)
        n = len(project.classifier.examples)
        assert n >= 3 + k - 1 and all((folder / "support" / f"{i}.png").is_file() for i in project.classifier.examples)


def test_model_files_that_are_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelFileError, match="not a ProtoLabel model file"):
        load_model_file(evil)
    torch.save({"x": _Evil(marker)}, tmp_path / "model.pt")
    (tmp_path / "model.pt").rename(evil)
    with pytest.raises(ModelFileError):
        load_model_file(evil)
    assert not marker.exists()


def test_a_resume_file_that_carries_code_is_refused(tmp_path):
    """metatrain's --resume reads torch files with weights_only=True: a pickled command does not run."""
    marker = tmp_path / "pwned"
    path = tmp_path / "m.safetensors.resume.pt"
    torch.save({"format_version": 1, "meta": _Evil(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    assert not marker.exists()
    src = (REPO / "core" / "metatrain.py").read_text()
    assert "weights_only=True" in src and "torch.load(" in src and src.count("torch.load(") == src.count("weights_only=True")


@pytest.mark.parametrize("bad", ["../outside.png", "../../etc/passwd", "/etc/passwd", "a/../../x.png"])
def test_label_paths_cannot_leave_the_labeled_folder(tmp_path, embedder, bad):
    folder = tmp_path / "p"
    root = tmp_path / "photos"
    root.mkdir()
    save_project(folder, _classifier(embedder, 2), query_root=root)
    project = load_project(folder, embedder)
    with pytest.raises(ProjectError, match="outside"):
        project.resolve(bad)
    assert project.resolve("sub/ok.png") == (root / "sub" / "ok.png").resolve()
