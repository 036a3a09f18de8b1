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

The same numbers for each method against its matched controls (``baseline`` = the control,
``method`` = the reference it is matched to; Δ = method - control on the same problems and
seeds): the referees' question asked directly -- does the overlap rule beat a blind rule at
the same cost, and where?
"""
from __future__ import annotations

from . import stats as S
from .common import BASE_ROWS, label, md_table, reference_of
from .table import BASELINE, Table, paired_diffs


def columns(benches) -> list[str]:
    out = ["pair", "method", "baseline", "reference"]
    for b in [*benches, "avg"]:
        out += [f"{b}_diff", f"{b}_ci_low", f"{b}_ci_high"]
    return out + ["n_seeds"]


def delta_rows(t: Table, evals, n_boot: int = S.N_BOOT, seed: int = 0) -> list[dict]:
    """One dict per trained method other than OPD (see :func:`columns`); None = not paired."""
    out = []
    for r in t.rows:
        if r.method in BASE_ROWS or r.method == BASELINE:
            continue
        row = {"pair": r.pair, "method": r.method, "baseline": BASELINE, "reference": reference_of(r.method),
               "avg_diff": r.avg_diff_vs_opd, "avg_ci_low": r.avg_diff_ci_low,
               "avg_ci_high": r.avg_diff_ci_high, "n_seeds": r.n_paired_seeds or None}
        _per_bench(row, evals, r.pair, r.method, BASELINE, t.benches, n_boot, seed)
        out.append(row)
    return out


def versus_control_rows(t: Table, evals, n_boot: int = S.N_BOOT, seed: int = 0) -> list[dict]:
    """Per matched control (or ablation) whose reference ran: the reference minus the control,
    per benchmark and on the average over benchmarks (columns of :func:`columns`)."""
    ran = {(r.pair, r.method) for r in t.rows}
    out = []
    for r in t.rows:
        ref = reference_of(r.method)
        if ref is None or (r.pair, ref) not in ran:
            continue
        diffs, seeds = paired_diffs(evals, r.pair, ref, r.method, t.benches)
        bs = S.paired_bootstrap(diffs, n_boot=n_boot, seed=seed) if diffs else {}
        row = {"pair": r.pair, "method": ref, "baseline": r.method, "reference": ref,
               "avg_diff": bs.get("diff"), "avg_ci_low": bs.get("ci_low"), "avg_ci_high": bs.get("ci_high"),
               "n_seeds": len(seeds) or None}
        _per_bench(row, evals, r.pair, ref, r.method, t.benches, n_boot, seed)
        out.append(row)
    return out


def _per_bench(row: dict, evals, pair: str, method: str, baseline: str, benches, n_boot: int, seed: int) -> None:
    for b in benches:
        diffs, _seeds = paired_diffs(evals, pair, method, baseline, [b])
        bs = S.paired_bootstrap(diffs, n_boot=n_boot, seed=seed) if diffs else {}
        row[f"{b}_diff"], row[f"{b}_ci_low"], row[f"{b}_ci_high"] = (bs.get("diff"), bs.get("ci_low"), bs.get("ci_high"))


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
    """Two sections: Δ vs OPD (rows with baseline ``opd``), then method - matched control."""
    vs_opd = [r for r in rows if r.get("baseline", BASELINE) == BASELINE]
    vs_ctrl = [r for r in rows if r.get("baseline", BASELINE) != BASELINE]
    lines = []
    if vs_opd:
        lines += ["## Δ vs OPD per benchmark", "",
                  "Points, paired with OPD on the same problems and training seeds; 95% CI from a two-way "
                  "bootstrap (seeds and problems). A matched control that ties a method on Avg. but loses on "
                  "the hardest benchmark is the blind-cut effect the controls are there to show.", ""]
        lines += _tables(vs_opd, benches, lambda r: label(r["method"]))
    if vs_ctrl:
        lines += ["## Each method minus its matched controls, per benchmark", "",
                  "Points, method - control, paired on the same problems and training seeds (the seeds both "
                  "ran); 95% CI as above. Positive: the overlap rule beat the blind rule that costs the same.",
                  ""]
        lines += _tables(vs_ctrl, benches, lambda r: f"{label(r['method'])} − {label(r['baseline'])}")
    return "\n".join(lines)


def _tables(rows: list[dict], benches, name) -> list[str]:
    lines = []
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    for pair in pairs:
        if len(pairs) > 1:
            lines += [f"### {pair}", ""]
        lines += md_table(["Method", *benches, "Avg."],
                          [[name(r), *(cell(r, b) for b in benches), cell(r, "avg")] for r in rows if r["pair"] == pair])
        lines.append("")
    return lines
