"""One dialog per label format: where the export goes, which labels (the filters), the format's own options.

It offers what `protolabel export labels` offers, with the same defaults: the filters and overwrite for every
format, and the options core.export registers for the format (`label_format_options`: link, val_split, seed,
document_root, …). `export_settings()` is core.label_export_settings of the choices: the dict the engine passes
to core.select_labels, as the command line does. The last choices per format are kept in QSettings.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core import LINK_MODES, ExportError, label_export_settings, label_format_layout, label_format_options

from .path_dialog import Avoid, InlineError, PathField, check_output, make_output

FORMAT_NAMES = {"csv": "CSV", "json": "JSON", "imagefolder": "image folders (one per class)",
                "yolo-cls": "YOLO classification (train/val)", "labelstudio": "Label Studio tasks"}
FILE_SUFFIXES = {"csv": ".csv", "json": ".json", "labelstudio": ".json"}
LINK_TEXT = {"copy": "Copy the images", "hardlink": "Hard-link them (no extra space; same drive only)",
             "symlink": "Symbolic links to the originals"}
MIN_CONFIDENCE_START = 0.5  # what the spin box shows while "leave out predictions below" is off
SETTINGS_KEY = "export/{fmt}"  # QSettings: the last choices for the format, JSON (overwrite is never kept)


class OptionRow(NamedTuple):
    """A format option in the dialog: its label, its widget, how to read and set its value (None: unset)."""

    label: str
    widget: QWidget
    get: Callable[[], object]
    set: Callable[[object], None]


def _link_row() -> OptionRow:
    combo = QComboBox()
    for mode in LINK_MODES:
        combo.addItem(LINK_TEXT.get(mode, mode), mode)
    combo.setToolTip("Links save space and time; copies stay when the originals move")
    return OptionRow("Images", combo, combo.currentData, lambda v: combo.setCurrentIndex(max(0, combo.findData(v))))


def _val_split_row() -> OptionRow:
    spin = QDoubleSpinBox(decimals=2, minimum=0.01, maximum=0.99, singleStep=0.05)
    spin.setToolTip("The share of each class's images that goes to val/ (one at least when a class has two)")
    return OptionRow("Validation share", spin, spin.value, lambda v: spin.setValue(float(v)))


def _seed_row() -> OptionRow:
    spin = QSpinBox(minimum=0, maximum=2**31 - 1)
    spin.setToolTip("The same seed gives the same train/val split")
    return OptionRow("Split seed", spin, spin.value, lambda v: spin.setValue(int(v)))


def _document_root_row() -> OptionRow:
    field = PathField("folder", new=False, title="Label Studio's document root",
                      placeholder="automatic: the folder above the images and the tasks file")
    field.setToolTip("Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: image URLs become local-files "
                     "URLs relative to it (every image must be under it)")

    def get() -> str | None:
        path = field.path()
        return str(path) if path is not None else None

    return OptionRow("Document root", field, get, lambda v: field.setText(str(v) if v else ""))


def _text_row(name: str) -> OptionRow:
    """An option this dialog has no special widget for (a format registered later)."""
    edit = QLineEdit(placeholderText="default")
    return OptionRow(name.replace("_", " ").capitalize(), edit, lambda: edit.text() or None,
                     lambda v: edit.setText("" if v is None else str(v)))


OPTION_ROWS: dict[str, Callable[[], OptionRow]] = {
    "link": _link_row, "val_split": _val_split_row, "seed": _seed_row, "document_root": _document_root_row}


class ExportDialog(QDialog):
    """Export labels as `fmt`; see the module docstring. After exec(): `chosen` (the path) and `settings`
    (core.label_export_settings of the choices). A path that can't take the export is refused inside the
    dialog (it stays open): a folder must be new or empty unless "replace" is ticked, a file new unless it is."""

    def __init__(self, fmt: str, default: Path, *, settings: QSettings | None = None, avoid: Avoid = (),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fmt = fmt
        self.folder = label_format_layout(fmt) == "folder"
        self.store = settings
        self.avoid = list(avoid) if self.folder else []  # a file export doesn't get labeled with the folder
        self.chosen = ""
        self.settings: dict = {}
        name = FORMAT_NAMES.get(fmt, fmt)
        self.setWindowTitle(f"Export labels as {name}")

        suffix = "" if self.folder else FILE_SUFFIXES.get(fmt, "")
        self.path_field = PathField("folder" if self.folder else "file", str(default), base=default.parent,
                                    suffix=suffix, name_filter=f"{name} (*{suffix})" if suffix else "",
                                    title=f"Export labels as {name}")
        self.path_field.textChanged.connect(self._on_path_field_text_changed)
        what = "A new or empty folder" if self.folder else "A file"
        hint = QLabel(f"{what}; missing folders are made for you. A name alone goes in {default.parent}.",
                      wordWrap=True)
        hint.setEnabled(False)

        self.only_confirmed = QCheckBox("Only labels a person gave (confirmed, and the examples)")
        self.min_confidence_on = QCheckBox("Leave out predictions below")
        self.min_confidence = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=1.0, singleStep=0.05)
        self.min_confidence.setValue(MIN_CONFIDENCE_START)
        self.min_confidence.setToolTip("A probability; a person's labels always pass")
        self.include_unknown = QCheckBox("Also images labeled unknown (none of these classes)")
        self.only_confirmed.toggled.connect(self._update_enabled)
        self.min_confidence_on.toggled.connect(self._update_enabled)
        low = QHBoxLayout()
        low.addWidget(self.min_confidence_on)
        low.addWidget(self.min_confidence)
        low.addStretch(1)
        labels = QGroupBox("Labels")
        box = QVBoxLayout(labels)
        box.addWidget(self.only_confirmed)
        box.addLayout(low)
        box.addWidget(self.include_unknown)

        self.options: dict[str, OptionRow] = {}
        options_box = None
        names = label_format_options(fmt)
        if names:
            options_box = QGroupBox("Options")
            form = QFormLayout(options_box)
            for option in names:
                row = OPTION_ROWS.get(option, lambda o=option: _text_row(o))()
                self.options[option] = row
                form.addRow(row.label, row.widget)

        self.overwrite = QCheckBox("Replace an earlier export there (other files in the folder are kept)"
                                   if self.folder else "Replace the file if it exists")
        self.overwrite.toggled.connect(self._on_path_field_text_changed)
        self.error = InlineError()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Save to"))
        lay.addWidget(self.path_field)
        lay.addWidget(hint)
        lay.addWidget(labels)
        if options_box is not None:
            lay.addWidget(options_box)
        lay.addWidget(self.overwrite)
        lay.addWidget(self.error)
        lay.addStretch(1)
        lay.addWidget(self.buttons)

        self.set_settings(label_export_settings(fmt))
        self.set_settings(self._remembered())
        self.path_field.edit.setFocus()

    # ------------------------------------------------------------------ values
    def values(self) -> dict:
        """The choices, under the command line's names (its flags without dashes)."""
        values = {"only_confirmed": self.only_confirmed.isChecked(),
                  "min_confidence": self.min_confidence.value() if self.min_confidence_on.isChecked() else None,
                  "include_unknown": self.include_unknown.isChecked(), "overwrite": self.overwrite.isChecked()}
        values.update({name: row.get() for name, row in self.options.items()})
        return values

    def export_settings(self) -> dict:
        """core.label_export_settings of the choices (ExportError when one is out of range)."""
        return label_export_settings(self.fmt, **self.values())

    def set_settings(self, settings: dict) -> None:
        """Show these choices (names as in values(); missing ones stay as they are)."""
        if "only_confirmed" in settings:
            self.only_confirmed.setChecked(bool(settings["only_confirmed"]))
        if "min_confidence" in settings:
            low = settings["min_confidence"]
            self.min_confidence_on.setChecked(low is not None)
            if low is not None:
                self.min_confidence.setValue(float(low))
        if "include_unknown" in settings:
            self.include_unknown.setChecked(bool(settings["include_unknown"]))
        if "overwrite" in settings:
            self.overwrite.setChecked(bool(settings["overwrite"]))
        for name, row in self.options.items():
            if name in settings:
                row.set(settings[name])
        self._update_enabled()

    def _remembered(self) -> dict:
        if self.store is None:
            return {}
        try:
            kept = json.loads(self.store.value(SETTINGS_KEY.format(fmt=self.fmt), "{}", str))
        except ValueError:
            return {}
        if not isinstance(kept, dict):
            return {}
        kept.pop("overwrite", None)
        try:
            label_export_settings(self.fmt, **kept)  # from an older version, or edited by hand: start over
        except (ExportError, TypeError, ValueError):
            return {}
        return kept

    def _remember(self, settings: dict) -> None:
        if self.store is not None:
            kept = {k: v for k, v in settings.items() if k != "overwrite"}
            self.store.setValue(SETTINGS_KEY.format(fmt=self.fmt), json.dumps(kept))

    # ------------------------------------------------------------------ events
    def _update_enabled(self) -> None:
        # Only a person's labels: no prediction is left to drop by its confidence.
        self.min_confidence_on.setEnabled(not self.only_confirmed.isChecked())
        self.min_confidence.setEnabled(self.min_confidence_on.isChecked() and not self.only_confirmed.isChecked())

    def _on_path_field_text_changed(self, *_args: object) -> None:
        self.error.hide()

    def error_text(self) -> str:
        return self.error.said()

    def _refuse(self, text: str) -> None:
        self.error.say(text)

    def accept(self) -> None:
        path = self.path_field.path()
        if path is None:
            self._refuse("Type a folder name or path." if self.folder else "Type a file name or path.")
            return
        problem = check_output(path, folder=self.folder, avoid=self.avoid, replace=self.overwrite.isChecked())
        if problem and not check_output(path, folder=self.folder, avoid=self.avoid, replace=True):
            problem += f" Or tick “{self.overwrite.text()}”."
        if not problem:
            try:
                settings = self.export_settings()
            except (ExportError, TypeError) as exc:
                problem = str(exc)
        problem = problem or make_output(path, folder=self.folder)
        if problem:
            self._refuse(problem)
            return
        self._remember(settings)
        self.chosen, self.settings = str(path), settings
        super().accept()
