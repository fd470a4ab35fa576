#!/usr/bin/env python
"""ProtoLabel performance benchmark: prints ONE JSON object on stdout, progress on stderr.

    .venv/bin/python bench/run.py [--device auto|cpu|cuda] [--quick] [--threads N] [--out PATH]

Figures (each a median over repeated runs; each ratio measured inside the same run, interleaved):
  1. prototype_update_ms  add_example(one 640x480 frame) -> predict_features(current frame's feature)
  2. adapt_5way5shot_s    new classifier, 25 JPEG files decoded + embedded (add_support_tree), one query predicted
  3. finetune             classifier.finetune() with its defaults on 5-way 5-shot: wall_s, steps_per_s, lr, steps
  4. live                 the GUI's path: BGR frame -> Frame -> engine slot -> engine thread predicts -> signal
                          -> LiveView renders frame + overlay into a 640x480 QImage, vs the bare backbone forward
                          on a prepared (1, 3, S, S) tensor, both with the GUI's torch threads (one core spared)
     live_core            the same without Qt, stage by stage: from_bgr -> preprocess -> embed_tensor ->
                          predict_features -> overlay drawn with OpenCV, with the bench's threads
  5. folder               label_paths + write_labels_csv over a JPEG folder, vs the bare forward at the same batch
  6. peak_rss_mb          peak resident memory (VmHWM) after 4 and after 5

All images are generated (drawn shapes on noisy backgrounds, 640x480). Results are also written to
bench/results/<hostname>-<date>.json unless --out names another path. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/run.py` puts bench/, not the repo root, on sys.path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app (desktop.app.main): before torch loads
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import core  # noqa: E402
from core.device import keep_freed_memory  # noqa: E402
from core.runs import finish  # noqa: E402

keep_freed_memory()
from core.device import peak_memory_mb  # noqa: E402
FIXED_LR = 3e-4  # times the final phase on all 25 examples (auto may keep lr 0 and train nothing)

SCHEMA_VERSION = 1
THREAD_ENV = ("PROTOLABEL_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
BACKBONE = "efficientnet_lite0"
FRAME_W, FRAME_H = 640, 480
CLASSES = ("circle", "square", "triangle", "star", "cross")
SHOTS = 5
_COLORS = {  # BGR
    "circle": (40, 40, 220),
    "square": (220, 90, 40),
    "triangle": (60, 170, 40),
    "star": (20, 180, 230),
    "cross": (180, 40, 180),
}


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How many repetitions each figure gets; --quick shrinks them to keep the run near 30 s on 2 cores."""

    prototype_reps: int = 15
    adapt_reps: int = 5
    finetune_reps: int = 3
    live_frames: int = 30  # timed frames per round (the same count of bare forwards per round)
    live_rounds: int = 4  # live and bare blocks alternate, so background load hits both alike
    folder_images: int = 64
    folder_reps: int = 7  # 3 gave a bare forward from 49.5 to 63.3 images/s within one run on the 2-core VM
    warmup: int = 3
    round_reps: int = 5


QUICK = Settings(prototype_reps=10, adapt_reps=3, finetune_reps=1, live_frames=30, live_rounds=1,
                 folder_images=32, folder_reps=2, warmup=2, round_reps=2)


# ----------------------------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(values: list[float], digits: int = 3) -> dict:
    """Median (the figure) plus min/max/n, so a reader can judge the spread."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so perf_counter brackets what really ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (core.device.peak_memory_mb: not the parent's)."""
    return round(peak_memory_mb(), 1)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """-> (seconds, fn())"""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------------------------- test images


def make_frame(kind: str, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """One BGR uint8 (480, 640, 3) frame: a filled shape of `kind` on a noisy gradient with clutter lines.
    `noise` is a larger int16 noise field; each frame takes a random window of it (cheap to make)."""
    ramp = np.linspace(0.8, 1.0, FRAME_W, dtype=np.float32)[None, :, None]
    y0, x0 = (int(v) for v in rng.integers(0, (noise.shape[0] - FRAME_H, noise.shape[1] - FRAME_W)))
    window = noise[y0 : y0 + FRAME_H, x0 : x0 + FRAME_W]
    img = np.clip((rng.uniform(150, 230, 3) * ramp).astype(np.int16) + window, 0, 255).astype(np.uint8)
    for _ in range(4):  # clutter that every class shares
        p1 = tuple(int(v) for v in rng.integers(0, (FRAME_W, FRAME_H)))
        p2 = tuple(int(v) for v in rng.integers(0, (FRAME_W, FRAME_H)))
        cv2.line(img, p1, p2, tuple(int(c) for c in rng.integers(60, 200, 3)), int(rng.integers(1, 4)))
    color = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in _COLORS[kind])
    r = int(rng.integers(70, 150))
    cx, cy = int(rng.integers(r + 5, FRAME_W - r - 5)), int(rng.integers(r + 5, FRAME_H - r - 5))
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    elif kind == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    elif kind == "star":
        angles = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    else:
        w = max(8, r // 3)
        cv2.rectangle(img, (cx - r, cy - w), (cx + r, cy + w), color, -1)
        cv2.rectangle(img, (cx - w, cy - r), (cx + w, cy + r), color, -1)
    return img


@dataclass
class TestData:
    """Generated inputs: in-memory frames and JPEG files in a temporary folder."""

    support_frames: dict[str, list[np.ndarray]]  # class -> SHOTS BGR frames
    live_frames: list[tuple[str, np.ndarray]]  # (class, BGR frame) cycled through by the live loop
    support_tree: Path  # root/<class>/<i>.jpg, SHOTS per class
    query_file: Path
    folder: Path  # folder_images JPEGs, classes mixed; the class is the file name's prefix
    folder_paths: list[Path]


def write_jpeg(path: Path, frame: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}")
    return path


def make_test_data(root: Path, folder_images: int, seed: int = 0) -> TestData:
    """Draw every image the benchmark uses, writing the file-based ones under `root`."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (FRAME_H + 97, FRAME_W + 131, 3)).astype(np.int16)

    def frame(kind: str) -> np.ndarray:
        return make_frame(kind, rng, noise)

    support = {k: [frame(k) for _ in range(SHOTS)] for k in CLASSES}
    live = [(k, frame(k)) for _ in range(2) for k in CLASSES]
    tree = root / "support"
    for kind in CLASSES:
        for i in range(SHOTS):
            write_jpeg(tree / kind / f"{i:02d}.jpg", frame(kind))
    query = write_jpeg(root / "query.jpg", frame("star"))
    folder = root / "folder"
    paths = [write_jpeg(folder / f"{CLASSES[i % len(CLASSES)]}_{i:03d}.jpg", frame(CLASSES[i % len(CLASSES)]))
             for i in range(folder_images)]
    return TestData(support, live, tree, query, folder, paths)


# ----------------------------------------------------------------------------------------------- setup


def machine_info(embedder: core.Embedder) -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = embedder.device
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],  # other jobs skew CPU numbers
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "backbone": embedder.backbone.name,
        "input_size": embedder.config.size,
        "batch_size": embedder.batch_size,
        "runtime": embedder.runtime,  # what runs the trunk on the CPU (core.runtime); the result's "runtime" says why
    }


def set_threads(threads: int | None) -> int:
    """--threads N, else all cores (configure_threads(reserve=0)); must run before the first torch op."""
    if threads:
        torch.set_num_threads(threads)
        return torch.get_num_threads()
    return core.configure_threads(reserve=0)


def rgb(frame: np.ndarray) -> np.ndarray:
    return core.from_bgr(frame)


def build_classifier(embedder: core.Embedder, data: TestData) -> core.FewShotClassifier:
    """5 classes x 5 examples from in-memory frames."""
    clf = core.FewShotClassifier(embedder)
    for kind, frames in data.support_frames.items():
        clf.add_examples(kind, [rgb(f) for f in frames])
    return clf


# ----------------------------------------------------------------------------------------------- 1. prototype update


def bench_prototype_update(clf: core.FewShotClassifier, data: TestData, s: Settings) -> dict:
    """add_example(one 640x480 RGB frame) + predict_features(current frame's feature), on 5x5 classes.
    The added example is removed again (untimed) so every repetition starts from 5 x 5."""
    cur_kind, cur_frame = data.live_frames[0]
    cur_feat = clf.embed_tensor(core.preprocess(rgb(cur_frame), clf.embedder.config))
    clf.predict_features(cur_feat)
    total, add, predict = [], [], []
    for i in range(s.warmup + s.prototype_reps):
        kind, frame = data.live_frames[(i + 1) % len(data.live_frames)]
        image = rgb(frame)
        sync(clf.embedder.device)
        t0 = time.perf_counter()
        ex_id = clf.add_example(kind, image)
        t1 = time.perf_counter()
        preds = clf.predict_features(cur_feat)  # the first prediction after a change re-calibrates
        t2 = time.perf_counter()
        clf.remove_example(ex_id)
        if i >= s.warmup:
            total.append((t2 - t0) * 1000)
            add.append((t1 - t0) * 1000)
            predict.append((t2 - t1) * 1000)
    assert len(preds) == 1 and len(clf.examples) == len(CLASSES) * SHOTS
    out = summary(total)
    out["add_example_ms_median"] = round(statistics.median(add), 3)
    out["predict_ms_median"] = round(statistics.median(predict), 3)
    return out


# ----------------------------------------------------------------------------------------------- 2. adapt from files


def adapt_once(embedder: core.Embedder, data: TestData) -> core.Prediction:
    """New classifier, 25 files decoded + embedded through add_support_tree, one query file predicted."""
    clf = core.FewShotClassifier(embedder)
    run = finish(core.add_support_tree(clf, data.support_tree))
    if sum(run.added.values()) != len(CLASSES) * SHOTS:
        raise RuntimeError(f"the test images did not all load: {run}")
    return clf.predict([core.load_image(data.query_file)])[0]


def bench_adapt(embedder: core.Embedder, data: TestData, s: Settings) -> dict:
    """Seconds from 25 image files to a prediction, with a classifier that starts empty each time."""
    adapt_once(embedder, data)  # warm-up (file cache, thread pool start, allocator)
    times, preds = [], []
    for _ in range(s.adapt_reps):
        seconds, pred = timed(lambda: adapt_once(embedder, data))
        times.append(seconds)
        preds.append(pred.label)
    out = summary(times)
    out["query_label"] = preds[-1]  # the query is a star; a sanity check, not a figure
    return out


# ----------------------------------------------------------------------------------------------- 3. fine-tuning


def finetune_once(clf: core.FewShotClassifier, **kwargs) -> tuple[float, int, core.FinetuneResult]:
    """From the pristine tail: -> (wall seconds, optimizer steps run in every phase, result)."""
    clf.reset_finetune()
    events: list[core.FinetuneProgress] = []
    sync(clf.embedder.device)
    wall, result = timed(lambda: clf.finetune(progress=events.append, **kwargs))
    return wall, len(events), result


def bench_finetune(clf: core.FewShotClassifier, s: Settings) -> dict:
    """classifier.finetune() with its defaults (budget, max_steps, lr="auto"); steps_per_s counts every optimizer
    step (learning-rate search on one shot per class + final training on all shots). When the search keeps lr 0
    there is no final training, so a second run with a fixed lr times the final phase on all 25 examples."""
    finetune_once(clf, lr=FIXED_LR, max_steps=2)  # warm-up: autograd and optimizer set-up
    walls, rates, fixed_walls, fixed_rates = [], [], [], []
    for _ in range(s.finetune_reps):
        wall, total_steps, result = finetune_once(clf)
        walls.append(wall)
        rates.append(total_steps / wall)
        wall, steps, fixed = finetune_once(clf, lr=FIXED_LR)
        fixed_walls.append(wall)
        fixed_rates.append(steps / wall)
    clf.reset_finetune()  # later figures measure the pristine (not adapted) path
    return {
        "wall_s": summary(walls),
        "steps_per_s": summary(rates, 2),
        "lr": result.lr,  # of the last run
        "steps": result.steps,  # final-phase steps (0 when the search kept the pre-trained weights)
        "total_steps": total_steps,  # every optimizer step of the last run, learning-rate trials included
        "lr_scores": {str(k): v for k, v in result.lr_scores.items()},  # validation accuracy (%) per lr tried
        "message": result.message,
        "fixed_lr": {"lr": FIXED_LR, "wall_s": summary(fixed_walls), "steps_per_s": summary(fixed_rates, 2),
                     "steps": fixed.steps},
    }


# ----------------------------------------------------------------------------------------------- 4. live


LIVE_STAGES = ("from_bgr", "preprocess", "embed", "predict", "overlay")


def draw_overlay(frame: np.ndarray, pred: core.Prediction) -> np.ndarray:
    """What the GUI shows: a box and 'label 0.93' drawn into a copy of the BGR frame."""
    out = frame.copy()
    h, w = out.shape[:2]
    color = (0, 0, 255) if pred.is_unknown else (0, 200, 0)
    cv2.rectangle(out, (4, 4), (w - 5, h - 5), color, 3)
    cv2.putText(out, f"{pred.label} {pred.probability:.2f}", (14, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, color, 2,
                cv2.LINE_AA)
    return out


def live_frame(clf: core.FewShotClassifier, frame: np.ndarray, stages: dict[str, list[float]]) -> np.ndarray:
    """One frame end to end; appends each stage's seconds to `stages`."""
    config = clf.embedder.config
    t0 = time.perf_counter()
    image = core.from_bgr(frame)
    t1 = time.perf_counter()
    x = core.preprocess(image, config)
    t2 = time.perf_counter()
    feat = clf.embed_tensor(x)  # returns a CPU tensor: the GPU work is finished here
    t3 = time.perf_counter()
    pred = clf.predict_features(feat)[0]
    t4 = time.perf_counter()
    shown = draw_overlay(frame, pred)
    t5 = time.perf_counter()
    for name, a, b in zip(LIVE_STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
        stages[name].append(b - a)
    return shown


def prepared_input(embedder: core.Embedder, images: list[np.ndarray]) -> torch.Tensor:
    """RGB images -> (B, 3, S, S) on the device, laid out as the Embedder feeds its model."""
    x = core.preprocess(images, embedder.config).to(embedder.device)
    if embedder.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def bare_forward(embedder: core.Embedder, x: torch.Tensor) -> float:
    """Seconds for one network forward on a prepared tensor, as the app runs it (Embedder.embed_tensor: on the
    CPU a small batch runs trunk and tail in the runtime's one graph, a folder's batch the trunk there and the
    tail in PyTorch), features only."""
    device = embedder.device
    sync(device)
    t0 = time.perf_counter()
    embedder.embed_tensor(x)
    sync(device)
    return time.perf_counter() - t0


def bench_runtime(embedder: core.Embedder, torch_embedder: core.Embedder, data: TestData, s: Settings) -> dict:
    """Bare forwards per image at batch 1 and at the folder's batch, the runtime's and PyTorch's interleaved."""
    images = [rgb(f) for f in data.support_frames[CLASSES[0]]]
    out: dict = {}
    for bs in (1, embedder.batch_size):
        x = prepared_input(embedder, [images[i % len(images)] for i in range(bs)])
        times: dict[str, list[float]] = {"runtime": [], "torch": []}
        for _ in range(s.warmup):
            bare_forward(embedder, x)
            bare_forward(torch_embedder, x)
        for _ in range(max(3, s.live_frames // bs)):
            times["runtime"].append(bare_forward(embedder, x) / bs)
            times["torch"].append(bare_forward(torch_embedder, x) / bs)
        ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
        out[f"batch_{bs}"] = {"runtime_ms_per_image": round(ms["runtime"], 2), "torch_ms_per_image": round(ms["torch"], 2),
                              "runtime_over_torch": round(ms["torch"] / ms["runtime"], 3)}
    return out


def bench_live(clf: core.FewShotClassifier, data: TestData, s: Settings) -> dict:
    """Rounds of (live block, bare block) with the same iteration count; fps = 1 / median per-frame time."""
    embedder = clf.embedder
    frames = [f for _, f in data.live_frames]
    x = prepared_input(embedder, [rgb(frames[0])])
    stages: dict[str, list[float]] = {k: [] for k in LIVE_STAGES}
    for i in range(s.warmup * 2):
        live_frame(clf, frames[i % len(frames)], {k: [] for k in LIVE_STAGES})
        bare_forward(embedder, x)
    live, bare = [], []
    for _ in range(s.live_rounds):
        for i in range(s.live_frames):
            seconds, _ = timed(functools.partial(live_frame, clf, frames[i % len(frames)], stages))
            live.append(seconds)
        bare += [bare_forward(embedder, x) for _ in range(s.live_frames)]
    live_fps = 1.0 / statistics.median(live)
    bare_fps = 1.0 / statistics.median(bare)
    return {
        "fps": round(live_fps, 2),
        "frame_ms": summary([t * 1000 for t in live]),
        "bare_forward_fps": round(bare_fps, 2),
        "bare_forward_ms": summary([t * 1000 for t in bare]),
        "live_over_bare": round(live_fps / bare_fps, 3),
        "stage_ms_median": {k: round(statistics.median(v) * 1000, 3) for k, v in stages.items()},
        "frames": len(live),
    }


class GuiLive:
    """The window's live path without a window: a Frame (BGR converted to RGB, as the source thread does) goes
    into the engine's one-frame slot; the engine thread predicts it and signals; the GUI thread hands frame and
    prediction to a LiveView and renders it, overlay included, into a 640x480 QImage (what the screen shows)."""

    def __init__(self, embedder: core.Embedder, data: TestData, workspace: Path) -> None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        from PySide6.QtCore import QEventLoop, QTimer
        from PySide6.QtGui import QImage
        from PySide6.QtWidgets import QApplication

        from core.sources import Frame
        from desktop.engine import Engine, LatestFrame
        from desktop.live_view import LiveView

        self.app = QApplication.instance() or QApplication(["bench"])
        self._wait_flag = QEventLoop.ProcessEventsFlag.WaitForMoreEvents
        # processEvents(WaitForMoreEvents) sleeps until an event comes (with a time limit it would spin, and
        # a spinning GUI thread takes the core the engine's thread needs); this timer bounds each sleep.
        self._tick = QTimer()
        self._tick.start(20)
        self.Frame = Frame
        self.frames = LatestFrame()
        self.engine = Engine(lambda: embedder, self.frames, workspace)
        self.results: dict[int, object] = {}
        self.engine.livePrediction.connect(lambda p: self.results.__setitem__(p.frame_index, p))
        snapshots: list = []
        self.engine.snapshotChanged.connect(snapshots.append)
        ready: list = []
        self.engine.ready.connect(ready.append)
        self.engine.start()
        self._until(lambda: ready, 120)
        for kind, frames in data.support_frames.items():
            for f in frames:
                self.engine.capture(kind, Frame(rgb(f), 0, 0.0, "bench"))
        want = sum(len(f) for f in data.support_frames.values())
        self._until(lambda: snapshots and len(snapshots[-1].examples) == want, 300)
        self.view = LiveView()
        self.view.resize(FRAME_W, FRAME_H)
        self.view.set_snapshot(snapshots[-1])
        self.canvas = QImage(FRAME_W, FRAME_H, QImage.Format.Format_RGB32)
        self.index = 0

    def _until(self, condition: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not answer in time")
            self.app.processEvents(self._wait_flag)  # sleeps until the engine's signal (or the tick)

    def frame(self, bgr: np.ndarray) -> object:
        """One camera frame to a drawn overlay; returns the prediction."""
        self.index += 1
        i = self.index
        frame = self.Frame(rgb(bgr), i, time.monotonic(), "bench")
        self.frames.put(frame)
        self._until(lambda: i in self.results, 60)
        prediction = self.results.pop(i)
        self._draw(frame, prediction)
        return prediction

    def _draw(self, frame: object, prediction: object) -> None:
        """What the window does with a prediction: frame and overlay into the live view, painted."""
        self.view.set_frame(frame)
        self.view.set_prediction(prediction)
        self.view.render(self.canvas)

    def stream(self, frames: list[tuple[str, np.ndarray]], seconds: float, feed_fps: float) -> tuple[int, float, int]:
        """A camera faster than the model: a feeder thread puts frames at feed_fps (the engine keeps the newest);
        the GUI thread draws every prediction as it arrives. -> (frames drawn, seconds, drawn right)."""
        import threading

        stop = threading.Event()
        shown: dict[int, tuple[object, str]] = {}  # index -> (Frame, class), the last few only
        first = self.index + 1

        def feed() -> None:
            i, due = first, time.perf_counter()
            while not stop.is_set():
                kind, bgr = frames[i % len(frames)]
                frame = self.Frame(rgb(bgr), i, time.monotonic(), "bench")
                shown[i] = (frame, kind)
                shown.pop(i - 64, None)
                self.frames.put(frame)
                i += 1
                due += 1.0 / feed_fps
                time.sleep(max(0.0, due - time.perf_counter()))
            self.index = i

        feeder = threading.Thread(target=feed, name="bench-feeder", daemon=True)
        drawn = right = 0
        feeder.start()
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            self.app.processEvents(self._wait_flag)
            for i in sorted(self.results):
                prediction = self.results.pop(i)
                if i not in shown:
                    continue
                frame, kind = shown[i]
                self._draw(frame, prediction)
                drawn += 1
                right += prediction.label == kind
        stop.set()
        feeder.join()
        quiet = time.monotonic() + 0.3  # let the engine finish its last frame before anything else is timed
        while time.monotonic() < quiet:
            self.app.processEvents(self._wait_flag)
            if self.results:
                self.results.clear()
                quiet = time.monotonic() + 0.3
        return drawn, elapsed, right

    def close(self) -> None:
        self._tick.stop()
        self.engine.shutdown()
        self.view.deleteLater()
        self.app.processEvents()


def bench_live_gui(embedder: core.Embedder, data: TestData, tmp: Path, s: Settings) -> dict:
    """Figure 4 through the GUI's own classes, with the torch threads the GUI uses (one core left for the
    camera and the window); the bare forward runs with the same threads, interleaved round by round.

    fps: a feeder faster than the model (twice the bare forward's rate), every prediction drawn as it arrives:
    what the window shows with a fast camera. latency_ms: one frame at a time, put -> drawn."""
    threads_before = torch.get_num_threads()
    threads = core.configure_threads(reserve=1)
    live = GuiLive(embedder, data, tmp / "workspace")
    try:
        frames = data.live_frames
        x = prepared_input(embedder, [rgb(frames[0][1])])
        for i in range(s.warmup * 2):
            live.frame(frames[i % len(frames)][1])
            bare_forward(embedder, x)
        feed_fps = 2.0 / statistics.median([bare_forward(embedder, x) for _ in range(5)])
        rates, bare, latency, drawn_total, right_total = [], [], [], 0, 0
        for _ in range(s.live_rounds):
            window_bare = [bare_forward(embedder, x) for _ in range(s.live_frames)]
            bare += window_bare
            drawn, seconds, right = live.stream(frames, seconds=sum(window_bare) * 1.5, feed_fps=feed_fps)
            rates.append(drawn / seconds)
            drawn_total, right_total = drawn_total + drawn, right_total + right
            latency += [timed(lambda i=i: live.frame(frames[i % len(frames)][1]))[0] for i in range(5)]
    finally:
        live.close()
        torch.set_num_threads(threads_before)
    live_fps, bare_fps = statistics.median(rates), 1.0 / statistics.median(bare)
    return {
        "path": "GUI: Frame -> engine slot -> engine thread predicts -> signal -> LiveView rendered with overlay",
        "threads": threads,
        "fps": round(live_fps, 2),
        "fps_per_round": [round(r, 2) for r in rates],
        "feed_fps": round(feed_fps, 1),
        "latency_ms": summary([t * 1000 for t in latency]),
        "bare_forward_fps": round(bare_fps, 2),
        "bare_forward_ms": summary([t * 1000 for t in bare]),
        "live_over_bare": round(live_fps / bare_fps, 3),
        "right": f"{right_total}/{drawn_total}",
        "frames": drawn_total,
    }


# ----------------------------------------------------------------------------------------------- 5. folder


def label_folder(clf: core.FewShotClassifier, paths: list[Path], csv_path: Path) -> core.LabelRun:
    """label_paths over the files, then write_labels_csv: what `protolabel label` does."""
    run = finish(core.label_paths(clf, paths))
    if run.skipped:
        raise RuntimeError(f"the test images did not all load: {run.skipped}")
    core.write_labels_csv(run.records, csv_path)
    return run


def accuracy(run: core.LabelRun) -> float:
    """Share of files whose label is the class named by their file-name prefix (a sanity check)."""
    hits = [Path(r.path).name.split("_")[0] == r.prediction.label for r in run.records]
    return round(sum(hits) / len(hits), 3)


def bench_folder(clf: core.FewShotClassifier, data: TestData, tmp: Path, s: Settings) -> dict:
    """Rounds of (whole folder through label_paths + CSV, bare forwards of as many images at the same batch)."""
    embedder = clf.embedder
    bs = embedder.batch_size
    n = len(data.folder_paths)
    csv_path = tmp / "labels.csv"
    images = [rgb(f) for f in data.support_frames[CLASSES[0]]]
    x = prepared_input(embedder, [images[i % len(images)] for i in range(bs)])
    label_folder(clf, data.folder_paths[:bs], csv_path)  # warm-up: one full batch
    bare_forward(embedder, x)
    folder, bare = [], []
    calls = -(-n // bs)  # the bare forward sees as many batches as the folder run
    for _ in range(s.folder_reps):
        seconds, run = timed(lambda: label_folder(clf, data.folder_paths, csv_path))
        folder.append(n / seconds)
        bare.append(bs * calls / sum(bare_forward(embedder, x) for _ in range(calls)))
    folder_ips, bare_ips = statistics.median(folder), statistics.median(bare)
    return {
        "images_per_s": summary(folder, 2),
        "bare_images_per_s": summary(bare, 2),
        "folder_over_bare": round(folder_ips / bare_ips, 3),
        "images": n,
        "batch_size": bs,
        "accuracy": accuracy(run),  # sanity check on the generated shapes, not a figure
    }


def labeling_round(session: core.LabelingSession) -> None:
    """What the window does after each confirmation: predict all, order for review, estimate."""
    session.predict(force=True)
    session.review_order()
    session.estimate()


def bench_labeling_round(embedder: core.Embedder, s: Settings) -> dict:
    """One round of the labeling loop on already-embedded folders of 1,000 and 100,000 images: 10 classes,
    5 confirmed images each and 3 "none of these classes". Features are drawn around 12 random centres (the
    cost does not depend on what they show)."""
    out = {}
    dim = embedder.backbone.feature_dim
    g = torch.Generator().manual_seed(0)
    for n in (1_000, 100_000):
        centres = 3 * torch.randn(12, dim, generator=g)
        feats = centres[torch.arange(n) % 12] + torch.randn(n, dim, generator=g)
        paths = [f"/folder/{i:06d}.jpg" for i in range(n)]
        session = core.LabelingSession(core.FewShotClassifier(embedder), "/folder", paths)
        session.set_features(paths, feats)
        for c in range(10):
            session.confirm(paths[c : 60 : 12], f"class{c}")
        session.reject(paths[10:46:12])
        labeling_round(session)  # warm-up (also builds the normalised feature table once)
        times = [timed(functools.partial(labeling_round, session))[0] for _ in range(s.round_reps)]
        out[str(n)] = summary(times, 4)
    return out


# ----------------------------------------------------------------------------------------------- main


def warn_if_busy() -> None:
    """CPU figures are only comparable on an otherwise idle machine; say so when it is not."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        log(f"warning: load average {load:.1f} on {cores} cores before starting; other jobs skew the CPU figures "
            "(with every core busy, more torch threads than free cores can be many times slower)")


def default_out_path() -> Path:
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    return ROOT / "bench" / "results" / f"{socket.gethostname()}-{stamp}.json"


def write_result(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (~30 s on 2 CPU cores), for tests")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--backbone", default=BACKBONE, help=f"registered backbone (default {BACKBONE})")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default bench/results/<host>-<date>.json)")
    return p.parse_args(argv)


def run_benchmark(args: argparse.Namespace) -> dict:
    s = QUICK if args.quick else Settings()
    started = time.perf_counter()
    set_threads(args.threads)
    warn_if_busy()
    log(f"building {args.backbone} on --device {args.device} with {torch.get_num_threads()} torch threads")
    embedder = core.Embedder(core.create_backbone(args.backbone), device=args.device)
    result: dict = {"schema": SCHEMA_VERSION, "quick": args.quick,
                    "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": machine_info(embedder), "settings": asdict(s)}
    with tempfile.TemporaryDirectory(prefix="protolabel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log("generating test images")
        data = make_test_data(tmp, s.folder_images)
        clf = build_classifier(embedder, data)
        log("1/6 prototype update")
        result["prototype_update_ms"] = bench_prototype_update(clf, data, s)
        log("2/6 adapt 5-way 5-shot from files")
        result["adapt_5way5shot_s"] = bench_adapt(embedder, data, s)
        log("3/6 fine-tuning")
        result["finetune"] = bench_finetune(clf, s)
        log("4/6 live pipeline vs bare forward: the GUI's path, then the core stages")
        result["live"] = bench_live_gui(embedder, data, tmp, s)
        result["live_core"] = bench_live(clf, data, s)
        rss_live = peak_rss_mb()
        log("5/6 folder labeling vs bare forward")
        result["folder"] = bench_folder(clf, data, tmp, s)
        result["peak_rss_mb"] = {"after_live": rss_live, "after_folder": peak_rss_mb()}
        log("6/6 one round of the labeling loop (predict, review order, estimate)")
        result["labeling_round_s"] = bench_labeling_round(embedder, s)
        if embedder.device.type == "cpu" and embedder.runtime != "torch":
            log("and again with PyTorch running the trunk: " + embedder.runtime_note)
            torch_embedder = core.Embedder(embedder.backbone, device=embedder.device, runtime="torch")
            clf_torch = build_classifier(torch_embedder, data)
            torch_path = {"live_core": bench_live(clf_torch, data, s), "folder": bench_folder(clf_torch, data, tmp, s)}
            result["runtime"] = {
                "note": embedder.runtime_note,
                "bare": bench_runtime(embedder, torch_embedder, data, s),
                "torch_path": torch_path,
                "live_runtime_over_torch": round(result["live_core"]["fps"] / torch_path["live_core"]["fps"], 3),
                "folder_runtime_over_torch": round(result["folder"]["images_per_s"]["median"]
                                                   / torch_path["folder"]["images_per_s"]["median"], 3),
            }
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if embedder.messages:
        result["messages"] = embedder.messages  # e.g. a CUDA out-of-memory fallback to the CPU
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_benchmark(args)
    out = args.out or default_out_path()
    write_result(result, out)
    log(f"done in {result['wall_s']} s; wrote {out}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
