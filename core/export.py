"""Label export: a project's (or a labels CSV's) labels, written in the formats other tools read.

Reading needs no model: project.json, labels.sqlite and the classifier file's JSON metadata only.
Formats are writers in a small registry (`register_label_format`), dispatched by `iter_export` /
`export_labels`:

  csv          the labels CSV of core/labels_csv.py (one file, written atomically)
  json         {"format": "protolabel-labels", "version": 1, "project", "classes", "labels"} (one file)
  labelstudio  Label Studio tasks (<stem>.json), the matching labeling config (<stem>.label_config.xml), the
               local files storage settings (<stem>.local_storage.json) and, where needed, copies of the
               files Label Studio could not serve otherwise (<stem>-files/): see `_write_labelstudio`
  imagefolder  out/<class>/<file>                              (torchvision ImageFolder, Keras, fastai)
  yolo-cls     out/train/<class>/<file>, out/val/<class>/<file> (Ultralytics classification)

Folder layouts never write outside `out`: class and file names are made safe for every common file
system (`safe_name`), made unique (case-insensitively, after Unicode NFC), and mapped back to the exact
class names by the manifest `out/classes.json`, which also lists every file the export wrote, so a later
export with `overwrite=True` removes exactly those and keeps anything else in the folder.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import random
import shutil
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Generator, Iterator, NamedTuple
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from . import labels_csv
from .classifier import UNKNOWN_LABEL
from .embedding import Skipped
from .labeling import Progress
from .project import (
    CLASSIFIER_FILE,
    LABELS_FILE,
    SUPPORT_DIR,
    LabelStore,
    ProjectError,
    _inside,
    atomic_write_text,
    read_project_meta,
)

__all__ = [
    "LABEL_EXPORT_DEFAULTS",
    "LABEL_FILTER_DEFAULTS",
    "LABEL_FORMATS",
    "LABEL_OPTION_DEFAULTS",
    "LINK_MODES",
    "MANIFEST_FILE",
    "ExportError",
    "ExportReport",
    "LabelEntry",
    "LabelSet",
    "export_labels",
    "iter_export",
    "label_export_settings",
    "label_format_layout",
    "label_format_options",
    "read_labels",
    "register_label_format",
    "safe_name",
    "select_labels",
]

MANIFEST_FILE = "classes.json"
MANIFEST_FORMAT = "protolabel-export"
LINK_MODES = ("copy", "hardlink", "symlink")
HUMAN_SOURCES = ("confirmed", "support")  # labels a person gave; they pass --min-confidence
# Names Windows reserves for devices, with or without an extension ("nul.txt" too).
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789¹²³"
}
_FORBIDDEN_CHARS = set('<>:"/\\|?*')
FOLDER_NAME_BYTES = 100  # well under every file system's 255, leaving room for a suffix and deep output paths
FILE_NAME_BYTES = 150
_PROGRESS_EVERY = 25  # files between progress items


class ExportError(ValueError):
    """An export that can't be done as asked (output exists, bad option); the message says why."""


class LabelEntry(NamedTuple):
    path: Path  # absolute
    label: str  # a class name, or UNKNOWN_LABEL
    confidence: float | None
    source: str  # predicted | confirmed | support
    similarity: float | None = None  # cosine to the closest class, where known
    topk: tuple[tuple[str, float], ...] = ()  # the alternatives with their probabilities, where known


@dataclass
class LabelSet:
    classes: list[str]  # in project order (a CSV: order of first appearance)
    records: list[LabelEntry]
    metadata: dict = field(default_factory=dict)  # project name, backbone, query root, source, filters
    rejected: list[Skipped] = field(default_factory=list)  # rows that can't be used (path outside the folder)

    def filtered(self, only_confirmed: bool = False, min_confidence: float | None = None,
                 include_unknown: bool = False) -> "LabelSet":
        """The records that pass: "unknown" only with include_unknown; only_confirmed keeps the labels a
        person gave (confirmed and support examples); min_confidence drops predictions below it (a person's
        labels always pass)."""
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ExportError(f"--min-confidence must be between 0 and 1, got {min_confidence}")
        keep = []
        for r in self.records:
            if r.label == UNKNOWN_LABEL and not include_unknown:
                continue
            human = r.source in HUMAN_SOURCES
            if only_confirmed and not human:
                continue
            if min_confidence is not None and not human and (r.confidence is None or r.confidence < min_confidence):
                continue
            keep.append(r)
        filters = {"only_confirmed": only_confirmed, "min_confidence": min_confidence, "include_unknown": include_unknown}
        return replace(self, records=keep, metadata={**self.metadata, "filters": filters})

    def label_names(self) -> list[str]:
        """The project's classes, then any other label the records carry (e.g. "unknown"), in order."""
        names = list(self.classes)
        seen = set(names)
        for r in self.records:
            if r.label not in seen:
                seen.add(r.label)
                names.append(r.label)
        return names


@dataclass
class ExportReport:
    format: str
    out: Path
    written: int = 0  # labels (files or rows) written
    skipped: list[Skipped] = field(default_factory=list)  # files missing on disk or unreadable at export time
    outputs: list[Path] = field(default_factory=list)  # files written (a folder layout: the folder, then its manifest)
    counts: dict[str, int] = field(default_factory=dict)  # written per label (original class names)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # yolo-cls: {"train"|"val": {class: n}}
    copied_instead: int = 0  # hard links that were impossible (another file system): copied instead
    cancelled: bool = False
    # labelstudio: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT and the path of the one local files
    # storage to add; notes: what to do with the export, in words (the CLI prints them, the window shows them)
    document_root: Path | None = None
    storage_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": self.format, "out": str(self.out), "written": self.written,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "outputs": [str(p) for p in self.outputs], "counts": self.counts, "splits": self.splits,
                "copied_instead": self.copied_instead, "cancelled": self.cancelled,
                "document_root": None if self.document_root is None else str(self.document_root),
                "storage_path": None if self.storage_path is None else str(self.storage_path), "notes": self.notes}


# ------------------------------------------------------------------------------------------------ reading


def read_labels(src: str | os.PathLike) -> LabelSet:
    """A project folder or a labels CSV (`protolabel label`, the window's export, `export --format csv`)
    -> every label in it, unfiltered. No model is loaded."""
    src = Path(src)
    if src.is_dir():
        return _read_project(src)
    if src.is_file():
        return _read_csv(src)
    raise FileNotFoundError(f"'{src}' is neither a project folder nor a labels CSV file")


def _support_examples(folder: Path) -> list[dict]:
    """The classifier file's example list [{"id", "class", "source"}], from its JSON metadata only."""
    path = folder / CLASSIFIER_FILE
    if not path.is_file():
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("protolabel")
        examples = json.loads(text)["examples"] if text else []
    except Exception as exc:  # any damage reads as one message
        raise ProjectError(f"'{path}' is damaged: {exc}") from exc
    return [e for e in examples if isinstance(e, dict)]


def _read_project(folder: Path) -> LabelSet:
    meta = read_project_meta(folder)
    classes = [str(c["name"]) for c in meta.get("classes", []) if isinstance(c, dict) and "name" in c]
    root = meta.get("query_root")
    rejected: list[Skipped] = []
    by_path: dict[Path, LabelEntry] = {}

    def add(entry: LabelEntry) -> None:
        # One label per file: a person's label beats a prediction; a confirmed folder label beats the
        # support example made from the same file (the window makes both on a correction).
        rank = {"confirmed": 2, "support": 1}
        old = by_path.get(entry.path)
        if old is None or rank.get(entry.source, 0) > rank.get(old.source, 0):
            by_path[entry.path] = entry

    if (folder / LABELS_FILE).is_file():
        try:
            store = LabelStore(folder / LABELS_FILE)
            try:
                stored = store.all()
            finally:
                store.close()
        except (sqlite3.Error, ValueError) as exc:
            raise ProjectError(f"'{folder / LABELS_FILE}' can't be read: {exc}") from exc
        for s in stored:
            if not s.label:
                rejected.append(Skipped(s.path, f"{s.path}: no label"))
                continue
            if not root:
                rejected.append(Skipped(s.path, f"{s.path}: the project has no labeled folder"))
                continue
            try:
                _inside(Path(root), s.path)  # refuses paths that climb out of the labeled folder
            except ProjectError as exc:
                rejected.append(Skipped(s.path, str(exc)))
                continue
            # The name as stored (not symlinks resolved): exported files keep the names the user knows.
            add(LabelEntry(Path(os.path.abspath(Path(root) / s.path)), s.label, s.confidence, s.source,
                           s.similarity, tuple((str(n), float(p)) for n, p in s.topk)))
    for ex in _support_examples(folder):
        ex_id, cls, source = str(ex.get("id", "")), ex.get("class"), ex.get("source")
        if not isinstance(cls, str) or not cls:
            continue
        # The original file when it is still there (full resolution), else the model-size copy in the project.
        # A relative source was relative to a working folder we no longer know: the copy is the safe choice.
        original = Path(source) if isinstance(source, str) and source else None
        if original is not None and original.is_absolute() and original.is_file():
            path = Path(os.path.abspath(original))
        else:
            try:
                path = _inside(folder / SUPPORT_DIR, f"{ex_id}.png")
            except ProjectError as exc:
                rejected.append(Skipped(ex_id, f"support example {exc}"))
                continue
        add(LabelEntry(path, cls, 1.0, "support"))
    for cls in (e.label for e in by_path.values()):
        if cls not in classes and cls != UNKNOWN_LABEL:
            classes.append(cls)
    info = {k: meta.get(k) for k in ("name", "backbone", "query_root", "saved")}
    info["source"] = str(folder.resolve())
    return LabelSet(classes, list(by_path.values()), info, rejected)


def _read_csv(path: Path) -> LabelSet:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "path" not in fields or "label" not in fields:
                raise ExportError(f"'{path}' is not a labels CSV (it needs the columns path and label)")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise ExportError(f"'{path}' is not a labels CSV (not UTF-8 text: {exc.reason})") from exc
    except csv.Error as exc:
        raise ExportError(f"'{path}' is not a labels CSV ({exc})") from exc
    records, classes, rejected = [], [], []
    seen: set[str] = set()
    here = Path.cwd()
    for i, row in enumerate(rows, start=2):
        name, label = row.get("path") or "", row.get("label") or ""  # class names are kept exactly
        if not name.strip() or not label:
            rejected.append(Skipped(name, f"line {i}: no path or no label"))
            continue
        p = Path(name)
        if not p.is_absolute():
            # `protolabel label` writes paths as given, relative to where it ran; else next to the CSV.
            p = here / p if (here / p).exists() or not (path.parent / p).exists() else path.parent / p
        try:
            conf = float(row["confidence"]) if (row.get("confidence") or "").strip() else None
        except ValueError:
            rejected.append(Skipped(name, f"line {i}: confidence '{row.get('confidence')}' is not a number"))
            continue
        try:
            similarity = float(row["similarity"]) if (row.get("similarity") or "").strip() else None
        except ValueError:
            similarity = None  # an extra column of the user's: not a reason to drop the label
        records.append(LabelEntry(Path(os.path.abspath(p)), label, conf, (row.get("source") or "predicted").strip(),
                                  similarity, labels_csv.alternatives(row)))
        if label != UNKNOWN_LABEL and label not in seen:
            seen.add(label)
            classes.append(label)
    return LabelSet(classes, records, {"source": str(path.resolve())}, rejected)


# ------------------------------------------------------------------------------------------------ safe names


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def safe_name(name: str, max_bytes: int = FOLDER_NAME_BYTES, keep_suffix: bool = False,
              fallback: str = "unnamed") -> str:
    """A name that is one plain file or folder name on Linux, macOS and Windows: Unicode NFC; no path
    separators, characters Windows forbids or control/format characters (each becomes "_"); no leading
    dot or space, no trailing dot or space; not a Windows device name (CON, nul.txt, ...); at most
    max_bytes of UTF-8 (keep_suffix: the extension survives shortening). Readable letters (é, 猫) stay.
    Not unique by itself: see `_unique`."""
    text = unicodedata.normalize("NFC", name)
    text = "".join("_" if ch in _FORBIDDEN_CHARS or unicodedata.category(ch)[0] == "C"
                   or unicodedata.category(ch) in ("Zl", "Zp") else ch for ch in text)
    text = text.lstrip(" ").rstrip(". ")
    if text.startswith("."):
        text = "_" + text[1:]  # no hidden files
    if not text:
        text = fallback
    stem, dot, rest = text.partition(".")
    if stem.rstrip(" ").upper() in _RESERVED:
        text = f"{stem}_{dot}{rest}"
    if len(text.encode("utf-8")) > max_bytes:
        stem, suffix = os.path.splitext(text) if keep_suffix else (text, "")
        suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
        text = (_truncate_utf8(stem, max_bytes - len(suffix.encode("utf-8"))).rstrip(". ") or fallback) + suffix
    return text


def _name_key(name: str) -> str:
    """Names that are the same file on a case-insensitive or normalising file system share a key."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _unique(name: str, taken: set[str], keep_suffix: bool = False, usable: Callable[[str], bool] = lambda n: True) -> str:
    """name, or name_2, name_3, ... (before the extension with keep_suffix): the first whose key isn't in
    `taken` and that `usable` accepts; its key is added to `taken`."""
    stem, suffix = os.path.splitext(name) if keep_suffix else (name, "")
    candidate, n = name, 1
    while _name_key(candidate) in taken or not usable(candidate):
        n += 1
        candidate = f"{stem}_{n}{suffix}"
    taken.add(_name_key(candidate))
    return candidate


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class _Format:
    name: str
    layout: str  # "file" | "folder"
    options: tuple[str, ...]  # the options it takes besides overwrite / cancel
    write: Callable
    description: str
    suffix: str | None = None  # the file's name always ends in it (added when missing)
    with_files: bool = False  # a file that names files it places beside it; the writer writes everything


_FORMATS: dict[str, _Format] = {}


def register_label_format(name: str, layout: str, options: tuple[str, ...] = (), description: str = "",
                          suffix: str | None = None, with_files: bool = False):
    """Register a writer for `iter_export`; records are the ones whose files exist. File layout:
    write(labelset, records, out, **options) -> {path: text}, each written atomically by the caller.
    Folder layout: write(labelset, records, writer: _FolderWriter, cancel, **options) -> iterator of
    Progress; files go through the writer (safe names, no overwriting, the manifest).
    A file with_files (it names files it places beside it, e.g. Label Studio tasks): write(labelset, records,
    out, report, overwrite, cancel, **options) -> a generator of Progress that writes everything itself.
    suffix: `out` gets it appended when its name doesn't end in it (any case)."""
    def deco(fn):
        _FORMATS[name] = _Format(name, layout, options, fn, description, suffix, with_files)
        return fn
    return deco


def iter_export(labelset: LabelSet, fmt: str, out: str | os.PathLike, *, overwrite: bool = False,
                cancel=None, **options) -> Generator[Progress, None, ExportReport]:
    """Write `labelset` as `fmt` to `out`; yields Progress while copying files, returns the ExportReport.

    Files missing on disk now are skipped and listed in the report. `out` must not exist yet (a folder
    layout: or be empty) unless overwrite: a file is then replaced; a folder loses only what an earlier
    export listed in its manifest. `cancel`: an object with a `cancelled` flag, checked between files.
    Options: link (copy|hardlink|symlink; imagefolder, yolo-cls), val_split and seed (yolo-cls),
    document_root (labelstudio). `report.out` is the file or folder written: a format with a
    suffix gets it appended (labelstudio: "tasks" -> "tasks.json")."""
    spec, options = _checked_options(fmt, options)
    out = Path(out)
    if spec.suffix and not out.name.lower().endswith(spec.suffix):
        if out.is_dir():
            raise ExportError(f"'{out}' is a folder; name a file to write")
        out = out.with_name(out.name + spec.suffix)  # appended, not swapped: "tasks.v2" -> "tasks.v2.json"
    report = ExportReport(fmt, out)
    records = []
    for r in labelset.records:
        if r.path.is_file():
            records.append(r)
        else:
            report.skipped.append(Skipped(str(r.path), f"{r.path}: missing"))
    if spec.with_files:
        yield from spec.write(labelset, records, out, report, overwrite=overwrite, cancel=cancel, **options)
        return report
    if spec.layout == "file":
        files = spec.write(labelset, records, out, **options)
        _check_free(files, overwrite)
        _write_texts(files, report)
        report.written = len(records)
        for r in records:
            report.counts[r.label] = report.counts.get(r.label, 0) + 1
        return report
    source = labelset.metadata.get("source")
    if source and Path(source).is_dir() and out.resolve().is_relative_to(Path(source).resolve()):
        raise ExportError(f"'{out}' is inside the project folder '{source}'; choose a folder outside it")
    writer = _FolderWriter(out, fmt, overwrite, report)
    yield from spec.write(labelset, records, writer, cancel=cancel, **options)
    return report


def _check_free(paths, overwrite: bool) -> None:
    """Refuse, before anything is written, to replace a folder, or a file without overwrite."""
    for path in paths:
        if path.is_dir():
            raise ExportError(f"'{path}' is a folder; name a file to write")
        if path.exists() and not overwrite:
            raise ExportError(f"'{path}' exists; pass --overwrite to replace it")


def _write_texts(files: dict[Path, str], report: ExportReport) -> None:
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        report.outputs.append(path)


def export_labels(labelset: LabelSet, fmt: str, out: str | os.PathLike, **options) -> ExportReport:
    """`iter_export` run to its end -> the ExportReport."""
    from .runs import finish

    return finish(iter_export(labelset, fmt, out, **options))


# What `protolabel export labels` does without flags; the window's export dialog starts from the same. The filters
# (LabelSet.filtered), overwrite, then every format option (a format takes those its registration lists).
LABEL_FILTER_DEFAULTS = {"only_confirmed": False, "min_confidence": None, "include_unknown": False}
LABEL_OPTION_DEFAULTS = {"link": "copy", "val_split": 0.2, "seed": 0, "document_root": None}
LABEL_EXPORT_DEFAULTS = {**LABEL_FILTER_DEFAULTS, "overwrite": False, **LABEL_OPTION_DEFAULTS}


def _format_spec(fmt: str) -> _Format:
    spec = _FORMATS.get(fmt)
    if spec is None:
        raise ExportError(f"unknown label format '{fmt}'; choose one of {', '.join(_FORMATS)}")
    return spec


def _checked_options(fmt: str, options: dict) -> tuple[_Format, dict]:
    """-> (fmt's registration, the options that are set). ExportError, worded as the command line's flags, for
    an option fmt doesn't take or a value out of range."""
    spec = _format_spec(fmt)
    wrong = sorted(k for k, v in options.items() if v is not None and k not in spec.options)
    if wrong:
        raise ExportError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to --format {fmt}")
    options = {k: v for k, v in options.items() if v is not None}
    if "link" in options and options["link"] not in LINK_MODES:
        raise ExportError(f"--link must be one of {', '.join(LINK_MODES)}, got '{options['link']}'")
    if "val_split" in options and not 0.0 < options["val_split"] < 1.0:
        raise ExportError(f"--val-split must be between 0 and 1 (exclusive), got {options['val_split']}")
    return spec, options


def label_format_options(fmt: str) -> tuple[str, ...]:
    """The options `fmt` takes besides the filters and overwrite, e.g. ("link", "val_split", "seed")."""
    return _format_spec(fmt).options


def label_format_layout(fmt: str) -> str:
    """"file" (one file, e.g. JSON) or "folder" (a new or empty folder)."""
    return _format_spec(fmt).layout


def label_export_settings(fmt: str, **given) -> dict:
    """Every setting an export of `fmt` runs with: the filters, overwrite and the format's own options, each
    as given or (missing or None) the command line's default (LABEL_EXPORT_DEFAULTS). An option set for a
    format that doesn't take it, or a value out of range, raises ExportError, as the command line says it."""
    options = label_format_options(fmt)
    unknown = sorted(set(given) - set(LABEL_EXPORT_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown export setting(s): {', '.join(unknown)}")
    _checked_options(fmt, {k: given.get(k) for k in LABEL_OPTION_DEFAULTS})
    names = [*LABEL_FILTER_DEFAULTS, "overwrite", *(k for k in LABEL_OPTION_DEFAULTS if k in options),
             *(k for k in options if k not in LABEL_OPTION_DEFAULTS)]
    settings = {k: given[k] if given.get(k) is not None else LABEL_EXPORT_DEFAULTS.get(k) for k in names}
    low = settings["min_confidence"]
    if low is not None and not 0.0 <= low <= 1.0:
        raise ExportError(f"--min-confidence must be between 0 and 1, got {low}")
    return settings


def select_labels(labels: LabelSet, fmt: str, **given) -> tuple[LabelSet, dict]:
    """The one selection `protolabel export labels` and the window make: `label_export_settings(fmt, **given)`,
    then -> (the labels that pass its filters, the keywords for `iter_export`: overwrite and fmt's options).
    ExportError "nothing to export" when no label passes."""
    settings = label_export_settings(fmt, **given)
    chosen = labels.filtered(**{k: settings.pop(k) for k in LABEL_FILTER_DEFAULTS})
    if not chosen.records:
        raise ExportError("nothing to export" + (" (see --include-unknown, --only-confirmed, --min-confidence)"
                                                if labels.records else ""))
    return chosen, settings


# ------------------------------------------------------------------------------------------------ file formats


def _conf(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@register_label_format("csv", "file", description="path,label,confidence,similarity,source,top1,top1_confidence,...")
def _write_csv(labelset: LabelSet, records: list[LabelEntry], out: Path) -> dict[Path, str]:
    topk = max([labels_csv.DEFAULT_TOPK, *(len(r.topk) for r in records)])  # at least as many as `label` writes
    return {out: labels_csv.labels_csv_text(((str(r.path), r.label, r.confidence, r.similarity, r.source, r.topk)
                                             for r in records), topk)}


@register_label_format("json", "file", description="one JSON document with the project, classes and labels")
def _write_json(labelset: LabelSet, records: list[LabelEntry], out: Path) -> dict[Path, str]:
    doc = {
        "format": "protolabel-labels",
        "version": 1,
        "project": labelset.metadata,
        "classes": labelset.label_names(),
        "labels": [{"path": str(r.path), "label": r.label, "confidence": _conf(r.confidence), "source": r.source}
                   for r in records],
    }
    return {out: json.dumps(doc, indent=1, ensure_ascii=False) + "\n"}


# ------------------------------------------------------------------------------------------------ folder formats


def _inside_out(out: Path, rel: str) -> Path | None:
    """out/rel when rel is a plain relative path that stays inside out (no symlinked folder on the way)."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or p.drive:
        return None
    target = out / p
    if not target.parent.resolve().is_relative_to(out.resolve()):
        return None
    return target


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), list):
        raise ExportError(f"'{path}' is not a ProtoLabel export manifest; it is left alone: choose another folder")
    return doc


class _FolderWriter:
    """Places files under `out`, never outside it and never over an existing file, and keeps the manifest."""

    def __init__(self, out: Path, fmt: str, overwrite: bool, report: ExportReport) -> None:
        self.out, self.fmt, self.report = out, fmt, report
        if out.exists() and not out.is_dir():
            raise ExportError(f"'{out}' exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                raise ExportError(f"'{out}' is not empty; choose a new or empty folder, or pass --overwrite to "
                                  f"replace an earlier export there (other files are kept)")
            self._remove_previous()
        out.mkdir(parents=True, exist_ok=True)
        self.root = out.resolve()
        self.files: list[str] = []  # relative posix paths written
        self.classes: dict[str, str] = {}  # safe folder name -> class name
        self._names: dict[str, set[str]] = {}  # folder (relative) -> keys of the names in it
        self._checked: set[str] = set()

    def _remove_previous(self) -> None:
        doc = _read_manifest(self.out)
        if doc is None:
            return
        folders = set()
        for rel in doc["files"]:
            target = _inside_out(self.out, rel) if isinstance(rel, str) else None
            if target is None:
                continue
            if target.is_symlink() or target.is_file():
                target.unlink(missing_ok=True)
            parent = target.parent
            while parent != self.out and parent.is_relative_to(self.out):
                folders.add(parent)
                parent = parent.parent
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # only when empty: a user's files keep their folder
            except OSError:
                pass
        (self.out / MANIFEST_FILE).unlink(missing_ok=True)

    def class_folders(self, names: list[str], parents: tuple[str, ...] = ("",)) -> dict[str, str]:
        """Class name -> safe unique folder name, usable (absent or a real folder) under every parent."""
        taken = {_name_key(MANIFEST_FILE)} if parents == ("",) else set()

        def usable(candidate: str) -> bool:
            for parent in parents:
                p = self.out / parent / candidate
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    return False
            return True

        mapping = {}
        for name in names:
            folder = _unique(safe_name(name), taken, usable=usable)
            mapping[name] = folder
            self.classes[folder] = name
        return mapping

    def _folder(self, rel_folder: str) -> Path:
        folder = self.out / rel_folder
        if rel_folder not in self._checked:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ExportError(f"can't make the folder '{folder}': {exc.strerror or exc}") from exc
            if not folder.resolve().is_relative_to(self.root):  # a symlinked folder put there meanwhile
                raise ExportError(f"'{folder}' leads outside '{self.out}'; nothing is written there")
            self._checked.add(rel_folder)
            self._names[rel_folder] = {_name_key(n) for n in os.listdir(folder)}
        return folder

    def plan(self, src: Path, rel_folder: str) -> str:
        """A safe name for src in out/rel_folder, unused there and by earlier plans."""
        self._folder(rel_folder)
        base = safe_name(src.name, FILE_NAME_BYTES, keep_suffix=True, fallback="image")
        return _unique(base, self._names[rel_folder], keep_suffix=True)

    def place(self, src: Path, rel_folder: str, name: str, link: str) -> str | None:
        """Copy or link src to out/rel_folder/name (another unused name if that one appeared meanwhile)
        -> the relative path written, or None (and a skip in the report) when src can't be read."""
        folder = self._folder(rel_folder)
        while True:
            try:
                how = _place_file(src, folder / name, link)
            except FileExistsError:  # appeared meanwhile, or the same name on this file system: next suffix
                name = _unique(name, self._names[rel_folder], keep_suffix=True)
                continue
            except OSError as exc:
                self.report.skipped.append(Skipped(str(src), f"{src}: {exc.strerror or exc}"))
                return None
            break
        self.report.copied_instead += how == "copied-instead"
        return f"{rel_folder}/{name}" if rel_folder else name

    def write_manifest(self, counts: dict, complete: bool, extra: dict | None = None) -> Path:
        doc = {"format": MANIFEST_FORMAT, "version": 1, "layout": self.fmt,
               "classes": self.classes, "counts": counts, **(extra or {}),
               "complete": complete, "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": self.files}
        path = self.out / MANIFEST_FILE
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return path


def _place_file(src: Path, dest: Path, link: str) -> str:
    """Create dest (never replacing anything: FileExistsError) as a copy of / link to src."""
    if link == "symlink":
        os.symlink(os.path.abspath(src), dest)
        return "linked"
    if link == "hardlink":
        try:
            os.link(src, dest)
            return "linked"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
        how = "copied-instead"
    else:
        how = "copied"
    with open(src, "rb") as fin:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    st = os.stat(src)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    return how


def _copy_all(writer: _FolderWriter, jobs: list[tuple[LabelEntry, str]], link: str, cancel,
              counts: Callable[[LabelEntry, str], None], extra: dict | None = None,
              placed: dict[Path, str] | None = None) -> Iterator[Progress]:
    """Copy/link every (record, folder) job. The manifest lists the planned files before the first one is
    written, so an export cut short (crash, Ctrl-C) is still replaced by the next --overwrite.
    placed: filled with record path -> the relative path written."""
    planned = [(r, rel_folder, writer.plan(r.path, rel_folder)) for r, rel_folder in jobs]
    writer.files = [f"{f}/{name}" if f else name for _, f, name in planned]
    writer.write_manifest({}, complete=False, extra=extra)
    writer.files = []
    total = len(planned)
    yield Progress("exporting", 0, total)
    for i, (r, rel_folder, name) in enumerate(planned, start=1):
        if cancel is not None and cancel.cancelled:
            writer.report.cancelled = True
            return
        rel = writer.place(r.path, rel_folder, name, link)
        if rel is not None:
            writer.files.append(rel)
            if placed is not None:
                placed[r.path] = rel
            writer.report.written += 1
            writer.report.counts[r.label] = writer.report.counts.get(r.label, 0) + 1
            counts(r, rel_folder)
        if i % _PROGRESS_EVERY == 0 or i == total:
            yield Progress("exporting", i, total, len(writer.report.skipped))


@register_label_format("imagefolder", "folder", options=("link",),
                       description="out/<class>/<file> (torchvision ImageFolder and the like)")
def _write_imagefolder(labelset: LabelSet, records: list[LabelEntry], writer: _FolderWriter, cancel=None,
                       link: str = "copy") -> Iterator[Progress]:
    names = [n for n in labelset.label_names() if any(r.label == n for r in records)]
    folders = writer.class_folders(names)
    per_folder: dict[str, int] = {}

    def count(r: LabelEntry, rel_folder: str) -> None:
        per_folder[rel_folder] = per_folder.get(rel_folder, 0) + 1

    yield from _copy_all(writer, [(r, folders[r.label]) for r in records], link, cancel, count)
    manifest = writer.write_manifest(per_folder, complete=not writer.report.cancelled)
    writer.report.outputs += [writer.out, manifest]


def _stratified_split(records: list[LabelEntry], names: list[str], val_split: float, seed: int
                      ) -> dict[str, list[LabelEntry]]:
    """Per class, a seeded shuffle; round(n * val_split) to val, at least one when the class has 2+ images
    and at least one left to train."""
    rng = random.Random(seed)
    split: dict[str, list[LabelEntry]] = {"train": [], "val": []}
    for name in names:
        mine = sorted((r for r in records if r.label == name), key=lambda r: str(r.path))
        rng.shuffle(mine)
        n_val = 0 if len(mine) < 2 else min(len(mine) - 1, max(1, round(len(mine) * val_split)))
        split["val"] += mine[:n_val]
        split["train"] += mine[n_val:]
    return split


@register_label_format("yolo-cls", "folder", options=("link", "val_split", "seed"),
                       description="out/train/<class>/, out/val/<class>/ (Ultralytics classification)")
def _write_yolo_cls(labelset: LabelSet, records: list[LabelEntry], writer: _FolderWriter, cancel=None,
                    link: str = "copy", val_split: float = 0.2, seed: int = 0) -> Iterator[Progress]:
    names = [n for n in labelset.label_names() if any(r.label == n for r in records)]
    folders = writer.class_folders(names, parents=("train", "val"))
    split = _stratified_split(records, names, val_split, seed)
    per_split: dict[str, dict[str, int]] = {"train": {}, "val": {}}

    def count(r: LabelEntry, rel_folder: str) -> None:
        part, folder = rel_folder.split("/", 1)
        per_split[part][folder] = per_split[part].get(folder, 0) + 1

    jobs = [(r, f"{part}/{folders[r.label]}") for part in ("train", "val") for r in split[part]]
    yield from _copy_all(writer, jobs, link, cancel, count, extra={"val_split": val_split, "seed": seed})
    manifest = writer.write_manifest(per_split, complete=not writer.report.cancelled,
                                     extra={"val_split": val_split, "seed": seed})
    writer.report.splits = {part: {writer.classes[f]: n for f, n in c.items()} for part, c in per_split.items()}
    writer.report.outputs += [writer.out, manifest]


# ------------------------------------------------------------------------------------------------ Label Studio


def _xml_text(name: str) -> str:
    """A label as XML 1.0 allows it (no control characters but tab/newline): the same text in the tasks
    and the labeling config, so Label Studio matches them."""
    return "".join(ch if ch in "\t\n\r" or ord(ch) >= 32 and not 0xD800 <= ord(ch) <= 0xDFFF
                   and ch not in "\ufffe\uffff" else "_" for ch in name)


LOCAL_FILES_URL = "/data/local-files/?d="  # Label Studio's local files storage serves document-root-relative paths


def labelstudio_config_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.label_config.xml")


def labelstudio_setup_path(out: Path) -> Path:
    """The storage settings written beside the tasks: environment, storage path, steps."""
    return out.with_name(f"{out.stem}.local_storage.json")


def labelstudio_files_folder(out: Path) -> Path:
    """Where copies of the files Label Studio could not serve in place go: beside the tasks file."""
    return out.with_name(f"{out.stem}-files")


def _real(path: Path) -> Path:
    """path with its folders' symlinks resolved (the file itself kept: a linked image stays where it is named),
    so paths compare by where they are."""
    return Path(os.path.realpath(path.parent)) / path.name


@dataclass
class _LocalFiles:
    document_root: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    storage: Path  # the one local files storage: a folder below document_root holding every file the tasks name
    folder: Path  # <stem>-files/, beside the tasks file
    copy: list[LabelEntry]  # the records whose files go into `folder`


def _plan_local_files(labelset: LabelSet, records: list[LabelEntry], out: Path,
                      document_root: str | os.PathLike | None) -> _LocalFiles:
    """Decide the document root, the storage folder and which files must be copied (see _write_labelstudio)."""
    folder = labelstudio_files_folder(out)
    if document_root is not None:
        root = Path(os.path.realpath(document_root))
        if not root.is_dir():
            raise ExportError(f"--document-root '{document_root}' is not a folder")
        if not out.parent.is_relative_to(root):
            raise ExportError(
                f"the tasks file '{out}' is not inside --document-root '{root}'. Label Studio serves files under its "
                f"document root only, and the files outside it are copied beside the tasks file: write the tasks "
                f"file inside '{root}', choose a document root that holds '{out.parent}', or leave --document-root "
                f"out (then the folder above the one holding the labeled images and the tasks file is the root)")
        candidates = [r for r in records if _real(r.path).is_relative_to(root)]
    else:
        root, candidates = None, records
    # The labeled images stay where they are (there can be many); the examples join them when they lie
    # in the same folder, else they are copied beside the tasks file.
    folders = {_real(r.path).parent for r in candidates if r.source != "support"} | {out.parent}
    try:
        storage: Path | None = Path(os.path.commonpath(sorted(folders)))
    except ValueError:  # different drives (Windows)
        storage = None
    if root is None:
        if storage is None or storage.parent == storage:
            labeled = sorted(str(f) for f in folders - {out.parent})
            raise ExportError(
                f"the labeled images ({', '.join(labeled[:2]) + (', ...' if len(labeled) > 2 else '') or 'none'}) "
                f"and the tasks file's folder '{out.parent}' share no folder but the top one, and Label Studio's "
                f"one local files storage must be a folder below its document root: write the tasks file next to "
                f"the labeled images (on the same disk, below a common folder), or pass --document-root DIR")
        root = storage.parent
    elif storage == root:
        # The storage can't be the document root itself (Label Studio refuses it): everything goes into one
        # folder below it, by hard link where the file system allows.
        storage = folder
    copy = [r for r in records if not _real(r.path).is_relative_to(storage)]
    query_root = labelset.metadata.get("query_root")
    if copy and query_root and folder.is_relative_to(Path(os.path.realpath(query_root))):
        raise ExportError(f"the copies of {len(copy)} file(s) would go to '{folder}', inside the labeled folder "
                          f"'{query_root}', and be labeled as images next time: write the tasks file outside it")
    return _LocalFiles(root, storage, folder, copy)


@register_label_format("labelstudio", "file", options=("document_root",), suffix=".json", with_files=True,
                       description="Label Studio tasks (JSON), labeling config (XML), local files storage settings")
def _write_labelstudio(labelset: LabelSet, records: list[LabelEntry], out: Path, report: ExportReport, *,
                       overwrite: bool = False, cancel=None,
                       document_root: str | os.PathLike | None = None) -> Iterator[Progress]:
    """Tasks that Label Studio opens through ONE local files storage, with no other step.

    Label Studio serves a local file at /data/local-files/?d=<path relative to its document root>
    (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) to a project only when one of the project's local files storages
    holds it, and a storage must be a folder strictly below the document root. Hence:

    - the storage folder: the deepest folder holding the labeled images and the tasks file's folder;
      without document_root, the document root is the folder above it (the window's export and the CLI's
      default); with document_root (say Label Studio's own, or a Docker volume), the tasks file must be
      inside it, files outside it are not served in place, and when the images and the tasks file share
      no folder below it, the storage is <stem>-files/ and every file goes there;
    - the files outside the storage folder (typically the support examples: the project's crops or the
      original example files) are hard-linked (copied where that is impossible) into
      <stem>-files/<class>/ beside the tasks file, which is inside the storage folder, and the tasks point
      there. That folder has the manifest of the folder layouts (classes.json): overwrite removes exactly the
      files an earlier export put there;
    - the document root and the storage path are in the report (and its notes) and in
      <stem>.local_storage.json beside the tasks, with the steps: start Label Studio with the two
      variables, paste <stem>.label_config.xml, add the storage (no sync needed), import <stem>.json.

    A person's labels (confirmed, examples) become annotations, the rest predictions with their
    probability as score. Nothing is written when a named file exists (without overwrite) or the
    folders can't work; a cancelled export writes no tasks file."""
    config_path, setup_path = labelstudio_config_path(out), labelstudio_setup_path(out)
    _check_free([out, config_path, setup_path], overwrite)
    plan = _plan_local_files(labelset, records, _real(Path(os.path.abspath(out))), document_root)
    placed: dict[Path, str] = {}
    copies = ExportReport(report.format, plan.folder)  # the copies' own tally; the report counts tasks
    writer, folder_outputs = None, []
    if plan.copy or plan.storage == plan.folder:
        writer = _FolderWriter(plan.folder, report.format, overwrite, copies)
        folders = writer.class_folders([n for n in labelset.label_names() if any(r.label == n for r in plan.copy)])
        yield from _copy_all(writer, [(r, folders[r.label]) for r in plan.copy], "hardlink", cancel,
                             lambda r, rel_folder: None, placed=placed)
        folder_outputs = [plan.folder, writer.write_manifest(copies.counts, complete=not copies.cancelled)]
    elif overwrite and (plan.folder / MANIFEST_FILE).is_file():  # an earlier export's copies, not needed now
        _FolderWriter(plan.folder, report.format, True, copies)
        with contextlib.suppress(OSError):
            plan.folder.rmdir()
    report.skipped += copies.skipped
    report.copied_instead = copies.copied_instead
    report.document_root, report.storage_path = plan.document_root, plan.storage
    if copies.cancelled:
        report.cancelled = True
        report.outputs += folder_outputs
        return

    names = [n for n in labelset.label_names() if any(r.label == n for r in records)]
    choice: dict[str, str] = {}
    taken: set[str] = set()
    for n in names:  # labels XML can't carry become unique readable stand-ins
        text = _xml_text(n)
        while text in taken:
            text += "_"
        taken.add(text)
        choice[n] = text
    tasks = []
    not_in_place = {r.path for r in plan.copy}
    for r in records:
        if r.path in placed:
            where = plan.folder / placed[r.path]
        elif r.path in not_in_place:
            continue  # could not be copied: skipped in the report
        else:
            where = _real(r.path)
        image = LOCAL_FILES_URL + quote(where.relative_to(plan.document_root).as_posix(), safe="/")
        result = [{"from_name": "label", "to_name": "image", "type": "choices",
                   "value": {"choices": [choice[r.label]]}}]
        task: dict = {"data": {"image": image}}
        if r.source in HUMAN_SOURCES:
            task["annotations"] = [{"result": result}]
        else:
            task["predictions"] = [{"model_version": "protolabel", "score": _conf(r.confidence), "result": result}]
        tasks.append(task)
        report.written += 1
        report.counts[r.label] = report.counts.get(r.label, 0) + 1
    config = ['<View>', '  <Image name="image" value="$image"/>',
              '  <Choices name="label" toName="image" choice="single" showInline="true">']
    config += [f"    <Choice value={quoteattr(choice[n])}/>" for n in names]
    config += ["  </Choices>", "</View>"]

    notes = []
    if writer is not None and writer.files:
        notes.append(f"{len(writer.files)} file(s) that Label Studio's storage folder doesn't hold where they are "
                     f"hard-linked into '{plan.folder}'" + (f" ({copies.copied_instead} copied: no hard link possible)"
                                                            if copies.copied_instead else ""))
    steps = [f"start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
             f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={plan.document_root}",
             f"in the project's Settings > Labeling Interface > Code, paste {config_path.name}",
             f"in Settings > Cloud Storage, add one Local files source storage with the absolute local path "
             f"{plan.storage} (no need to sync it: the tasks name their images)",
             f"import {out.name}"]
    notes += [f"Label Studio: {step}" for step in steps]
    setup = {"format": "protolabel-labelstudio-setup", "version": 1, "tasks": os.path.abspath(out),
             "label_config": os.path.abspath(config_path),
             "environment": {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                             "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(plan.document_root)},
             "local_storage": {"path": str(plan.storage),
                               "path_in_document_root": plan.storage.relative_to(plan.document_root).as_posix()},
             "copies": None if writer is None else {"folder": str(plan.folder), "files": len(writer.files)},
             "steps": steps}
    _write_texts({out: json.dumps(tasks, indent=1, ensure_ascii=False) + "\n",
                  config_path: "\n".join(config) + "\n",
                  setup_path: json.dumps(setup, indent=1, ensure_ascii=False) + "\n"}, report)
    report.outputs += folder_outputs
    report.notes = notes + [f"Label Studio settings: {setup_path}"]


LABEL_FORMATS = tuple(_FORMATS)  # in registration order
