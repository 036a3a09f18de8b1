"""The main results table: accuracy per benchmark, average, training cost; one row per pair and method.

Inputs are the summaries the workflow writes:

* evaluation: ``.../eval/{pair}/{method}/{tag}/{bench}.json`` with ``accuracy`` (0..1, avg@k),
  ``k``, ``n_problems``, ``bench``; ``tag`` is ``base`` (teacher, student) or ``seed<k>``;
* training: ``.../train/{pair}/{method}/seed{k}/summary.json`` with ``train_wall_s`` and
  ``gen_tokens``.

Values are means over seeds.  Accuracy is in percent with 2 decimals; ``avg`` is the mean of
the row's benchmark accuracies (empty unless the row has every benchmark).  Cells that do not
apply (training cost of the base models) are empty.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from ..config import CONTROLS, METHODS

ROW_ORDER = ("teacher", "student") + METHODS + CONTROLS
TRAIN_COLUMNS = ("train_wall_s", "gen_tokens")


def _read_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the summary json: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object")
    return data


def _need(data: dict, key: str, path: Path):
    if key not in data or data[key] is None:
        raise ValueError(f"{path}: missing key {key!r}")
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{path}: {key!r} must be a number, got {v!r}")
    return float(v)


def _eval_key(path: Path) -> tuple[str, str, str]:
    parts = Path(path).parts
    if len(parts) < 4:
        raise ValueError(f"{path}: expected .../eval/<pair>/<method>/<tag>/<bench>.json")
    return parts[-4], parts[-3], parts[-2]


def _train_key(path: Path) -> tuple[str, str, int]:
    parts = Path(path).parts
    m = re.fullmatch(r"seed(\d+)", parts[-2]) if len(parts) >= 4 else None
    if not m:
        raise ValueError(f"{path}: expected .../train/<pair>/<method>/seed<k>/summary.json")
    return parts[-4], parts[-3], int(m.group(1))


def _method_rank(method: str) -> tuple[int, str]:
    return (ROW_ORDER.index(method), "") if method in ROW_ORDER else (len(ROW_ORDER), method)


def build_table(eval_jsons, train_jsons) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the main table; each row maps column -> formatted cell ('' = n/a)."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cost: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    benches: list[str] = []
    pairs: list[str] = []

    for path in map(Path, eval_jsons):
        pair, method, _tag = _eval_key(path)
        data = _read_json(path)
        bench = str(data.get("bench") or path.stem)
        a = _need(data, "accuracy", path)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"{path}: accuracy {a} is not in 0..1")
        if bench not in benches:
            benches.append(bench)
        if pair not in pairs:
            pairs.append(pair)
        acc[(pair, method)][bench].append(a)

    for path in map(Path, train_jsons):
        pair, method, _seed = _train_key(path)
        data = _read_json(path)
        if pair not in pairs:
            pairs.append(pair)
        for key in TRAIN_COLUMNS:
            cost[(pair, method)][key].append(_need(data, key, path))

    columns = ["pair", "method", *benches, "avg", *TRAIN_COLUMNS]
    keys = set(acc) | set(cost)
    rows = []
    for pair in pairs:
        for method in sorted({m for p, m in keys if p == pair}, key=_method_rank):
            row = {c: "" for c in columns}
            row["pair"], row["method"] = pair, method
            means = {b: fmean(v) for b, v in acc.get((pair, method), {}).items()}
            for b, v in means.items():
                row[b] = f"{100 * v:.2f}"
            if means and len(means) == len(benches):
                row["avg"] = f"{100 * fmean(means.values()):.2f}"
            c = cost.get((pair, method), {})
            if c.get("train_wall_s"):
                row["train_wall_s"] = f"{fmean(c['train_wall_s']):.1f}"
            if c.get("gen_tokens"):
                row["gen_tokens"] = f"{fmean(c['gen_tokens']):.0f}"
            rows.append(row)
    return columns, rows


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(columns, rows) -> str:
    text = {"pair", "method"}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(":---" if c in text else "---:" for c in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def report(eval_jsons: list[Path], train_jsons: list[Path], out_dir: Path) -> None:
    """Write ``out_dir/main.csv`` and ``out_dir/main.md``."""
    columns, rows = build_table(eval_jsons, train_jsons)
    out_dir = Path(out_dir)
    _write_atomic(out_dir / "main.csv", to_csv(columns, rows))
    _write_atomic(out_dir / "main.md", to_markdown(columns, rows))
