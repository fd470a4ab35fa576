"""The outer loop: episodic meta-training of the backbone's tail across many base classes (`protolabel metatrain`).

P>M>F's "M" stage restricted to what a CPU can do: the trunk (stem + first six stages) stays frozen and
its feature maps are embedded once (cached on disk, as for `evaluate`); the tail (last stage, head conv,
the same layers test-time fine-tuning adapts) is trained with the prototypical loss on N-way K-shot
episodes from the training classes, with augmentation on the trunk's maps (flip, one-cell shift, channel
dropout). Validation classes are never trained on: fixed validation episodes score each checkpoint, the
best is kept, training stops early when validation stops improving.

Under `torchrun --nproc_per_node=N` every process samples its own episodes and DistributedDataParallel
averages the gradients (gloo on CPU, nccl on GPUs); rank 0 validates, logs and writes files.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path
from .backbones import save_model_file
from .embedding import CancelToken, Embedder
from .evaluation import EmbedProgress, FeatureTable, build_feature_table
from .finetune import _TailHead, augment_maps
from .methods import centred_cosines, centred_prototypes
from .runs import finish
from .training import Episode, sample_episode

__all__ = ["MetaTrainConfig", "MetaProgress", "MetaResult", "metatrain", "split_classes", "RESUME_FORMAT_VERSION"]

RESUME_FORMAT_VERSION = 1


@dataclass
class MetaTrainConfig:
    way: int = 5
    shot: int = 5
    query: int = 15
    episodes: int = 2000
    val_split: float = 0.2  # fraction of the classes held out for validation
    val_every: int = 100  # episodes between validations
    val_episodes: int = 200  # fixed validation episodes (same ones every time)
    patience: int = 5  # validations without improvement before stopping
    lr: float = 5e-5
    seed: int = 0
    min_images: int = 10  # a folder needs this many images to be a class
    # Domains: the top-level folders under the root (e.g. clipart/, glyphs/, icons/) are domains. Each episode
    # is drawn from one domain (chosen uniformly, so a big domain does not drown the others), each domain keeps
    # its own validation classes, and the validation score is the mean over domains.
    domains: bool = False


@dataclass
class MetaProgress:
    stage: str  # "training" | "validating"
    episode: int
    episodes: int
    loss: float  # mean training loss since the last report
    train_acc: float  # mean training-episode query accuracy (%) since the last report
    val_acc: float | None  # latest validation accuracy (%)
    best_val_acc: float | None


@dataclass
class MetaResult:
    out: Path
    baseline_val_acc: float  # the pretrained tail on the validation episodes
    best_val_acc: float
    best_episode: int  # 0: nothing beat the pretrained tail (the file then holds it unchanged)
    episodes_done: int
    stopped_early: bool
    cancelled: bool
    train_classes: list[str]
    val_classes: list[str]
    log_path: Path
    curve_path: Path
    history: list[dict] = field(default_factory=list)


def split_classes(names: list[str], val_split: float, way: int, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint (train, validation) class lists, a seeded shuffle; each side has at least `way` classes."""
    if len(names) < 2 * way:
        raise ValueError(f"meta-training {way}-way needs at least {2 * way} classes (training and validation); "
                         f"found {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(max(way, round(val_split * len(names))), len(names) - way)
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


def domain_of(name: str) -> str:
    """A class's domain: the first folder of its name ("glyphs/U4E00" -> "glyphs")."""
    return name.split("/", 1)[0]


def split_by_domain(names: list[str], val_split: float, way: int, seed: int,
                    domains: bool) -> tuple[list[str], list[str]]:
    """split_classes over all classes, or within each domain (every domain then has `way`+ of each)."""
    if not domains:
        return split_classes(names, val_split, way, seed)
    train: list[str] = []
    val: list[str] = []
    for d in sorted({domain_of(n) for n in names}):
        t, v = split_classes([n for n in names if domain_of(n) == d], val_split, way, seed)
        train += t
        val += v
    return sorted(train), sorted(val)


def _groups(classes: list[str], domains: bool) -> list[list[int]]:
    """Indices into `classes`, one list per domain (or one list of all)."""
    if not domains:
        return [list(range(len(classes)))]
    order = sorted({domain_of(c) for c in classes})
    return [[i for i, c in enumerate(classes) if domain_of(c) == d] for d in order]


def _sample(rng: np.random.Generator, items: list[list[int]], groups: list[list[int]], cfg: MetaTrainConfig) -> Episode:
    """One episode from one domain (uniform over domains), class indices mapped back to `items`' classes."""
    group = groups[int(rng.integers(len(groups)))] if len(groups) > 1 else groups[0]
    ep = sample_episode(rng, [items[i] for i in group], cfg.way, cfg.shot, cfg.query)
    return Episode([group[c] for c in ep.classes], ep.support, ep.support_labels, ep.query, ep.query_labels)


def _episode_loss(head: torch.nn.Module, scale: torch.Tensor, maps: torch.Tensor, ep: Episode,
                  generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Prototypical loss of one episode on augmented trunk maps -> (loss, query accuracy %)."""
    way = len(ep.classes)
    device = next(head.parameters()).device
    idx = torch.as_tensor(ep.support + ep.query)
    feats = head(augment_maps(maps[idx].to(device).float(), generator))
    n_s = len(ep.support)
    s_labels = torch.as_tensor(ep.support_labels, device=device)
    q_labels = torch.as_tensor(ep.query_labels, device=device)
    protos, center = centred_prototypes(feats[:n_s], s_labels, way)  # as the prototypes method
    logits = scale * centred_cosines(feats[n_s:], protos, center)
    loss = F.cross_entropy(logits, q_labels)
    acc = float((logits.argmax(-1) == q_labels).float().mean() * 100)
    return loss, acc


@torch.no_grad()
def _validate(head: _TailHead, maps: torch.Tensor, episodes: list[list[Episode]]) -> tuple[float, list[float]]:
    """Fixed episodes, one list per domain -> (the mean over domains of the mean query accuracy (%) of
    prototypes through the current tail, no augmentation; each domain's)."""
    device = next(head.parameters()).device
    feats = torch.cat([head(maps[i : i + 512].to(device).float()).cpu() for i in range(0, len(maps), 512)])
    per_domain = []
    for group in episodes:
        accs = []
        for ep in group:
            way = len(ep.classes)
            s, q = feats[ep.support], feats[ep.query]
            s_labels = torch.as_tensor(ep.support_labels)
            protos, center = centred_prototypes(s, s_labels, way)
            pred = centred_cosines(q, protos, center).argmax(-1)
            accs.append(float((pred == torch.as_tensor(ep.query_labels)).float().mean() * 100))
        per_domain.append(float(np.mean(accs)))
    return float(np.mean(per_domain)), per_domain


def _subset(table: FeatureTable, classes: list[str],
            values: torch.Tensor | None = None) -> tuple[torch.Tensor, list[list[int]]]:
    """Trunk maps (or `values`, one row per image of the table) of the images of `classes` and, per class,
    their row indices in those rows."""
    wanted = {table.class_names.index(c): k for k, c in enumerate(classes)}
    rows = [i for i, c in enumerate(table.labels.tolist()) if c in wanted]
    per_class: list[list[int]] = [[] for _ in classes]
    for new, i in enumerate(rows):
        per_class[wanted[int(table.labels[i])]].append(new)
    return (table.maps if values is None else values)[torch.as_tensor(rows)], per_class


def _draw_curve(history: list[dict], path: Path, baseline: float) -> None:
    """Training-curve PNG (loss, training and validation accuracy against episodes), drawn with OpenCV."""
    import cv2

    w, h, m = 900, 480, 60
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.rectangle(img, (m, m // 2), (w - m, h - m), (200, 200, 200), 1)
    eps = [r["episode"] for r in history] or [0]
    x_max = max(max(eps), 1)

    def xy(ep: float, acc: float) -> tuple[int, int]:
        return int(m + ep / x_max * (w - 2 * m)), int(h - m - acc / 100 * (h - 1.5 * m))

    for acc in range(0, 101, 20):
        cv2.putText(img, f"{acc}%", (8, xy(0, acc)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 90, 90), 1)
    cv2.putText(img, f"episodes (0-{x_max})", (w // 2 - 60, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (60, 60, 60), 1)
    cv2.line(img, xy(0, baseline), xy(x_max, baseline), (160, 160, 160), 1, cv2.LINE_AA)
    series = [("train_acc", (200, 120, 40), "training-episode accuracy"),
              ("val_acc", (40, 40, 220), "validation accuracy (held-out classes)")]
    for k, (key, color, label) in enumerate(series):
        pts = [xy(r["episode"], r[key]) for r in history if r.get(key) is not None]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        cv2.putText(img, label, (m + 10, h - m - 46 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1,
                    cv2.LINE_AA)  # at the bottom: the curves live high up
    cv2.putText(img, f"pretrained tail: {baseline:.1f}%", (m + 10, h - m - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (120, 120, 120), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: object) -> object:
    """Rank 0's value on every rank (identity without distribution)."""
    import torch.distributed as dist

    if _distributed()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def metatrain(
    root: str | os.PathLike,
    out: str | os.PathLike,
    embedder: Embedder,
    config: MetaTrainConfig | None = None,
    resume: bool = False,
    cancel: CancelToken | None = None,
    cache_dir: Path | None = None,
    exclude: Sequence[str] = (),
) -> Generator[EmbedProgress | MetaProgress, None, MetaResult | None]:
    """Meta-train the tail of `embedder.backbone` on the class folders under `root`; the best checkpoint goes
    to `out` (a model file for `--model`), with `<out>.log.json`, `<out>.curve.png` and `<out>.resume.pt`.

    exclude: class names never used (neither trained on nor validated on), e.g. the classes of a test set.
    Yields EmbedProgress while the images are embedded (cached), then MetaProgress;
    returns the MetaResult (None on the other ranks of a distributed run)."""
    import torch.distributed as dist

    cfg = config or MetaTrainConfig()
    out = Path(out)
    rank, world = _distributed()
    backbone = embedder.backbone
    table = None
    # Rank 0 embeds (and fills the disk cache) first, so the other ranks read it instead of racing to write it.
    for turn in ((0,), tuple(range(1, world))):
        if rank in turn:
            embedding = build_feature_table(root, embedder, cfg.min_images, with_maps=True, cache_dir=cache_dir,
                                            cancel=cancel)
            table = (yield from embedding) if rank == 0 else finish(embedding)  # rank 0 reports progress
        if world > 1:
            dist.barrier()
    if table is None:  # cancelled while embedding
        return
    if table.maps is None:
        raise ValueError("the feature cache has no trunk maps for these images; delete it and run again")
    names = [c for c in table.class_names if c not in set(exclude)]
    train_classes, val_classes = split_by_domain(names, cfg.val_split, cfg.way, cfg.seed, cfg.domains)
    train_maps, train_items = _subset(table, train_classes)
    val_maps, val_items = _subset(table, val_classes)
    train_groups = _groups(train_classes, cfg.domains)
    val_groups = _groups(val_classes, cfg.domains)
    domain_names = sorted({domain_of(c) for c in val_classes}) if cfg.domains else ["all"]
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_eps = [[_sample(val_rng, val_items, [g], cfg) for _ in range(cfg.val_episodes)] for g in val_groups]

    head = _TailHead(copy.deepcopy(backbone.tail), backbone.forward_tail).eval()  # BN statistics stay fixed
    for p in head.tail.parameters():
        p.requires_grad_(True)
    head.log_scale.requires_grad_(False)  # a fixed logit scale (10, as the methods); DDP wants every trained
    # parameter used in forward
    device = embedder.device
    head.to(device)
    model: torch.nn.Module = head
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(head.tail.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed * 1000 + 17 + rank)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 29 + rank)
    history: list[dict] = []
    start_episode = 0
    baseline, baseline_domains = _validate(head, val_maps, val_eps) if rank == 0 else (0.0, [])
    best = baseline
    best_episode, bad, stopped_early = 0, 0, False
    best_state = {k: v.detach().cpu().clone() for k, v in head.tail.state_dict().items()}
    log_path = out.with_name(out.name + ".log.json")
    curve_path = out.with_name(out.name + ".curve.png")

    if resume and _resume_path(out).is_file():
        saved = torch.load(_resume_path(out), map_location="cpu", weights_only=True)
        if saved.get("format_version") != RESUME_FORMAT_VERSION:
            raise ValueError(f"'{_resume_path(out)}' comes from another ProtoLabel (resume format "
                             f"{saved.get('format_version')}); start without --resume")
        meta = json.loads(saved["meta"])
        same = {k: v for k, v in meta["config"].items() if k != "episodes"} == \
            {k: v for k, v in asdict(cfg).items() if k != "episodes"}  # only the length may change
        if meta["val_classes"] != val_classes or not same:
            raise ValueError("--resume needs the same data, split and settings as the interrupted run")
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        best_state = saved["best_tail"]
        start_episode, best, best_episode, bad = meta["episode"], meta["best"], meta["best_episode"], meta["bad"]
        baseline, history = meta["baseline"], meta["history"]
        if len(meta["rng"]) != world:
            raise ValueError(f"--resume needs the same number of processes as the interrupted run ({len(meta['rng'])})")
        rng.bit_generator.state = meta["rng"][rank]
        gen.set_state(saved["augment_rng"][rank])
    elif resume:
        raise ValueError(f"nothing to resume: '{_resume_path(out)}' does not exist")

    def save_resume(episode: int) -> None:
        rng_states = _gather([rng.bit_generator.state])
        gen_states = _gather([gen.get_state()])
        if rank != 0:
            return
        meta = {"episode": episode, "best": best, "best_episode": best_episode, "bad": bad, "baseline": baseline,
                "history": history, "rng": rng_states, "val_classes": val_classes, "config": asdict(cfg)}
        state = {"format_version": RESUME_FORMAT_VERSION, "meta": json.dumps(meta), "head": head.state_dict(),
                 "opt": opt.state_dict(), "best_tail": best_state, "augment_rng": gen_states}
        with atomic_path(_resume_path(out)) as tmp:
            torch.save(state, tmp)

    def write_model() -> None:
        model_backbone = copy.deepcopy(backbone).cpu()
        model_backbone.tail.load_state_dict(best_state)
        metrics = {"baseline_val_acc": round(baseline, 2), "best_val_acc": round(best, 2), "best_episode": best_episode,
                   "val_episodes": cfg.val_episodes, "task": f"{cfg.way}-way {cfg.shot}-shot",
                   "baseline_val_acc_by_domain": dict(zip(domain_names, (round(a, 2) for a in baseline_domains)))}
        save_model_file(model_backbone, out, {"metatrain": {"config": asdict(cfg), "train_classes": train_classes,
                                                            "val_classes": val_classes, "metrics": metrics,
                                                            "trained_layers": "tail (last stage + head conv)"}})
        log_path.write_text(json.dumps({"config": asdict(cfg), "baseline_val_acc": baseline, "best_val_acc": best,
                                        "best_episode": best_episode, "train_classes": train_classes,
                                        "val_classes": val_classes, "history": history}, indent=1))
        _draw_curve(history, curve_path, baseline)

    out.parent.mkdir(parents=True, exist_ok=True)
    scale = torch.tensor(10.0, device=device)
    t0 = time.perf_counter()
    losses, accs = [], []
    episode = start_episode
    cancelled = False
    val_acc = history[-1]["val_acc"] if history else None
    with torch.enable_grad():
        while episode < cfg.episodes:
            stop = bool(_broadcast(cancel is not None and cancel.cancelled))
            if stop:
                cancelled = True
                break
            ep = _sample(rng, train_items, train_groups, cfg)
            loss, acc = _episode_loss(model, scale, train_maps, ep, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(acc)
            episode += 1
            if episode % cfg.val_every == 0 or episode == cfg.episodes:
                if rank == 0:
                    yield MetaProgress("validating", episode, cfg.episodes, float(np.mean(losses)), float(np.mean(accs)),
                                       val_acc, best)
                    val_acc, by_domain = _validate(head, val_maps, val_eps)
                    history.append({"episode": episode, "loss": float(np.mean(losses)), "train_acc": float(np.mean(accs)),
                                    "val_acc": val_acc, "seconds": round(time.perf_counter() - t0, 1),
                                    "val_acc_by_domain": dict(zip(domain_names, (round(a, 2) for a in by_domain)))})
                    if val_acc > best:
                        best, best_episode, bad = val_acc, episode, 0
                        best_state = {k: v.detach().cpu().clone() for k, v in head.tail.state_dict().items()}
                        write_model()
                    else:
                        bad += 1
                losses, accs = [], []
                save_resume(episode)
                stopped_early = bool(_broadcast(bad >= cfg.patience))
                if stopped_early:
                    break
            elif rank == 0 and episode % 10 == 0:
                yield MetaProgress("training", episode, cfg.episodes, float(np.mean(losses)), float(np.mean(accs)),
                                   val_acc, best)
    if rank == 0:
        write_model()  # also when nothing beat the pretrained tail: the file then holds it unchanged
    if world > 1:
        dist.barrier()
    if rank == 0:
        return MetaResult(out, baseline, best, best_episode, episode, stopped_early, cancelled, train_classes,
                         val_classes, log_path, curve_path, history)


def _gather(value: list) -> list:
    """[value] from every rank, in rank order (so --resume continues each process's own random sequence)."""
    import torch.distributed as dist

    if _distributed()[1] == 1:
        return value
    out: list = [None] * _distributed()[1]
    dist.all_gather_object(out, value[0])
    return out
