"""Is the teacher's reward noisier where the window overlap is low?  (Prune-OPD's premise.)

Prune-OPD down-weights and truncates after low sliding-window overlap, on the premise that
the dense teacher reward stops being *locally exploitable* there; its rebuttal promised the
reward variance against the overlap.  Every run logs, per candidate and per window of the
response (:func:`pgopd.stepstats.window_pairs`), the window's mean top-k overlap and the
variance of the per-token reward r_t = log p_T(y_t) - log p_S(y_t) inside it.  The variance
is not the overlap in disguise: two models can share top-k sets and still disagree on how
likely the sampled token is, and the reverse.

Source: ``opd`` (no truncation, every window of every candidate), else ``continue_all``,
else ``pruneopd`` (windows before its cuts only).  Windows are pooled over candidates and
seeds; CIs come from a *cluster* bootstrap over candidates (a candidate's windows are
redrawn together, since they are not independent).

Numbers: Spearman rho of window overlap vs reward variance with its 95 % CI; the mean
variance in the bottom minus the top overlap quintile, with its 95 % CI.  Verdict:
*supported* when rho < 0 and bottom-minus-top > 0, both with CIs excluding 0;
*mixed* when the two are significant in opposite directions (not monotone: neither direction
may be claimed); *contradicted* when either is significant the other way and the other does
not support the premise; *insufficient* with fewer than
:data:`MIN_N` candidates or no variation; else *not supported*.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import stats as S

SOURCES = ("opd", "continue_all", "pruneopd")
MIN_N = 10
MAX_BOOT = 500  # resamples (each ranks every pooled window again: ~10 s for 60k windows)
N_BINS = 5
CSV_COLUMNS = ("pair", "source", "n_candidates", "n_windows", "spearman_rho", "rho_ci_low", "rho_ci_high",
               "bottom_bin_var", "top_bin_var", "bottom_minus_top", "bmt_ci_low", "bmt_ci_high", "verdict")


def _clusters(recs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for r in recs:
        x, y = r.get("win_overlap") or [], r.get("win_reward_var") or []
        if x and len(x) == len(y):
            out.append((np.asarray(x, dtype=float), np.asarray(y, dtype=float)))
    return out


def analyse_windows(recs: list[dict], n_boot: int = S.N_BOOT, seed: int = 0, n_bins: int = N_BINS) -> dict:
    """Numbers and verdict over candidate records carrying ``win_overlap`` / ``win_reward_var``."""
    cl = _clusters(recs)
    res = {"n_candidates": len(cl), "n_windows": int(sum(len(x) for x, _ in cl)), "spearman_rho": None,
           "rho_ci_low": None, "rho_ci_high": None, "bottom_bin_var": None, "top_bin_var": None,
           "bottom_minus_top": None, "bmt_ci_low": None, "bmt_ci_high": None}
    if len(cl) < MIN_N:
        res["verdict"] = "insufficient"
        return res
    x = np.concatenate([c[0] for c in cl])
    y = np.concatenate([c[1] for c in cl])
    sizes = np.array([len(c[0]) for c in cl])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx = S.bin_members(x, n_bins)
    bottom, top = idx == 0, idx == idx.max()
    res["spearman_rho"] = S.spearman(x, y)
    if res["spearman_rho"] is None or idx.max() == 0:
        res["verdict"] = "insufficient"
        return res
    res.update(bottom_bin_var=float(y[bottom].mean()), top_bin_var=float(y[top].mean()))
    res["bottom_minus_top"] = res["bottom_bin_var"] - res["top_bin_var"]
    rng = np.random.default_rng(seed)
    rhos, bmts = [], []
    for _ in range(min(n_boot, MAX_BOOT)):
        pick = rng.integers(0, len(cl), len(cl))
        sz = sizes[pick]  # rows of the picked candidates, each candidate's windows together
        rows = np.arange(sz.sum()) + np.repeat(starts[pick] - (np.cumsum(sz) - sz), sz)
        r = S.spearman(x[rows], y[rows])
        b, t = bottom[rows], top[rows]
        if r is not None:
            rhos.append(r)
        if b.any() and t.any():
            bmts.append(y[rows][b].mean() - y[rows][t].mean())
    a = S.ALPHA / 2
    if rhos:
        res["rho_ci_low"], res["rho_ci_high"] = (float(v) for v in np.quantile(rhos, [a, 1 - a]))
    if bmts:
        res["bmt_ci_low"], res["bmt_ci_high"] = (float(v) for v in np.quantile(bmts, [a, 1 - a]))
    res["verdict"] = verdict(res)
    return res


def verdict(res: dict) -> str:
    if res.get("spearman_rho") is None or res.get("rho_ci_low") is None:
        return "insufficient"
    # the premise: lower window overlap, noisier reward (rho < 0, bottom minus top > 0)
    return S.premise_verdict(-S.significant_sign(res["spearman_rho"], res["rho_ci_low"], res["rho_ci_high"]),
                             S.significant_sign(res.get("bottom_minus_top"), res.get("bmt_ci_low"),
                                                res.get("bmt_ci_high")))


def analyse(cands: dict, n_boot: int = S.N_BOOT, seed: int = 0) -> dict:
    """pair -> {source, n_seeds, result, text} over the runs' candidate records."""
    pairs = list(dict.fromkeys(p for p, _m, _s in cands))
    out = {}
    for pair in pairs:
        source = next((m for m in SOURCES if any(p == pair and mm == m and any(r.get("win_overlap") for r in recs)
                                                 for (p, mm, _s), recs in cands.items())), None)
        entry = {"source": source, "n_seeds": 0, "result": None}
        if source:
            runs = sorted(s for p, m, s in cands if p == pair and m == source)
            recs = [r for s in runs for r in cands[(pair, source, s)]]
            entry["n_seeds"] = len(runs)
            entry["result"] = analyse_windows(recs, n_boot=n_boot, seed=seed)
        entry["text"] = sentence(pair, entry)
        out[pair] = entry
    return out


def _f(v: Optional[float], fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def sentence(pair: str, entry: dict) -> str:
    res = entry["result"]
    if res is None:
        return f"{pair}: no run logged window overlap / reward variance (win_overlap), so nothing to test."
    src = f"{pair}: from the {entry['source']} runs ({entry['n_seeds']} seed(s), {res['n_candidates']} candidates, " \
          f"{res['n_windows']} windows)"
    if res["verdict"] == "insufficient":
        return f"{src}: too few candidates or no variation to judge."
    nums = (f"Spearman ρ(window overlap, reward variance) = {_f(res['spearman_rho'], '+.3f')} "
            f"[{_f(res['rho_ci_low'], '+.3f')}, {_f(res['rho_ci_high'], '+.3f')}]; reward variance in the bottom "
            f"minus the top overlap quintile = {_f(res['bottom_minus_top'], '+.4f')} "
            f"[{_f(res['bmt_ci_low'], '+.4f')}, {_f(res['bmt_ci_high'], '+.4f')}] "
            f"({_f(res['bottom_bin_var'], '.4f')} vs {_f(res['top_bin_var'], '.4f')})")
    head = {"supported": "low window overlap comes with a noisier teacher reward, as Prune-OPD assumes",
            "contradicted": "low window overlap comes with a LESS noisy teacher reward, contrary to Prune-OPD's "
                            "premise",
            "mixed": "window overlap and reward variance are not monotonically related (the rank correlation "
                     "and the bottom-minus-top quintile difference point in opposite directions); neither "
                     "Prune-OPD's premise nor its opposite holds over the whole range",
            "not_supported": "the reward is not measurably noisier where the window overlap is low (a 95% CI "
                             "includes 0); this does not support Prune-OPD's premise"}[res["verdict"]]
    return f"{src}: {head} ({nums}; cluster bootstrap over candidates)."


def rows(noise: dict) -> list[dict]:
    return [{"pair": pair, "source": e["source"], **(e["result"] or {})} for pair, e in noise.items()]


def render_markdown(noise: dict) -> str:
    lines = ["", "# Falsification: is the reward noisier where window overlap is low?", "",
             "Premise tested (Prune-OPD rebuttal): low sliding-window overlap marks an unreliable (noisy) "
             "teacher reward. Outcome: the variance of the per-token reward inside each window, not an "
             "overlap. 95% CIs from a cluster bootstrap over candidates.", ""]
    for pair, e in noise.items():
        v = (e["result"] or {}).get("verdict", "insufficient").replace("_", " ")
        lines += [f"## {pair}", "", f"**Verdict (reward variance vs window overlap): {v}**", "", f"- {e['text']}", ""]
    return "\n".join(lines)
