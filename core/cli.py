"""The `protolabel` command. Every subcommand is a thin shell over the same core functions the GUI uses."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Generator, Sequence

__all__ = ["main", "build_parser"]


def _unknown_arg(text: str) -> str | float:
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected auto, off or a similarity between -1 and 1") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a similarity threshold lies between -1 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="FILE", help="a ProtoLabel model file (default: the embedded model)")
    p.add_argument("--backbone", default=None, help="registered backbone name (see `protolabel backbones`)")
    p.add_argument("--weights", metavar="FILE", help="weights for --backbone when they are not embedded")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per forward pass (default: 16 on the CPU, 32 on a GPU)")
    p.add_argument("--input-size", type=_positive_int, default=None, metavar="PX",
                   help="square input size in pixels (default: the backbone's, 224 for Lite0); a multiple of 32")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "int8", "torch"), default=None,
                   help="what runs the frozen network on the CPU: auto (ONNX Runtime when it works, else PyTorch), "
                        "onnxruntime, int8 (ONNX Runtime, quantized), torch (default: PROTOLABEL_RUNTIME, else auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protolabel", description="Label images from a few examples.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("label", help="label a folder from a support folder (one subfolder per class)")
    p.add_argument("--support", required=True, metavar="DIR", help="one folder per class with example images")
    p.add_argument("--query", required=True, metavar="DIR", help="folder (searched recursively) or image to label")
    p.add_argument("--out", required=True, metavar="CSV", help="where to write path,label,confidence,... rows")
    p.add_argument("--finetune", type=float, default=0.0, metavar="SECONDS", help="test-time fine-tuning budget")
    p.add_argument("--transductive", action="store_true", help="use the whole query folder to refine prototypes")
    p.add_argument("--unknown", type=_unknown_arg, default="auto", help="auto | off | similarity threshold")
    p.add_argument("--topk", type=_positive_int, default=3)
    p.add_argument("--save-project", metavar="DIR", help="also save the session as a project folder")
    _add_model_args(p)

    p = sub.add_parser("evaluate", help="few-shot accuracy over the class folders under ROOT")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--way", type=_positive_int, default=5)
    p.add_argument("--shot", type=_positive_int, nargs="+", default=[1, 5])
    p.add_argument("--query", type=_positive_int, default=15)
    p.add_argument("--episodes", type=_positive_int, default=600)
    p.add_argument("--min-images", type=_positive_int, default=10)
    p.add_argument("--finetune", type=float, default=0.0, metavar="SECONDS", help="fine-tuning budget per episode")
    p.add_argument("--finetune-steps", type=_positive_int, default=40)
    p.add_argument("--transductive", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--no-cache", action="store_true", help="don't read or write the feature cache")
    _add_model_args(p)

    p = sub.add_parser("simulate", help="how many actions a person needs to label a folder right (simulated)",
                       description="A simulated annotator labels a folder through the same labeling session as the "
                                   "window: it creates the classes with --start examples each, then reviews --batch "
                                   "images at a time in the grid's default order (accept if right, else correct; "
                                   "pictures of the --other-classes get 'none of these classes'). Reports actions per "
                                   "image to reach 90/95/98%% of the folder labeled right.")
    p.add_argument("root", metavar="ROOT", help="one folder of images per class (the truth)")
    p.add_argument("--classes", type=_positive_int, default=10, help="classes the annotator creates")
    p.add_argument("--per-class", type=_positive_int, default=40, help="images of each class in the folder")
    p.add_argument("--other-classes", type=int, default=2,
                   help="classes mixed into the folder that the annotator never creates (right label: unknown)")
    p.add_argument("--start", type=_positive_int, default=1, help="examples per class when it is created")
    p.add_argument("--batch", type=_positive_int, default=10, help="images reviewed per round")
    p.add_argument("--accept-above", type=_probability, default=None, metavar="T",
                   help="after each round also 'Accept all >= T' (one action) when it confirms a batch or more")
    p.add_argument("--trials", type=_positive_int, default=5)
    p.add_argument("--min-images", type=_positive_int, default=10, help="class folders with fewer images are ignored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PNG", help="write folder accuracy against actions per image to this PNG")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a labeling-session setting to try instead of the default (see core.session.SessionOptions)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--no-cache", action="store_true", help="don't read or write the feature cache")
    _add_model_args(p)

    p = sub.add_parser("demo", help="a headless demo on real images: learn 5 classes from 5 examples each")
    p.add_argument("--root", default="/usr/share/openclipart/png", help="folder tree with one folder per class")
    p.add_argument("--out", default="protolabel-demo", metavar="DIR")
    p.add_argument("--shots", type=_positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)

    p = sub.add_parser("metatrain", help="meta-train the model on your own base classes (the outer loop)",
                       description="Episodic meta-training: the last stage of the backbone learns, from many "
                                   "N-way K-shot tasks drawn from the class folders under ROOT, to make prototypes "
                                   "that separate new classes. Validation classes are held out; the best "
                                   "checkpoint is written to --out (use it with --model). Runs distributed "
                                   "under torchrun --nproc_per_node=N.")
    p.add_argument("root", metavar="ROOT", help="one folder of images per base class")
    p.add_argument("--out", required=True, metavar="FILE", help="the model file to write (.safetensors)")
    p.add_argument("--val-split", type=float, default=0.2, help="fraction of the classes held out for validation")
    p.add_argument("--way", type=_positive_int, default=5)
    p.add_argument("--shot", type=_positive_int, default=5)
    p.add_argument("--query", type=_positive_int, default=15)
    p.add_argument("--episodes", type=_positive_int, default=2000)
    p.add_argument("--val-every", type=_positive_int, default=100, metavar="N", help="episodes between validations")
    p.add_argument("--val-episodes", type=_positive_int, default=200)
    p.add_argument("--patience", type=_positive_int, default=5, help="validations without progress before stopping")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--min-images", type=_positive_int, default=10)
    p.add_argument("--exclude", metavar="FILE", help="a text file of class names (one per line) never to use, "
                                                      "e.g. the classes you will test on")
    p.add_argument("--domains", action="store_true",
                   help="ROOT's top-level folders are domains (e.g. clipart/, glyphs/): each episode comes from one "
                        "domain, each domain keeps validation classes, the best checkpoint has the best mean")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same ROOT, --out, settings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="don't read or write the feature cache")
    _add_model_args(p)

    from .export import LABEL_FORMATS, LINK_MODES

    p = sub.add_parser("export", help="export labels (CSV, JSON, image folders, YOLO, Label Studio) or the model")
    export_sub = p.add_subparsers(dest="export_command", required=True, metavar="{labels,model}")
    q = export_sub.add_parser(
        "labels", help="write a project's (or a labels CSV's) labels in another tool's format",
        description="Export labels. SRC is a project folder (`label --save-project`, the window) or a labels CSV. "
                    "Folder layouts (imagefolder, yolo-cls) get safe folder names and a manifest, "
                    "OUT/classes.json, mapping them back to the class names.")
    q.add_argument("src", metavar="SRC", help="a project folder or a labels CSV")
    q.add_argument("--format", required=True, choices=LABEL_FORMATS)
    q.add_argument("--out", required=True, metavar="PATH",
                   help="the file (csv, json, labelstudio: .json is added when the name lacks it) or folder to write")
    q.add_argument("--only-confirmed", action="store_true",
                   help="only labels a person gave (confirmed, and the examples)")
    q.add_argument("--min-confidence", type=float, default=None, metavar="X",
                   help="leave out predictions below this probability (a person's labels always pass)")
    q.add_argument("--include-unknown", action="store_true", help="also export images labeled unknown")
    q.add_argument("--val-split", type=float, default=None, help="yolo-cls: fraction per class for val (default 0.2)")
    q.add_argument("--seed", type=int, default=None, help="yolo-cls: the split's seed (default 0)")
    q.add_argument("--link", choices=LINK_MODES, default=None,
                   help="imagefolder, yolo-cls: copy files (default), hard-link or symlink them")
    q.add_argument("--document-root", metavar="DIR", default=None,
                   help="labelstudio: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, when it is given (e.g. a "
                        "Docker volume); the tasks file must be inside it. Default: the folder above the one holding "
                        "the labeled images and the tasks file. The export names the document root and the one local "
                        "files storage to add (also in <tasks>.local_storage.json)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at OUT (a folder: only what that export wrote)")
    q = export_sub.add_parser("model", help="the project's classifier as one ONNX or TorchScript file")
    q.add_argument("project", metavar="PROJECT", help="a project folder")
    q.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    q.add_argument("--out", required=True, metavar="FILE")
    _add_model_args(q)

    sub.add_parser("backbones", help="list the registered backbones")
    return parser


# ------------------------------------------------------------------------------------------------ helpers


def _progress(run: Generator, desc: str, enabled: bool = True):
    """Drive a core generator, drawing a tqdm bar from its Progress items; returns its result."""
    from tqdm import tqdm

    from .runs import finish

    bar = None

    def show(item) -> None:
        nonlocal bar
        done, total = getattr(item, "done", None), getattr(item, "total", None)
        if done is not None and total is not None and enabled:
            if bar is None:
                bar = tqdm(total=total, desc=getattr(item, "stage", desc), unit="img", file=sys.stderr,
                           dynamic_ncols=True, leave=False)
            bar.set_description(getattr(item, "stage", desc))
            bar.n = done
            if getattr(item, "skipped", 0):
                bar.set_postfix(skipped=item.skipped)
            bar.refresh()

    try:
        return finish(run, show)
    finally:
        if bar is not None:
            bar.close()


def _make_embedder(args):
    from .backbones import DEFAULT_BACKBONE, create_backbone, create_default_backbone, load_model_file
    from .device import configure_threads
    from .embedding import Embedder

    configure_threads(reserve=0)
    if args.model:
        backbone = load_model_file(args.model)
    elif args.backbone or args.weights:
        backbone = create_backbone(args.backbone or DEFAULT_BACKBONE, args.weights)
    else:
        backbone = create_default_backbone()
    if args.input_size:
        if args.input_size % 32:
            raise ValueError(f"--input-size must be a multiple of 32 (every stride-2 stage then sees even sizes); "
                             f"got {args.input_size}")
        import dataclasses

        backbone.preprocess_config = dataclasses.replace(backbone.preprocess_config, size=args.input_size)
    embedder = Embedder(backbone, args.device, batch_size=args.batch_size, runtime=args.runtime)
    embedder.on_message = lambda m: print(f"warning: {m}", file=sys.stderr)
    return embedder


class _Interrupt:
    """First Ctrl-C cancels the running operation cleanly; the second one stops at once."""

    def __init__(self, token) -> None:
        self.token = token
        self.previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.token.cancelled:
                raise KeyboardInterrupt
            print("\ncancelling... (Ctrl-C again to stop at once)", file=sys.stderr)
            self.token.cancel()

        try:
            self.previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _print_skipped(skipped, limit: int = 10) -> None:
    for s in skipped[:limit]:
        print(f"  skipped: {s.reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more", file=sys.stderr)


def _finetune(classifier, seconds: float, quiet: bool = False) -> None:
    from tqdm import tqdm

    bar = tqdm(total=1, desc="fine-tuning", file=sys.stderr, leave=False, disable=quiet)

    def progress(p) -> None:
        bar.total = p.total_steps
        bar.n = p.step
        bar.set_description(p.phase)
        bar.set_postfix(loss=f"{p.loss:.3f}")
        bar.refresh()

    result = classifier.finetune(budget_s=seconds, progress=progress)
    bar.close()
    print(f"fine-tuning: {result.message} ({result.seconds:.1f} s)", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ commands


def cmd_label(args) -> int:
    from .classifier import FewShotClassifier
    from .embedding import CancelToken
    from .labeling import add_support_tree, label_paths, query_paths, write_labels_csv

    paths = query_paths(args.query)  # a typo in --query fails before the support is embedded
    embedder = _make_embedder(args)
    classifier = FewShotClassifier(embedder, unknown=args.unknown, topk=args.topk)
    token = CancelToken()
    with _Interrupt(token):
        support = _progress(add_support_tree(classifier, args.support, token), "support")
        if support.cancelled:
            print("cancelled", file=sys.stderr)
            return 130
        if not classifier.ready():
            print(f"error: no readable example images under '{args.support}'", file=sys.stderr)
            _print_skipped(support.skipped)
            return 2
        n_ex = sum(support.added.values())
        print(f"support: {_plural(len(support.added), 'class')}, {_plural(n_ex, 'example')}"
              + (f", {_plural(len(support.skipped), 'unreadable file')} skipped" if support.skipped else ""),
              file=sys.stderr)
        _print_skipped(support.skipped)
        if args.finetune > 0:
            if len(support.added) >= 2:
                _finetune(classifier, args.finetune)
            else:
                print("fine-tuning skipped: it needs at least two classes", file=sys.stderr)
        cache = None
        if args.save_project:
            from .project import open_embedding_cache

            # The project keeps the folder's trunk maps: labeling it again (other examples, fine-tuned)
            # decodes nothing that is unchanged.
            cache = open_embedding_cache(args.save_project, embedder)
        t0 = time.perf_counter()
        try:
            run = _progress(label_paths(classifier, paths, transductive=args.transductive, cancel=token,
                                        cache=cache), "labeling")
        finally:
            if cache is not None:
                cache.close()
    elapsed = time.perf_counter() - t0
    write_labels_csv(run.records, args.out, topk=args.topk)
    counts: dict[str, int] = {}
    for r in run.records:
        counts[r.prediction.label] = counts.get(r.prediction.label, 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    rate = len(run.records) / elapsed if elapsed > 0 else 0.0
    print(f"labeled {len(run.records)} images in {elapsed:.1f} s ({rate:.1f}/s), {len(run.skipped)} skipped"
          f"{' (cancelled)' if run.cancelled else ''} -> {args.out}", file=sys.stderr)
    if summary:
        print(f"  {summary}", file=sys.stderr)
    _print_skipped(run.skipped)
    if args.save_project:
        from .project import save_project

        root = args.query if Path(args.query).is_dir() else str(Path(args.query).parent)
        save_project(args.save_project, classifier, [(r.path, r.prediction, r.source) for r in run.records],
                     query_root=root, settings={"transductive": args.transductive, "unknown": args.unknown})
        print(f"project saved to {args.save_project}", file=sys.stderr)
    return 130 if run.cancelled else 0


def cmd_evaluate(args) -> int:
    from .embedding import CancelToken
    from .evaluation import FeatureTable, build_feature_table, evaluate

    embedder = _make_embedder(args)
    token = CancelToken()
    with _Interrupt(token):
        table = _progress(
            build_feature_table(args.root, embedder, args.min_images, with_maps=args.finetune > 0,
                                cache_dir=False if args.no_cache else None, cancel=token),  # type: ignore[arg-type]
            "embedding",
        )
        if not isinstance(table, FeatureTable):
            print("cancelled", file=sys.stderr)
            return 130
        print(f"{len(table.class_names)} classes, {len(table.paths)} images"
              + (f", {len(table.skipped)} unreadable skipped" if table.skipped else ""), file=sys.stderr)
        _print_skipped(table.skipped, 5)
        if len(table.class_names) < args.way:
            print(f"error: {args.way}-way needs {args.way} classes with >= {args.min_images} images; "
                  f"found {len(table.class_names)}", file=sys.stderr)
            return 2
        from tqdm import tqdm

        from .runs import finish

        bar = None

        def show(item) -> None:
            nonlocal bar
            if bar is None or bar.desc != f"{item.shot}-shot":
                if bar is not None:
                    bar.close()
                bar = tqdm(total=item.episodes, desc=f"{item.shot}-shot", file=sys.stderr, leave=False)
            bar.n = item.episode
            bar.set_postfix(acc=f"{item.accuracy:.1f}")
            bar.refresh()

        results = finish(evaluate(table, args.way, tuple(args.shot), args.query, args.episodes, args.seed,
                                  args.transductive, args.finetune, embedder, args.finetune_steps, token), show)
        if bar is not None:
            bar.close()
    if results is None:
        print("cancelled", file=sys.stderr)
        return 130
    mode = ("transductive" if args.transductive else "inductive") + (f", fine-tuned {args.finetune:g}s" if args.finetune else "")
    print(f"{args.way}-way, up to {args.query} queries/class, {args.episodes} episodes, {mode}, "
          f"backbone {embedder.backbone.name}, device {embedder.device}")
    for shot, r in results.items():
        print(f"  {shot}-shot: {r.accuracy:.2f}% +- {r.ci95:.2f}  (median adaptation {r.adapt_ms_median:.1f} ms/episode)")
    if args.json:
        print(json.dumps({str(k): v.to_dict() for k, v in results.items()}))
    return 0


def _session_options(pairs: Sequence[str]):
    """["head=prototypes", "order=margin"] -> SessionOptions with those fields changed (types from the defaults)."""
    import dataclasses

    from .session import SessionOptions

    options = SessionOptions()
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    changes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--option expects NAME=VALUE with NAME one of {', '.join(fields)}; got '{pair}'")
        changes[name] = type(fields[name])(value)
    return options.with_changes(**changes)


def cmd_simulate(args) -> int:
    from .embedding import CancelToken
    from .evaluation import FeatureTable, build_feature_table
    from .simulate import SimulationResult, plot_curves, simulate

    options = _session_options(args.option)
    embedder = _make_embedder(args)
    token = CancelToken()
    with _Interrupt(token):
        table = _progress(build_feature_table(args.root, embedder, args.min_images,
                                              cache_dir=False if args.no_cache else None, cancel=token),  # type: ignore[arg-type]
                          "embedding")
        if not isinstance(table, FeatureTable):
            print("cancelled", file=sys.stderr)
            return 130
        _print_skipped(table.skipped, 5)
        result = _progress(simulate(table, embedder, args.classes, args.per_class, args.other_classes, args.start,
                                    args.batch, args.trials, args.seed, options, cancel=token,
                                    accept_above=args.accept_above), "simulating")
    if not isinstance(result, SimulationResult) or not result.trials:
        print("cancelled", file=sys.stderr)
        return 130
    summary = result.summary()
    api, hand = summary["actions_per_image"], summary["hand_labeling"]
    print(f"{summary['images']} images per folder ({args.classes} classes x {args.per_class}, {args.other_classes} "
          f"other classes), {len(result.trials)} trials, start {args.start}/class, batch {args.batch}")
    for t in api:
        print(f"  {t}% labeled right: {api[t]:.3f} actions per image (by hand: {hand[t]:.3f})")
    print(f"  right before any review: {summary['start_accuracy']}%; estimate off by {summary['estimate_error']} "
          f"points; {summary['seconds_per_round']:.3f} s per round")
    if args.other_classes:
        print(f"  in-class pictures left unknown after round 1: {summary['false_unknown']}%; other-class pictures "
              f"unknown once 3 were marked: {summary['caught_unknown']}%")
    if args.plot:
        plot_curves({"ProtoLabel": result}, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: summary[k] for k in ("actions_per_image", "start_accuracy", "estimate_error",
                                                 "false_unknown", "caught_unknown", "seconds_per_round")}))
    return 0


def cmd_demo(args) -> int:
    """Real work on real images: 5 classes from `--shots` examples each, label the rest, report accuracy."""
    import numpy as np

    from .classifier import FewShotClassifier
    from .embedding import load_for_model
    from .images import class_folders
    from .labeling import label_paths, write_labels_csv

    root = Path(args.root)
    if not root.is_dir():
        print(f"error: '{root}' does not exist. On Debian/Ubuntu: sudo apt-get install openclipart-png, "
              f"or pass --root DIR with one folder of images per class", file=sys.stderr)
        return 2
    folders = {k: v for k, v in class_folders(root, min_images=args.shots + 5).items()}
    if len(folders) < 2:
        print(f"error: need at least 2 folders with {args.shots + 5}+ images under '{root}'", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    names = sorted(rng.choice(sorted(folders), size=min(5, len(folders)), replace=False).tolist())
    embedder = _make_embedder(args)
    classifier = FewShotClassifier(embedder)
    queries, truth = [], {}
    for name in names:
        files = [folders[name][i] for i in rng.permutation(len(folders[name]))]
        support, rest = files[: args.shots], files[args.shots : args.shots + 20]
        images = []
        for f in support:
            try:
                images.append(load_for_model(f, embedder.config))
            except Exception as exc:
                print(f"  skipped: {exc}", file=sys.stderr)
        classifier.add_examples(name, images, [str(f) for f in support])
        queries += [str(f) for f in rest]
        truth.update({str(f): name for f in rest})
    print(f"classes: {', '.join(names)} ({args.shots} examples each); labeling {len(queries)} other images",
          file=sys.stderr)
    out = Path(args.out)
    results = {}
    for transductive in (False, True):
        run = _progress(label_paths(classifier, queries, transductive=transductive), "labeling")
        correct = sum(r.prediction.label == truth[r.path] for r in run.records)
        results[transductive] = (correct, len(run.records))
        if not transductive:
            run_inductive = run
        write_labels_csv(run.records, out / ("labels-transductive.csv" if transductive else "labels.csv"))
    print("a few of the inductive predictions (file: predicted, confidence; true class):")
    shown = run_inductive.records[:: max(1, len(run_inductive.records) // 6)][:6]
    for r in shown:
        mark = "ok " if r.prediction.label == truth[r.path] else "MISS"
        print(f"  {mark} {Path(r.path).name[:40]:40s} -> {r.prediction.label} ({r.prediction.probability:.2f}); "
              f"{truth[r.path]}")
    for transductive, (correct, n) in results.items():
        mode = "transductive" if transductive else "inductive"
        print(f"{mode:>12}: {correct}/{n} correct ({100 * correct / max(n, 1):.1f}%)")
    print(f"labels written to {out}/labels.csv and {out}/labels-transductive.csv")
    return 0


def cmd_backbones(args) -> int:
    from .backbones import available_backbones

    for spec in available_backbones():
        print(f"{spec.name:22s} {spec.description}")
    print(f"{'timm/<arch>':22s} any timm architecture; weights from ~/.cache/protolabel/weights/<arch>.safetensors")
    print(f"{'torchvision/<arch>':22s} resnet18/34/50/101; weights from the torch hub cache")
    return 0


def cmd_export(args) -> int:
    return cmd_export_labels(args) if args.export_command == "labels" else cmd_export_model(args)


def cmd_export_labels(args) -> int:
    from .embedding import CancelToken
    from .export import iter_export, label_export_settings, read_labels, select_labels

    labels = read_labels(args.src)
    # The window's export runs the same select_labels with the same settings (desktop/export_dialog.py).
    given = {"only_confirmed": args.only_confirmed, "min_confidence": args.min_confidence,
             "include_unknown": args.include_unknown, "overwrite": args.overwrite, "link": args.link,
             "val_split": args.val_split, "seed": args.seed, "document_root": args.document_root}
    label_export_settings(args.format, **given)  # a wrong flag fails before the summary below
    chosen = None
    try:
        chosen, keywords = select_labels(labels, args.format, **given)
    finally:
        print(f"{_plural(len(labels.records), 'label')} in '{args.src}', "
              f"{len(chosen.records) if chosen else 0} pass the filters"
              + (f"; {len(labels.rejected)} unusable" if labels.rejected else ""), file=sys.stderr)
        for s in labels.rejected[:5]:
            print(f"  not used: {s.reason}", file=sys.stderr)
    token = CancelToken()
    try:
        with _Interrupt(token):
            report = _progress(iter_export(chosen, args.format, args.out, cancel=token, **keywords), "exporting")
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise RuntimeError(f"{exc.filename or args.out}: {exc.strerror or exc}") from exc
    print(f"exported {_plural(report.written, 'label')} as {args.format}"
          + (f", {report.copied_instead} copied (no hard link possible)" if report.copied_instead else "")
          + (f", {len(report.skipped)} skipped (missing or unreadable)" if report.skipped else "")
          + (" (cancelled)" if report.cancelled else "") + f" -> {report.out}", file=sys.stderr)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts.items(), key=lambda kv: -kv[1]))
    if summary:
        print(f"  {summary}", file=sys.stderr)
    for part, counts in report.splits.items():
        print(f"  {part}: {sum(counts.values())} images", file=sys.stderr)
    _print_skipped(report.skipped, 5)
    for note in report.notes:
        print(f"  {note}", file=sys.stderr)
    return 130 if report.cancelled else 0


def cmd_export_model(args) -> int:
    from .export_model import export_model

    embedder = _make_embedder(args)
    info = export_model(args.project, args.format, args.out, embedder)
    sidecar = getattr(info, "sidecar", None)
    print(f"model written to {args.out}" + (f" (metadata: {sidecar})" if sidecar else ""), file=sys.stderr)
    return 0


def _init_distributed(device: str) -> bool:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl with GPUs, else gloo). True if joined."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def cmd_metatrain(args) -> int:
    import torch.distributed as dist
    from tqdm import tqdm

    from .embedding import CancelToken
    from .evaluation import EmbedProgress
    from .metatrain import MetaProgress, MetaTrainConfig, metatrain
    from .runs import finish

    if not 0 < args.val_split < 1:
        raise ValueError(f"--val-split must be between 0 and 1, got {args.val_split}")
    joined = _init_distributed(args.device)
    try:
        embedder = _make_embedder(args)
        config = MetaTrainConfig(way=args.way, shot=args.shot, query=args.query, episodes=args.episodes,
                                 val_split=args.val_split, val_every=args.val_every, val_episodes=args.val_episodes,
                                 patience=args.patience, lr=args.lr, seed=args.seed, min_images=args.min_images,
                                 domains=args.domains)
        token = CancelToken()
        bar = None

        def show(item) -> None:
            nonlocal bar
            if isinstance(item, EmbedProgress):
                if bar is None:
                    bar = tqdm(total=item.total, desc="embedding", unit="img", file=sys.stderr, leave=False)
                bar.n = item.done
                bar.refresh()
            elif isinstance(item, MetaProgress):
                if bar is None or bar.desc != "meta-training":
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=item.episodes, desc="meta-training", unit="ep", file=sys.stderr)
                bar.n = item.episode
                post = {"loss": f"{item.loss:.3f}", "acc": f"{item.train_acc:.1f}"}
                if item.val_acc is not None:
                    post["val"] = f"{item.val_acc:.1f}"
                bar.set_postfix(post)
                bar.refresh()

        with _Interrupt(token):
            exclude = [ln.strip() for ln in Path(args.exclude).read_text().splitlines() if ln.strip()] if args.exclude else []
            result = finish(metatrain(args.root, args.out, embedder, config, resume=args.resume, cancel=token,
                                      cache_dir=False if args.no_cache else None, exclude=exclude), show)
        if bar is not None:
            bar.close()
        if result is None:
            if not dist.is_initialized() or dist.get_rank() == 0:
                print("cancelled before training started", file=sys.stderr)
            return 130 if token.cancelled else 0
        gain = result.best_val_acc - result.baseline_val_acc
        how = "cancelled" if result.cancelled else "stopped early" if result.stopped_early else "done"
        print(f"{how} after {result.episodes_done} episodes: validation {config.way}-way {config.shot}-shot accuracy "
              f"{result.baseline_val_acc:.2f}% (pretrained) -> {result.best_val_acc:.2f}% (best, episode "
              f"{result.best_episode}), {gain:+.2f} points on {len(result.val_classes)} held-out classes",
              file=sys.stderr)
        print(f"model: {result.out}\nlog: {result.log_path}\ncurve: {result.curve_path}", file=sys.stderr)
        return 130 if result.cancelled else 0
    finally:
        if joined:
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .device import keep_freed_memory

    keep_freed_memory()  # a program's choice for its process (`import core` sets nothing process-wide)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    commands = {"label": cmd_label, "evaluate": cmd_evaluate, "demo": cmd_demo, "backbones": cmd_backbones,
                "simulate": cmd_simulate, "metatrain": cmd_metatrain, "export": cmd_export}
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        if args.verbose:
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
