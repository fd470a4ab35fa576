"""Reproduce the app's default meta-learned model and the figures that decide whether it ships.

    .venv/bin/python tools/train_default_model.py [--episodes 3000] [--work build/default-model]

Data (all offline, Debian packages; tools/make_base_data.py builds it, seeded): five training domains -
openclipart clip art, CJK glyphs drawn by several fonts, freedesktop icons drawn by several icon themes, Latin
and Greek letters drawn by several text fonts, and small grey copies of the clip art and icon classes - and two
held-out sets that take part in no choice: Fashion-MNIST and playing cards (the held-out domain: 52 cards drawn
by 16 SVG decks).
1. Every training domain keeps a third of its classes out (held-out.txt; clip art: every third class in sorted
   order, tools/openclipart-test-classes.txt): never trained on, never used for a choice.
2. `protolabel metatrain --domains` on the other classes: each episode from one domain (uniform over domains),
   per-domain validation classes, early stopping on the mean over domains.
3. Weight interpolation (WiSE-FT, Wortsman et al. 2022): tail = (1 - a) * pretrained + a * meta-trained, a in
   0, 0.25, ..., 1 chosen on the validation classes only: the best mean gain over the domains (5-way, 1 and
   5 shots), a = 0 (the pretrained tail) when nothing gains.
4. `protolabel evaluate` (5-way, 1 and 5 shots, 15 queries, 600 episodes, seed 0) of the pretrained model and of
   the result, end to end through `--model`, on the held-out sets: openclipart's held-out classes,
   Fashion-MNIST and the cards; the held-out classes of glyphs, icons and letters are reported too.
5. Ship rule: the model is copied to resources/models/default.safetensors only if it is ahead on the mean of
   the three held-out sets (both shots) and behind on none beyond that set's 95% interval.
The report (JSON + a Markdown table) is written to the work folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHIPPED = REPO / "resources" / "models" / "default.safetensors"
PROTOLABEL = [sys.executable, "-m", "core.cli"]
TRAIN_DOMAINS = ("clipart", "glyphs", "icons", "letters", "lowres")
HELD_OUT_SETS = {"openclipart, held-out classes": "clipart", "Fashion-MNIST": "fashion",
                 "playing cards (held-out domain)": "cards"}
EXTRA_SETS = {"glyphs, held-out classes": "glyphs", "icons, held-out classes": "icons",
              "letters, held-out classes": "letters"}
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_IMAGES = 6


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def held_out(data: Path, domain: str) -> list[str]:
    return [n for n in (data / domain / "held-out.txt").read_text().split("\n") if n]


def training_root(data: Path, work: Path) -> tuple[Path, Path]:
    """work/train/<domain>/<class> -> data/<domain>/<class> for the training classes of the training domains
    (held-out classes are not even embedded), and the exclude file naming the held-out ones (a safeguard)."""
    root = work / "train"
    exclude = []
    for d in TRAIN_DOMAINS:
        out = set(held_out(data, d))
        exclude += [f"{d}/{c}" for c in sorted(out)]
        for folder in sorted(p for p in (data / d).iterdir() if p.is_dir() and p.name not in out):
            link = root / d / folder.name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(folder.resolve())
    path = work / "exclude.txt"
    path.write_text("".join(f"{n}\n" for n in exclude))
    return root, path


def held_out_root(data: Path, domain: str, work: Path) -> Path:
    """A folder of only the held-out classes of `domain` (symlinks); the whole domain when all are held out."""
    classes = held_out(data, domain)
    every = sorted(p.name for p in (data / domain).iterdir() if p.is_dir())
    if classes == every:
        return data / domain
    root = work / f"{domain}-test"
    if not root.is_dir():
        root.mkdir(parents=True)
        for c in classes:
            (root / c).symlink_to((data / domain / c).resolve())
    return root


def evaluate(root: Path, model: Path | None) -> dict:
    cmd = PROTOLABEL + ["evaluate", str(root), "--shot", "1", "5", "--episodes", "600", "--seed", "0", "--json",
                        "--device", "cpu", "--min-images", str(MIN_IMAGES)]
    cmd += ["--model", str(model)] if model is not None else ["--backbone", "efficientnet_lite0"]  # not the shipped file
    return json.loads(run(cmd).strip().splitlines()[-1])


def _tail_mix(pretrained: dict, meta: dict, alpha: float) -> dict:
    return {k: (1 - alpha) * pretrained[k].float() + alpha * meta[k].float() if pretrained[k].is_floating_point()
            else meta[k] for k in pretrained}


def choose_interpolation(model: Path, train_root: Path) -> tuple[float, dict]:
    """a in ALPHAS with the best mean gain over the domains' validation classes (5-way, mean of 1 and 5 shots)."""
    import copy

    import numpy as np

    from core import Embedder, create_backbone, load_model_file
    from core.evaluation import FeatureTable, build_feature_table, evaluate as evaluate_table
    from core.runs import finish

    log = json.loads(Path(str(model) + ".log.json").read_text())
    pretrained = create_backbone("efficientnet_lite0")
    embedder = Embedder(pretrained, "cpu")
    p_tail = {k: v.clone() for k, v in pretrained.tail.state_dict().items()}
    m_tail = load_model_file(model).tail.state_dict()
    table = finish(build_feature_table(train_root, embedder, MIN_IMAGES, with_maps=True))
    tables = {}
    for d in TRAIN_DOMAINS:
        names = sorted(c for c in log["val_classes"] if c.split("/", 1)[0] == d)
        index = {table.class_names.index(n): k for k, n in enumerate(names)}
        keep = [i for i, c in enumerate(table.labels.tolist()) if c in index]
        labels = np.asarray([index[int(table.labels[i])] for i in keep])
        tables[d] = FeatureTable(names, [table.paths[i] for i in keep], labels, table.features[keep], table.maps[keep])
    scores: dict = {}
    for alpha in ALPHAS:
        tail = copy.deepcopy(pretrained.tail)
        tail.load_state_dict(_tail_mix(p_tail, m_tail, alpha))
        scores[alpha] = {}
        for name, t in tables.items():
            feats = embedder.features_from_maps(t.maps, tail)
            res = finish(evaluate_table(FeatureTable(t.class_names, t.paths, t.labels, feats, None), shots=(1, 5),
                                        episodes=300, seed=1))
            scores[alpha][name] = round((res[1].accuracy + res[5].accuracy) / 2, 2)
    base = scores[0.0]

    def gain(a: float) -> float:
        return float(np.mean([scores[a][n] - base[n] for n in tables]))

    best = max(ALPHAS, key=lambda a: (gain(a), a == 0.0))
    return best, {str(a): {**v, "mean_gain": round(gain(a), 2)} for a, v in scores.items()}


def interpolate(model: Path, alpha: float, out: Path) -> None:
    from core import create_backbone, load_model_file, save_model_file
    from core.backbones import read_model_metadata

    pretrained = create_backbone("efficientnet_lite0")
    meta_backbone = load_model_file(model)
    meta_backbone.tail.load_state_dict(_tail_mix(pretrained.tail.state_dict(), meta_backbone.tail.state_dict(), alpha))
    info = read_model_metadata(model)
    extra = {k: v for k, v in info.items() if k not in ("format", "format_version", "backbone", "preprocess")}
    extra["metatrain"]["interpolation"] = {"alpha": alpha, "rule": "WiSE-FT, alpha chosen on validation data"}
    extra["metatrain"]["domains"] = list(TRAIN_DOMAINS)
    save_model_file(meta_backbone, out, extra)


def _acc(r: dict, shot: str) -> tuple[float, float]:
    block = r.get("results", r)[shot]
    return float(block["accuracy"]), float(block["ci95"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "build" / "default-model")
    ap.add_argument("--data", type=Path, default=None, help="tools/make_base_data.py's output (default: WORK/data)")
    ap.add_argument("--episodes", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="use the meta-trained model already in --work (skip step 2)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or args.work / "data"
    run([sys.executable, str(REPO / "tools" / "make_base_data.py"), str(data)])
    train_root, exclude = training_root(data, args.work)
    model = args.work / "meta-lite0.safetensors"
    if not (args.reuse and model.is_file()):
        run(PROTOLABEL + ["metatrain", str(train_root), "--domains", "--out", str(model), "--exclude", str(exclude),
                          "--backbone", "efficientnet_lite0", "--min-images", str(MIN_IMAGES), "--lr", str(args.lr),
                          "--episodes", str(args.episodes), "--val-every", "100", "--val-episodes", "150",
                          "--patience", "8", "--seed", str(args.seed), "--device", "cpu"])
    alpha, alpha_scores = choose_interpolation(model, train_root)
    report_alpha = {"alpha": alpha, "validation": alpha_scores}
    print("interpolation:", json.dumps(report_alpha), flush=True)
    report: dict = {"interpolation": report_alpha, "sets": {}, "extra_sets": {}}
    final = args.work / "meta-lite0-wise.safetensors"
    if alpha == 0.0:
        print("no interpolation weight gains on validation: the pretrained default stays", flush=True)
        report["ships"] = False
    else:
        interpolate(model, alpha, final)
        for group, sets in (("sets", HELD_OUT_SETS), ("extra_sets", EXTRA_SETS)):
            for name, domain in sets.items():
                root = held_out_root(data, domain, args.work)
                report[group][name] = {"pretrained": evaluate(root, None), "meta-trained": evaluate(root, final)}
        gains, behind = [], []
        for name, v in report["sets"].items():
            for shot in ("1", "5"):
                (p, p_ci), (m, m_ci) = _acc(v["pretrained"], shot), _acc(v["meta-trained"], shot)
                gains.append(m - p)
                if m < p - max(p_ci, m_ci):
                    behind.append(f"{name} {shot}-shot")
        report["mean_gain"] = round(sum(gains) / len(gains), 2)
        report["behind_beyond_interval"] = behind
        report["ships"] = report["mean_gain"] > 0 and not behind
        lines = ["| held-out set | model | 5-way 1-shot | 5-way 5-shot |", "|---|---|---|---|"]
        for group in ("sets", "extra_sets"):
            for name, v in report[group].items():
                for which in ("pretrained", "meta-trained"):
                    (a1, c1), (a5, c5) = _acc(v[which], "1"), _acc(v[which], "5")
                    lines.append(f"| {name} | {which} | {a1:.2f} ± {c1:.2f} | {a5:.2f} ± {c5:.2f} |")
        report["table"] = "\n".join(lines)
        print(report["table"])
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    if report["ships"]:
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(final, SHIPPED)
        print(f"ahead on the held-out mean and behind nowhere beyond the interval: shipped as {SHIPPED}")
    else:
        print("the ship rule is not met: the pretrained default stays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
