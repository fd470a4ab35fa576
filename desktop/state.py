"""What the engine thread tells the widgets: immutable snapshots, safe to pass between threads.

The classifier lives in the engine thread and is the single source of truth; widgets render the latest
snapshot and change nothing themselves (they emit intents, the main window forwards them to the engine).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core import UNKNOWN_LABEL

__all__ = ["UNKNOWN_LABEL", "ClassInfo", "ExampleInfo", "ModelSnapshot", "FolderItem", "LivePrediction"]


@dataclass(frozen=True)
class ClassInfo:
    name: str
    color: str  # "#rrggbb"
    key: str | None  # "1".."9" for the first nine classes, else None
    count: int  # support examples


@dataclass(frozen=True)
class ExampleInfo:
    id: str
    class_name: str
    thumbnail: np.ndarray  # (S, S, 3) RGB uint8, the image as the model saw it; never modified


@dataclass(frozen=True)
class ModelSnapshot:
    generation: int
    classes: tuple[ClassInfo, ...] = ()
    examples: tuple[ExampleInfo, ...] = ()
    finetuned: bool = False
    finetune_info: dict = field(default_factory=dict)
    backbone: str = ""
    device: str = "cpu"

    def color_of(self, name: str) -> str:
        for c in self.classes:
            if c.name == name:
                return c.color
        return "#9e9e9e"  # unknown / removed class: grey

    def examples_of(self, name: str) -> list[ExampleInfo]:
        return [e for e in self.examples if e.class_name == name]


@dataclass
class FolderItem:
    path: str  # absolute file path
    label: str  # a class name, UNKNOWN_LABEL, or "" while not labeled yet
    confidence: float = 0.0
    similarity: float = 0.0
    source: str = "predicted"  # predicted | confirmed
    topk: list[tuple[str, float]] = field(default_factory=list)
    priority: float | None = None  # review order from the labeling session, lower first; None: by confidence

    @property
    def is_unknown(self) -> bool:
        return self.label == UNKNOWN_LABEL


@dataclass(frozen=True)
class LivePrediction:
    frame_index: int
    generation: int  # classifier generation it was computed with; older ones are dropped
    label: str
    confidence: float
    topk: tuple[tuple[str, float], ...]
    similarity: float
    latency_ms: float  # preprocess + backbone + method for this frame
    roi: tuple[int, int, int, int] | None  # (x0, y0, x1, y1) in frame pixels, or None for the whole frame
