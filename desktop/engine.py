"""The engine thread: owns the classifier and runs every model operation, one at a time, off the UI thread.

Widgets never touch the classifier. The main window calls the intent methods below (any thread); each
queues a job. The engine thread runs jobs in order; when the queue is empty it predicts the newest
live frame (latest-frame semantics: frames that arrive while it is busy are overwritten, never queued),
refreshes the folder's predictions after the support set changed, and autosaves the project.
Results reach the UI thread through Qt signals (queued connections).
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from core import (
    CancelToken,
    ClassifierCheckpoint,
    Embedder,
    FewShotClassifier,
    Frame,
    ImageError,
    LabelRecord,
    LabelingSession,
    ProjectError,
    add_support_tree,
    class_color,
    class_folders,
    create_default_backbone,
    crop,
    default_model_file,
    export_model,
    forget_labels,
    iter_export,
    list_images,
    load_for_model,
    load_image,
    load_model_file,
    load_project,
    open_embedding_cache,
    query_paths,
    read_labels,
    read_project_meta,
    restore_backup,
    save_project,
    store_labels,
    write_labels_csv,
)
from core.device import release_memory
from core.embedding import load_many
from core.runs import finish

from .state import ClassInfo, ExampleInfo, FolderItem, LivePrediction, ModelSnapshot

log = logging.getLogger(__name__)

AUTOSAVE_DELAY_S = 2.0  # after the last change
FOLDER_CHUNK = 128  # files per label_paths call: the grid fills in as the folder is labeled
FOLDER_EMIT_INTERVAL_S = 1.0  # at most this often the grid gets the whole list while labeling


class LatestFrame:
    """One-frame mailbox between the capture thread and its readers: a new frame overwrites the old one.

    The display reads ``latest()``; the engine ``take()``s frames for inference. ``dropped`` counts frames
    overwritten before the engine took them (the model was slower than the source)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._seq = 0
        self._taken = 0
        self.dropped = 0
        self.on_put: Callable[[], None] | None = None  # the engine's wake-up

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._frame is not None and self._taken < self._seq:
                self.dropped += 1
            self._frame = frame
            self._seq += 1
        if self.on_put is not None:
            self.on_put()

    def latest(self) -> tuple[int, Frame | None]:
        with self._lock:
            return self._seq, self._frame

    def has_new(self) -> bool:
        with self._lock:
            return self._frame is not None and self._taken < self._seq

    def take(self) -> Frame | None:
        """The newest frame if the engine has not had it yet."""
        with self._lock:
            if self._frame is None or self._taken >= self._seq:
                return None
            self._taken = self._seq
            return self._frame

    def clear(self) -> None:
        with self._lock:
            self._frame = None
            self._taken = self._seq


@dataclass
class _Job:
    name: str
    fn: Callable[..., object]
    args: tuple
    cancel: CancelToken | None = None
    undo: str | None = None  # what Edit > Undo calls the change ("Remove class 'cat'"); None: not undoable


@dataclass(frozen=True)
class Change:
    """One undoable change of classes, examples and labels, as the engine thread saw it (opaque to widgets).

    The classifier's side is two checkpoints (examples are shared, not copied); the folder's labels are only
    the paths that changed, path -> (before, after), None meaning not confirmed."""

    text: str
    before: ClassifierCheckpoint
    after: ClassifierCheckpoint
    root: str | None
    labels: dict[str, tuple[str | None, str | None]]


def _project_model(folder: Path) -> str | None:
    """The model file a project was made with ("" = the default model), None when it does not say."""
    try:
        settings = read_project_meta(folder).get("settings", {})
    except ProjectError:
        return None  # load_project says what is wrong with it
    model = settings.get("model") if isinstance(settings, dict) else None
    return model if isinstance(model, str) else None


def _skipped_notice(skipped: dict[str, str], folder: str, shown: int = 5) -> str:
    """'3 file(s) in photos could not be read and were skipped: a.jpg (file is empty); ...' (reasons without
    the full paths, which the names already stand for)."""
    parts = []
    for path, reason in list(skipped.items())[:shown]:
        prefix = f"cannot read '{path}': "  # ImageError's wording; the name below stands for the path
        parts.append(f"{Path(path).name} ({reason[len(prefix):] if reason.startswith(prefix) else reason})")
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} file(s) in {folder} could not be read and were skipped: " + "; ".join(parts) + more


def _warm_up(embedder: Embedder) -> None:
    """One forward of a blank image before the first frame: on the CPU it opens (the first time: exports and
    checks, ~2 s) the ONNX Runtime trunk, so no frame waits for that, and the status bar can say which runtime
    runs."""
    import torch

    size = embedder.config.size
    embedder.embed_tensor(torch.zeros(1, 3, size, size))


class Engine(QObject):
    """See the module docstring. ``make_embedder`` runs in the engine thread (loading weights takes a while)."""

    ready = Signal(str)  # model description, once the backbone is loaded
    snapshotChanged = Signal(object)  # ModelSnapshot
    livePrediction = Signal(object)  # LivePrediction
    folderChanged = Signal(object)  # list[FolderItem], file order
    folderSummary = Signal(str)
    estimateChanged = Signal(str)  # "about 94% of 312 unreviewed labels right" ("" without a folder)
    explanation = Signal(str, object)  # path, [(ExampleInfo, similarity)]
    progress = Signal(str, str, int, int)  # job, stage, done, total
    jobStarted = Signal(str)
    jobFinished = Signal(str, str)  # job, summary for the status bar ("" when nothing to say)
    message = Signal(str, str)  # level ("info" | "warning" | "error"), text
    projectChanged = Signal(str, bool)  # project folder, is it the unsaved workspace
    saved = Signal(str)  # project folder after an (auto)save
    backupOffered = Signal(str, str)  # project folder, what is damaged: it has a backup to restore
    projectSource = Signal(object)  # an opened project's last live source: {"kind": "camera"|"video", ...}
    changeDone = Signal(object)  # Change: an undoable change happened (Edit > Undo)
    historyCleared = Signal()  # another project or model: earlier changes can't be undone any more

    def __init__(self, make_embedder: Callable[[], Embedder], frames: LatestFrame, workspace: str | Path,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._make_embedder = make_embedder
        self.frames = frames
        self.workspace = Path(workspace)  # where unsaved projects live until "Save as"
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._stop = False
        self._current: _Job | None = None
        self._thread: threading.Thread | None = None
        frames.on_put = self._wake
        # Everything below belongs to the engine thread.
        self.embedder: Embedder | None = None
        self.classifier: FewShotClassifier | None = None
        self.project_folder: Path | None = None
        self.project_unsaved = True
        self.session: LabelingSession | None = None  # the labeled folder (core.session: the labeling loop)
        self.live = True
        self.roi: tuple[int, int, int, int] | None = None
        self.settings: dict = {}
        self._tail_version = 0
        self._session_tail = -1  # tail version the session's features were computed with
        self._predictions_stored = True  # the session's predictions are in labels.sqlite (written at autosave)
        self._dirty_since: float | None = None
        self._snapshot_generation = -1

    # ------------------------------------------------------------------ thread control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="protolabel-engine", daemon=True)
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Cancel the running job, save, stop the thread. True when it ended in time."""
        with self._cond:
            self._stop = True
            if self._current is not None and self._current.cancel is not None:
                self._current.cancel.cancel()
            for job in self._jobs:
                if job.cancel is not None:
                    job.cancel.cancel()
            self._cond.notify_all()
        self.frames.on_put = None
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def cancel(self, name: str | None = None) -> None:
        """Cancel the running job (or only if it is `name`) and queued jobs of that name."""
        with self._cond:
            job = self._current
            if job is not None and job.cancel is not None and (name is None or job.name == name):
                job.cancel.cancel()
            for queued in self._jobs:
                if queued.cancel is not None and (name is None or queued.name == name):
                    queued.cancel.cancel()

    def _submit(self, name: str, fn: Callable[..., object], *args: object, cancellable: bool = False,
                undo: str | None = None) -> None:
        with self._cond:
            self._jobs.append(_Job(name, fn, args, CancelToken() if cancellable else None, undo))
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self.embedder = self._make_embedder()
            self.embedder.on_message = lambda m: self.message.emit("warning", m)
            self.classifier = FewShotClassifier(self.embedder)
            _warm_up(self.embedder)
            self.ready.emit(self.model_description())
        except Exception as exc:  # no model, no app: say why
            log.exception("model failed to load")
            self.message.emit("error", f"The model could not be loaded: {exc}")
            return
        if self.project_folder is None:
            self._new_project()
        while True:
            with self._cond:
                while not self._stop and not self._jobs and not self._idle_work_pending():
                    self._cond.wait(self._wait_timeout())
                if self._stop:
                    break
                job = self._jobs.popleft() if self._jobs else None
                self._current = job
            if job is not None:
                self._run_job(job)
                with self._cond:
                    self._current = None
            else:
                self._idle_work()
        self._autosave(force=True)

    def _run_job(self, job: _Job) -> None:
        self.jobStarted.emit(job.name)
        summary = ""
        classifier = self.classifier
        before = self._undo_state() if job.undo else None
        try:
            if job.cancel is not None and job.cancel.cancelled:
                summary = f"{job.name}: cancelled"
            else:
                args = (*job.args, job.cancel) if job.cancel is not None else job.args
                summary = job.fn(*args) or ""
        except (ValueError, OSError, ImageError, ProjectError) as exc:
            self.message.emit("error", str(exc))
        except Exception as exc:  # a bug: report it, keep the app alive
            log.error("%s failed:\n%s", job.name, traceback.format_exc())
            self.message.emit("error", f"{job.name} failed: {type(exc).__name__}: {exc}")
        if self.classifier is not classifier:
            self.historyCleared.emit()
        elif before is not None:
            self._record_change(job.undo, before)
        self._after_change()
        if job.cancel is not None:  # a long job (folder, fine-tuning, import): give its kept memory back
            release_memory()
        self.jobFinished.emit(job.name, str(summary))

    # ------------------------------------------------------------------ undo / redo
    def _undo_state(self) -> tuple[ClassifierCheckpoint, str | None, dict[str, str]]:
        f = self.session
        return self.classifier.checkpoint(), f.root if f else None, dict(f.confirmed) if f else {}

    def _record_change(self, text: str, before: tuple[ClassifierCheckpoint, str | None, dict[str, str]]) -> None:
        ckpt, root, confirmed = before
        after, now_root, now_confirmed = self._undo_state()
        if now_root != root:  # another folder was opened meanwhile: its labels are not this change's
            confirmed, root = now_confirmed, now_root
        labels = {p: (confirmed.get(p), now_confirmed.get(p))
                  for p in confirmed.keys() | now_confirmed.keys() if confirmed.get(p) != now_confirmed.get(p)}
        if after.generation != ckpt.generation or labels:
            self.changeDone.emit(Change(text, ckpt, after, root, labels))

    def undo(self, change: Change) -> None:
        self._submit("undo", self._apply_change, change, False)

    def redo(self, change: Change) -> None:
        self._submit("redo", self._apply_change, change, True)

    def _apply_change(self, change: Change, forward: bool) -> str:
        """Undo (forward False) or redo a Change, and save at once: an undone change is undone on disk too."""
        self.classifier.restore(change.after if forward else change.before)
        f = self.session
        if f is not None and f.root == change.root and change.labels:
            took = f.set_confirmed({p: (new if forward else old) for p, (old, new) in change.labels.items()})
            self._refresh_folder()
            self._store_labels_of(took)
        self._flush()
        return f"{'redone' if forward else 'undone'}: {change.text}"

    def _store_labels_of(self, paths: Sequence[str]) -> None:
        """labels.sqlite row of each path as the session shows it now: confirmed, predicted, or none."""
        f = self.session
        shown = {r.path: r for r in f.records(paths=paths)}
        store_labels(self.project_folder, [(r.path, r.prediction, r.source) for r in shown.values()], f.root)
        forget_labels(self.project_folder, [p for p in paths if p not in shown], f.root)

    # ------------------------------------------------------------------ idle work
    def _idle_work_pending(self) -> bool:
        c = self.classifier
        if c is None:
            return False
        if self.live and c.ready() and self.frames.has_new():
            return True
        f = self.session
        if f is not None and bool(f.embedded.any()) and (self._session_tail != self._tail_version or f.stale()):
            return True
        return self._dirty_since is not None and time.monotonic() - self._dirty_since >= AUTOSAVE_DELAY_S

    def _wait_timeout(self) -> float:
        if self._dirty_since is not None:
            return max(0.05, AUTOSAVE_DELAY_S - (time.monotonic() - self._dirty_since))
        return 0.5

    def _idle_work(self) -> None:
        try:
            f = self.session
            if f is not None and bool(f.embedded.any()) and self._session_tail != self._tail_version:
                self._reembed_folder()
            elif f is not None and f.stale():
                self._refresh_folder()
            elif self.live and self.classifier.ready() and self.frames.has_new():
                self._predict_live()
            else:
                self._autosave()
        except Exception as exc:
            log.error("background work failed:\n%s", traceback.format_exc())
            self.message.emit("error", f"{type(exc).__name__}: {exc}")
            self._dirty_since = None

    def _predict_live(self) -> None:
        frame = self.frames.take()
        if frame is None:
            return
        roi = self.roi
        try:
            image = crop(frame.image, roi) if roi is not None else frame.image
        except ValueError:
            image, roi = frame.image, None
        t0 = time.perf_counter()
        pred = self.classifier.predict([image])[0]
        latency = (time.perf_counter() - t0) * 1000
        self.livePrediction.emit(LivePrediction(frame.index, self.classifier.generation, pred.label,
                                                pred.probability, tuple(pred.topk), pred.similarity, latency, roi))

    # ------------------------------------------------------------------ after every change
    def _after_change(self) -> None:
        c = self.classifier
        if c is not None and c.generation != self._snapshot_generation:
            self._snapshot_generation = c.generation
            self.snapshotChanged.emit(self.snapshot())
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()

    def snapshot(self) -> ModelSnapshot:
        c = self.classifier
        classes = tuple(ClassInfo(name, class_color(i), str(i + 1) if i < 9 else None, len(c.examples_of(name)))
                        for i, name in enumerate(c.classes))
        examples = tuple(ExampleInfo(e.id, e.class_name, e.image) for e in c.examples.values() if e.image is not None)
        return ModelSnapshot(c.generation, classes, examples, c.adapted_tail is not None, dict(c.finetune_info),
                             c.embedder.backbone.name, c.embedder.device.type)

    # ------------------------------------------------------------------ intents: classes and examples
    def add_class(self, name: str) -> None:
        self._submit("add class", self._add_class, name, undo=f"Add class '{name.strip()}'")

    def _add_class(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise ValueError("a class needs a name")
        if name in self.classifier.classes:
            raise ValueError(f"there is already a class '{name}'")
        self.classifier.add_class(name)
        return ""

    def rename_class(self, old: str, new: str) -> None:
        self._submit("rename class", self._rename_class, old, new, undo=f"Rename class '{old}' to '{new.strip()}'")

    def _rename_class(self, old: str, new: str) -> str:
        self.classifier.rename_class(old, new.strip())
        if self.session is not None:
            self.session.rename_class(old, new.strip())
            self._store_labels_of([p for p, c in self.session.confirmed.items() if c == new.strip()])
        return ""

    def remove_class(self, name: str) -> None:
        self._submit("remove class", self._remove_class, name, undo=f"Remove class '{name}'")

    def _remove_class(self, name: str) -> str:
        self.classifier.remove_class(name)
        f = self.session
        if f is not None:
            gone = [p for p, c in f.confirmed.items() if c == name]
            f.remove_class(name)
            self._refresh_folder()
            self._store_labels_of(gone)  # no stale "confirmed" row may bring the class back on reopening
        return f"class '{name}' removed (Edit > Undo brings it back)"

    def capture(self, class_name: str, frame: Frame, roi: tuple[int, int, int, int] | None = None) -> None:
        """Add a frame (or the part inside roi = (x0, y0, x1, y1)) to a class, creating the class if new."""
        self._submit("capture", self._capture, class_name, frame, roi, undo=f"Add an example to '{class_name}'")

    def _capture(self, class_name: str, frame: Frame, roi: tuple[int, int, int, int] | None) -> str:
        if class_name not in self.classifier.classes:
            self.classifier.add_class(class_name)
        image = crop(frame.image, roi) if roi is not None else frame.image
        source = frame.source if frame.source.startswith("camera") else f"{frame.source}#{frame.index}"
        self.classifier.add_example(class_name, image, source)
        return ""

    def remove_example(self, example_id: str) -> None:
        self._submit("remove example", self._remove_example, example_id, undo="Remove an example")

    def _remove_example(self, example_id: str) -> str:
        if example_id in self.classifier.examples:
            self.classifier.remove_example(example_id)
        return ""

    def move_example(self, example_id: str, class_name: str) -> None:
        self._submit("move example", lambda: self.classifier.move_example(example_id, class_name) and "",
                     undo=f"Move an example to '{class_name}'")

    def add_files(self, class_name: str, paths: Sequence[str]) -> None:
        """Image files and folders dropped on a class. With no class: a folder of class folders is imported
        as a tree, any other folder becomes a class named after it."""
        self._submit("add images", self._add_files, class_name, list(paths), cancellable=True,
                     undo=f"Add images to '{class_name}'" if class_name else "Add images")

    def _add_files(self, class_name: str, paths: list[str], cancel: CancelToken) -> str:
        groups: dict[str, list[str]] = {}
        summaries: list[str] = []
        for p in map(Path, paths):
            if p.is_dir():
                if not class_name and len(class_folders(p)) >= 2 and not list_images(p, recursive=False):
                    summaries.append(self._import_tree(str(p), cancel))
                    continue
                target = class_name or p.name
                groups.setdefault(target, []).extend(str(x) for x in list_images(p))
            elif p.is_file():
                if not class_name:
                    raise ValueError("drop image files onto a class (or drop a folder to make a class of it)")
                groups.setdefault(class_name, []).append(str(p))
        total = sum(len(v) for v in groups.values())
        done, added, skipped = 0, 0, []
        embedder = self.embedder
        for name, files in groups.items():
            if cancel.cancelled:
                break
            if name not in self.classifier.classes:
                self.classifier.add_class(name)
            # The command line's decode (load_many -> load_for_model): a file dropped here gets the feature
            # `protolabel label --support` gives it.
            for ok, arrays, bad in load_many(files, embedder.config, embedder.batch_size, cancel=cancel,
                                             prefetch=embedder.prefetch):
                if arrays:
                    self.classifier.add_examples(name, arrays, ok)
                    added += len(arrays)
                skipped += [f"{Path(s.path).name}: {s.reason}" for s in bad]
                done += len(ok) + len(bad)
                self.progress.emit("add images", "adding examples", done, total)
                self._after_change()
        if skipped:
            self.message.emit("warning", f"{len(skipped)} file(s) skipped: " + "; ".join(skipped[:5]))
        if total:
            summaries.append(f"{added} example(s) added" + (f", {len(skipped)} unreadable skipped" if skipped else "")
                             + (" (cancelled)" if cancel.cancelled else ""))
        return "; ".join(s for s in summaries if s)

    def import_tree(self, root: str) -> None:
        """A folder with one sub-folder per class -> classes and their examples."""
        self._submit("import classes", self._import_tree, root, cancellable=True, undo="Import classes")

    def _import_tree(self, root: str, cancel: CancelToken) -> str:
        result = finish(add_support_tree(self.classifier, root, cancel),
                        lambda p: self.progress.emit("import classes", p.stage, p.done, p.total))
        n = sum(result.added.values())
        text = f"imported {n} example(s) into {len(result.added)} class(es)"
        if result.skipped:
            text += f", {len(result.skipped)} unreadable file(s) skipped"
        return text + (" (cancelled)" if result.cancelled else "")

    # ------------------------------------------------------------------ intents: live
    def set_live(self, enabled: bool) -> None:
        self.live = enabled
        self._wake()

    def set_roi(self, roi: tuple[int, int, int, int] | None) -> None:
        """The region predictions and captures take (None: the whole picture). The live path reads `roi` at once
        (one reference, swapped whole); the settings, which the engine thread saves, change on that thread."""
        self.roi = roi
        self._submit("set region", self._store_roi, roi)

    def _store_roi(self, roi: tuple[int, int, int, int] | None) -> str:
        self.settings["roi"] = list(roi) if roi else None
        self._mark_dirty()
        return ""

    def remember_source(self, source: dict | None) -> None:
        """The live source now in use ({"kind": "camera", "device": 0, "resolution": [w, h] | None} or
        {"kind": "video", "path": ...}), saved with the project so that it reopens with it."""
        self._submit("remember source", self._remember_source, source)

    def _remember_source(self, source: dict | None) -> str:
        if self.settings.get("source") != source:
            self.settings["source"] = source
            self._mark_dirty()
        return ""

    # ------------------------------------------------------------------ intents: the model
    def set_model(self, path: str | None) -> None:
        """Use another model file (None: the default model); the examples are embedded again with it."""
        self._submit("change model", self._set_model, path, None, cancellable=True)

    def set_runtime(self, runtime: str) -> None:
        """How the trunk runs on the CPU (core.runtime: auto, onnxruntime, int8, torch); examples are embedded
        again with it."""
        self._submit("change model", self._set_model, self.settings.get("model") or None, runtime, cancellable=True)

    def _new_embedder(self, path: str | None, runtime: str | None = None) -> Embedder:
        backbone = load_model_file(path) if path else create_default_backbone()
        embedder = Embedder(backbone, self.embedder.device, batch_size=self.embedder.batch_size,
                            runtime=runtime or self.embedder.runtime)
        embedder.on_message = self.embedder.on_message
        _warm_up(embedder)
        return embedder

    def _set_model(self, path: str | None, runtime: str | None, cancel: CancelToken) -> str:
        try:
            embedder = self._new_embedder(path, runtime)
        except ValueError as exc:  # ModelFileError: say what happens now, not only what failed
            raise ValueError(f"{exc}. Still using {self.model_description()}.") from exc
        old = self.classifier
        new = FewShotClassifier(embedder, method=old.method_name, unknown=old.unknown, topk=old.topk)
        for name in old.classes:
            new.add_class(name)
        examples = [e for e in old.examples.values() if e.image is not None]
        step = embedder.batch_size
        for i in range(0, len(examples), step):
            if cancel.cancelled:
                return "model change cancelled; the model is unchanged"
            part = examples[i : i + step]
            new.add_labeled_examples([e.class_name for e in part], [e.image for e in part], [e.source for e in part])
            self.progress.emit("change model", "embedding the examples again", i + len(part), len(examples))
        self.embedder, self.classifier = embedder, new
        self._tail_version += 1
        self.settings["model"] = str(Path(path).resolve()) if path else ""
        self.ready.emit(self.model_description())
        if self.session is not None:
            self._label_folder(self.session.root, cancel)
        return f"now using {self.model_description()}"

    def model_description(self) -> str:
        path = self.settings.get("model") or default_model_file()
        name = Path(path).name if path else "ImageNet-pretrained"
        text = f"{self.embedder.backbone.name} ({name}) on {self.embedder.device.type.upper()}"
        if self.embedder.device.type == "cpu":
            note = self.embedder.runtime_note
            text += (" · PyTorch" if "ONNX Runtime" not in note else
                     " · ONNX Runtime int8" if "-int8.onnx" in note else " · ONNX Runtime")
        return text

    # ------------------------------------------------------------------ intents: fine-tuning
    def finetune(self, budget_s: float = 10.0, max_steps: int = 40) -> None:
        self._submit("fine-tune", self._finetune, budget_s, max_steps, cancellable=True)

    def _finetune(self, budget_s: float, max_steps: int, cancel: CancelToken) -> str:
        def progress(p) -> None:
            self.progress.emit("fine-tune", p.phase, int(p.step), int(p.total_steps))

        t0 = time.perf_counter()
        result = self.classifier.finetune(budget_s=budget_s, max_steps=max_steps, progress=progress,
                                          cancel=lambda: cancel.cancelled)
        seconds = time.perf_counter() - t0
        if result.cancelled:
            return "fine-tuning cancelled; the model is unchanged"
        self._tail_version += 1
        text = f"fine-tuned in {seconds:.1f} s ({result.steps} steps, lr {result.lr:g})"
        return text + (f": {result.message}" if result.message else "")

    def reset_finetune(self) -> None:
        self._submit("reset fine-tuning", self._reset_finetune)

    def _reset_finetune(self) -> str:
        self.classifier.reset_finetune()
        self._tail_version += 1
        return "back to the meta-learned model"

    # ------------------------------------------------------------------ intents: folder labeling
    def label_folder(self, root: str) -> None:
        self._submit("label folder", self._label_folder, root, cancellable=True)

    def _label_folder(self, root: str, cancel: CancelToken, confirmed: dict[str, str] | None = None) -> str:
        root = str(Path(root).resolve())
        paths = [str(p) for p in query_paths(root)]
        if not paths:
            raise ValueError(f"no images found in '{root}'")
        f = LabelingSession(self.classifier, root, paths)
        if self.session is not None and self.session.root == root:
            f.confirmed = {p: c for p, c in self.session.confirmed.items() if p in f.row}
        if confirmed:
            f.confirmed.update({p: c for p, c in confirmed.items() if p in f.row})
        self._session_tail = self._tail_version
        self.session = f
        self._mark_dirty()  # project.json names the labeled folder
        self._emit_folder()
        cache = open_embedding_cache(self.project_folder, self.embedder)
        try:
            self._embed_into(f, None, cache, cancel, "label folder")
        finally:
            cache.close()
        self._refresh_folder()
        n_ok = int(f.embedded.sum())
        text = f"{n_ok} image(s) in {Path(root).name}"
        if f.skipped:
            text += f", {len(f.skipped)} unreadable skipped"
            self.message.emit("warning", _skipped_notice(f.skipped, Path(root).name))
        if cancel.cancelled:
            text += " (cancelled: the rest is not labeled)"
        return text

    def _embed_into(self, f: LabelingSession, paths: list[str] | None, cache, cancel: CancelToken | None,
                    job: str) -> None:
        """Embed (all, or `paths` again) through the session, the grid filling in at most once a second."""
        last_emit = time.monotonic()
        for item in f.embed(cache, cancel, paths, chunk=FOLDER_CHUNK):
            stage = "labeling" if self.classifier.ready() or f.confirmed else "embedding"
            self.progress.emit(job, stage, item.done, item.total)
            now = time.monotonic()
            if now - last_emit >= FOLDER_EMIT_INTERVAL_S:  # a 100k-file list is not rebuilt per chunk
                self._refresh_folder(store=False)
                last_emit = now

    def _reembed_folder(self) -> None:
        """The tail changed (fine-tuning or its reset): features again from the cached trunk maps."""
        f = self.session
        self._session_tail = self._tail_version
        paths = [p for p in f.paths if bool(f.embedded[f.row[p]])]
        cache = open_embedding_cache(self.project_folder, self.embedder)
        try:
            self._embed_into(f, paths, cache, None, "update folder")
        finally:
            cache.close()
        self.jobFinished.emit("update folder", "")
        self._refresh_folder()

    def _refresh_folder(self, store: bool = True) -> None:
        """Predict the folder again with every label so far (core.session) and show it."""
        f = self.session
        if f.predict() and bool(f.predicted.any()):
            self._predictions_stored = False  # labels.sqlite is behind, even when this refresh doesn't save
        if store and not self._predictions_stored:
            self._mark_dirty()
        self._emit_folder()

    def _items(self) -> list[FolderItem]:
        f = self.session
        items = []
        for p, (label, source, conf, sim, topk, priority) in zip(f.paths, f.shown()):
            if p in f.skipped:
                continue
            if not label:
                items.append(FolderItem(p, ""))
            elif source == "confirmed":
                items.append(FolderItem(p, label, 1.0, sim, source, topk))
            else:
                items.append(FolderItem(p, label, conf, sim, source, topk, priority))
        return items

    def _emit_folder(self) -> None:
        f = self.session
        if f is None:
            self.folderChanged.emit([])
            self.folderSummary.emit("")
            self.estimateChanged.emit("")
            return
        self.folderChanged.emit(self._items())
        summary = f"{len(f.skipped)} unreadable file(s) skipped" if f.skipped else ""
        self.folderSummary.emit(summary)
        self.estimateChanged.emit(f.estimate().text() if bool(f.predicted.any()) else "")

    def assign(self, paths: Sequence[str], class_name: str) -> None:
        """The human says these folder images are `class_name`: the folder model learns from it at once, and a
        label that differs from the model's also becomes a support example (the live view learns too)."""
        self._submit("correct", self._assign, list(paths), class_name,
                     undo=f"Label {len(paths)} image(s) '{class_name}'")

    def _assign(self, paths: list[str], class_name: str) -> str:
        f = self.session
        if f is None:
            return ""
        shown = {p: f.label_of(p) for p in paths}
        took = f.confirm(paths, class_name)
        by_source = {e.source: e.id for e in self.classifier.examples.values() if e.source}
        learn_paths, learn_images = [], []
        for p in took:
            if p in by_source:
                self.classifier.move_example(by_source[p], class_name)
            elif shown[p] != class_name:
                try:
                    learn_images.append(load_for_model(p, self.embedder.config))
                    learn_paths.append(p)
                except ImageError as exc:
                    self.message.emit("warning", exc.reason if hasattr(exc, "reason") else str(exc))
        if learn_images:
            self.classifier.add_examples(class_name, learn_images, learn_paths)
        self._store_labels_of(took)
        self._refresh_folder()
        return (f"{len(took)} image(s) labeled '{class_name}'"
                + (f"; {len(learn_images)} correction(s) added as examples" if learn_images else ""))

    def reject(self, paths: Sequence[str]) -> None:
        """"None of these classes": these images are confirmed unknown and teach the unknown decision."""
        self._submit("correct", self._reject, list(paths), undo=f"Mark {len(paths)} image(s) 'none of these'")

    def _reject(self, paths: list[str]) -> str:
        f = self.session
        if f is None:
            return ""
        took = f.reject(paths)
        rejected = set(took)
        for e in [e for e in self.classifier.examples.values() if e.source in rejected]:
            self.classifier.remove_example(e.id)  # an example of a class that the person now says it is not
        self._store_labels_of(took)
        self._refresh_folder()
        return f"{len(took)} image(s) marked 'none of these classes'"

    def accept(self, paths: Sequence[str]) -> None:
        self._submit("accept", self._accept, list(paths), undo=f"Accept {len(paths)} label(s)")

    def _accept(self, paths: list[str]) -> str:
        f = self.session
        if f is None:
            return ""
        took = f.accept(paths)
        self._store_labels_of(took)
        self._refresh_folder()
        left = len(paths) - len(took)
        return f"{len(took)} label(s) accepted" + (f"; {left} already confirmed or not labeled yet left as they are" if left else "")

    def accept_above(self, threshold: float) -> None:
        self._submit("accept", self._accept_above, threshold, undo=f"Accept labels above {threshold:.2f}")

    def _accept_above(self, threshold: float) -> str:
        f = self.session
        if f is None:
            return ""
        preview = f.preview_accept_above(threshold)
        took = f.accept_above(threshold)
        self._store_labels_of(took)
        self._refresh_folder()
        return (f"{len(took)} label(s) with confidence ≥ {threshold:.2f} accepted "
                f"(about {preview.expected_wrong:.0f} of them expected wrong)")

    def explain(self, path: str) -> None:
        self._submit("explain", self._explain, path)

    def _explain(self, path: str) -> str:
        f = self.session
        feature = f.feature(path) if f is not None else None
        if feature is None or not self.classifier.examples:
            self.explanation.emit(path, [])
            return ""
        feat = feature.float()
        near = self.classifier.nearest_examples(feat, k=4)
        self.explanation.emit(path, [(ExampleInfo(e.id, e.class_name, e.image), s) for e, s in near
                                     if e.image is not None])
        return ""

    def show_file(self, path: str) -> None:
        """Put one image file into the live view (the folder source: the selected image is the query)."""
        self._submit("open image", self._show_file, path)

    def _show_file(self, path: str) -> str:
        image = load_image(path)
        self.frames.put(Frame(image, 0, time.monotonic(), path))
        return ""

    def _store_predictions(self) -> None:
        f = self.session
        if f is None or self._predictions_stored:
            return
        self._predictions_stored = True
        rows = [(r.path, r.prediction, r.source) for r in f.records() if r.source == "predicted"]
        store_labels(self.project_folder, rows, f.root)

    def records(self) -> list[LabelRecord]:
        """The folder's labels as core records (engine thread): human labels first-class, then predictions."""
        return self.session.records() if self.session is not None else []

    def export_csv(self, path: str) -> None:
        self._submit("export", self._export_csv, path)

    def _export_csv(self, path: str) -> str:
        records = self.records()
        if not records:
            raise ValueError("there are no labels to export yet: label a folder first")
        write_labels_csv(records, path)
        return f"{len(records)} label(s) exported to {path}"

    def export_labels(self, fmt: str, out: str, **settings: object) -> None:
        """The project's labels (the folder's, confirmed and predicted, and the examples) in one of
        core.export's formats. settings: those of `protolabel export labels` (core.label_export_settings:
        only_confirmed, min_confidence, include_unknown, overwrite and the format's options); missing ones take
        the command line's defaults ("unknown" left out, every prediction in)."""
        self._submit("export", self._export_labels, fmt, out, dict(settings), cancellable=True)

    def _flush(self) -> None:
        """Write the project and the folder's predictions now: exports read them from the project folder."""
        self._write(self.project_folder)
        self._store_predictions()
        self._dirty_since = None

    def _export_labels(self, fmt: str, out: str, settings: dict, cancel: CancelToken) -> str:
        from core import select_labels  # the selection `protolabel export labels` makes

        self._flush()
        chosen, keywords = select_labels(read_labels(self.project_folder), fmt, **settings)
        report = finish(iter_export(chosen, fmt, out, cancel=cancel, **keywords),
                        lambda p: self.progress.emit("export", p.stage, p.done, p.total))
        text = f"{report.written} label(s) exported as {fmt} to {report.out}"
        if report.skipped:
            text += f"; {len(report.skipped)} file(s) missing on disk skipped"
        if report.notes and not report.cancelled:  # Label Studio: the document root and the storage to add
            self.message.emit("info", f"{fmt} export: " + " ".join(report.notes))
        return text + (" (cancelled)" if report.cancelled else "")

    def export_model(self, fmt: str, out: str) -> None:
        """The adapted classifier as ONNX or TorchScript (core.export_model), for use outside ProtoLabel."""
        self._submit("export model", self._export_model, fmt, out)

    def _export_model(self, fmt: str, out: str) -> str:
        self._flush()
        info = export_model(self.project_folder, fmt, out, self.embedder)
        return f"model exported to {info.path} ({len(info.classes)} classes; metadata in {info.sidecar})"

    # ------------------------------------------------------------------ intents: projects
    def new_project(self) -> None:
        self._submit("new project", self._new_project)

    def _new_project(self) -> str:
        self._autosave(force=True)
        self.classifier = FewShotClassifier(self.embedder)
        self.session = None
        self.settings = {"model": self.settings.get("model", "")}
        self.roi = None
        self._tail_version += 1
        folder = self.workspace / time.strftime("untitled-%Y%m%d-%H%M%S")
        n = 1
        while folder.exists():
            n += 1
            folder = self.workspace / time.strftime(f"untitled-%Y%m%d-%H%M%S-{n}")
        self._set_project(folder, unsaved=True)
        self._emit_folder()
        return ""

    def _set_project(self, folder: Path, unsaved: bool) -> None:
        self.project_folder = folder
        self.project_unsaved = unsaved
        self._snapshot_generation = -1
        self._dirty_since = None
        self.projectChanged.emit(str(folder), unsaved)

    def open_project(self, folder: str, restore_backup: bool = False) -> None:
        """Open a project folder; restore_backup: first put its previous save back (after damage)."""
        self._submit("open project", self._open_project, folder, restore_backup, cancellable=True)

    def _open_project(self, folder: str, restore: bool, cancel: CancelToken) -> str:
        if restore:
            restore_backup(folder)
            self.message.emit("info", f"restored the previous save of '{folder}' (the damaged files are kept "
                                      "as *.damaged)")
        try:
            return self._load_project(folder, cancel)
        except ProjectError as exc:
            if exc.backup and not restore:
                self.backupOffered.emit(folder, str(exc))
                return ""
            raise

    def _load_project(self, folder: str, cancel: CancelToken) -> str:
        wanted = _project_model(Path(folder))
        if wanted is not None and wanted != (self.settings.get("model") or ""):
            if wanted and not Path(wanted).is_file():
                self.message.emit("warning", f"the project's model '{wanted}' is missing: using the current one")
            else:
                self.embedder = self._new_embedder(wanted or None)
                self.settings["model"] = wanted
                self.ready.emit(self.model_description())
        project = load_project(folder, self.embedder)  # ProjectError -> message; the current project stays
        self._autosave(force=True)
        self.classifier = project.classifier
        self.session = None
        model = self.settings.get("model", "")
        self.settings = dict(project.settings)
        self.settings["model"] = model
        roi = self.settings.get("roi")
        self.roi = tuple(roi) if roi else None
        self._tail_version += 1
        self._set_project(Path(folder), unsaved=Path(folder).resolve().parent == self.workspace.resolve())
        self._after_change()
        self._emit_folder()
        root = project.query_root
        if root and Path(root).is_dir():
            confirmed = {}
            for label in project.labels():
                if label.source == "confirmed":
                    try:
                        confirmed[str(project.resolve(label.path))] = label.label
                    except ProjectError:
                        continue
            self._label_folder(root, cancel, confirmed)
        elif root:
            self.message.emit("warning", f"the project's image folder '{root}' is not there any more; "
                                         "its labels are kept in the project")
        source = self.settings.get("source")
        if isinstance(source, dict) and source.get("kind") in ("camera", "video"):
            self.projectSource.emit(dict(source))
        self._dirty_since = None
        return f"opened {project.name}"

    def save_project(self, folder: str | None = None) -> None:
        """Save (folder None) or save as (a new folder: labels are copied over)."""
        self._submit("save", self._save_project, folder)

    def _save_project(self, folder: str | None) -> str:
        target = Path(folder) if folder else self.project_folder
        if folder and target.resolve() != self.project_folder.resolve():
            if (target / "project.json").exists() or (target.exists() and any(target.iterdir())):
                if not (target / "project.json").exists():
                    raise ValueError(f"'{target}' is not empty: pick an empty folder for the project")
            self._write(target)
            if self.session is not None:
                store_labels(target, [(r.path, r.prediction, r.source) for r in self.records()], self.session.root)
            self._set_project(target, unsaved=False)
        else:
            self._write(target)
        self._dirty_since = None
        return f"saved to {target}"

    def _write(self, folder: Path) -> None:
        root = self.session.root if self.session is not None else None
        save_project(folder, self.classifier, query_root=root, settings=self.settings)
        self.saved.emit(str(folder))

    def _autosave(self, force: bool = False) -> None:
        if self.classifier is None or self.project_folder is None:
            return
        if self._dirty_since is None and not force:
            return

        if force and self._dirty_since is None and not (self.project_folder / "project.json").exists():
            if not self.classifier.classes:
                return  # nothing to keep
        try:
            self._write(self.project_folder)
            self._store_predictions()
        except OSError as exc:
            self.message.emit("error", f"autosave failed: {exc}")
        self._dirty_since = None
