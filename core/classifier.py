"""The few-shot engine the CLI and the GUI share: classes, support examples, predictions, unknowns, fine-tuning.

Each support example is embedded once; its pooled feature (D,) and trunk map (C, h, w) are cached, so
adding an example costs one forward pass and a prototype update costs a mean over cached vectors.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path
from .embedding import Embedder
from .finetune import FinetuneProgress, FinetuneResult, adapted_tail, finetune_tail
from .images import resize_for_model
from .methods import DEFAULT_SCALE, class_means, create_method, fit_logit_scale

__all__ = ["FewShotClassifier", "Prediction", "Example", "StateError", "STATE_FORMAT_VERSION", "UNKNOWN_LABEL"]

STATE_FORMAT_VERSION = 1
UNKNOWN_LABEL = "unknown"
# Fallback similarity threshold (cosine of raw features to the best prototype) for classes with fewer than
# 3 examples. Measured on openclipart, 1-shot prototypes, 300 episodes (2026-11-27): 0.50 calls 3.6% of same-class
# queries unknown (0.55: 11%). Clip art of *other* classes is as close as same-class clip art there, so
# this threshold catches pictures from another world (photos among drawings), not near neighbours.
DEFAULT_UNKNOWN_SIMILARITY = 0.50
UNKNOWN_PERCENTILE = 5.0


class StateError(ValueError):
    """A saved classifier state that can't be used (other format version, other backbone, damaged)."""


MIN_SIMILARITY_SPREAD = 0.04
# One-sided 99% Student t quantiles by degrees of freedom (larger df: the normal 2.326).
_T99 = {2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821, 10: 2.764, 12: 2.681,
        15: 2.602, 20: 2.528, 30: 2.457}


def _lower_prediction_bound(sims: Sequence[float]) -> float:
    """99% lower prediction bound of the next same-class similarity from n held-out ones (normal model).

    With 3-5 examples a low percentile is just the minimum of a tiny sample and sits far too high: with 3
    shapes per class it called 4 in 10 new same-class frames unknown (desktop test, 2026-11-27). The t
    quantile widens the bound while few examples say little about the spread, and tightens as they come."""
    n = len(sims)
    df = n - 1
    t = next((v for k, v in sorted(_T99.items()) if df <= k), 2.326)
    # Near-duplicate examples (a held capture key on a still scene) have almost no spread; the floor keeps
    # the bound from closing in on 1.0 and calling every new view unknown.
    spread = max(float(np.std(sims, ddof=1)), MIN_SIMILARITY_SPREAD)
    return float(np.mean(sims) - t * spread * np.sqrt(1 + 1 / n))


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


@dataclass
class _Calibration:
    scale: float = DEFAULT_SCALE
    thresholds: dict[str, float] = field(default_factory=dict)


class FewShotClassifier:
    """Support set + method + unknown rejection + optional adapted tail, over an Embedder.

    unknown: "auto" (thresholds from leave-one-out on the support), "off", or a float similarity threshold.
    ``generation`` increases on every change, so a caller can drop predictions made for an older state.
    """

    def __init__(self, embedder: Embedder, method: str = "prototypes", unknown: str | float = "auto", topk: int = 3) -> None:
        self.embedder = embedder
        self.method_name = method
        self.unknown = unknown
        self.topk = topk
        self.classes: list[str] = []
        self.examples: dict[str, Example] = {}
        self.generation = 0
        self.adapted_tail: torch.nn.Module | None = None
        self.finetune_info: dict = {}
        self._method = None
        self._calibration: _Calibration | None = None

    # ------------------------------------------------------------------ classes and examples
    def _changed(self) -> None:
        self.generation += 1
        self._method = None
        self._calibration = None

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
        """-> (C, D) raw mean feature per class that has examples, and their names."""
        feats, labels, used = self._support()
        return (class_means(feats, labels, len(used)) if used else feats[:0]), used

    def _get_method(self, transductive: bool):
        """The method fitted to the current support; cached until the next change (live video calls this
        for every frame)."""
        if self._method is None:
            self._method = {}
        if transductive not in self._method:
            feats, labels, used = self._support()
            method = create_method("transductive" if transductive else self.method_name)
            method.process_support_set(feats, labels, len(used))
            self._method[transductive] = (method, used, F.normalize(class_means(feats, labels, len(used)), dim=-1))
        return self._method[transductive]

    # ------------------------------------------------------------------ calibration (leave-one-out)
    def _calibrate(self) -> _Calibration:
        """Leave-one-out on the support, in closed form (one pass, no refitting per example):
        per-class unknown thresholds from held-out similarities, and the softmax temperature."""
        if self._calibration is not None:
            return self._calibration
        feats, labels, used = self._support()
        cal = _Calibration()
        if not used:
            self._calibration = cal
            return cal
        n_classes = len(used)
        counts = torch.bincount(labels, minlength=n_classes).to(feats.dtype)
        own = counts[labels]  # (N,) size of each example's class
        held = own >= 2  # examples whose class keeps at least one other example
        # Raw-feature similarity of each example to its class prototype without it.
        sums = class_means(feats, labels, n_classes) * counts[:, None]
        loo_proto = (sums[labels] - feats) / (own - 1).clamp(min=1)[:, None]
        loo_sims: dict[int, list[float]] = {c: [] for c in range(n_classes)}
        sims = F.cosine_similarity(feats, loo_proto, dim=-1)
        for i in held.nonzero().flatten().tolist():
            loo_sims[int(labels[i])].append(float(sims[i]))
        # Method-space cosine logits with the example's own class prototype recomputed without it
        # (the centre is kept from the full support: a small, conservative approximation).
        if n_classes >= 2 and int(held.sum()) >= 4:
            method = create_method("prototypes")
            method.process_support_set(feats, labels, n_classes)
            normed = F.normalize(feats - method.center, dim=-1)
            nsums = method.prototypes * counts[:, None]
            cos = normed @ F.normalize(method.prototypes, dim=-1).T  # (N, C)
            own_proto = (nsums[labels] - normed) / (own - 1).clamp(min=1)[:, None]
            cos[torch.arange(len(feats)), labels] = F.cosine_similarity(normed, own_proto, dim=-1)
            cal.scale = fit_logit_scale(cos[held], labels[held])
        # Per-class threshold: a low percentile of held-out similarities; fallback for small classes.
        small_fallback = DEFAULT_UNKNOWN_SIMILARITY
        for c, name in enumerate(used):
            sims = loo_sims[c]
            if len(sims) >= 3:
                cal.thresholds[name] = min(float(np.percentile(sims, UNKNOWN_PERCENTILE)) - 0.02,
                                           _lower_prediction_bound(sims))
            elif sims:
                cal.thresholds[name] = min(small_fallback, min(sims) - 0.05)
            else:
                cal.thresholds[name] = small_fallback
        self._calibration = cal
        return cal

    def thresholds(self) -> dict[str, float]:
        """Similarity below which a query predicted as that class is called unknown."""
        if self.unknown == "off":
            return {}
        if isinstance(self.unknown, (int, float)) and not isinstance(self.unknown, bool):
            return {c: float(self.unknown) for c in self.prototypes()[1]}
        return dict(self._calibrate().thresholds)

    # ------------------------------------------------------------------ prediction
    def predict_features(self, query: torch.Tensor, transductive: bool = False) -> list[Prediction]:
        """(Q, D) features (from ``embed``) -> one Prediction per row. Probabilities are the calibrated inductive
        ones also when the transductive fit chooses the label."""
        if query.shape[0] == 0:
            return []
        if not self.ready():
            raise RuntimeError("add at least one example before predicting")
        with torch.inference_mode():
            method, used, raw_protos = self._get_method(False)
            cos = method(query.float()) / method.scale  # (Q, C) cosine in the method's space
            scale = self._calibrate().scale
            probs = (scale * cos).softmax(-1)
            raw_sims = F.normalize(query.float(), dim=-1) @ raw_protos.T  # (Q, C)
            # Transductive: the joint fit picks the class; probabilities stay the calibrated inductive ones.
            # Its own softmax read 0.76 where 0.46 was right (clip art, 5 classes x 8 queries, 2026-11-27),
            # and a label the two disagree on gets a low probability: first in "least confident first".
            if transductive:
                choice = self._get_method(True)[0](query.float()).argmax(-1)
            else:
                choice = probs.argmax(-1)
        thresholds = self.thresholds()
        if len(used) == 1:
            # A softmax over one class is always 1. Say instead how clearly the query clears the class's
            # unknown threshold: 0.5 at the threshold, ~0.95 at +0.09 cosine above it.
            threshold = self._calibrate().thresholds.get(used[0], DEFAULT_UNKNOWN_SIMILARITY)
            probs = torch.sigmoid((raw_sims - threshold) / 0.03)
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
        # Re-derive every support feature from its cached trunk map through the current tail.
        exs = list(self.examples.values())
        if exs:
            feats = self.features_from_maps(torch.stack([e.map for e in exs]))
            for e, f in zip(exs, feats):
                e.feature = f
        self._changed()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """One safetensors file: tensors + JSON metadata. Loaded without pickle."""
        from safetensors.torch import save_file

        exs = list(self.examples.values())
        tensors: dict[str, torch.Tensor] = {}
        if exs:
            tensors["features"] = torch.stack([e.feature for e in exs]).float().contiguous()
            tensors["maps"] = torch.stack([e.map for e in exs]).to(torch.float16).contiguous()
            if all(e.image is not None for e in exs):
                tensors["images"] = torch.from_numpy(np.stack([e.image for e in exs])).contiguous()
        if self.adapted_tail is not None:
            for k, v in self.adapted_tail.state_dict().items():
                tensors[f"tail.{k}"] = v.detach().cpu().contiguous()
        meta = {
            "format": "protolabel-classifier",
            "format_version": STATE_FORMAT_VERSION,
            "backbone": self.embedder.backbone.name,
            "model_key": self.embedder.model_key(),
            "preprocess": self.embedder.config.to_dict(),
            "method": self.method_name,
            "unknown": self.unknown,
            "classes": self.classes,
            "examples": [{"id": e.id, "class": e.class_name, "source": e.source} for e in exs],
            "finetune": self.finetune_info,
            "thresholds": self.thresholds() if self.ready() else {},
        }
        path = Path(path)
        with atomic_path(path) as tmp:  # a crash leaves the old file or the new one
            save_file(tensors, str(tmp), metadata={"protolabel": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder) -> "FewShotClassifier":
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta_text = (f.metadata() or {}).get("protolabel")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001
            raise StateError(f"'{path}' is not a ProtoLabel classifier file ({exc})") from exc
        if not meta_text:
            raise StateError(f"'{path}' has no ProtoLabel metadata")
        meta = json.loads(meta_text)
        version = meta.get("format_version")
        if meta.get("format") != "protolabel-classifier" or not isinstance(version, int):
            raise StateError(f"'{path}' is not a ProtoLabel classifier file")
        if version > STATE_FORMAT_VERSION:
            raise StateError(f"'{path}' was written by a newer ProtoLabel (format {version}; this one reads up to "
                             f"{STATE_FORMAT_VERSION}); update ProtoLabel")
        if meta["backbone"] != embedder.backbone.name:
            raise StateError(f"'{path}' was made with backbone '{meta['backbone']}', not '{embedder.backbone.name}'")
        unknown = meta.get("unknown", "auto")
        clf = cls(embedder, method=meta.get("method", "prototypes"), unknown=unknown)
        clf.classes = list(meta["classes"])
        same_model = meta.get("model_key") == embedder.model_key()
        images = tensors.get("images")
        for i, info in enumerate(meta["examples"]):
            img = images[i].numpy() if images is not None else None
            clf.examples[info["id"]] = Example(info["id"], info["class"], tensors["features"][i], tensors["maps"][i],
                                               img, info.get("source"))
        tail_state = {k[5:]: v for k, v in tensors.items() if k.startswith("tail.")}
        clf.finetune_info = meta.get("finetune", {})
        if tail_state:
            clf._apply_tail(tail_state)
        if not same_model and clf.examples:
            # Other weights than the ones that embedded the support: re-embed from the stored images.
            if images is None:
                raise StateError(f"'{path}' was embedded by other weights and holds no images to re-embed")
            feats, maps = clf._embed_resized([e.image for e in clf.examples.values()])  # type: ignore[misc]
            for e, f, m in zip(clf.examples.values(), feats, maps):
                e.feature, e.map = f, m
        clf._changed()
        return clf
