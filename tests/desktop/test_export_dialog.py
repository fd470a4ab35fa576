"""Where projects and exports go (desktop.path_dialog) and what the export dialog asks (desktop.export_dialog):
a typed folder that doesn't exist yet is made, a non-empty one refused in the dialog, the export choices are
the command line's with its defaults, and no default lies inside the labeled image folder."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from PySide6.QtWidgets import QDialog, QDialogButtonBox

from core import LABEL_EXPORT_DEFAULTS, LABEL_FORMATS, label_export_settings, label_format_options
from synthetic import write_tree

from desktop.export_dialog import ExportDialog
from desktop.path_dialog import PathDialog, default_output, is_inside

OK = QDialogButtonBox.StandardButton.Ok


def press_ok(dialog) -> None:
    dialog.buttons.button(OK).click()


def answer(monkeypatch, cls, fill=None) -> list:
    """Replace cls.exec: fill(dialog) plays the person, then OK is pressed (no fill: Cancel). Returns the
    dialogs shown."""
    shown = []

    def exec_(self) -> int:
        shown.append(self)
        if fill is None:
            self.reject()
        else:
            fill(self)
            press_ok(self)
        return self.result()

    monkeypatch.setattr(cls, "exec", exec_)
    return shown


def cli_settings(monkeypatch, tmp_path, fmt: str, flags: list[str]) -> dict:
    """The settings `protolabel export labels --format fmt FLAGS` exports with (its select_labels call, read
    through core.label_export_settings), without reading or writing anything."""
    import core.export as export
    from core import cli

    seen: dict = {}

    def select(labels, fmt_, **given):
        seen.update(export.label_export_settings(fmt_, **given))
        raise export.ExportError("stop before writing")

    with monkeypatch.context() as m:
        m.setattr(export, "read_labels", lambda src: export.LabelSet([], []))
        m.setattr(export, "select_labels", select)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["export", "labels", str(tmp_path / "project"), "--format", fmt,
                             "--out", str(tmp_path / "out"), *flags])
    assert code == 2 and "stop before writing" in err.getvalue(), err.getvalue()
    return seen


@pytest.fixture
def documents(tmp_path, monkeypatch) -> Path:
    """The user's Documents/ProtoLabel, in the test's folder."""
    docs = tmp_path / "Documents" / "ProtoLabel"
    monkeypatch.setattr("desktop.path_dialog.documents_folder", lambda: docs)
    return docs


# ------------------------------------------------------------------------------------------------ the path dialog


def test_a_typed_folder_that_does_not_exist_is_made(qtbot, tmp_path):
    dialog = PathDialog("Save project as", "Into a new folder", tmp_path / "docs" / "proj")
    qtbot.addWidget(dialog)
    target = tmp_path / "not" / "there" / "yet"
    dialog.field.setText(str(target))
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.error_text() == ""
    assert dialog.chosen == str(target) and target.is_dir() and not any(target.iterdir())

    # A name alone: a project name, made beside the default.
    dialog = PathDialog("Save project as", "Into a new folder", tmp_path / "docs" / "proj")
    qtbot.addWidget(dialog)
    dialog.field.setText("  Birds 2024 ")
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.chosen == str(tmp_path / "docs" / "Birds 2024") and (tmp_path / "docs" / "Birds 2024").is_dir()


def test_a_folder_that_is_not_empty_is_refused_in_the_dialog(qtbot, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    dialog = PathDialog("Save project as", "Into a new folder", tmp_path / "proj")
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.field.setText(str(full))
    press_ok(dialog)
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted and dialog.chosen == ""
    assert "already exists" in dialog.error_text() and "not empty" in dialog.error_text()
    assert dialog.error.isVisible()  # the person sees why, in the dialog
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    dialog.field.setText(str(full / "new"))  # a new name inside it is fine
    assert dialog.error_text() == ""
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted and (full / "new").is_dir()


def test_a_file_gets_its_suffix_and_replaces_only_after_a_second_press(qtbot, tmp_path):
    dialog = PathDialog("Export", "CSV", tmp_path / "labels.csv", mode="file", suffix=".csv", ok_text="Export")
    qtbot.addWidget(dialog)
    dialog.field.setText(str(tmp_path / "deep" / "mine"))
    press_ok(dialog)
    assert dialog.chosen == str(tmp_path / "deep" / "mine.csv") and (tmp_path / "deep").is_dir()
    (tmp_path / "old.csv").write_text("x")
    dialog = PathDialog("Export", "CSV", tmp_path / "labels.csv", mode="file", suffix=".csv", ok_text="Export")
    qtbot.addWidget(dialog)
    dialog.field.setText(str(tmp_path / "old.csv"))
    press_ok(dialog)
    assert dialog.result() != QDialog.DialogCode.Accepted and "Press Export again" in dialog.error_text()
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.chosen == str(tmp_path / "old.csv")


def test_browse_keeps_the_typed_name_inside_a_picked_folder(qtbot, tmp_path, monkeypatch):
    picked = tmp_path / "picked"
    picked.mkdir()
    (picked / "other").write_text("x")
    monkeypatch.setattr("desktop.path_dialog.QFileDialog.getExistingDirectory", lambda *a, **k: str(picked))
    dialog = PathDialog("Save project as", "Into a new folder", tmp_path / "docs" / "Birds")
    qtbot.addWidget(dialog)
    dialog.field.browse_button.click()
    assert dialog.field.text() == str(picked / "Birds")


# ------------------------------------------------------------------------------------------------ defaults


def test_the_default_is_never_inside_the_labeled_folder(tmp_path):
    labeled = tmp_path / "home"  # someone labels their whole home folder, Documents included
    docs = labeled / "Documents" / "ProtoLabel"
    avoid = [(labeled, "the labeled image folder")]
    for parents in ([docs], [labeled / "exports"], [None, docs, labeled]):
        path = default_output("Birds", parents, avoid)
        assert not is_inside(path, labeled) and path.name == "Birds", path
    # Outside it, the first parent is used, and the name made new.
    (tmp_path / "docs" / "Birds").mkdir(parents=True)
    (tmp_path / "docs" / "Birds" / "x").write_text("x")
    assert default_output("Birds", [labeled / "a", tmp_path / "docs"], avoid) == tmp_path / "docs" / "Birds-2"
    assert default_output("Birds", [tmp_path / "docs"], avoid, folder=False, suffix=".csv") == \
        tmp_path / "docs" / "Birds.csv"


# ------------------------------------------------------------------------------------------------ the export dialog


def test_export_options_are_the_registrys():
    for fmt in LABEL_FORMATS:
        settings = label_export_settings(fmt)
        assert list(settings) == [*("only_confirmed", "min_confidence", "include_unknown", "overwrite"),
                                  *label_format_options(fmt)]
    assert label_format_options("yolo-cls") == ("link", "val_split", "seed")


@pytest.mark.parametrize("fmt", LABEL_FORMATS)
def test_the_dialogs_defaults_are_the_command_lines(qtbot, tmp_path, monkeypatch, settings, fmt):
    dialog = ExportDialog(fmt, tmp_path / "out", settings=settings)
    qtbot.addWidget(dialog)
    assert set(dialog.options) == set(label_format_options(fmt))  # each option of the format is asked for
    ours = dialog.export_settings()
    assert ours == cli_settings(monkeypatch, tmp_path, fmt, [])
    assert ours == {k: v for k, v in LABEL_EXPORT_DEFAULTS.items() if k in ours}
    if fmt == "yolo-cls":
        assert (ours["val_split"], ours["seed"], ours["link"]) == (0.2, 0, "copy")


def _pick(dialog, **choices) -> None:
    """Set the dialog's widgets as a person would."""
    if choices.get("only_confirmed"):
        dialog.only_confirmed.setChecked(True)
    if "min_confidence" in choices:
        dialog.min_confidence_on.setChecked(True)
        dialog.min_confidence.setValue(choices["min_confidence"])
    if choices.get("include_unknown"):
        dialog.include_unknown.setChecked(True)
    if choices.get("overwrite"):
        dialog.overwrite.setChecked(True)
    if "link" in choices:
        combo = dialog.options["link"].widget
        combo.setCurrentIndex(combo.findData(choices["link"]))
    if "val_split" in choices:
        dialog.options["val_split"].widget.setValue(choices["val_split"])
    if "seed" in choices:
        dialog.options["seed"].widget.setValue(choices["seed"])
    if "document_root" in choices:
        dialog.options["document_root"].widget.setText(choices["document_root"])


CHOICES = [
    ("yolo-cls", {"only_confirmed": True, "val_split": 0.3, "seed": 7, "link": "hardlink", "overwrite": True},
     ["--only-confirmed", "--val-split", "0.3", "--seed", "7", "--link", "hardlink", "--overwrite"]),
    ("imagefolder", {"min_confidence": 0.75, "include_unknown": True, "link": "symlink"},
     ["--min-confidence", "0.75", "--include-unknown", "--link", "symlink"]),
    ("labelstudio", {"min_confidence": 0.4, "document_root": "{tmp}/images"},
     ["--min-confidence", "0.4", "--document-root", "{tmp}/images"]),
    ("json", {"include_unknown": True, "overwrite": True}, ["--include-unknown", "--overwrite"]),
    ("csv", {"only_confirmed": True}, ["--only-confirmed"]),
]


@pytest.mark.parametrize("fmt, choices, flags", CHOICES, ids=[c[0] for c in CHOICES])
def test_the_dialogs_choices_are_the_command_lines_flags(qtbot, tmp_path, monkeypatch, settings, fmt, choices,
                                                         flags):
    choices = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in choices.items()}
    flags = [f.format(tmp=tmp_path) for f in flags]
    dialog = ExportDialog(fmt, tmp_path / "exports" / f"p-{fmt}", settings=settings)
    qtbot.addWidget(dialog)
    _pick(dialog, **choices)
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted, dialog.error_text()
    assert dialog.settings == cli_settings(monkeypatch, tmp_path, fmt, flags)

    # Remembered for the format (but never "replace"): the next dialog starts from them.
    again = ExportDialog(fmt, tmp_path / "exports" / f"p-{fmt}-2", settings=settings)
    qtbot.addWidget(again)
    assert again.export_settings() == {**dialog.settings, "overwrite": False}
    other = next(f for f in LABEL_FORMATS if f != fmt)
    fresh = ExportDialog(other, tmp_path / "o", settings=settings)
    qtbot.addWidget(fresh)
    assert fresh.export_settings() == label_export_settings(other)


def test_an_export_folder_that_is_not_empty_needs_replace(qtbot, tmp_path, settings):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "classes.json").write_text("{}")
    dialog = ExportDialog("imagefolder", out, settings=settings)
    qtbot.addWidget(dialog)
    press_ok(dialog)
    assert dialog.result() != QDialog.DialogCode.Accepted
    assert "not empty" in dialog.error_text() and "Replace an earlier export" in dialog.error_text()
    dialog.overwrite.setChecked(True)
    press_ok(dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.settings["overwrite"] is True


def test_a_folder_export_inside_the_labeled_folder_is_refused(qtbot, tmp_path, settings):
    labeled = tmp_path / "photos"
    labeled.mkdir()
    dialog = ExportDialog("yolo-cls", tmp_path / "out", settings=settings, avoid=[(labeled, "the labeled image folder")])
    qtbot.addWidget(dialog)
    dialog.path_field.setText(str(labeled / "export"))
    press_ok(dialog)
    assert dialog.result() != QDialog.DialogCode.Accepted and "inside the labeled image folder" in dialog.error_text()
    assert not (labeled / "export").exists()


# ------------------------------------------------------------------------------------------------ the window


def test_the_window_saves_and_exports_where_the_person_types(qtbot, make_window, tmp_path, monkeypatch, documents):
    support, query = tmp_path / "support", tmp_path / "photos"
    write_tree(support, per_class=2, classes=("circle", "square"), seed=1)
    write_tree(query, per_class=3, classes=("circle", "square"), seed=2)
    window = make_window()
    qtbot.waitUntil(lambda: window.model_ready, timeout=30_000)
    window.import_tree(str(support))
    qtbot.waitUntil(lambda: sum(c.count for c in window.snapshot.classes) == 4, timeout=60_000)
    window.open_folder(str(query))  # also the last folder the open dialogs used
    qtbot.waitUntil(lambda: len(window.folder_view.items()) == 6 and all(i.label for i in window.folder_view.items()),
                    timeout=60_000)

    # Save as: the default is in Documents/ProtoLabel, named after the labeled folder; a typed new path is made.
    target = tmp_path / "projects" / "new" / "birds"
    dialogs = answer(monkeypatch, PathDialog, lambda d: d.field.setText(str(target)))
    window.save_project_as()
    assert dialogs[0].field.path() == target and dialogs[0].windowTitle() == "Save project as"
    qtbot.waitUntil(lambda: window.project_folder == str(target) and not window.project_unsaved, timeout=30_000)
    assert (target / "project.json").is_file()

    # An export: the default is never in the labeled folder, not even when the last export went there or the
    # Documents folder is inside it; the engine gets the dialog's settings, the command line's for the flags.
    defaults = []
    window.settings.setValue("output_dir/export", str(query / "sub"))
    for docs in (documents, query / "Documents" / "ProtoLabel"):
        monkeypatch.setattr("desktop.path_dialog.documents_folder", lambda d=docs: d)
        shown = answer(monkeypatch, ExportDialog)
        window.export_labels("yolo-cls")  # cancelled: nothing is exported
        defaults.append(shown[0].path_field.path())
    assert not documents.exists()
    assert all(not is_inside(p, query) and not is_inside(p, target) for p in defaults), defaults
    assert defaults[0] == documents / "exports" / "birds-yolo-cls"

    out = tmp_path / "exports" / "birds-yolo"
    answer(monkeypatch, ExportDialog, lambda d: (d.path_field.setText(str(out)), _pick(d, val_split=0.5, seed=3)))
    sent = []
    real = window.engine.export_labels
    monkeypatch.setattr(window.engine, "export_labels", lambda *a, **k: (sent.append((a, k)), real(*a, **k)))
    with qtbot.waitSignal(window.engine.jobFinished, timeout=60_000, check_params_cb=lambda job, _t: job == "export"):
        window.export_labels("yolo-cls")
    (fmt, path), settings = sent[0]
    assert (fmt, path) == ("yolo-cls", str(out))
    assert settings == cli_settings(monkeypatch, tmp_path, "yolo-cls", ["--val-split", "0.5", "--seed", "3"])
    assert (out / "classes.json").is_file(), window.messages
    manifest = json.loads((out / "classes.json").read_text())
    assert (manifest.get("val_split"), manifest.get("seed")) == (0.5, 3), manifest
    assert sum(1 for _ in out.rglob("*.png")) == 6 + 4  # the folder's six labels and the four examples

    # Label Studio with the dialog's defaults: the tasks go beside the labeled folder, so the images and the
    # tasks file share one storage folder and the export needs nothing more (core.export decides the rest).
    monkeypatch.setattr(window.engine, "export_labels", real)
    chosen: list[Path] = []
    answer(monkeypatch, ExportDialog, lambda d: chosen.append(d.path_field.path()))  # OK with the defaults
    with qtbot.waitSignal(window.engine.jobFinished, timeout=60_000, check_params_cb=lambda job, _t: job == "export"):
        window.export_labels("labelstudio")
    tasks = chosen[0]
    assert tasks.parent == query.parent and tasks.suffix == ".json", tasks
    assert tasks.is_file() and tasks.with_name(tasks.stem + ".local_storage.json").is_file(), window.messages
    setup = json.loads(tasks.with_name(tasks.stem + ".local_storage.json").read_text())
    assert setup["local_storage"]["path"] == str(query.parent.resolve())
    assert not any(level == "error" for level, _ in window.messages), window.messages


def test_the_defaults_are_what_the_writers_did_without_the_flags():
    """Before the shared defaults, the command line passed None and each writer's own default applied."""
    import inspect

    from core.export import _FORMATS

    for fmt in LABEL_FORMATS:
        params = inspect.signature(_FORMATS[fmt].write).parameters
        for option in label_format_options(fmt):
            assert label_export_settings(fmt)[option] == params[option].default, (fmt, option)
