"""Builds the Debian package from the PyInstaller bundle: `make deb` (README "Installers").

    python3 tools/make_deb.py [--bundle dist/ProtoLabel] [--out dist] [--compress zstd:3]

The package puts the app folder under /opt/protolabel, a `protolabel` launcher in /usr/bin, the desktop entry
in /usr/share/applications and the icons in the hicolor theme, so the app appears in the desktop's menu.
No maintainer scripts: dpkg's triggers (desktop-file-utils, hicolor-icon-theme) refresh the menu and the
icon cache on install and removal. Depends is what the bundle's programs load from the system, found with
ldd and named by `dpkg -S` on the build machine. Standard library only: any Python 3.11 runs it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "protolabel"
PREFIX = Path("opt") / PACKAGE
EXE_NAME = "ProtoLabel"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
# Packages every Debian/Ubuntu system has (Essential or Priority: required): not worth a Depends line.
ALWAYS_THERE = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libzstd1", "liblzma5", "libbz2-1.0",
                "libselinux1", "libpcre2-8-0", "libcrypt1", "libtinfo6", "libuuid1", "libblkid1",
                "libmount1", "libsystemd0", "libcap2", "libgcrypt20", "libgpg-error0", "liblz4-1"}


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def system_libraries(bundle: Path) -> list[str]:
    """The shared libraries the bundle's programs and libraries load from outside the bundle (ldd with the
    library path the bundle's loader sets), as absolute paths."""
    internal = bundle / "_internal"
    lib_dirs = sorted({str(p.parent) for p in internal.rglob("*.so*") if p.is_file()})
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([str(internal), *lib_dirs]))
    found: set[str] = set()
    elves = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    for start in range(0, len(elves), 64):  # ldd takes many files at once: one process per 64
        out = subprocess.run(["ldd", *map(str, elves[start:start + 64])], capture_output=True, text=True,
                             env=env).stdout
        for line in out.splitlines():
            if "=>" not in line:
                continue
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target.startswith("/") and not Path(target).resolve().is_relative_to(bundle.resolve()):
                found.add(target)
    return sorted(found)


def owning_packages(paths: list[str]) -> list[str]:
    """The installed packages that own these files (`dpkg -S`; with merged /usr a file is known to dpkg by
    either of its two names)."""
    packages: set[str] = set()
    for path in paths:
        candidates = [path, str(Path(path).resolve())]
        candidates += [c[4:] if c.startswith("/usr/") else "/usr" + c for c in list(candidates)]
        for candidate in dict.fromkeys(candidates):
            proc = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if proc.returncode == 0:
                for line in proc.stdout.splitlines():
                    if ": " in line and not line.startswith("diversion "):
                        packages.update(p.strip().split(":", 1)[0] for p in line.split(": ", 1)[0].split(","))
                break
        else:
            print(f"make_deb: no package owns {path}; it is left out of Depends", file=sys.stderr)
    return sorted(packages - ALWAYS_THERE)


def _copy_tree(src: Path, dst: Path) -> None:
    """src to dst: hard links where they can be made (no copy of ~1 GB), else copies."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def stage(bundle: Path, staging: Path, arch: str) -> Path:
    """The package's file tree, DEBIAN/control included, in staging; returns it."""
    if staging.exists():
        shutil.rmtree(staging)
    _copy_tree(bundle, staging / PREFIX)
    launcher = staging / "usr" / "bin" / PACKAGE
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\nexec /{PREFIX}/{EXE_NAME} "$@"\n')
    launcher.chmod(0o755)
    applications = staging / "usr" / "share" / "applications"
    applications.mkdir(parents=True)
    shutil.copyfile(ROOT / "resources" / "protolabel.desktop", applications / "protolabel.desktop")
    hicolor = staging / "usr" / "share" / "icons" / "hicolor"
    for size in ICON_SIZES:
        target = hicolor / f"{size}x{size}" / "apps" / "protolabel.png"
        target.parent.mkdir(parents=True)
        shutil.copyfile(ROOT / "resources" / "icons" / f"protolabel-{size}.png", target)
    (hicolor / "scalable" / "apps").mkdir(parents=True)
    shutil.copyfile(ROOT / "resources" / "icon.svg", hicolor / "scalable" / "apps" / "protolabel.svg")
    doc = staging / "usr" / "share" / "doc" / PACKAGE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: ProtoLabel\n\nFiles: *\nCopyright: The ProtoLabel authors\nLicense: Apache-2.0\n"
        " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0. The bundled\n"
        " libraries under /opt/protolabel/_internal keep their own licenses (PyTorch: BSD-3-Clause,\n"
        " Qt for Python: LGPL-3.0, EfficientNet-Lite weights: Apache-2.0).\n")
    for path in [staging, *staging.rglob("*")]:  # dpkg keeps modes as they are: no group/other write
        if not path.is_symlink():
            mode = stat.S_IMODE(path.stat().st_mode)
            path.chmod(0o755 if path.is_dir() else mode & ~0o022 | 0o444)

    depends = owning_packages(system_libraries(staging / PREFIX))
    size_kib = sum(p.lstat().st_size for p in staging.rglob("*") if not p.is_dir()) // 1024
    control = staging / "DEBIAN" / "control"
    control.parent.mkdir()
    control.write_text(
        f"Package: {PACKAGE}\nVersion: {version()}\nArchitecture: {arch}\nSection: graphics\nPriority: optional\n"
        f"Maintainer: The ProtoLabel authors <protolabel@localhost>\nInstalled-Size: {size_kib}\n"
        + (f"Depends: {', '.join(depends)}\n" if depends else "")
        + "Description: label images from a few examples\n"
        " ProtoLabel labels a folder of images, a video or a webcam from a handful of examples per class.\n"
        " A meta-learned model adapts to the examples at once, predictions are shown live, corrections\n"
        " become new examples, and labels and the adapted model can be exported. Runs offline, on the CPU.\n")
    control.chmod(0o644)
    return staging


def build(staging: Path, out_dir: Path, arch: str, compress: str) -> Path:
    kind, _, level = compress.partition(":")
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{PACKAGE}_{version()}_{arch}.deb"
    partial = deb.with_name(deb.name + ".partial")
    cmd = ["dpkg-deb", "--root-owner-group", f"-Z{kind}", *([f"-z{level}"] if level else []),
           "--build", str(staging), str(partial)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    os.replace(partial, deb)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "ProtoLabel")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--staging", type=Path, default=ROOT / "build" / "deb")
    parser.add_argument("--compress", default="zstd:3", help="dpkg-deb's compressor[:level], e.g. gzip:6, xz:6")
    args = parser.parse_args(argv)
    for tool in ("dpkg-deb", "dpkg", "ldd"):
        if shutil.which(tool) is None:
            print(f"make_deb: {tool} is missing: a .deb is built on Debian or Ubuntu", file=sys.stderr)
            return 2
    if not (args.bundle / EXE_NAME).is_file():
        print(f"make_deb: no bundle at {args.bundle}: run `make dist` first", file=sys.stderr)
        return 2
    arch = architecture()
    staging = stage(args.bundle, args.staging, arch)
    deb = build(staging, args.out, arch, args.compress)
    shutil.rmtree(staging)
    print(f"{deb} ({deb.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
