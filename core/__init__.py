"""ProtoLabel's engine: few-shot image classification without Qt. The GUI and the CLI use what is exported here.

Importing it sets nothing process-wide (environment, allocator): ProtoLabel's programs do that at their start
(OMP_WAIT_POLICY, `core.device.keep_freed_memory`: desktop.app.main, core.cli.main, bench). The one exception
is an environment with a CPU-only torch beside a torchvision built for CUDA, where torchvision can't be imported
without a guard (core/_torchvision_guard.py): it is installed here, before anything imports timm or torchvision."""
from . import _torchvision_guard

if _torchvision_guard.needed():
    _torchvision_guard.install()
from .backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    ModelFileError,
    WeightsNotFoundError,
    available_backbones,
    create_backbone,
    create_default_backbone,
    default_model_file,
    load_model_file,
    save_model_file,
)
from .classifier import UNKNOWN_LABEL, ClassifierCheckpoint, Example, FewShotClassifier, Prediction, StateError
from .device import configure_threads, select_device
from .embedding import CancelToken, Embedder, Skipped, load_for_model
from .export_model import EXPORT_FORMATS, ExportedModelInfo, export_model, read_exported_metadata
from .export import (
    LABEL_EXPORT_DEFAULTS,
    LABEL_FORMATS,
    LINK_MODES,
    ExportError,
    ExportReport,
    LabelEntry,
    LabelSet,
    export_labels,
    iter_export,
    label_export_settings,
    label_format_layout,
    label_format_options,
    read_labels,
    select_labels,
)
from .finetune import FinetuneProgress, FinetuneResult
from .images import (
    IMAGE_EXTENSIONS,
    ImageError,
    PreprocessConfig,
    class_folders,
    crop,
    from_bgr,
    list_images,
    load_image,
    preprocess,
)
from .labeling import (
    LabelRecord,
    LabelRun,
    Progress,
    SupportRun,
    add_support_tree,
    label_paths,
    query_paths,
    write_labels_csv,
)
from .methods import available_methods, create_method
from .session import AcceptPreview, Estimate, LabelingSession, SessionOptions
from .project import (
    Project,
    ProjectError,
    StoredLabel,
    class_color,
    forget_labels,
    load_project,
    open_embedding_cache,
    has_backup,
    read_project_meta,
    restore_backup,
    save_project,
    store_labels,
)
from .sources import (
    VIDEO_EXTENSIONS,
    CameraInfo,
    CameraSource,
    Frame,
    FrameSource,
    SourceError,
    VideoFileSource,
    list_cameras,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKBONE", "Backbone", "ModelFileError", "WeightsNotFoundError", "available_backbones",
    "create_backbone", "create_default_backbone", "default_model_file", "load_model_file", "save_model_file",
    "UNKNOWN_LABEL", "ClassifierCheckpoint", "Example", "FewShotClassifier", "Prediction", "StateError",
    "configure_threads", "select_device",
    "CancelToken", "Embedder", "Skipped", "load_for_model",
    "LABEL_FORMATS", "ExportError", "ExportReport", "LabelEntry", "LabelSet", "export_labels", "iter_export",
    "EXPORT_FORMATS", "ExportedModelInfo", "export_model", "read_exported_metadata",
    "read_labels", "LABEL_EXPORT_DEFAULTS", "LINK_MODES", "label_export_settings", "label_format_layout",
    "label_format_options", "select_labels",
    "FinetuneProgress", "FinetuneResult",
    "IMAGE_EXTENSIONS", "ImageError", "PreprocessConfig", "class_folders", "crop", "from_bgr", "list_images",
    "load_image", "preprocess",
    "LabelRecord", "LabelRun", "Progress", "SupportRun", "add_support_tree", "label_paths", "query_paths",
    "write_labels_csv",
    "available_methods", "create_method",
    "AcceptPreview", "Estimate", "LabelingSession", "SessionOptions",
    "Project", "ProjectError", "StoredLabel", "class_color", "load_project", "open_embedding_cache", "read_project_meta", "save_project",
    "has_backup", "restore_backup",
    "forget_labels", "store_labels",
    "VIDEO_EXTENSIONS", "CameraInfo", "CameraSource", "Frame", "FrameSource", "SourceError",
    "VideoFileSource", "list_cameras",
    "__version__",
]
