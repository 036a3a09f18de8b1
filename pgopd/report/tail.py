"""The long tail at the start of OPD (issue 15): is there anything for PG-OPD and Prune-OPD to cut?

From OPD's candidates.jsonl (OPD continues every rollout, so its lengths are the student's
own), over the first ``FIRST_STEPS`` steps of every seed:

* a histogram of response lengths, tail vs rest (``tail``: the rollout hit the length limit or
  never boxed an answer, logged per candidate by the training stage);
* a histogram of the per-window top-k overlap (``win_overlap``, the Prune-OPD monitor's
  windows), tail vs rest: whether the teacher is off its distribution on the tail, which is
  what both methods' signal needs.

``tail.csv`` holds the rows; main.md gets a section.
"""
from __future__ import annotations

from collections import defaultdict

from ..tailstats import histogram
from .costs import FIRST_STEPS, _n, _pct

COLUMNS = ("pair", "what", "bin_low", "bin_high", "tail", "rest")
N_LEN_BINS = 8
OVERLAP_EDGES = [i / 8 for i in range(9)]


def _opd_first_steps(cands: dict) -> dict[str, list[dict]]:
    by = defaultdict(list)
    for (pair, method, _seed), recs in cands.items():
        if method == "opd":
            by[pair] += [r for r in recs if r.get("step", 0) < FIRST_STEPS and r.get("tail") is not None]
    return {pair: recs for pair, recs in by.items() if recs}  # runs from before issue 15 log no tail


def tail_rows(cands: dict, max_new_tokens: int | None) -> list[dict]:
    """Length and window-overlap histograms (tail vs rest) of OPD's first steps, per pair."""
    out = []
    for pair, recs in _opd_first_steps(cands).items():
        limit = max_new_tokens or max(r["length"] for r in recs)
        len_edges = [limit * i / N_LEN_BINS for i in range(N_LEN_BINS + 1)]
        parts = {k: [r for r in recs if bool(r["tail"]) == (k == "tail")] for k in ("tail", "rest")}
        lens = {k: histogram([r["length"] for r in v], len_edges) for k, v in parts.items()}
        ovs = {k: histogram([o for r in v for o in r.get("win_overlap") or []], OVERLAP_EDGES)
               for k, v in parts.items()}
        for what, edges, h in (("length", len_edges, lens), ("window_overlap", OVERLAP_EDGES, ovs)):
            out += [{"pair": pair, "what": what, "bin_low": edges[i], "bin_high": edges[i + 1],
                     "tail": h["tail"][i], "rest": h["rest"][i]} for i in range(len(edges) - 1)]
    return out


def summary(cands: dict) -> dict[str, dict]:
    """Per pair: share of OPD's first-step rollouts in the tail, their share of the tokens, and
    the mean window overlap of tail vs rest (None where a part is empty)."""
    out = {}
    for pair, recs in _opd_first_steps(cands).items():
        tail = [r for r in recs if r["tail"]]
        ov = {k: [o for r in recs if bool(r["tail"]) == (k == "tail") for o in r.get("win_overlap") or []]
              for k in ("tail", "rest")}
        n_tok = sum(r["length"] for r in recs)
        out[pair] = {"n": len(recs), "tail_rate": len(tail) / len(recs) if recs else None,
                     "tail_token_share": sum(r["length"] for r in tail) / n_tok if n_tok else None,
                     **{f"overlap_{k}": sum(v) / len(v) if v else None for k, v in ov.items()}}
    return out


def render_markdown(rows: list[dict], summ: dict) -> str:
    """The main.md section (empty when no OPD run logged its tail)."""
    if not rows:
        return ""
    lines = [f"## The long tail at the start of OPD (steps 1-{FIRST_STEPS})", "",
             "OPD continues every rollout, so its first steps show the student's own length and overlap "
             "distributions. Tail: the rollout hit the length limit or never boxed an answer. Window overlap: "
             "mean top-k overlap per Prune-OPD monitor window.", ""]
    for pair, s in summ.items():
        lines.append(f"- {pair}: {s['n']} rollouts, {_n(_pct(s['tail_rate']), '.1f')}% in the tail holding "
                     f"{_n(_pct(s['tail_token_share']), '.1f')}% of the tokens; mean window overlap "
                     f"{_n(s['overlap_tail'], '.3f')} (tail) vs {_n(s['overlap_rest'], '.3f')} (rest).")
    lines += ["", "| Pair | Histogram | Bin | Tail | Rest |", "|:---|:---|:---|---:|---:|"]
    for r in rows:
        lo, hi = r["bin_low"], r["bin_high"]
        b = f"{lo:.0f}-{hi:.0f} tokens" if r["what"] == "length" else f"{lo:.3f}-{hi:.3f}"
        lines.append(f"| {r['pair']} | {r['what'].replace('_', ' ')} | {b} | {r['tail']} | {r['rest']} |")
    return "\n".join(lines) + "\n"
