"""The few-shot engine the CLI and the GUI share: classes, support examples, predictions, unknowns, fine-tuning.

Each support example is embedded once; its pooled feature (D,) and trunk map (C, h, w) are cached, so
adding an example costs one forward pass and a prototype update costs a mean over cached vectors.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import DEFAULT_UNKNOWN_SIMILARITY, Calibration, calibrate, single_class_probability
from .classifier_state import STATE_FORMAT_VERSION, StateError, read_state, write_state
from .embedding import Embedder
from .finetune import FinetuneProgress, FinetuneResult, adapted_tail, finetune_tail
from .images import resize_for_model
from .methods import FewShotMethod, class_means, create_method, method_for

__all__ = ["FewShotClassifier", "ClassifierCheckpoint", "Prediction", "Example", "StateError", "STATE_FORMAT_VERSION", "UNKNOWN_LABEL"]

UNKNOWN_LABEL = "unknown"


@dataclass
class Example:
    id: str
    class_name: str
    feature: torch.Tensor  # (D,) float32, through the current (possibly adapted) tail
    map: torch.Tensor  # (C, h, w) float16 trunk map
    image: np.ndarray | None  # (S, S, 3) uint8 as the model saw it, for thumbnails and saving
    source: str | None = None  # where it came from (file path, "camera", ...)


@dataclass
class Prediction:
    label: str  # a class name, or UNKNOWN_LABEL
    probability: float  # calibrated softmax probability of the best class
    topk: list[tuple[str, float]]  # best classes with probabilities, best first
    similarity: float  # cosine similarity to the best class's prototype (raw features)
    best_class: str | None = None  # the best class even when the label is unknown

    @property
    def is_unknown(self) -> bool:
        return self.label == UNKNOWN_LABEL

    @property
    def distance(self) -> float:
        return 1.0 - self.similarity


@dataclass(frozen=True)
class ClassifierCheckpoint:
    """What FewShotClassifier.restore needs to go back (see FewShotClassifier.checkpoint)."""

    generation: int
    classes: tuple[str, ...]
    examples: tuple[tuple[Example, str], ...]  # each example with its class at the time
    tail: torch.nn.Module | None


class FewShotClassifier:
    """Support set + method + unknown rejection + optional adapted tail, over an Embedder.

    unknown: "auto" (thresholds from leave-one-out on the support), "off", or a float similarity threshold.
    ``generation`` increases on every change, so a caller can drop predictions made for an older state.
    """

    def __init__(self, embedder: Embedder, method: str = "prototypes", unknown: str | float = "auto", topk: int = 3) -> None:
        if create_method(method).is_transductive():  # KeyError, naming the known ones, for an unknown method
            raise ValueError(f"method '{method}' is transductive; choose an inductive method (its transductive "
                             "variant is used where a whole folder is labeled at once)")
        self.embedder = embedder
        self.method_name = method
        self.unknown = unknown
        self.topk = topk
        self.classes: list[str] = []
        self.examples: dict[str, Example] = {}
        self.generation = 0
        self.adapted_tail: torch.nn.Module | None = None
        self.finetune_info: dict = {}
        self._methods: dict[bool, FewShotMethod] = {}
        self._calibration: Calibration | None = None
        self._prototypes: tuple[torch.Tensor, list[str]] | None = None

    # ------------------------------------------------------------------ classes and examples
    def _changed(self) -> None:
        self.generation += 1
        self._methods = {}
        self._calibration = None
        self._prototypes = None

    def add_class(self, name: str) -> None:
        name = name.strip()
        if not name:
            raise ValueError("a class needs a name")
        if name == UNKNOWN_LABEL:
            raise ValueError(f"'{UNKNOWN_LABEL}' is reserved for images far from every class")
        if name in self.classes:
            raise ValueError(f"class '{name}' already exists")
        self.classes.append(name)
        self._changed()

    def rename_class(self, old: str, new: str) -> None:
        new = new.strip()
        if old not in self.classes:
            raise KeyError(f"no class '{old}'")
        if new == old:
            return
        if not new or new in self.classes or new == UNKNOWN_LABEL:
            raise ValueError(f"can't rename '{old}' to '{new}'")
        self.classes[self.classes.index(old)] = new
        for ex in self.examples.values():
            if ex.class_name == old:
                ex.class_name = new
        self._changed()

    def remove_class(self, name: str) -> None:
        if name not in self.classes:
            raise KeyError(f"no class '{name}'")
        self.classes.remove(name)
        self.examples = {k: v for k, v in self.examples.items() if v.class_name != name}
        self._changed()

    def examples_of(self, name: str) -> list[Example]:
        return [ex for ex in self.examples.values() if ex.class_name == name]

    def add_examples(self, class_name: str, images: Sequence[np.ndarray], sources: Sequence[str | None] | None = None) -> list[str]:
        """RGB uint8 images of any size -> example ids. Embeds only these images. Creates the class if new."""
        return self.add_labeled_examples([class_name] * len(images), images, sources)

    def add_labeled_examples(self, class_names: Sequence[str], images: Sequence[np.ndarray],
                             sources: Sequence[str | None] | None = None) -> list[str]:
        """Examples of possibly different classes, embedded together (one batch). -> example ids."""
        for name in dict.fromkeys(class_names):
            if name not in self.classes:
                self.add_class(name)
        config = self.embedder.config
        resized = [resize_for_model(img, config) for img in images]
        feats, maps = self._embed_resized(resized)
        ids = []
        for i, img in enumerate(resized):
            ex_id = uuid.uuid4().hex[:12]
            self.examples[ex_id] = Example(ex_id, class_names[i], feats[i], maps[i], img, sources[i] if sources else None)
            ids.append(ex_id)
        self._changed()
        return ids

    def add_example(self, class_name: str, image: np.ndarray, source: str | None = None) -> str:
        return self.add_examples(class_name, [image], [source])[0]

    def remove_example(self, example_id: str) -> None:
        if example_id not in self.examples:
            raise KeyError(f"no example '{example_id}'")
        del self.examples[example_id]
        self._changed()

    def move_example(self, example_id: str, class_name: str) -> None:
        if class_name not in self.classes:
            self.add_class(class_name)
        self.examples[example_id].class_name = class_name
        self._changed()

    # ------------------------------------------------------------------ undo
    def checkpoint(self) -> "ClassifierCheckpoint":
        """The classes and examples as they are now, cheap to keep (examples are shared, not copied)."""
        return ClassifierCheckpoint(self.generation, tuple(self.classes),
                                    tuple((ex, ex.class_name) for ex in self.examples.values()),
                                    self.adapted_tail)

    def restore(self, checkpoint: "ClassifierCheckpoint") -> None:
        """Back to a checkpoint's classes and examples (an undo or redo). The adapted tail stays as it is now:
        restored examples get their features through it again when it changed since."""
        self.classes = list(checkpoint.classes)
        self.examples = {}
        for ex, class_name in checkpoint.examples:
            ex.class_name = class_name  # moves and renames change it in place
            self.examples[ex.id] = ex
        if checkpoint.tail is not self.adapted_tail:
            self._refeature()
        self._changed()

    # ------------------------------------------------------------------ embedding
    def _embed_resized(self, resized: Sequence[np.ndarray], with_maps: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, S, 3) uint8 arrays -> features (B, D) through the current tail, maps (B, C, h, w) fp16
        (an empty tensor when with_maps is False: live predictions need none)."""
        from .images import to_tensor

        if not resized:
            return torch.zeros(0, self.embedder.backbone.feature_dim), torch.zeros(0)
        bs, config = self.embedder.batch_size, self.embedder.config
        parts = [self.embedder.embed_tensor(to_tensor(list(resized[i : i + bs]), config), with_maps, self.adapted_tail)
                 for i in range(0, len(resized), bs)]
        return torch.cat([f for f, _ in parts]), (torch.cat([m for _, m in parts]) if with_maps else torch.zeros(0))

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images of any size -> (B, D) features the prototypes are comparable with."""
        return self._embed_resized([resize_for_model(i, self.embedder.config) for i in images], with_maps=False)[0]

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed -> (B, D), through the adapted tail when there is one."""
        return self.embedder.embed_tensor(x, tail=self.adapted_tail)[0]

    def embed_tensor_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> features (B, D) through the current tail, trunk maps (B, C, h, w) float16."""
        feats, maps = self.embedder.embed_tensor(x, with_maps=True, tail=self.adapted_tail)
        if maps is None:
            raise RuntimeError("the embedder returned no trunk maps though they were asked for")
        return feats, maps

    def features_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Cached trunk maps (B, C, h, w) -> (B, D) through the current tail (folders re-use cached maps)."""
        return self.embedder.features_from_maps(maps, self.adapted_tail)

    # ------------------------------------------------------------------ support tensors
    def ready(self) -> bool:
        """At least one class with at least one example."""
        return any(True for _ in self.examples.values())

    def _support(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """-> features (N, D), labels (N,), the classes that have examples (label order)."""
        used = [c for c in self.classes if any(ex.class_name == c for ex in self.examples.values())]
        index = {c: i for i, c in enumerate(used)}
        exs = [ex for ex in self.examples.values() if ex.class_name in index]
        if not exs:
            return torch.zeros(0, self.embedder.backbone.feature_dim), torch.zeros(0, dtype=torch.long), []
        feats = torch.stack([ex.feature for ex in exs]).float()
        labels = torch.as_tensor([index[ex.class_name] for ex in exs], dtype=torch.long)
        return feats, labels, used

    def prototypes(self) -> tuple[torch.Tensor, list[str]]:
        """-> (C, D) raw mean feature per class that has examples, and their names; cached until the next change
        (live video reads them for every frame)."""
        if self._prototypes is None:
            feats, labels, used = self._support()
            self._prototypes = (class_means(feats, labels, len(used)) if used else feats[:0]), used
        means, used = self._prototypes
        return means, list(used)

    def fitted_method(self, transductive: bool = False) -> FewShotMethod:
        """The method fitted to the current support (classes in ``prototypes()`` order); cached until the next
        change (live video calls this for every frame). transductive: the method's transductive variant, when
        it has one."""
        if transductive not in self._methods:
            feats, labels, used = self._support()
            method = create_method(method_for(self.method_name, transductive))
            method.process_support_set(feats, labels, len(used))
            self._methods[transductive] = method
        return self._methods[transductive]

    def calibration(self) -> Calibration:
        """Softmax scale and unknown thresholds from leave-one-out on the support; cached until the next change."""
        if self._calibration is None:
            feats, labels, used = self._support()
            method = self.fitted_method() if used else create_method(self.method_name)
            self._calibration = calibrate(method, feats, labels, used)
        return self._calibration

    def thresholds(self) -> dict[str, float]:
        """Similarity below which a query predicted as that class is called unknown."""
        if self.unknown == "off":
            return {}
        if isinstance(self.unknown, (int, float)) and not isinstance(self.unknown, bool):
            return {c: float(self.unknown) for c in self.prototypes()[1]}
        return dict(self.calibration().thresholds)

    # ------------------------------------------------------------------ prediction
    def predict_features(self, query: torch.Tensor, transductive: bool = False) -> list[Prediction]:
        """(Q, D) features (from ``embed``) -> one Prediction per row. Probabilities are the calibrated inductive
        ones also when the transductive fit chooses the label."""
        if query.shape[0] == 0:
            return []
        if not self.ready():
            raise RuntimeError("add at least one example before predicting")
        raw_protos, used = self.prototypes()
        with torch.inference_mode():
            method = self.fitted_method()
            calibration = self.calibration()
            probs = (calibration.scale * method.scores(query.float())).softmax(-1)
            raw_sims = F.normalize(query.float(), dim=-1) @ F.normalize(raw_protos, dim=-1).T  # (Q, C)
            # Transductive: the joint fit picks the class; probabilities stay the calibrated inductive ones.
            # Its own softmax read 0.76 where 0.46 was right (clip art, 5 classes x 8 queries, 2026-11-27),
            # and a label the two disagree on gets a low probability: first in "least confident first".
            if transductive:
                choice = self.fitted_method(True)(query.float()).argmax(-1)
            else:
                choice = probs.argmax(-1)
        thresholds = self.thresholds()
        if len(used) == 1:
            # A softmax over one class is always 1. Say instead how clearly the query clears the class's
            # unknown threshold.
            probs = single_class_probability(raw_sims, calibration.thresholds.get(used[0], DEFAULT_UNKNOWN_SIMILARITY))
        k = min(self.topk, len(used))
        top_p, top_i = probs.topk(k, dim=-1)
        out = []
        for q in range(query.shape[0]):
            best = int(choice[q])
            name = used[best]
            sim = float(raw_sims[q, best])
            label = UNKNOWN_LABEL if (name in thresholds and sim < thresholds[name]) else name
            topk = [(used[int(i)], float(p)) for p, i in zip(top_p[q], top_i[q])]
            out.append(Prediction(label, float(probs[q, best]), topk, sim, name))
        return out

    def predict(self, images: Sequence[np.ndarray], transductive: bool = False) -> list[Prediction]:
        """RGB uint8 images of any size -> predictions."""
        return self.predict_features(self.embed(images), transductive)

    def nearest_examples(self, feature: torch.Tensor, k: int = 3) -> list[tuple[Example, float]]:
        """The k support examples most similar to one query feature (D,): explains a prediction."""
        exs = list(self.examples.values())
        if not exs:
            return []
        sims = F.normalize(torch.stack([e.feature for e in exs]), dim=-1) @ F.normalize(feature.float(), dim=0)
        order = sims.argsort(descending=True)[:k]
        return [(exs[int(i)], float(sims[int(i)])) for i in order]

    # ------------------------------------------------------------------ fine-tuning
    def finetune(
        self,
        budget_s: float = 10.0,
        max_steps: int = 40,
        lr: float | str = "auto",
        progress: Callable[[FinetuneProgress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        seed: int = 0,
    ) -> FinetuneResult:
        """Adapt the tail to the support (from the pristine weights). Cancelled: nothing changes."""
        used = [c for c in self.classes if self.examples_of(c)]
        if len(used) < 2:
            raise ValueError("fine-tuning needs examples of at least two classes")
        exs = [ex for ex in self.examples.values() if ex.class_name in used]
        maps = torch.stack([ex.map for ex in exs])
        labels = torch.as_tensor([used.index(ex.class_name) for ex in exs])
        backbone = self.embedder.backbone

        def run(device: torch.device) -> FinetuneResult:
            return finetune_tail(backbone, maps, labels, len(used), budget_s=budget_s,
                                 max_steps=max_steps, lr=lr, device=device, seed=seed, progress=progress, cancel=cancel)

        result = self.embedder.run_with_fallback(run)  # OOM on the GPU falls back to the CPU
        if result.cancelled:
            return result
        self._apply_tail(result.tail_state)
        self.finetune_info = {"lr": result.lr, "steps": result.steps, "seconds": round(result.seconds, 3),
                              "lr_scores": {str(k): v for k, v in result.lr_scores.items()}, "message": result.message}
        return result

    def reset_finetune(self) -> None:
        self._apply_tail(None)
        self.finetune_info = {}

    def _apply_tail(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is None:
            self.adapted_tail = None
        else:
            self.adapted_tail = adapted_tail(self.embedder.backbone, state)
        self._refeature()
        self._changed()

    def _refeature(self) -> None:
        """Re-derive every support feature from its cached trunk map through the current tail."""
        exs = list(self.examples.values())
        if exs:
            for e, f in zip(exs, self.features_from_maps(torch.stack([e.map for e in exs]))):
                e.feature = f

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """One safetensors file (core.classifier_state): tensors + JSON metadata, replaced atomically."""
        meta = {
            "backbone": self.embedder.backbone.name,
            "model_key": self.embedder.model_key(),
            "preprocess": self.embedder.config.to_dict(),
            "method": self.method_name,
            "unknown": self.unknown,
            "classes": self.classes,
            "examples": [{"id": e.id, "class": e.class_name, "source": e.source} for e in self.examples.values()],
            "finetune": self.finetune_info,
            "thresholds": self.thresholds() if self.ready() else {},
        }
        write_state(path, meta, list(self.examples.values()), self.adapted_tail)

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder) -> "FewShotClassifier":
        """A classifier saved by ``save``, on `embedder`. Raises StateError for a file it can't use."""
        state = read_state(path, embedder.backbone.name)
        meta = state.meta
        try:
            clf = cls(embedder, method=meta.get("method", "prototypes"), unknown=meta.get("unknown", "auto"))
        except (KeyError, ValueError) as exc:  # a method this installation doesn't have
            raise StateError(f"'{path}' needs {exc}") from exc
        clf.classes = list(meta["classes"])
        same_model = meta.get("model_key") == embedder.model_key()
        images = state.images
        for i, info in enumerate(meta["examples"]):
            img = images[i].numpy() if images is not None else None
            clf.examples[info["id"]] = Example(info["id"], info["class"], state.features[i], state.maps[i],
                                               img, info.get("source"))
        clf.finetune_info = meta.get("finetune", {})
        if state.tail_state:
            clf._apply_tail(state.tail_state)
        if not same_model and clf.examples:
            # Other weights than the ones that embedded the support: re-embed from the stored images.
            if images is None:
                raise StateError(f"'{path}' was embedded by other weights and holds no images to re-embed")
            feats, maps = clf._embed_resized([e.image for e in clf.examples.values()])  # type: ignore[misc]
            for e, f, m in zip(clf.examples.values(), feats, maps):
                e.feature, e.map = f, m
        clf._changed()
        return clf
