"""Where a project or an export goes: a path the person types (a folder that doesn't exist yet is made, parents
too; a name alone goes into the default's folder) or picks with Browse….

Qt's folder picker can't take the name of a folder that doesn't exist yet (on some platforms it answers
"Directory not found"), so the path is a line edit and the system picker is only a helper behind Browse….
Defaults lie in the user's Documents folder, never inside the labeled image folder: an export or a project
there would be labeled as new images the next time the folder is labeled.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

APP_FOLDER = "ProtoLabel"  # under Documents: projects, and exports/ for exports
ERROR_STYLE = "color: #c62828;"


class InlineError(QLabel):
    """A dialog's red line saying why OK did nothing; hidden until there is something to say."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, wordWrap=True)
        self.setStyleSheet(ERROR_STYLE)
        self.hide()

    def say(self, text: str) -> None:
        self.setText(text)
        self.show()
        self.window().adjustSize()  # room for the message's lines

    def said(self) -> str:
        return self.text() if not self.isHidden() else ""


# (folder, what the person calls it) that outputs must stay out of, e.g. (labeled, "the labeled image folder")
Avoid = Sequence[tuple[Path, str]]


def documents_folder() -> Path:
    """Documents/ProtoLabel (the home folder's ProtoLabel where a platform has no Documents folder)."""
    docs = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(docs or Path.home()) / APP_FOLDER


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path))).resolve()


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """path is folder or lies under it (symlinks resolved; neither needs to exist)."""
    return _real(path).is_relative_to(_real(folder))


def file_name(text: str) -> str:
    """text usable as one file or folder name (a project name may hold slashes or colons)."""
    name = "".join("-" if c in '<>:"/\\|?*' or ord(c) < 32 else c for c in text).strip(" .")
    return name or "untitled"


def _is_new(path: Path, folder: bool) -> bool:
    if folder:
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    return not path.exists()


def default_output(name: str, parents: Sequence[str | os.PathLike | None], avoid: Avoid = (), *,
                   folder: bool = True, suffix: str = "") -> Path:
    """parent/name+suffix for the first parent outside every avoided folder, made new with -2, -3, … (a folder:
    new or empty). When every parent is inside one, beside the avoided folder instead."""
    name = file_name(name) + suffix
    candidates = [Path(p) for p in parents if p] + [Path(f).parent for f, _ in avoid]
    parent = next((p for p in candidates if not any(is_inside(p, f) for f, _ in avoid)), candidates[0]
                  if candidates else documents_folder())
    path, n = parent / name, 2
    while not _is_new(path, folder):
        path = parent / f"{file_name(Path(name).stem if suffix else name)}-{n}{suffix}"
        n += 1
    return path


def typed_path(text: str, base: str | os.PathLike, suffix: str = "") -> Path | None:
    """The path a person typed: ~ expanded, a relative one (a name alone) under base, suffix added when missing."""
    text = text.strip()
    if not text:
        return None
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base) / path
    if suffix and path.suffix.lower() != suffix.lower():
        path = path.with_name(path.name + suffix)
    return Path(os.path.abspath(path))


def check_output(path: Path, *, folder: bool, avoid: Avoid = (), replace: bool = False) -> str:
    """Why `path` can't take a new project or export ("" when it can). A folder must be new or empty (replace:
    or hold an earlier export), a file new (replace: or any file), neither inside an avoided folder."""
    for avoided, what in avoid:
        if is_inside(path, avoided):
            return f"'{path}' is inside {what} '{avoided}'. Choose a place outside it."
    if folder:
        if path.exists() and not path.is_dir():
            return f"'{path}' is a file. Type the name of a new folder."
        if not replace and not _is_new(path, True):
            return (f"'{path.name}' already exists in '{path.parent}' and is not empty. Type a new name (the folder "
                    f"is made for you) or choose an empty folder.")
    else:
        if path.is_dir():
            return f"'{path}' is a folder. Type a file name."
        if not replace and path.exists():
            return f"'{path.name}' already exists in '{path.parent}'."
    return ""


def make_output(path: Path, *, folder: bool) -> str:
    """Make the folder (or a file's folder), parents too -> "" or why it can't be made."""
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"Can't make the folder '{target}': {exc.strerror or exc}."
    return ""


def common_folder(paths: Sequence[str]) -> Path | None:
    """The deepest folder that holds every one of these files (None: none given, or on different drives)."""
    folders = {os.path.dirname(p) for p in paths}
    if not folders:
        return None
    try:
        return Path(os.path.commonpath(list(folders)))
    except ValueError:
        return None


class PathField(QWidget):
    """A path to type, with Browse… for the system's picker. mode: "folder" or "file" (suffix added when
    missing). new: the path is an output: browsing to a folder that isn't empty keeps the typed name inside it."""

    textChanged = Signal(str)

    def __init__(self, mode: str = "folder", text: str = "", *, base: str | os.PathLike | None = None,
                 suffix: str = "", name_filter: str = "", title: str = "", new: bool = True,
                 placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode, self.suffix, self.name_filter, self.title, self.new = mode, suffix, name_filter, title, new
        self.base = Path(base) if base is not None else (Path(text).parent if text else documents_folder())
        self.browsed: Path | None = None  # a file the system's save dialog already asked to replace
        self.edit = QLineEdit(text, placeholderText=placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.setMinimumWidth(420)
        self.edit.textChanged.connect(self.textChanged)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._on_browse_button_clicked)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.browse_button)

    def text(self) -> str:
        return self.edit.text()

    def setText(self, text: str) -> None:
        self.edit.setText(text)

    def path(self) -> Path | None:
        return typed_path(self.edit.text(), self.base, self.suffix if self.mode == "file" else "")

    def _start(self) -> Path:
        """The nearest folder that exists on the way to the typed path."""
        p = self.path() or self.base
        while not p.is_dir() and p.parent != p:
            p = p.parent
        return p

    def _on_browse_button_clicked(self) -> None:
        current = self.path()
        if self.mode == "file":
            start = str(current) if current is not None else str(self._start())
            chosen, _ = QFileDialog.getSaveFileName(self, self.title, start, self.name_filter)
            if not chosen:
                return
            path = typed_path(chosen, self.base, self.suffix)
            self.browsed = path
        else:
            start = self._start()
            if current is not None and start == current and self.new:
                start = current.parent  # show the output folder among its neighbours
            chosen = QFileDialog.getExistingDirectory(self, self.title, str(start))
            if not chosen:
                return
            path = Path(chosen)
            if self.new and current is not None and path != current and not _is_new(path, True):
                path = path / current.name  # picked where it goes: keep the name
        self.edit.setText(str(path))


class PathDialog(QDialog):
    """Ask where a new project or an output file goes; see the module docstring. After exec(): `chosen`.

    Folder mode: the folder must be new or empty and is made (parents too) when the person accepts; one that
    exists and isn't empty is refused with a message in the dialog, which stays open. File mode: the file's
    folder is made; an existing file is replaced only after a second press (or the system picker's question)."""

    def __init__(self, title: str, text: str, default: Path, *, mode: str = "folder", suffix: str = "",
                 name_filter: str = "", avoid: Avoid = (), ok_text: str = "Save",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(560)
        self.mode, self.avoid, self.ok_text = mode, list(avoid), ok_text
        self.chosen = ""
        self._confirmed: Path | None = None
        self.field = PathField(mode, str(default), base=default.parent, suffix=suffix, name_filter=name_filter,
                               title=title)
        self.field.textChanged.connect(self._on_field_text_changed)
        intro = QLabel(text, wordWrap=True)
        where = "A folder that doesn't exist yet is made for you" if mode == "folder" else "Missing folders are made"
        self.hint = QLabel(f"{where}; a name alone goes in {default.parent}.", wordWrap=True)
        self.hint.setEnabled(False)
        self.error = InlineError()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        for w in (intro, self.field, self.hint, self.error):
            lay.addWidget(w)
        lay.addStretch(1)
        lay.addWidget(self.buttons)
        self.field.edit.selectAll()
        self.field.edit.setFocus()

    def error_text(self) -> str:
        return self.error.said()

    def _refuse(self, text: str) -> None:
        self.error.say(text)
        self.field.edit.setFocus()

    def _on_field_text_changed(self, _text: str) -> None:
        self.error.hide()

    def accept(self) -> None:
        folder = self.mode == "folder"
        path = self.field.path()
        if path is None:
            self._refuse("Type a folder name or path." if folder else "Type a file name or path.")
            return
        replace = not folder and path.exists() and path in (self._confirmed, self.field.browsed)
        problem = check_output(path, folder=folder, avoid=self.avoid, replace=replace)
        if problem and not folder and path.is_file() and not any(is_inside(path, f) for f, _ in self.avoid):
            self._confirmed = path
            problem += f" Press {self.ok_text} again to replace it."
        problem = problem or make_output(path, folder=folder)
        if problem:
            self._refuse(problem)
            return
        self.chosen = str(path)
        super().accept()

