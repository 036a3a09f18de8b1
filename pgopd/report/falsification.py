"""Does PG-OPD's probe overlap predict what a suffix is worth?  (The PG-OPD review's test.)

PG-OPD stops every candidate whose early-prefix top-k overlap (``probe_overlap``) is low,
on the premise that its long suffix would be low-value supervision.  The ``continue_all``
control computes and logs the same probe (and which candidates PG-OPD would have kept,
``selected``) but continues everyone, so every candidate's full-length outcome is known:

* ``reward_suffix``: mean teacher reward r_t = log p_T(y_t) - log p_S(y_t) over the suffix
  (positions from ``prefix_len`` on; higher = the suffix stays closer to the teacher);
* ``correct``: final correctness, for candidates that ran to their own end: EOS, or the
  length limit (graded like the evaluation grades a truncated response: a rollout that never
  boxed an answer within the budget is wrong); None where a policy cut the candidate.

``reward_suffix`` measures teacher-student agreement, much as overlap does, so a "supported"
on it is partly circular: it is shown but does not make the pair's verdict.  The verdict is
that of ``correct`` (graded final answers, which overlap does not measure).

Sources, in order of preference: ``continue_all`` (the probe logged, everyone continued);
``opd`` (every method logs ``probe_window_overlap``, the overlap over the same probe
window; OPD continues everyone, so the default pipeline gives the outcome at every probe
value without training continue_all); ``pgopd`` (continued candidates only).  Candidates
used: those ranked at the probe decision (``decision_step`` set), resp. for ``opd`` those
that reached the end of the probe window; for each outcome, those where it exists.

For every pair and outcome (seeds pooled) the analysis reports

* the Spearman rank correlation of probe overlap with the outcome, with a pairs-bootstrap
  95 % CI (:func:`pgopd.report.stats.spearman_ci`);
* the outcome's mean in quantile bins of the probe (the curve in ``falsification.png``) and
  the top-bin minus bottom-bin difference with a bootstrap 95 % CI;
* (``continue_all``, and ``opd`` with PG-OPD's top-half rule applied to its candidates)
  within-prompt: mean outcome of the candidates PG-OPD would have kept minus those it would
  have stopped, per prompt group that has both, averaged over groups, with a bootstrap 95 %
  CI over groups (the same problem on both sides: difficulty cannot drive it).

Verdict (from the numbers): *supported* when the correlation is positive with a CI above 0
and the top-vs-bottom difference is positive with a CI above 0; *mixed* when the two are
significant with opposite signs (the relation is not monotone, e.g. the lowest-overlap bin
worst and the highest not best: neither direction may be claimed, and the bin means are
spelled out); *contradicted* when either is significantly negative and the other is not
significantly positive; otherwise *not supported*: the report says plainly that
low-overlap suffixes turned out as valuable as high-overlap ones, and why (the correlation's
CI includes 0, and / or the top-vs-bottom difference is not significant); *insufficient*
with fewer than :data:`MIN_N` candidates or no variation.  The within-prompt kept-minus-
stopped difference is reported next to it but does not enter the verdict.

Fallback: with neither ``continue_all`` nor ``opd``, the pair's ``pgopd`` candidates are
used; there only continued (high-overlap) candidates have suffixes, so the analysis covers
the upper part of the overlap range and cannot tell what the stopped suffixes would have
been worth; the text says so.  Prune-OPD's premise (window overlap vs reward variance) is
in :mod:`pgopd.report.noise`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from . import stats as S
from .common import csv_text, load_runs, write_atomic

OUTCOMES = ("reward_suffix", "correct")
OUTCOME_LABELS = {"reward_suffix": "mean teacher reward on the suffix",
                  "correct": "final correctness (candidates that ended by EOS or at the length limit)"}
#: outcomes that measure teacher-student agreement like overlap does: shown, not the verdict
CIRCULAR = ("reward_suffix",)
VERDICT_OUTCOME = "correct"
KEEP_FRACTION = 0.5  # PG-OPD's default top_fraction: who it "would have kept" among OPD's candidates
SOURCES = ("continue_all", "opd", "pgopd")  # preferred first
N_BINS = 5
MIN_N = 10  # fewer candidates with an outcome: no verdict
_KEEP = ("step", "group", "cid", "probe_overlap", "selected", "continued", "decision_step", "reward_suffix",
         "correct", "finished", "stopped", "length", "truncated_at", "stop_reason", "weight_min",
         "weight_mean", "drift_events", "train_len", "keep", "probe_window_overlap", "probe_window_complete",
         "win_overlap", "win_reward_var", "tail")

CSV_COLUMNS = ("pair", "source", "outcome", "n", "spearman_rho", "rho_ci_low", "rho_ci_high", "spearman_p",
               "n_bins", "bottom_bin_mean", "top_bin_mean", "top_minus_bottom", "tmb_ci_low", "tmb_ci_high",
               "kept_minus_stopped", "kms_ci_low", "kms_ci_high", "n_groups", "verdict")
BIN_COLUMNS = ("pair", "source", "outcome", "bin", "x_low", "x_high", "x_mean", "y_mean", "y_sem", "n")


# ----------------------------------------------------------------------------- loading
def load_candidates(paths) -> dict[tuple[str, str, int], list[dict]]:
    """(pair, method, seed) -> candidate records (only the fields the report uses)."""
    return load_runs(paths, _KEEP)


def ranked(recs: list[dict], source: str = "continue_all") -> list[dict]:
    """Candidates with a probe outcome: ranked at the probe decision (not finished within the
    prefix); for ``opd``, those that reached the end of the probe window (their
    ``probe_window_overlap`` becomes ``probe_overlap``)."""
    if source == "opd":
        out = [{**r, "probe_overlap": r["probe_window_overlap"]} for r in recs
               if r.get("probe_window_complete") and r.get("probe_window_overlap") is not None]
        return _would_select(out)
    return [r for r in recs if r.get("decision_step") is not None and r.get("probe_overlap") is not None]


def _would_select(recs: list[dict], fraction: float = KEEP_FRACTION) -> list[dict]:
    """Mark ``selected`` as PG-OPD's top-fraction rule would, per prompt group of a step
    (ties to the lower cid), so the within-prompt comparison also runs on OPD's candidates;
    it compares candidates of the same problem, so problem difficulty cannot drive it."""
    import math

    groups = defaultdict(list)
    for r in recs:
        groups[(r.get("step"), r.get("group"))].append(r)
    for g in groups.values():
        n_keep = min(len(g), max(0, math.ceil(fraction * len(g) - 1e-9)))
        ranked_ = sorted(g, key=lambda r: (-r["probe_overlap"], r.get("cid") or 0))
        for i, r in enumerate(ranked_):
            r["selected"] = i < n_keep
    return recs


def _value(r: dict, outcome: str) -> Optional[float]:
    v = r.get(outcome)
    if v is None:
        return None
    return float(v)  # bool -> 0/1


# ----------------------------------------------------------------------------- analysis
def analyse_outcome(recs: list[dict], outcome: str, n_bins: int = N_BINS, n_boot: int = S.N_BOOT,
                    seed: int = 0, within_group: bool = True) -> dict:
    """Numbers for one outcome over ranked candidate records (with ``_run`` = seed id)."""
    import numpy as np

    pts = [(float(r["probe_overlap"]), _value(r, outcome), r) for r in recs if _value(r, outcome) is not None]
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    res = {"outcome": outcome, "n": len(pts)}
    res.update({f"spearman_{k}" if k in ("rho", "p") else f"rho_{k}": v
                for k, v in S.spearman_ci(x, y, n_boot=n_boot, seed=seed).items() if k != "n"})
    bins = S.quantile_bins(x, y, n_bins)
    res["bins"] = bins
    res["n_bins"] = len(bins)
    res.update(bottom_bin_mean=None, top_bin_mean=None, top_minus_bottom=None, tmb_ci_low=None, tmb_ci_high=None)
    if len(bins) >= 2:
        idx = S.bin_members(x, n_bins)
        top, bottom = y[idx == idx.max()], y[idx == 0]
        d = S.bootstrap_mean_diff(top, bottom, n_boot=n_boot, seed=seed + 1)
        res.update(bottom_bin_mean=float(bottom.mean()), top_bin_mean=float(top.mean()),
                   top_minus_bottom=d["diff"], tmb_ci_low=d["ci_low"], tmb_ci_high=d["ci_high"])
    res.update(kept_minus_stopped=None, kms_ci_low=None, kms_ci_high=None, n_groups=0)
    if within_group:
        groups = defaultdict(lambda: ([], []))
        for _x, v, r in pts:
            if r.get("selected") is None:
                continue
            groups[(r.get("_run"), r.get("step"), r.get("group"))][0 if r["selected"] else 1].append(v)
        d = [sum(k) / len(k) - sum(s) / len(s) for k, s in groups.values() if k and s]
        ci = S.bootstrap_mean_ci(d, n_boot=n_boot, seed=seed + 2)
        res.update(kept_minus_stopped=ci["mean"], kms_ci_low=ci["ci_low"], kms_ci_high=ci["ci_high"],
                   n_groups=ci["n"])
    res["verdict"] = verdict(res)
    return res


def verdict(res: dict) -> str:
    if res["n"] < MIN_N or res.get("spearman_rho") is None:
        return "insufficient"
    # the premise: higher probe overlap, more valuable suffix (both tests positive)
    return S.premise_verdict(S.significant_sign(res["spearman_rho"], res["rho_ci_low"], res["rho_ci_high"]),
                             S.significant_sign(res.get("top_minus_bottom"), res.get("tmb_ci_low"),
                                                res.get("tmb_ci_high")))


def analyse(cands: dict[tuple[str, str, int], list[dict]], n_bins: int = N_BINS, n_boot: int = S.N_BOOT,
            seed: int = 0) -> dict:
    """Per pair: the source used (continue_all, else pgopd, else none) and per-outcome results."""
    pairs = []
    for (pair, _m, _s) in cands:
        if pair not in pairs:
            pairs.append(pair)
    out = {"pairs": {}}
    for pair in pairs:
        source = next((m for m in SOURCES if any(p == pair and mm == m for p, mm, _s in cands)), None)
        entry = {"source": source, "n_seeds": 0, "n_ranked": 0, "results": {}}
        if source is not None:
            recs = []
            runs = sorted(s for p, m, s in cands if p == pair and m == source)
            for s in runs:
                for r in ranked(cands[(pair, source, s)], source):
                    recs.append({**r, "_run": s})
            entry["n_seeds"], entry["n_ranked"] = len(runs), len(recs)
            if source == "pgopd":
                entry["n_continued"] = sum(bool(r.get("continued")) for r in recs)
            for outcome in OUTCOMES:
                entry["results"][outcome] = analyse_outcome(recs, outcome, n_bins, n_boot, seed,
                                                            within_group=source in ("continue_all", "opd"))
        res = entry["results"].get(VERDICT_OUTCOME)
        entry["verdict"] = res["verdict"] if res else "insufficient"
        entry["text"] = sentences(pair, entry)
        out["pairs"][pair] = entry
    return out


# ----------------------------------------------------------------------------- text
def _f(v, fmt="+.3f"):
    return "n/a" if v is None else format(v, fmt)


def _ci(lo, hi, fmt="+.3f"):
    return "" if lo is None else f" [{_f(lo, fmt)}, {_f(hi, fmt)}]"


def sentence(res: dict) -> str:
    """One plain sentence (or two) on one outcome, generated from the numbers."""
    what = OUTCOME_LABELS[res["outcome"]]
    v = res["verdict"]
    if v == "insufficient":
        return (f"{what.capitalize()}: too few candidates (n = {res['n']}) or no variation to judge "
                f"whether probe overlap predicts it.")
    rho = (f"Spearman ρ = {_f(res['spearman_rho'], '+.2f')}{_ci(res['rho_ci_low'], res['rho_ci_high'], '+.2f')}"
           f", n = {res['n']}")
    tmb = ("top-vs-bottom overlap bin difference " + _f(res["top_minus_bottom"])
           + _ci(res["tmb_ci_low"], res["tmb_ci_high"])) if res.get("top_minus_bottom") is not None \
        else "no top-vs-bottom bin difference (one bin only)"
    kms = ""
    if res.get("kept_minus_stopped") is not None:
        kms = (f"; within the same prompt, the candidates PG-OPD would have kept minus those it would have "
               f"stopped: {_f(res['kept_minus_stopped'])}{_ci(res['kms_ci_low'], res['kms_ci_high'])} over "
               f"{res['n_groups']} prompts")
    if v == "supported":
        head = (f"Probe overlap predicts the {what}: higher-overlap prefixes led to more valuable suffixes")
    elif v == "mixed":
        means = " / ".join(f"{b['y_mean']:.3f}" for b in res.get("bins", []))
        sign = "negative" if res["spearman_rho"] < 0 else "positive"
        head = (f"Probe overlap and the {what} are not monotonically related: the rank correlation is "
                f"{sign} but the top-vs-bottom bin difference has the other sign (bin means from the lowest "
                f"to the highest overlap: {means}), so neither PG-OPD's premise nor its opposite holds "
                f"over the whole range")
    elif v == "contradicted":
        head = (f"Probe overlap is inversely related to the {what}: low-overlap suffixes were MORE valuable "
                f"than high-overlap ones, contrary to PG-OPD's premise")
    else:
        rho_sig = S.ci_excludes_zero(res["rho_ci_low"], res["rho_ci_high"])
        tmb_sig = res.get("top_minus_bottom") is not None and S.ci_excludes_zero(res["tmb_ci_low"],
                                                                                 res["tmb_ci_high"])
        reasons = []
        if not rho_sig:
            reasons.append("the 95% CI of the correlation includes 0")
        if not tmb_sig:
            reasons.append("the top-vs-bottom bin difference is not significant")
        if rho_sig != tmb_sig:
            reasons[-1] += (" although the correlation's CI excludes 0" if rho_sig
                            else " although the top-vs-bottom difference is significant")
        head = (f"Low-overlap suffixes turned out as valuable as high-overlap ones by the {what} "
                f"({' and '.join(reasons)}); this does not support PG-OPD's premise that low prefix overlap "
                f"marks low-value suffixes")
    note = (" This outcome measures teacher-student agreement, as overlap does: shown, not used for the "
            "verdict." if res["outcome"] in CIRCULAR else "")
    if v in ("supported", "contradicted") and res.get("kept_minus_stopped") is not None \
            and not S.ci_excludes_zero(res.get("kms_ci_low"), res.get("kms_ci_high")):
        note = (" Within the same prompt the difference is not significant: the pooled relation may reflect "
                "which problems have high overlap rather than which of a problem's candidates do, and PG-OPD "
                "ranks within a prompt." + note)
    if v == "mixed" and res.get("kept_minus_stopped") is not None:
        kms_sig = S.ci_excludes_zero(res.get("kms_ci_low"), res.get("kms_ci_high"))
        how = ("better than" if res["kept_minus_stopped"] > 0 else "worse than") if kms_sig else "no differently from"
        note = (f" Within a prompt, where PG-OPD ranks, the candidates it would keep did {how} those it would "
                f"stop." + note)
    return f"{head} ({rho}; {tmb}{kms}).{note}"


def sentences(pair: str, entry: dict) -> list[str]:
    src = entry["source"]
    if src is None:
        return [f"{pair}: none of continue_all, opd, pgopd was run, so probe overlap was never measured."]
    out = []
    if src == "opd":
        out.append(f"{pair}: from the OPD runs ({entry['n_seeds']} seed(s), {entry['n_ranked']} candidates that "
                   f"reached the end of the probe window), where every candidate ran to full length; the probe "
                   f"overlap is measured on PG-OPD's probe window.")
    elif src == "continue_all":
        out.append(f"{pair}: from the continue_all control ({entry['n_seeds']} seed(s), {entry['n_ranked']} "
                   f"candidates ranked at the probe), where every candidate ran to full length.")
    else:
        out.append(f"{pair}: neither continue_all nor opd was run, so this uses PG-OPD's own candidates "
                   f"({entry['n_seeds']} seed(s), {entry['n_ranked']} ranked at the probe, "
                   f"{entry.get('n_continued', 0)} continued). Only continued (high-overlap) candidates have "
                   f"suffixes: the suffix analysis covers the upper part of the overlap range only and cannot "
                   f"show what the stopped suffixes would have been worth. Enable train.controls to run "
                   f"continue_all.")
    out += [sentence(entry["results"][o]) for o in OUTCOMES]
    return out


# ----------------------------------------------------------------------------- output
def rows(fals: dict) -> list[dict]:
    out = []
    for pair, entry in fals["pairs"].items():
        for outcome, res in entry["results"].items():
            row = {"pair": pair, "source": entry["source"]}
            row.update({k: res.get(k) for k in CSV_COLUMNS if k not in ("pair", "source")})
            out.append(row)
    return out


def bin_rows(fals: dict) -> list[dict]:
    out = []
    for pair, entry in fals["pairs"].items():
        for outcome, res in entry["results"].items():
            for b in res["bins"]:
                out.append({"pair": pair, "source": entry["source"], "outcome": outcome, **b})
    return out


_csv = csv_text


def render_markdown(fals: dict) -> str:
    lines = ["# Falsification: does probe overlap predict suffix value?", "",
             "Premise tested (PG-OPD review, §3.2): low top-k overlap on the prefix marks a low-value suffix. "
             "Outcomes: final correctness where the candidate ran to EOS or the length limit (graded answers: the verdict), and the "
             "mean teacher reward on the suffix (an agreement measure like overlap: partly circular, shown only). "
             "95% CIs from bootstrap resampling.", ""]
    if not fals["pairs"]:
        lines += ["No candidates.jsonl was given: no analysis.", ""]
    for pair, entry in fals["pairs"].items():
        lines += [f"## {pair}", "", f"**Verdict ({OUTCOME_LABELS[VERDICT_OUTCOME]} vs probe overlap): "
                  f"{entry.get('verdict', 'insufficient').replace('_', ' ')}**", ""]
        lines += [f"- {s}" for s in entry["text"]]
        lines.append("")
    return "\n".join(lines)


def render_html(fals: dict) -> str:
    import html

    parts = []
    if not fals["pairs"]:
        parts.append("<p>No candidates.jsonl was given: no analysis.</p>")
    for pair, entry in fals["pairs"].items():
        parts.append(f"<h3>{html.escape(pair)}</h3><ul>")
        parts += [f"<li>{html.escape(s)}</li>" for s in entry["text"]]
        parts.append("</ul>")
    return "\n".join(parts)


def write(fals: dict, out_dir: Path, extra_md: str = "") -> None:
    """``falsification.csv`` (one row per pair and outcome) and ``falsification.md`` (the text)."""
    out_dir = Path(out_dir)
    write_atomic(out_dir / "falsification.csv", _csv(CSV_COLUMNS, rows(fals)))
    write_atomic(out_dir / "falsification.md", render_markdown(fals) + extra_md)
