"""One way to replace a file safely: write a temporary file beside it, put it on disk, rename it over the old
one, then put the rename on disk. Readers (and a crash or SIGKILL at any moment) see the old file or the new
one, never half of either. Every file ProtoLabel writes goes through here (projects, model files, labels,
caches, exports, meta-training checkpoints). Standard library only."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the caller (or a library: safetensors, torch.save, ONNX) to write;
    when the block ends without an error it replaces `path`, else it is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # on disk before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _sync_folder(folder: Path) -> None:
    """The rename on disk too (a folder can't be opened for fsync everywhere: Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
