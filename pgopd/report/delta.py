"""Δ vs OPD per benchmark, with its 95% CI, for every trained method and matched control.

The main table gives one Δ (the average over benchmarks); this table splits it by benchmark,
because the question the matched controls answer is benchmark-shaped: a fixed length budget
that fits the easy problems' solutions should cut the hard ones' (the referees' question to
Prune-OPD, ``shared/papers``), so a control can tie a method on the average and lose on the
hardest column.

Per (pair, method, benchmark): the paired per-problem differences (method - OPD, same problem
id, same training seed; :func:`pgopd.report.table.paired_diffs` on that one benchmark) and the
two-way bootstrap CI of :func:`pgopd.report.stats.paired_bootstrap` (seeds and problems
redrawn).  With one seed the CI covers only the problems.  Numbers are fractions (0..1); the
markdown shows points.
"""
from __future__ import annotations

from . import stats as S
from .common import BASE_ROWS, label, md_table, reference_of
from .table import BASELINE, Table, paired_diffs


def columns(benches) -> list[str]:
    out = ["pair", "method", "reference"]
    for b in [*benches, "avg"]:
        out += [f"{b}_diff", f"{b}_ci_low", f"{b}_ci_high"]
    return out + ["n_seeds"]


def delta_rows(t: Table, evals, n_boot: int = S.N_BOOT, seed: int = 0) -> list[dict]:
    """One dict per trained method other than OPD (see :func:`columns`); None = not paired."""
    out = []
    for r in t.rows:
        if r.method in BASE_ROWS or r.method == BASELINE:
            continue
        row = {"pair": r.pair, "method": r.method, "reference": reference_of(r.method),
               "avg_diff": r.avg_diff_vs_opd, "avg_ci_low": r.avg_diff_ci_low,
               "avg_ci_high": r.avg_diff_ci_high, "n_seeds": r.n_paired_seeds or None}
        for b in t.benches:
            diffs, _seeds = paired_diffs(evals, r.pair, r.method, BASELINE, [b])
            bs = S.paired_bootstrap(diffs, n_boot=n_boot, seed=seed) if diffs else {}
            row[f"{b}_diff"], row[f"{b}_ci_low"], row[f"{b}_ci_high"] = (
                bs.get("diff"), bs.get("ci_low"), bs.get("ci_high"))
        out.append(row)
    return out


def cell(row: dict, key: str) -> str:
    """``+0.50 [−1.00, +2.00]`` in points ('' when not paired)."""
    d = row.get(f"{key}_diff")
    if d is None:
        return ""

    def sg(v):
        return f"{100 * v:+.2f}".replace("-", "−")
    s = sg(d)
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return s if lo is None else f"{s} [{sg(lo)}, {sg(hi)}]"


def render_markdown(rows: list[dict], benches) -> str:
    if not rows:
        return ""
    lines = ["## Δ vs OPD per benchmark", "",
             "Points, paired with OPD on the same problems and training seeds; 95% CI from a two-way "
             "bootstrap (seeds and problems). A matched control that ties a method on Avg. but loses on "
             "the hardest benchmark is the blind-cut effect the controls are there to show.", ""]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    for pair in pairs:
        if len(pairs) > 1:
            lines += [f"### {pair}", ""]
        lines += md_table(["Method", *benches, "Avg."],
                          [[label(r["method"]), *(cell(r, b) for b in benches), cell(r, "avg")]
                           for r in rows if r["pair"] == pair])
        lines.append("")
    return "\n".join(lines)
