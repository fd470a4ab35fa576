"""The labels CSV: one schema for every writer (`protolabel label`, the window's *Export labels (CSV)*,
`protolabel export labels --format csv`) and for the reader (core.export.read_labels):

    path,label,confidence,similarity,source,top1,top1_confidence,...,topK,topK_confidence

`label` is a class name or `unknown`; `source` is predicted, confirmed or support; numbers have 4 decimals.
A cell is empty where the value is not known (e.g. the similarity of a label read from a CSV without one).
Standard library only."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_TOPK", "alternatives", "header", "labels_csv_text"]

DEFAULT_TOPK = 3


def header(topk: int) -> list[str]:
    return ["path", "label", "confidence", "similarity", "source"] + [
        name for k in range(1, topk + 1) for name in (f"top{k}", f"top{k}_confidence")]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def labels_csv_text(rows: Iterable[tuple[str, str, float | None, float | None, str, Sequence[tuple[str, float]]]],
                    topk: int = DEFAULT_TOPK) -> str:
    """Rows of (path, label, confidence, similarity, source, [(class, probability), ...]) -> the CSV text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header(topk))
    for path, label, confidence, similarity, source, top in rows:
        row = [path, label, _number(confidence), _number(similarity), source]
        for k in range(topk):
            row += [top[k][0], _number(top[k][1])] if k < len(top) else ["", ""]
        writer.writerow(row)
    return buf.getvalue()


def alternatives(row: dict[str, str]) -> tuple[tuple[str, float], ...]:
    """The top1..topK columns of a read row, as far as they are filled in."""
    out = []
    k = 1
    while f"top{k}" in row:
        name, value = (row.get(f"top{k}") or ""), (row.get(f"top{k}_confidence") or "").strip()
        if not name:
            break
        try:
            out.append((name, float(value)))
        except ValueError:
            break
        k += 1
    return tuple(out)
