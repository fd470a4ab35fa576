"""Build the base and held-out data for meta-training from Debian packages, offline, seeded, reproducible.

    .venv/bin/python tools/make_base_data.py OUT [--domains glyphs icons letters cards fashion clipart]

Each domain is a folder OUT/<domain>/<class>/<nn>.png (clip art: symlinks) plus OUT/<domain>/held-out.txt, the
classes never trained on (every third class in sorted order; clip art keeps tools/openclipart-test-classes.txt).

  clipart  openclipart-png: every folder with 10+ images is a class (113).
  glyphs   400 CJK ideographs (one class each, 20 images) drawn by the CJK fonts below (one image per font face), each
           with a small seeded affine jitter: fonts-noto-cjk, fonts-noto-cjk-extra, fonts-arphic-ukai,
           fonts-arphic-uming, fonts-wqy-zenhei, fonts-wqy-microhei, fonts-ipafont-gothic,
           fonts-ipafont-mincho, fonts-hanazono, fonts-vlgothic. Only characters every font draws.
  icons    freedesktop icon names (one class each) drawn by the installed icon themes (one image per theme
           family; the same file reached through two themes or two sizes counts once): papirus, breeze,
           tango, oxygen, elementary-xfce, gnome, numix, moka, faenza, suru, yaru, paper, deepin, faba,
           adwaita. 600 names (a seeded sample) of those drawn by at least 6 families; symbolic (monochrome)
           icons left out.
  letters  Latin, Greek and Cyrillic letters and digits (one class each, 30 images; look-alikes such as l/I/1, O/0/o
           dropped) drawn by the text fonts of fonts-urw-base35, fonts-texgyre, fonts-freefont-ttf,
           fonts-liberation, fonts-lmodern, fonts-dejavu(-extra).
  lowres   the clip art and icon classes again, 20 images each, grey and 28 px (after clipart and icons).
  cards    (a held-out domain) the 52 playing cards (one class each) drawn by the SVG card decks of
           kdegames-card-data-kf5 (one image per deck; decks without the French suits are left out).
  fashion  (held out) dataset-fashion-mnist's test set: 10 classes, the first 300 images of each.

Images are PNG, RGB on white (icons and cards composited on white), at most 160 px a side.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import random
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
OPENCLIPART = Path("/usr/share/openclipart/png")
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SIDE = 160
SEED = 0

CJK_FONTS = ["/usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc", "/usr/share/fonts/opentype/noto/NotoSerifCJK-*.ttc",
             "/usr/share/fonts/truetype/arphic/uming.ttc", "/usr/share/fonts/truetype/arphic/ukai.ttc",
             "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
             "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf", "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf",
             "/usr/share/fonts/truetype/hanazono/HanaMinA.ttf", "/usr/share/fonts/truetype/vlgothic/VL-Gothic-Regular.ttf"]
LETTER_FONTS = ["/usr/share/fonts/opentype/urw-base35/*.otf", "/usr/share/fonts/opentype/texgyre/*.otf",
                "/usr/share/fonts/truetype/freefont/*.ttf", "/usr/share/fonts/truetype/liberation/*.ttf",
                "/usr/share/texmf/fonts/opentype/public/lm/*.otf", "/usr/share/fonts/truetype/dejavu/*.ttf"]
ICON_ROOT = Path("/usr/share/icons")
CARD_DECKS = ["/usr/share/carddecks/svg-*/*.svgz", "/usr/share/carddecks/svg-*/*.svg"]
CONFUSABLE = set("lI1|O0oQSs5Zz2xXcCvVwWuUkKpPyY9g8B")  # letters whose look-alikes differ mainly by size or case


def _held_out(domain_dir: Path) -> None:
    classes = sorted(p.name for p in domain_dir.iterdir() if p.is_dir())
    (domain_dir / "held-out.txt").write_text("".join(f"{c}\n" for c in classes[::3]))


def cap_images(domain_dir: Path, per_class: int) -> None:
    """Keep at most `per_class` images in each class folder: a seeded sample (seed: the class name), the rest
    deleted, so the embedding cost of a domain stays bounded."""
    for folder in sorted(p for p in domain_dir.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        if len(files) > per_class:
            rng = random.Random(f"{SEED}:{folder.name}")
            for f in set(files) - set(rng.sample(files, per_class)):
                f.unlink()


def _on_white(img: Image.Image) -> Image.Image:
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def _fit(img: Image.Image, side: int = SIDE, margin: float = 0.08) -> Image.Image:
    """Crop to the ink (non-white), pad to a square with a margin, resize to `side`."""
    arr = np.asarray(img.convert("L"))
    ys, xs = np.nonzero(arr < 250)
    if len(xs):
        img = img.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    w, h = img.size
    s = int(max(w, h) * (1 + 2 * margin)) + 1
    canvas = Image.new("RGB", (s, s), (255, 255, 255))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas.resize((side, side), Image.LANCZOS)


# ------------------------------------------------------------------------------------------------ fonts


def _faces(patterns: list[str]) -> list[tuple[str, int]]:
    """(font file, face index) for every face of every file matching the patterns (TTC collections: each face)."""
    faces = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            index = 0
            while True:
                try:
                    ImageFont.truetype(path, 20, index=index)
                except OSError:
                    break
                faces.append((path, index))
                index += 1
                if not path.endswith((".ttc", ".otc")):
                    break
    return faces


def _draw(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray:
    img = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(img).text((100, 100), ch, font=font, fill=0, anchor="mm")
    return np.asarray(img)


def _draws(font: ImageFont.FreeTypeFont, ch: str, notdef: np.ndarray) -> bool:
    """Whether the font has a glyph for ch (not its .notdef box, not blank)."""
    arr = _draw(font, ch)
    return bool((arr < 128).any()) and not np.array_equal(arr, notdef)


def _render_text_domain(out: Path, faces: list[tuple[str, int]], chars: list[str], name_of, jitter: float,
                        max_per_font_file: int, rng: random.Random) -> None:
    fonts = [ImageFont.truetype(p, 140, index=i) for p, i in faces]
    notdefs = [_draw(f, "\U0010fffd") for f in fonts]
    kept = 0
    for ch in chars:
        usable = [(f, face) for f, face, nd in zip(fonts, faces, notdefs) if _draws(f, ch, nd)]
        if len(usable) < len(fonts) * 0.9:
            continue
        per_file: dict[str, int] = {}
        images = {}
        for f, (path, _index) in usable:
            if per_file.get(path, 0) >= max_per_font_file:
                continue
            arr = _draw(f, ch)
            digest = hashlib.sha1(arr.tobytes()).hexdigest()
            if digest in images:  # two faces drawing the same glyph: one image
                continue
            per_file[path] = per_file.get(path, 0) + 1
            img = Image.fromarray(arr).convert("RGB")
            if jitter:
                img = img.rotate(rng.uniform(-jitter, jitter), resample=Image.BICUBIC, fillcolor=(255, 255, 255))
            images[digest] = _fit(img, margin=rng.uniform(0.04, 0.2) if jitter else 0.08)
        if len(images) < 10:
            continue
        folder = out / name_of(ch)
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images.values()):
            img.save(folder / f"{k:02d}.png")
        kept += 1
    print(f"{out.name}: {kept} classes from {len(fonts)} font faces", flush=True)


def make_glyphs(out: Path, n_classes: int = 400) -> None:
    rng = random.Random(SEED)
    faces = _faces(CJK_FONTS)
    # Common ideographs first: the CJK Unified block's first 8,000 code points hold most everyday characters.
    pool = [chr(c) for c in range(0x4E00, 0x4E00 + 8000)]
    rng.shuffle(pool)
    chars = pool[: n_classes * 2]
    _render_text_domain(out, faces, chars, lambda ch: f"U{ord(ch):04X}", jitter=6.0, max_per_font_file=4, rng=rng)
    classes = sorted(p.name for p in out.iterdir() if p.is_dir())
    for extra in classes[n_classes:]:  # keep exactly n_classes (the first in shuffled order were rendered)
        for f in (out / extra).iterdir():
            f.unlink()
        (out / extra).rmdir()
    cap_images(out, 20)


def make_letters(out: Path) -> None:
    rng = random.Random(SEED + 1)
    faces = [(p, i) for p, i in _faces(LETTER_FONTS)
             if not re.search(r"(?i)mono|math|symbol|dingbat|z003|d050000l|caps", Path(p).name)]
    chars = [c for c in ("abcdefghijmnqrthABDEFGHJLMNRT346" "αβγδεζηθλμξπρσφψωΓΔΘΛΞΠΣΦΨΩ"
                         "бвгджзийлфцчшщъыьэюяБГДЖЗИЛФЦЧШЩЭЮЯ") if c not in CONFUSABLE]

    def name(ch: str) -> str:
        return unicodedata.name(ch).lower().replace(" ", "-")

    _render_text_domain(out, faces, chars, name, jitter=4.0, max_per_font_file=1, rng=rng)
    cap_images(out, 30)


# ------------------------------------------------------------------------------------------------ icons / cards


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QT_LOGGING_RULES", "qt.svg*=false")  # damaged gradients in some themes: drawn anyway
    from PySide6.QtGui import QGuiApplication

    return QGuiApplication.instance() or QGuiApplication([])


def _svg_to_image(data: bytes, element: str | None = None, side: int = SIDE) -> Image.Image | None:
    from PySide6.QtCore import QByteArray, QRectF
    from PySide6.QtGui import QColor, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(QByteArray(data))
    if not renderer.isValid():
        return None
    box = renderer.boundsOnElement(element) if element else renderer.viewBoxF()
    if element and not renderer.elementExists(element):
        return None
    if box.width() <= 0 or box.height() <= 0:
        return None
    scale = side * 2 / max(box.width(), box.height())
    w, h = max(1, int(box.width() * scale)), max(1, int(box.height() * scale))
    image = QImage(w, h, QImage.Format.Format_ARGB32)
    image.fill(QColor(255, 255, 255, 0))
    painter = QPainter(image)
    if element:
        renderer.render(painter, element, QRectF(0, 0, w, h))
    else:
        renderer.render(painter, QRectF(0, 0, w, h))
    painter.end()
    ptr = image.constBits()
    arr = np.frombuffer(ptr, np.uint8, count=image.sizeInBytes()).reshape(h, image.bytesPerLine() // 4, 4)[:, :w]
    rgba = arr[..., [2, 1, 0, 3]].copy()  # Qt's ARGB32 is BGRA in memory on little-endian machines
    return Image.fromarray(rgba, "RGBA")


def _read_svg(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _theme_family(theme: str) -> str:
    return re.split(r"[-_ ]", theme)[0].lower()


def _best_icon_files(theme_dir: Path) -> dict[str, Path]:
    """icon name -> its best file in this theme: scalable SVG first, else the largest PNG (at least 48 px)."""
    best: dict[str, tuple[int, Path]] = {}
    for path in theme_dir.rglob("*"):
        if path.suffix not in (".svg", ".png") or "symbolic" in path.name or "symbolic" in str(path.parent):
            continue
        size_match = re.search(r"(\d+)x\1", str(path.relative_to(theme_dir)))
        size = 10_000 if path.suffix == ".svg" else int(size_match.group(1)) if size_match else 0
        if "@2x" in str(path.parent):
            size *= 2
        if path.suffix == ".png" and size < 48:
            continue
        name = path.stem
        if name not in best or size > best[name][0]:
            best[name] = (size, path)
    return {k: v for k, (_, v) in best.items()}


def make_icons(out: Path, min_families: int = 6, n_classes: int = 600) -> None:
    _qt()
    by_name: dict[str, dict[str, Path]] = {}
    for theme_dir in sorted(p for p in ICON_ROOT.iterdir() if p.is_dir() and (p / "index.theme").exists()):
        family = _theme_family(theme_dir.name)
        if family in ("hicolor", "locolor", "default"):
            continue
        for name, path in _best_icon_files(theme_dir).items():
            by_name.setdefault(name, {}).setdefault(family, path)  # first theme of a family (sorted) wins
    eligible = sorted(n for n, files in by_name.items() if len(files) >= min_families)
    chosen = sorted(random.Random(SEED + 2).sample(eligible, min(len(eligible), n_classes)))
    kept = 0
    for name in chosen:
        files = by_name[name]
        images, seen = [], set()
        for _family, path in sorted(files.items()):
            try:
                real = path.resolve()
                key = hashlib.sha1(real.read_bytes()).hexdigest()
            except OSError:
                continue
            if key in seen:
                continue
            seen.add(key)
            img = _svg_to_image(_read_svg(real)) if real.suffix == ".svg" else Image.open(real)
            if img is None:
                continue
            images.append(_fit(_on_white(img), margin=0.06))
        if len(images) < min_families:
            continue
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images):
            img.save(folder / f"{k:02d}.png")
        kept += 1
    print(f"icons: {kept} classes (of {len(eligible)} names drawn by {min_families}+ theme families)", flush=True)


RANKS = {"1": "ace", "2": "2", "3": "3", "4": "4", "5": "5", "6": "6", "7": "7", "8": "8", "9": "9", "10": "10",
         "jack": "jack", "queen": "queen", "king": "king"}
SUITS = ("club", "diamond", "heart", "spade")


def make_cards(out: Path) -> None:
    _qt()
    decks = sorted({p for pattern in CARD_DECKS for p in glob.glob(pattern)})
    used = 0
    for deck in decks:
        data = _read_svg(Path(deck))
        rendered = {}
        for rank, rank_name in RANKS.items():
            for suit in SUITS:
                element = f"{rank}_{suit}"
                img = _svg_to_image(data, element)
                if img is None:
                    break
                rendered[f"{rank_name}-of-{suit}s"] = _fit(_on_white(img), margin=0.02)
            else:
                continue
            break
        if len(rendered) != 52:
            print(f"  skipped deck {deck}: {len(rendered)} cards found", flush=True)
            continue
        used += 1
        stem = re.sub(r"[^A-Za-z0-9]+", "-", str(Path(deck).relative_to(Path(deck).parents[1])))
        for cls, img in rendered.items():
            (out / cls).mkdir(parents=True, exist_ok=True)
            img.save(out / cls / f"{stem}.png")
    (out / "held-out.txt").write_text("".join(f"{c}\n" for c in sorted(p.name for p in out.iterdir() if p.is_dir())))
    print(f"cards: 52 classes from {used} decks", flush=True)


# ------------------------------------------------------------------------------------------------ datasets


def make_clipart(out: Path) -> None:
    sys.path.insert(0, str(REPO))
    from core import class_folders

    for name, files in sorted(class_folders(OPENCLIPART, min_images=10).items()):
        target = out / name.replace("/", "__")
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            link = target / f.name
            if not link.exists():
                link.symlink_to(f)
    test = [n.strip().replace("/", "__") for n in (REPO / "tools" / "openclipart-test-classes.txt").read_text().split()]
    (out / "held-out.txt").write_text("".join(f"{n}\n" for n in test))


def make_fashion(out: Path, per_class: int = 300) -> None:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for c, name in enumerate(FASHION_CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.nonzero(labels == c)[0][:per_class]):
            Image.fromarray(255 - images[i]).save(out / name / f"{k:03d}.png")  # dark on white, as drawn
    (out / "held-out.txt").write_text("".join(f"{n}\n" for n in FASHION_CLASSES))


def make_lowres(out: Path, sources: tuple[str, ...] = ("clipart", "icons"), side: int = 28, per_class: int = 20) -> None:
    """Small grey copies of the clip art and icon classes (a seeded sample of `per_class` images each), drawn at
    `side` px: pictures with little detail and no colour, which none of the other training domains has. A
    class held out in its source domain is held out here too."""
    held = []
    for domain in sources:
        src = out.parent / domain
        held += [f"{domain}__{c}" for c in (src / "held-out.txt").read_text().split()]
        for folder in sorted(p for p in src.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".png")
            files = random.Random(f"{SEED}:{domain}:{folder.name}").sample(files, min(per_class, len(files)))
            target = out / f"{domain}__{folder.name}"
            target.mkdir(parents=True, exist_ok=True)
            for k, f in enumerate(sorted(files)):
                try:
                    with Image.open(f) as img:
                        img.draft("L", (side * 4, side * 4))
                        small = _fit(_on_white(img), margin=0.04).convert("L").resize((side, side), Image.BOX)
                except (OSError, Image.DecompressionBombError, ValueError):
                    continue
                small.save(target / f"{k:02d}.png")
    (out / "held-out.txt").write_text("".join(f"{n}\n" for n in sorted(held)))
    print(f"lowres: {sum(1 for p in out.iterdir() if p.is_dir())} classes", flush=True)


MAKERS = {"clipart": make_clipart, "glyphs": make_glyphs, "icons": make_icons, "letters": make_letters,
          "cards": make_cards, "fashion": make_fashion,
          "lowres": make_lowres}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--domains", nargs="+", default=list(MAKERS), choices=list(MAKERS))
    args = parser.parse_args()
    for domain in args.domains:
        folder = args.out / domain
        if folder.exists() and any(folder.iterdir()):
            print(f"{domain}: {folder} exists, kept", flush=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        MAKERS[domain](folder)
        if not (folder / "held-out.txt").exists():
            _held_out(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
