"""What every report module shares: row labels and order, run keys, atomic writes, loading the
runs' jsonl files.  It imports no other report module, so table / falsification / costs /
figures / build import it and never each other in a circle (build -> figures -> table ->
common)."""
from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from ..config import ABLATIONS, CONTROLS, METHODS, REFERENCES, split_control

BASE_ROWS = ("teacher", "student")
ROW_ORDER = (BASE_ROWS + METHODS + CONTROLS + ABLATIONS["pruneopd"]
             + tuple(f"{m}-{r}" for r in REFERENCES for m in ("fixed_truncation", "random_prune")))
LABELS = {"teacher": "Teacher", "student": "Student", "opd": "OPD", "pgopd": "PG-OPD",
          "pruneopd": "Prune-OPD", "continue_all": "Continue-all (ctrl)",
          "reweight_only": "Reweight-only (ctrl)", "fixed_truncation": "Fixed truncation (ctrl)",
          "random_prune": "Random prune (ctrl)",
          "pruneopd_drift_only": "Prune-OPD drift truncation only (ablation)",
          "pruneopd_window_only": "Prune-OPD window only (ablation)",
          "pruneopd_reweight_only": "Prune-OPD reweighting only (ablation)"}
for _r in REFERENCES:
    LABELS[f"fixed_truncation-{_r}"] = f"Fixed truncation matched to {LABELS[_r]} (ctrl)"
    LABELS[f"random_prune-{_r}"] = f"Random prune matched to {LABELS[_r]} (ctrl)"


def label(method: str) -> str:
    return LABELS.get(method, method)


def method_rank(method: str) -> tuple[int, str]:
    return (ROW_ORDER.index(method), "") if method in ROW_ORDER else (len(ROW_ORDER), method)


def reference_of(method: str):
    """The run a control is matched to or ablates (``pgopd`` / ``pruneopd``), else None."""
    base, ref = split_control(method)
    if ref:
        return ref
    return next((r for r, abl in ABLATIONS.items() if method in abl), None)


def run_key(path: Path) -> tuple[str, str, int]:
    """(pair, method, seed) of a file in a train run dir ``.../<pair>/<method>/seed<k>/<file>``."""
    parts = Path(path).parts
    m = re.fullmatch(r"seed(\d+)", parts[-2]) if len(parts) >= 4 else None
    if not m:
        raise ValueError(f"{path}: expected .../train/<pair>/<method>/seed<k>/{Path(path).name}")
    return parts[-4], parts[-3], int(m.group(1))


def read_jsonl(path: Path, fields=None) -> list[dict]:
    """Records of a jsonl file (only ``fields`` when given); a bad line names file and line
    (``pgopd.data.loaders.read_jsonl``)."""
    from ..data.loaders import read_jsonl as _read

    recs = _read(path)
    return recs if fields is None else [{k: r.get(k) for k in fields} for r in recs]


def load_runs(paths, fields=None) -> dict[tuple[str, str, int], list[dict]]:
    """(pair, method, seed) -> records of each run's metrics.jsonl / candidates.jsonl."""
    return {run_key(p): read_jsonl(Path(p), fields) for p in paths}


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
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


def csv_text(columns, rows) -> str:
    """CSV of ``rows`` (dicts) in ``columns`` order; None -> empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def md_table(head, rows) -> list[str]:
    """Markdown lines of a table (first column left-aligned)."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return (["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
            + ["| " + " | ".join(r) + " |" for r in esc])
