"""The main window: sources, live view, folder grid, classes panel, projects. Wires widgets to the engine.

The engine (desktop.engine) owns the model in its own thread; this window forwards the widgets' intents to
it and renders what it sends back. No model work and no file decoding happen on the UI thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PySide6.QtCore import QSettings, QSize, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QGuiApplication, QKeyEvent, QKeySequence, QPainter, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSizePolicy,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core import (
    VIDEO_EXTENSIONS,
    CameraSource,
    Embedder,
    FrameSource,
    VideoFileSource,
    __version__,
)

from .class_panel import ClassPanel
from .engine import Change, Engine, LatestFrame
from .folder_view import FolderView
from .live_view import LiveView
from .messages import MessageBar, MessageLog, MessagesDialog
from .resources import app_icon
from .state import LivePrediction, ModelSnapshot
from .workers import CameraProbe, SourceRunner

BURST_INTERVAL_MS = 200  # hold-to-capture: five frames a second
BAR_RESULTS = {"reset fine-tuning", "undo", "redo", "remove class", "save"}  # besides LONG_JOBS' results
RUNTIME_CHOICES = {  # core.runtime's names -> Model > CPU runtime
    "auto": ("&Automatic", "ONNX Runtime where it works, else PyTorch"),
    "onnxruntime": ("&ONNX Runtime", "The fastest exact path on most CPUs"),
    "int8": ("ONNX Runtime &int8", "Quantized: about twice as fast again; probabilities differ slightly from "
                                   "an exported model's"),
    "torch": ("&PyTorch", "Plain PyTorch (slower on the CPU)"),
}
UNDO_LIMIT = 200  # changes Edit > Undo can go back (removed examples stay in memory until then)
LONG_JOBS = {"label folder", "update folder", "fine-tune", "import classes", "add images", "open project",
             "change model", "export", "export model"}
RESOLUTIONS = [("Camera default", None), ("640 × 480", (640, 480)), ("1280 × 720", (1280, 720)),
               ("1920 × 1080", (1920, 1080))]


def default_embedder(runtime: str | None = None) -> Embedder:
    """The embedded default model on the best device; one core left for the camera and the GUI. runtime: how
    the trunk runs on the CPU (None: PROTOLABEL_RUNTIME, else auto)."""
    from core import configure_threads, create_default_backbone

    configure_threads(reserve=1)
    return Embedder(create_default_backbone(), "auto", runtime=runtime)


class CameraDialog(QDialog):
    """Choose a camera (probed in a thread) or a stream address, and a resolution."""

    def __init__(self, probe: CameraProbe, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open camera")
        self.cameras = QComboBox()
        # as wide as the longest camera name: the dialog grows with it, never cuts it
        self.cameras.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.cameras.addItem("Looking for cameras…", None)
        self.cameras.setEnabled(False)
        self.note = QLabel("Plug a camera in and open this dialog again,\nor type a stream address below.")
        self.note.hide()
        self.url = QLineEdit(placeholderText="rtsp://… or http://… (optional)")
        self.url.setMinimumWidth(self.url.fontMetrics().horizontalAdvance(self.url.placeholderText()) + 16)
        self.resolution = QComboBox()
        for text, size in RESOLUTIONS:
            self.resolution.addItem(text, size)
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Camera", self.cameras)
        form.addRow("", self.note)
        form.addRow("or stream", self.url)
        form.addRow("Resolution", self.resolution)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.probe = probe  # owned by the window: it may outlive the dialog
        probe.found.connect(self._on_probe_found)
        probe.start()

    def _on_probe_found(self, cameras: list) -> None:
        self.cameras.clear()
        for cam in cameras:
            size = f" ({cam.width}×{cam.height})" if cam.width else ""
            self.cameras.addItem(f"{cam.index}: {cam.name}{size}", cam.index)
        if not cameras:
            self.cameras.addItem("No camera found", None)
        self.note.setVisible(not cameras)
        self.cameras.setEnabled(bool(cameras))

    def choice(self) -> tuple[int | str | None, tuple[int, int] | None]:
        device = self.url.text().strip() or self.cameras.currentData()
        return device, self.resolution.currentData()

    def done(self, result: int) -> None:
        self.probe.found.disconnect(self._on_probe_found)
        super().done(result)


class ElidedLabel(QLabel):
    """A status-bar label that shrinks with the window, ending in "…" (the whole text in its tooltip)."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setMinimumWidth(60)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(self.minimumWidth(), super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideMiddle, self.width())
        painter.drawText(self.rect(), int(self.alignment()), text)


class TaskBar(QWidget):
    """Progress of the engine's long job, with Cancel; lives in the status bar."""

    def __init__(self, on_cancel: Callable[[], None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.bar = QProgressBar(maximumWidth=220, textVisible=True)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(on_cancel)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel)
        self.hide()

    def show_progress(self, stage: str, done: int, total: int) -> None:
        self.label.setText(stage)
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        self.bar.setFormat(f"{done} / {total}")
        self.show()


class _ChangeCommand(QUndoCommand):
    """An engine Change on Qt's undo stack. It has already happened when pushed: the first redo does nothing.
    Captures into one class less than BURST_MERGE_S apart (holding a key or button) are one step."""

    BURST_MERGE_S = 1.5

    def __init__(self, engine: Engine, change: Change) -> None:
        super().__init__(change.text)
        self.engine, self.change, self._pushed = engine, change, True
        self._time = time.monotonic()
        self._captures = 1

    def id(self) -> int:
        return 1 if self.change.text.startswith("Add an example to") else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        if (not isinstance(other, _ChangeCommand) or other.change.text != self.change.text or other.change.labels
                or other.change.before.generation != self.change.after.generation
                or other._time - self._time > self.BURST_MERGE_S):
            return False
        self.change = Change(self.change.text, self.change.before, other.change.after, self.change.root, {})
        self._time = other._time
        self._captures += 1
        self.setText(self.change.text.replace("Add an example", f"Add {self._captures} examples"))
        return True

    def redo(self) -> None:
        if self._pushed:
            self._pushed = False
            return
        self.engine.redo(self.change)

    def undo(self) -> None:
        self.engine.undo(self.change)


class MainWindow(QMainWindow):
    """ProtoLabel's window. make_embedder, workspace and settings are injectable (tests, selftest)."""

    def _fit_to_screen(self, width: int, height: int) -> None:
        """That size, or less where the screen is smaller (a 1366 x 768 laptop): the whole window on screen."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is not None:
            room = screen.availableGeometry()
            width, height = min(width, int(room.width() * 0.95)), min(height, int(room.height() * 0.9))
        self.resize(width, height)

    def __init__(self, make_embedder: Callable[[], Embedder] = default_embedder, workspace: str | Path | None = None,
                 settings: QSettings | None = None, open_last: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("ProtoLabel")
        self.setWindowIcon(app_icon())
        self._fit_to_screen(1400, 880)
        self.settings = settings or QSettings("ProtoLabel", "ProtoLabel")
        if workspace is None:
            workspace = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)) / "unsaved"
        self.frames = LatestFrame()
        runtime = self.settings.value("runtime", "", str)
        if make_embedder is default_embedder and runtime in RUNTIME_CHOICES:
            make_embedder = partial(default_embedder, runtime)
        self.engine = Engine(make_embedder, self.frames, workspace)
        self.sources = SourceRunner(self.frames)
        self.camera_probe = CameraProbe(self)
        self.snapshot = ModelSnapshot(-1)
        self.project_folder = ""
        self.project_unsaved = True
        self.model_ready = False
        self.message_log = MessageLog(self)  # what the user was told (desktop.messages)
        self._job = ""  # the engine job whose messages arrive now: their cause
        self._source_spec: dict | None = None  # how the live source was opened (saved with the project)
        self._wanted_camera: tuple[int, tuple[int, int] | None] = (0, None)
        self._shown_seq = 0
        self._source_times: list[float] = []
        self._model_times: list[float] = []
        self._burst_class: str | None = None
        self._burst_count = 0
        self._pending_classes: list[str] = []
        self._closing = False

        self.live = LiveView()
        self.folder_view = FolderView(settings=self.settings)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.live, "Live")
        self.tabs.addTab(self.folder_view, "Folder")
        self.message_bar = MessageBar(self.message_log)
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.message_bar)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.class_panel = ClassPanel()
        dock = QDockWidget("Classes", self)
        dock.setObjectName("classes")
        dock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        dock.setTitleBarWidget(QWidget())
        dock.setWidget(self.class_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)

        self.task_bar = TaskBar(lambda: self.engine.cancel())
        self.source_label = ElidedLabel("No source")
        self.model_label = ElidedLabel("Loading model…")
        self.statusBar().addPermanentWidget(self.task_bar)
        self.statusBar().addPermanentWidget(self.source_label)
        self.statusBar().addPermanentWidget(self.model_label)

        self._build_actions()
        self._connect()
        self._frame_timer = QTimer(self, interval=30, timeout=self._on_frame_timer)
        self._frame_timer.start()
        self._burst_timer = QTimer(self, interval=BURST_INTERVAL_MS, timeout=self._on_burst_timer)
        self._explain_timer = QTimer(self, singleShot=True, interval=120, timeout=self._on_explain_timer)
        self._explain_path = ""
        self.engine.start()
        last = self.settings.value("last_project", "", str)
        if open_last and last and (Path(last) / "project.json").is_file():
            self.engine.open_project(last)

    # ------------------------------------------------------------------ setup
    def _action(self, text: str, slot: Callable, shortcut: str | QKeySequence.StandardKey | None = None,
                tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        act.triggered.connect(lambda _=False: slot())
        return act

    def _build_actions(self) -> None:
        A = self._action
        self.act_new = A("&New project", self.new_project, QKeySequence.StandardKey.New)
        self.act_open = A("&Open project…", self.open_project, QKeySequence.StandardKey.Open)
        self.act_save = A("&Save project", self.save_project, QKeySequence.StandardKey.Save)
        self.act_save_as = A("Save project &as…", self.save_project_as, QKeySequence.StandardKey.SaveAs)
        self.act_export = A("&Export labels (CSV)…", self.export_csv, "Ctrl+E", "Write the folder's labels to a CSV file")
        self.label_format_actions = [
            A(text, lambda f=fmt: self.export_labels(f), None, tip) for fmt, text, tip in (
                ("csv", "CSV…", "One CSV file: the folder's labels and the examples, with filters"),
                ("json", "JSON…", "One JSON file: project, classes, labels"),
                ("imagefolder", "Image folder (one folder per class)…", "Copies of the images, a folder per class"),
                ("yolo-cls", "YOLO classification (train/val)…", "Ultralytics layout with a validation split"),
                ("labelstudio", "Label Studio tasks…", "Predictions and your labels to review in Label Studio"))]
        self.model_format_actions = [
            A(text, lambda f=fmt: self.export_model(f), None, tip) for fmt, text, tip in (
                ("onnx", "ONNX…", "The adapted classifier for onnxruntime (see examples/predict_onnx.py)"),
                ("torchscript", "TorchScript…", "The adapted classifier for PyTorch without ProtoLabel"))]
        self.act_quit = A("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_camera = A("&Camera…", self.open_camera, "Ctrl+Shift+C", "Use a webcam as the source")
        self.act_video = A("&Video file…", self.open_video, "Ctrl+Shift+V", "Use a video file as the source")
        self.act_folder = A("&Image folder…", self.open_folder, "Ctrl+Shift+F",
                            "Label every image of a folder, least confident first")
        self.act_stop = A("&Stop source", self.stop_source)
        self.act_import = A("Import folder of &classes…", self.import_tree, None,
                            "A folder with one sub-folder of examples per class")
        self.act_finetune = A("&Fine-tune", self.finetune, "Ctrl+T",
                              "Adapt the model to your examples (a few seconds in the background); a small gain, "
                              "most with several examples per class")
        self.act_reset = A("&Reset fine-tuning", self.engine.reset_finetune)
        self.act_model = A("Choose &model file…", self.choose_model, None,
                           "A model made with `protolabel metatrain` (or exported); examples are embedded again")
        self.act_default_model = A("Use the &default model", lambda: self.engine.set_model(None))
        self.runtime_actions = QActionGroup(self)
        for name, (text, tip) in RUNTIME_CHOICES.items():
            act = A(text, lambda n=name: self.set_runtime(n), None, tip)
            act.setCheckable(True)
            act.setData(name)
            self.runtime_actions.addAction(act)
        self.act_help = A("&Getting started", self.show_help, QKeySequence.StandardKey.HelpContents)
        self.act_about = A("&About ProtoLabel", self.show_about)
        self.act_messages = A("&Messages…", self.show_messages, "Ctrl+Shift+M",
                              "Everything ProtoLabel said in this session, with the time")

        bar = self.menuBar()
        m = bar.addMenu("&Project")
        for a in (self.act_new, self.act_open):
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        for a in (self.act_save, self.act_save_as, None, self.act_export):
            m.addSeparator() if a is None else m.addAction(a)
        sub = m.addMenu("Export labels &as")
        for a in self.label_format_actions:
            sub.addAction(a)
        sub = m.addMenu("Export &model")
        for a in self.model_format_actions:
            sub.addAction(a)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = bar.addMenu("&Edit")
        self.undo_stack = QUndoStack(self)
        self.undo_stack.setUndoLimit(UNDO_LIMIT)
        self.act_undo = self.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setShortcut(QKeySequence.StandardKey.Undo)
        self.act_redo = self.undo_stack.createRedoAction(self, "&Redo")
        self.act_redo.setShortcuts(list(dict.fromkeys(
            [*QKeySequence.keyBindings(QKeySequence.StandardKey.Redo), QKeySequence("Ctrl+Shift+Z")])))
        m.addAction(self.act_undo)
        m.addAction(self.act_redo)
        m = bar.addMenu("&Source")
        for a in (self.act_camera, self.act_video, self.act_folder, None, self.act_stop):
            m.addSeparator() if a is None else m.addAction(a)
        m = bar.addMenu("&Model")
        for a in (self.act_import, None, self.act_finetune, self.act_reset, None, self.act_model,
                  self.act_default_model):
            m.addSeparator() if a is None else m.addAction(a)
        sub = m.addMenu("&CPU runtime")
        for a in self.runtime_actions.actions():
            sub.addAction(a)
        m = bar.addMenu("&Help")
        m.addAction(self.act_help)
        m.addAction(self.act_messages)
        m.addAction(self.act_about)

        tb = self.addToolBar("Main")
        tb.setObjectName("main")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_camera, self.act_video, self.act_folder, None, self.act_finetune, None, self.act_save,
                  self.act_export):
            tb.addSeparator() if a is None else tb.addAction(a)

    def _connect(self) -> None:
        e = self.engine
        e.ready.connect(self._on_engine_ready)
        e.snapshotChanged.connect(self._on_engine_snapshot)
        e.livePrediction.connect(self._on_engine_live_prediction)
        e.folderChanged.connect(self._on_engine_folder_changed)
        e.folderSummary.connect(self.folder_view.set_summary)
        e.estimateChanged.connect(self.folder_view.set_estimate)
        e.explanation.connect(self.folder_view.show_explanation)
        e.progress.connect(self._on_engine_progress)
        e.jobStarted.connect(self._on_engine_job_started)
        e.jobFinished.connect(self._on_engine_job_finished)
        e.message.connect(lambda level, text: self.show_message(level, text, self._job or "background",
                                                                 sticky=not self._job))
        e.projectChanged.connect(self._on_engine_project_changed)
        e.saved.connect(self._on_engine_saved)
        e.backupOffered.connect(self._on_engine_backup_offered)
        e.projectSource.connect(self._on_engine_project_source)
        e.changeDone.connect(lambda change: self.undo_stack.push(_ChangeCommand(e, change)))
        e.historyCleared.connect(self.undo_stack.clear)
        s = self.sources
        s.opened.connect(self._on_source_opened)
        s.failed.connect(self._on_source_failed)
        s.ended.connect(self._on_source_ended)
        s.interrupted.connect(self._on_source_interrupted)
        cp = self.class_panel
        cp.addClassRequested.connect(e.add_class)
        cp.renameClassRequested.connect(e.rename_class)
        cp.removeClassRequested.connect(e.remove_class)
        cp.captureRequested.connect(self._on_class_panel_capture)
        cp.burstRequested.connect(self._on_class_panel_burst)
        cp.removeExampleRequested.connect(e.remove_example)
        cp.moveExampleRequested.connect(e.move_example)
        cp.filesDropped.connect(e.add_files)
        cp.importTreeRequested.connect(self.import_tree)
        fv = self.folder_view
        fv.assignRequested.connect(e.assign)
        fv.acceptRequested.connect(e.accept)
        fv.acceptAboveRequested.connect(e.accept_above)
        fv.rejectRequested.connect(e.reject)
        fv.cancelRequested.connect(lambda: e.cancel("label folder"))
        fv.currentChanged.connect(self._on_folder_current_changed)
        fv.openRequested.connect(self._on_folder_open_requested)
        self.live.roiChanged.connect(e.set_roi)
        self.live.captureRequested.connect(self.capture)

    # ------------------------------------------------------------------ messages
    def show_message(self, level: str, text: str, cause: str = "window", sticky: bool = False) -> None:
        """Tell the person (desktop.messages): on the bar until `cause` is resolved or replaced, or it fades
        (sticky: stays); always in Help > Messages…"""
        self.message_log.post(cause, level, text, sticky)
        self.statusBar().showMessage(text, 8000)

    @property
    def messages(self) -> list[tuple[str, str]]:
        """(level, text) of everything said so far, newest last."""
        return [(n.level, n.text) for n in self.message_log.notices]

    def show_messages(self) -> MessagesDialog:
        dialog = getattr(self, "_messages_dialog", None)
        if dialog is None:
            dialog = self._messages_dialog = MessagesDialog(self.message_log, self)
        dialog.show()
        dialog.raise_()
        return dialog

    def _on_engine_saved(self, folder: str) -> None:
        self.statusBar().showMessage(f"Saved {Path(folder).name}", 3000)  # the full path: the window title's project
        self.message_log.resolve("background")  # e.g. an autosave that failed before

    # ------------------------------------------------------------------ sources
    def open_camera(self, device: int | str | None = None, resolution: tuple[int, int] | None = None) -> None:
        if device is None:
            dialog = CameraDialog(self.camera_probe, self)
            if dialog.exec() != QDialog.DialogCode.Accepted:
                return
            device, resolution = dialog.choice()
            if device is None:
                self.show_message("warning", "No camera chosen. Plug one in and try again, or open a video file.")
                return
        w, h = resolution if resolution else (None, None)
        self.start_source(CameraSource(device, width=w, height=h),
                          {"kind": "camera", "device": device, "resolution": list(resolution) if resolution else None})

    def open_video(self, path: str | None = None) -> None:
        if path is None:
            pattern = " ".join(f"*{x}" for x in sorted(VIDEO_EXTENSIONS))
            path, _ = QFileDialog.getOpenFileName(self, "Open a video", self._last_dir(), f"Videos ({pattern})")
            if not path:
                return
        self._remember_dir(path)
        self.start_source(VideoFileSource(path, realtime=True, loop=True),
                          {"kind": "video", "path": str(Path(path).resolve())})

    def start_source(self, source: FrameSource, spec: dict | None = None) -> None:
        """spec: how to open it again ({"kind": "camera" | "video", ...}), saved with the project once it opens."""
        self._source_spec = spec
        self.frames.clear()
        self.live.set_frame(None)
        self.live.set_prediction(None)
        self.live.hint = f"Opening {source.name}…"
        self.source_label.setText(f"Opening {source.name}…")
        self._source_times.clear()
        self.sources.start(source)
        self.tabs.setCurrentWidget(self.live)

    def stop_source(self) -> None:
        """The person stops the live source (or picks a folder): the project won't reopen it either."""
        if self._source_spec is not None:
            self._source_spec = None
            self.engine.remember_source(None)
        self.sources.stop()
        self.class_panel.set_capture_enabled(False)
        self.source_label.setText("No source")
        self.live.source_fps = 0.0

    def open_folder(self, path: str | None = None) -> None:
        """The image-folder source: label every image; the live view shows the one selected in the grid."""
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Label an image folder", self._last_dir())
            if not path:
                return
        self._remember_dir(path)
        self.stop_source()
        self.source_label.setText(f"Folder {Path(path).name}")
        self.engine.label_folder(path)
        self.tabs.setCurrentWidget(self.folder_view)

    def _on_source_opened(self, name: str) -> None:
        self.message_log.resolve("source")
        if self._source_spec is not None:
            self.engine.remember_source(self._source_spec)
        self.source_label.setText(name)
        if name.endswith("(reconnected)"):
            self.show_message("info", f"{name[: -len(' (reconnected)')]} is back", "source")
        self.live.hint = "Waiting for the first frame…"

    def _on_source_failed(self, text: str) -> None:
        self.source_label.setText("No source")
        self.class_panel.set_capture_enabled(False)
        self.live.hint = f"{text}\n\nPick another source in the toolbar."
        self.live.set_frame(None)
        self.show_message("error", text, "source", sticky=True)

    def _on_source_interrupted(self, text: str) -> None:
        self.source_label.setText("Reconnecting…")
        self.show_message("warning", text, "source", sticky=True)

    def _on_engine_project_source(self, spec: dict) -> None:
        """An opened project's last source: a video that is still there, a camera that is plugged in."""
        if spec == self._source_spec and self.sources.is_running():
            return
        if spec["kind"] == "video":
            path = str(spec.get("path", ""))
            if Path(path).is_file():
                self.open_video(path)
            else:
                self.show_message("warning", f"The project's video '{path}' is not there any more (moved or "
                                             "deleted?). Open it with Source > Video file….", "source")
        elif spec["kind"] == "camera":
            device, size = spec.get("device"), spec.get("resolution")
            size = tuple(size) if isinstance(size, list) and len(size) == 2 else None
            if isinstance(device, str):  # a stream address: opening it is the only way to know
                self.open_camera(device, size)
            elif isinstance(device, int):
                self._wanted_camera = (device, size)
                self.camera_probe.found.connect(self._on_probe_found_project_camera)
                self.camera_probe.start()

    def _on_probe_found_project_camera(self, cameras: list) -> None:
        self.camera_probe.found.disconnect(self._on_probe_found_project_camera)
        device, size = self._wanted_camera
        if any(c.index == device for c in cameras) and not self.sources.is_running():
            self.open_camera(device, size)
        elif not self.sources.is_running():
            self.show_message("info", f"The project used camera {device}, which is not connected now: plug it "
                                      "in and choose Source > Camera….", "source")

    def _on_source_ended(self, name: str) -> None:
        self.source_label.setText(f"{name} (ended)")

    def _on_frame_timer(self) -> None:
        seq, frame = self.frames.latest()
        if frame is None or seq == self._shown_seq:
            return
        self._shown_seq = seq
        self.live.set_frame(frame)
        self.live.source_fps = _rate(self._source_times)
        self.class_panel.set_capture_enabled(True)

    # ------------------------------------------------------------------ capture
    def capture(self, class_name: str) -> bool:
        """Add the picture on screen (or the region) to a class. False when there is no picture."""
        frame = self.live.frame()
        if frame is None:
            self.show_message("info", "Nothing to capture yet: pick a camera, a video or an image folder first.")
            return False
        self.engine.capture(class_name, frame, self.live.roi())
        return True

    def start_burst(self, class_name: str) -> None:
        self._burst_class = class_name
        self._burst_count = 0
        self.class_panel.set_recording(class_name)
        self._burst_timer.start()

    def stop_burst(self) -> None:
        self._burst_timer.stop()
        self._burst_class = None
        self.class_panel.set_recording(None)

    def _on_burst_timer(self) -> None:
        if self._burst_class is not None and self.capture(self._burst_class):
            self._burst_count += 1

    def _on_class_panel_burst(self, class_name: str, pressed: bool) -> None:
        if pressed:
            self.start_burst(class_name)
        else:
            self.stop_burst()

    def _on_class_panel_capture(self, class_name: str) -> None:
        if self._burst_count:  # the press was held long enough to record: the click adds nothing more
            self._burst_count = 0
            return
        self.capture(class_name)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.text()
        if self.tabs.currentWidget() is self.live and key.isdigit() and key != "0" and not event.modifiers() & (
                Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            if not event.isAutoRepeat():
                self._on_class_key(int(key))
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.text().isdigit() and not event.isAutoRepeat() and self._burst_class is not None:
            self.stop_burst()
            return
        super().keyReleaseEvent(event)

    def _on_class_key(self, n: int) -> None:
        # Classes made by keys a moment ago may not be in the snapshot yet (the engine answers asynchronously).
        names = [c.name for c in self.snapshot.classes]
        names += [p for p in self._pending_classes if p not in names]
        if n <= len(names):
            name = names[n - 1]
        elif n == len(names) + 1:
            name = f"Class {n}"  # the next number makes the next class, as in Teachable Machine
            self._pending_classes.append(name)
        else:
            self.show_message("info", f"Key {n} has no class yet: add classes 1 to {n} first.")
            return
        if self.capture(name):
            self.start_burst(name)
            self._burst_count = 1

    # ------------------------------------------------------------------ engine results
    def _on_engine_ready(self, description: str) -> None:
        self.model_ready = True
        self.model_label.setText(description)
        runtime = self.engine.embedder.runtime if self.engine.embedder is not None else "auto"
        for act in self.runtime_actions.actions():
            act.setChecked(act.data() == runtime)

    def _on_engine_snapshot(self, snapshot: ModelSnapshot) -> None:
        self.snapshot = snapshot
        names = {c.name for c in snapshot.classes}
        self._pending_classes = [p for p in self._pending_classes if p not in names]
        self.class_panel.set_snapshot(snapshot)
        self.live.set_snapshot(snapshot)
        self.folder_view.set_classes(snapshot.classes)
        base = self.model_label.text().split(" · ")[0]
        self.model_label.setText(base + (" · fine-tuned" if snapshot.finetuned else ""))
        if not any(c.count for c in snapshot.classes):
            self.live.set_prediction(None)
            self.class_panel.set_highlight(None)

    def _on_engine_live_prediction(self, pred: LivePrediction) -> None:
        if pred.generation < self.snapshot.generation:
            return  # computed before the last change of the support set
        self.live.model_fps = _rate(self._model_times)
        self.live.set_prediction(pred)
        self.class_panel.set_highlight(None if pred.label == "unknown" else pred.label)

    def _on_engine_folder_changed(self, items: list) -> None:
        self.folder_view.set_items(items)
        n = len(items)
        self.tabs.setTabText(1, f"Folder ({n})" if n else "Folder")

    def _on_engine_progress(self, job: str, stage: str, done: int, total: int) -> None:
        self.task_bar.show_progress(f"{job}: {stage}", done, total)
        if job in ("label folder", "update folder"):
            self.folder_view.set_progress(stage, done, total)

    def _on_engine_job_started(self, job: str) -> None:
        if job in LONG_JOBS:
            self.task_bar.show_progress(job, 0, 0)
        self._job = job
        self.message_log.resolve(job)  # a job run again replaces what its last run said
        if job == "fine-tune":
            self.live.status = "fine-tuning… predictions resume when it is done"
            self.live.update()
            self.act_finetune.setEnabled(False)

    def _on_engine_job_finished(self, job: str, summary: str) -> None:
        if job in LONG_JOBS:
            self.task_bar.hide()
        if job in ("label folder", "update folder", "open project"):
            self.folder_view.set_busy(False)
        if job == "fine-tune":
            self.live.status = ""
            self.live.update()
            self.act_finetune.setEnabled(True)
        self._job = ""
        if summary:
            # Every result is in Help > Messages…; a long job's also on the bar (the fine-tune result stays
            # there until the next one), unless the job left a warning or an error there.
            said = self.message_log.active.get(job)
            on_bar = (job in LONG_JOBS or job in BAR_RESULTS) and (said is None or said.level == "info")
            self.message_log.post(job, "info", summary, sticky=job == "fine-tune", activate=on_bar)
            self.statusBar().showMessage(summary, 10_000)

    def _on_engine_project_changed(self, folder: str, unsaved: bool) -> None:
        self.project_folder, self.project_unsaved = folder, unsaved
        name = Path(folder).name
        self.setWindowTitle(f"ProtoLabel — {'Untitled project' if unsaved else name}")
        self.settings.setValue("last_project", folder)
        if not unsaved:
            recent = [folder] + [p for p in self.settings.value("recent_projects", [], list) or [] if p != folder]
            self.settings.setValue("recent_projects", recent[:8])

    def ask(self, title: str, text: str) -> bool:
        """A yes/no question (tests replace this)."""
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _on_engine_backup_offered(self, folder: str, problem: str) -> None:
        if self.ask("Project damaged", f"{problem}.\n\nOpen the previous save instead? (The damaged files are kept.)"):
            self.engine.open_project(folder, restore_backup=True)
        else:
            self.show_message("error", problem)

    def _on_folder_current_changed(self, path: str) -> None:
        self._explain_path = path
        self._explain_timer.start()  # arrows held down: only the image the user stops on is explained

    def _on_explain_timer(self) -> None:
        if self._explain_path:
            self.engine.explain(self._explain_path)
            self.engine.show_file(self._explain_path)

    def _on_folder_open_requested(self, path: str) -> None:
        self.engine.show_file(path)
        self.tabs.setCurrentWidget(self.live)

    # ------------------------------------------------------------------ model
    def finetune(self) -> None:
        # Said before running, not after seconds of work: the learning rate is chosen by cross-validation on
        # the examples (one per class held out), so with a single example in a class it keeps the weights.
        counts = {c.name: c.count for c in self.snapshot.classes if c.count}
        if len(counts) < 2:
            self.show_message("info", "Fine-tuning needs examples of at least two classes.")
            return
        few = [name for name, n in counts.items() if n < 2]
        if few:
            self.show_message("info", "Fine-tuning can't help yet: it needs at least 2 examples in every class "
                                      f"({', '.join(few[:3])}{' …' if len(few) > 3 else ''} "
                                      f"{'has' if len(few) == 1 else 'have'} 1). Add examples and try again.")
            return
        self.engine.finetune()

    def set_runtime(self, name: str) -> None:
        """How the network runs on the CPU (Model > CPU runtime); remembered for the next start."""
        self.settings.setValue("runtime", name)
        self.engine.set_runtime(name)

    def choose_model(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a model file", self._last_dir(),
                                                  "ProtoLabel models (*.safetensors)")
            if not path:
                return
        self._remember_dir(path)
        self.engine.set_model(path)

    def import_tree(self, path: str | None = None) -> None:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Folder with one sub-folder per class", self._last_dir())
            if not path:
                return
        self._remember_dir(path)
        self.engine.import_tree(path)

    # ------------------------------------------------------------------ projects
    def new_project(self) -> None:
        self.engine.new_project()

    def open_project(self, path: str | None = None) -> None:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open a ProtoLabel project folder", self._last_dir())
            if not path:
                return
        if not (Path(path) / "project.json").is_file():
            self.show_message("error", f"'{path}' is not a ProtoLabel project (it has no project.json).")
            return
        self.engine.open_project(path)

    def save_project(self) -> None:
        if self.project_unsaved:
            self.save_project_as()
        else:
            self.engine.save_project()

    def save_project_as(self, path: str | None = None) -> None:
        """Save into a new folder the person types (it is made) or picks; see desktop.path_dialog."""
        if path is None:
            from .path_dialog import PathDialog

            keep_out = self._keep_out()
            dialog = PathDialog("Save project as", "The project is saved into a new, empty folder. Type its name or "
                                "path, or browse to where it goes.", self._output_default("project", keep_out),
                                avoid=keep_out, parent=self)
            path = dialog.chosen if dialog.exec() else ""
            dialog.deleteLater()
            if not path:
                return
            self._remember_output("project", path)
        self.engine.save_project(path)

    def export_csv(self, path: str | None = None) -> None:
        if path is None:
            path = self._ask_output_file("Export labels (CSV)", "The folder's labels as a CSV file.",
                                         f"{self._project_name()}-labels", ".csv", "CSV (*.csv)")
            if not path:
                return
        self._remember_output("export", path)
        self.engine.export_csv(path)

    def export_labels(self, fmt: str, path: str | None = None, **settings: object) -> None:
        """Export in a core.export format. Without a path: the format's dialog (desktop.export_dialog: where,
        the filters and the format's options, as `protolabel export labels` offers them); settings: the
        command line's names (core.label_export_settings), missing ones take its defaults."""
        if path is None:
            from core import label_format_layout

            from .export_dialog import FILE_SUFFIXES, ExportDialog

            keep_out = self._keep_out()
            folder = label_format_layout(fmt) == "folder"
            default = self._output_default(_output_kind(fmt), keep_out, f"{self._project_name()}-{fmt}",
                                           folder=folder, suffix="" if folder else FILE_SUFFIXES.get(fmt, ""))
            dialog = ExportDialog(fmt, default, settings=self.settings, avoid=keep_out, parent=self)
            accepted = bool(dialog.exec())
            path, settings = dialog.chosen, dialog.settings
            dialog.deleteLater()
            if not accepted or not path:
                return
        self._remember_output(_output_kind(fmt), path)
        self.engine.export_labels(fmt, path, **settings)

    def export_model(self, fmt: str, path: str | None = None) -> None:
        if path is None:
            ext = ".onnx" if fmt == "onnx" else ".pt"
            path = self._ask_output_file("Export the adapted model", "The adapted classifier as one file, for use "
                                         "outside ProtoLabel.", f"{self._project_name()}-model", ext, f"*{ext}")
            if not path:
                return
        self._remember_output("export", path)
        self.engine.export_model(fmt, path)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = [p for p in self.settings.value("recent_projects", [], list) or [] if Path(p).is_dir()]
        for p in recent:
            self.recent_menu.addAction(p).triggered.connect(lambda _=False, p=p: self.open_project(p))
        if not recent:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def _last_dir(self) -> str:
        """Where the open dialogs start: the last folder opened, at first the Pictures folder."""
        pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
        return self.settings.value("last_dir", pictures or str(Path.home()), str)

    def _remember_dir(self, path: str) -> None:
        p = Path(path)
        self.settings.setValue("last_dir", str(p if p.is_dir() else p.parent))

    def _keep_out(self) -> list[tuple[Path, str]]:
        """Folders a project or an export must stay out of: the labeled image folder (as the project file
        names it, and where the grid's images are; anything written there would be labeled next time) and
        the project folder."""
        from core import ProjectError, read_project_meta

        from .path_dialog import common_folder, is_inside

        keep: list[tuple[Path, str]] = []
        if self.project_folder:
            try:
                root = read_project_meta(self.project_folder).get("query_root")
            except (ProjectError, OSError):
                root = None
            if root:
                keep.append((Path(root), "the labeled image folder"))
        shown = common_folder([item.path for item in self.folder_view.items()])
        if shown is not None and not any(is_inside(shown, folder) for folder, _ in keep):
            keep.append((shown, "the labeled image folder"))
        if self.project_folder:
            keep.append((Path(self.project_folder), "the project folder"))
        return keep

    def _project_name(self) -> str:
        """The saved project's name; an unsaved one is named after its labeled folder."""
        if self.project_folder and not self.project_unsaved:
            return Path(self.project_folder).name
        labeled = [folder for folder, what in self._keep_out() if what == "the labeled image folder"]
        return labeled[0].name if labeled and labeled[0].name else "My project"

    def _output_default(self, kind: str, keep_out: list[tuple[Path, str]], name: str | None = None, *,
                        folder: bool = True, suffix: str = "") -> Path:
        """A new path for a project (kind "project": Documents/ProtoLabel/<name>) or an export ("export":
        Documents/ProtoLabel/exports/<name>), or where the last one of its kind went, or beside the project;
        Label Studio tasks ("labelstudio") beside the labeled folder; never inside `keep_out`."""
        from .path_dialog import default_output, documents_folder

        docs = documents_folder()
        saved = Path(self.project_folder).parent if self.project_folder and not self.project_unsaved else None
        labeled = [f for f, what in keep_out if what == "the labeled image folder"]
        if kind == "labelstudio" and labeled:
            # Label Studio serves one storage folder that holds the images and the tasks file (core.export):
            # the tasks go beside the labeled folder unless the person chose another place before.
            parents = [self.settings.value("output_dir/labelstudio", "", str) or None, labeled[0].parent]
        else:
            parents = [self.settings.value(f"output_dir/{'project' if kind == 'project' else 'export'}", "", str)
                       or None, docs if kind == "project" else docs / "exports", saved]
        return default_output(name or self._project_name(), parents, keep_out, folder=folder, suffix=suffix)

    def _remember_output(self, kind: str, path: str) -> None:
        """The next default of this kind goes beside this one (never into it)."""
        self.settings.setValue(f"output_dir/{kind}", str(Path(path).parent))

    def _ask_output_file(self, title: str, text: str, name: str, suffix: str, name_filter: str) -> str:
        """A file to write (desktop.path_dialog: typed or browsed to; missing folders are made) -> "" if cancelled."""
        from .path_dialog import PathDialog

        default = self._output_default("export", self._keep_out(), name, folder=False, suffix=suffix)
        dialog = PathDialog(title, text, default, mode="file", suffix=suffix, name_filter=name_filter,
                            ok_text="Export", parent=self)
        path = dialog.chosen if dialog.exec() else ""
        dialog.deleteLater()
        return path

    # ------------------------------------------------------------------ help
    def show_help(self) -> None:
        QMessageBox.information(self, "Getting started", "\n".join((
            "1. Pick a source: Camera, Video file or Image folder (toolbar).",
            "2. Add a class in the panel on the right (or press 1, 2, … on the live view).",
            "3. Hold a class's button or its number key to capture examples (several per second). Drag on the "
            "picture to capture a region only; drop image files or folders on a class.",
            "4. Predictions appear at once. Fine-tune (Ctrl+T) adapts the model in a few seconds.",
            "5. Image folder: the grid shows the least confident images first. Press a class's number to "
            "correct, Enter to accept; corrections become examples.",
            "6. Ctrl+Z undoes any change, Ctrl+Shift+Z redoes it. Help > Messages… lists what was said.",
            "7. Export the labels as CSV (Ctrl+E) or another format (Project > Export labels as). Projects are "
            "saved automatically.")))

    def show_about(self) -> None:
        QMessageBox.about(self, "About ProtoLabel", f"ProtoLabel {__version__}\nLabel images from a few examples, "
                                                    "offline. Model: " + self.model_label.text())

    # ------------------------------------------------------------------ shutdown
    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop every thread and timer; the engine saves the project first. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for t in (self._frame_timer, self._burst_timer, self._explain_timer):
            t.stop()
        self.sources.stop(wait=3.0)
        self.camera_probe.join(5.0)
        self.engine.shutdown()
        self.folder_view.shutdown()
        self.settings.sync()


def _output_kind(fmt: str) -> str:
    """Where an export's default goes (MainWindow._output_default): Label Studio's beside the labeled folder."""
    return "labelstudio" if fmt == "labelstudio" else "export"


def _rate(times: list[float], window: int = 30) -> float:
    """Events per second over the last `window` events; appends now."""
    now = time.monotonic()
    times.append(now)
    del times[:-window]
    if len(times) < 2 or times[-1] == times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])
