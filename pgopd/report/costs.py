"""Where the cost goes and where the savings come from, per method (seeds pooled).

* ``costs.csv``: per pair and method, the forward positions each model ran
  (``positions_student`` / ``positions_teacher`` of metrics.jsonl: padding after EOS and
  tokens past a cut included) next to ``tokens_generated`` / ``tokens_trained``;
  ``teacher_per_trained`` = teacher positions / trained tokens and
  ``student_per_generated`` = student positions / generated tokens (physical limit 1.00:
  every position above it is padding or re-run); ``tail_share_first10`` / ``tail_share`` =
  share of the generated tokens in rollouts that ran to the length limit or ended without a
  ``\\boxed{}`` answer (metrics.jsonl ``tokens_tail``), over the first 10 steps / the run:
  the long tail PG-OPD and Prune-OPD exist to cut (issue 15).
* ``stop_reasons.csv``: candidates.jsonl ``stop_reason`` summed per method (``eos``,
  ``length``, ``prefix`` PG-OPD stop, ``drift`` / ``window`` Prune-OPD cuts, ``fixed`` /
  ``random`` control cuts): count, share, mean generated and trained length, tokens
  generated but not trained, and ``not_generated_ub`` = sum of (max_new_tokens - length)
  over the cut candidates: an upper bound on the generation each reason saved (a cut
  rollout might have ended by EOS earlier).
* ``controls.csv``: each reference (PG-OPD, Prune-OPD) next to its matched controls and
  ablations: accuracy, difference to OPD, mean kept tokens per candidate, cut rate and mean
  cut length (from summary.json), so "matched" can be checked.
"""
from __future__ import annotations

from collections import defaultdict

from ..config import REFERENCES
from .common import label, method_rank, reference_of

REASONS = ("eos", "length", "prefix", "random", "fixed", "drift", "window", "policy")
_UNCUT = ("eos", "length")
COST_COLUMNS = ("pair", "method", "n_steps", "tokens_generated", "tokens_trained", "positions_student",
                "positions_teacher", "student_per_generated", "teacher_per_trained", "tail_share_first10", "tail_share")
#: steps over which the start-of-training tail share is taken
FIRST_STEPS = 10
STOP_COLUMNS = ("pair", "method", "stop_reason", "n", "share", "mean_length", "mean_trained",
                "generated_not_trained", "not_generated_ub")
CONTROL_COLUMNS = ("pair", "reference", "method", "avg", "avg_diff_vs_opd", "avg_diff_ci_low", "avg_diff_ci_high",
                   "mean_kept_tokens", "mean_generated_tokens", "cut_rate", "mean_cut_len", "continue_rate",
                   "n_seeds")


def _sorted_keys(keys):
    pairs = list(dict.fromkeys(p for p, _m in keys))
    return sorted(keys, key=lambda k: (pairs.index(k[0]), method_rank(k[1])))


def _ratio(a, b):
    return None if a is None or not b else a / b


def cost_rows(metrics: dict) -> list[dict]:
    """Positions vs tokens per (pair, method) from metrics.jsonl records; None where a run
    did not count positions (vLLM)."""
    acc = defaultdict(lambda: {"n_steps": 0, "tokens_generated": 0, "tokens_trained": 0,
                               "positions_student": 0, "positions_teacher": 0})
    tail = defaultdict(lambda: [0, 0, 0, 0])  # tail / generated tokens: first steps, whole run
    for (pair, method, _s), recs in metrics.items():
        a, t = acc[(pair, method)], tail[(pair, method)]
        for r in recs:
            a["n_steps"] += 1
            if r.get("tokens_tail") is not None:  # runs from before issue 15 did not count it
                first = r["step"] < FIRST_STEPS
                t[0] += r["tokens_tail"] * first
                t[1] += r["tokens_generated"] * first
                t[2] += r["tokens_tail"]
                t[3] += r["tokens_generated"]
            for k in ("tokens_generated", "tokens_trained", "positions_student", "positions_teacher"):
                v = r.get(k)
                a[k] = None if v is None or a[k] is None else a[k] + v
    out = []
    for key in _sorted_keys(acc):
        a, t = acc[key], tail[key]
        out.append({"pair": key[0], "method": key[1], **a,
                    "student_per_generated": _ratio(a["positions_student"], a["tokens_generated"]),
                    "teacher_per_trained": _ratio(a["positions_teacher"], a["tokens_trained"]),
                    "tail_share_first10": _ratio(t[0], t[1]), "tail_share": _ratio(t[2], t[3])})
    return out


def stop_rows(cands: dict, max_new_tokens: int | None = None) -> list[dict]:
    """Per (pair, method, stop_reason): counts and tokens (see the module docstring)."""
    by = defaultdict(list)
    for (pair, method, _s), recs in cands.items():
        by[(pair, method)] += [r for r in recs if r.get("stop_reason")]
    out = []
    for key in _sorted_keys(by):
        recs = by[key]
        limit = max_new_tokens or max((r.get("length") or 0 for r in recs), default=0)
        groups = defaultdict(list)
        for r in recs:
            groups[r["stop_reason"]].append(r)
        order = [x for x in REASONS if x in groups] + sorted(set(groups) - set(REASONS))
        for reason in order:
            g = groups[reason]
            lengths = [r.get("length") or 0 for r in g]
            trained = [r.get("train_len") or 0 for r in g]
            out.append({"pair": key[0], "method": key[1], "stop_reason": reason, "n": len(g),
                        "share": len(g) / len(recs), "mean_length": sum(lengths) / len(g),
                        "mean_trained": sum(trained) / len(g),
                        "generated_not_trained": sum(a - b for a, b in zip(lengths, trained)),
                        "not_generated_ub": 0 if reason in _UNCUT else sum(limit - n for n in lengths)})
    return out


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def control_rows(t, trains: dict) -> list[dict]:
    """Each reference and the methods matched to / ablating it, with their matched numbers."""
    rows = {(r.pair, r.method): r for r in t.rows}
    runs = defaultdict(list)
    for (pair, method, _s), d in trains.items():
        runs[(pair, method)].append(d)
    out = []
    for pair in t.pairs:
        for ref in REFERENCES:
            members = [m for p, m in rows if p == pair and reference_of(m) == ref]
            if not members:
                continue
            for m in [ref] + sorted(members, key=method_rank):
                r, ds = rows.get((pair, m)), runs.get((pair, m), [])
                out.append({"pair": pair, "reference": ref, "method": m,
                            "avg": None if r is None else r.avg,
                            "avg_diff_vs_opd": None if r is None else r.avg_diff_vs_opd,
                            "avg_diff_ci_low": None if r is None else r.avg_diff_ci_low,
                            "avg_diff_ci_high": None if r is None else r.avg_diff_ci_high,
                            **{k: _mean([d.get(k) for d in ds]) for k in
                               ("mean_kept_tokens", "mean_generated_tokens", "cut_rate", "mean_cut_len",
                                "continue_rate")},
                            "n_seeds": len(ds)})
    return out


def _n(v, fmt):
    return "" if v is None else format(v, fmt)


def render_markdown(costs: list, stops: list, controls: list) -> str:
    """Sections appended to main.md."""
    lines = ["## Cost where it is spent: forward positions vs tokens", "",
             "Positions each model's forward ran after the prompt prefill (padding after EOS and tokens past a "
             "cut included), summed over steps and seeds. Student positions / generated tokens and teacher "
             "positions / trained tokens: 1.00 is the physical limit; above it is padding, tokens past a cut, "
             "or re-run prefixes. Tail: share of the generated tokens in rollouts that ran to the length limit or "
             f"ended without a boxed answer (policy cuts not counted), over the first {FIRST_STEPS} steps and the run.",
             ""]
    lines += _md(["Method", "Steps", "Generated", "Trained", "Student pos.", "Teacher pos.", "Student pos. / gen.",
                  "Teacher pos. / trained", f"Tail, steps 1-{FIRST_STEPS}", "Tail, run"],
                 [[f"{r['pair']}: {label(r['method'])}", r["n_steps"], r["tokens_generated"], r["tokens_trained"],
                   _n(r["positions_student"], "d"), _n(r["positions_teacher"], "d"),
                   _n(r["student_per_generated"], ".3f"), _n(r["teacher_per_trained"], ".3f"),
                   _n(_pct(r["tail_share_first10"]), ".1f"), _n(_pct(r["tail_share"]), ".1f")] for r in costs])
    lines += ["", "## Why rollouts stopped (candidates.jsonl stop_reason)", "",
              "eos: ended by itself; length: reached max_new_tokens; prefix: PG-OPD stop at the prefix; drift / "
              "window: Prune-OPD drift truncation / window end; fixed / random: the controls' cuts. Not generated "
              "(upper bound): sum of (max_new_tokens - length) over the cut candidates; generated, not trained: "
              "tokens produced past the trained part.", ""]
    lines += _md(["Method", "Stop reason", "n", "Share", "Mean length", "Mean trained", "Generated, not trained",
                  "Not generated (upper bound)"],
                 [[f"{r['pair']}: {label(r['method'])}", r["stop_reason"], r["n"], f"{100 * r['share']:.1f}%",
                   f"{r['mean_length']:.1f}", f"{r['mean_trained']:.1f}", r["generated_not_trained"],
                   r["not_generated_ub"]] for r in stops])
    if controls:
        lines += ["", "## Controls next to their reference", "",
                  "Each reference with the controls matched to it (its mean kept length, its continue / cut rate) "
                  "and its parts run alone. Accuracy: Avg. in %; Δ vs OPD in points [95% CI].", ""]
        lines += _md(["Reference", "Method", "Avg.", "Δ vs OPD", "Kept tok./cand.", "Gen. tok./cand.",
                      "Cut rate", "Mean cut len.", "Continue rate", "Seeds"],
                     [[f"{r['pair']}: {label(r['reference'])}", label(r["method"]), _n(_pct(r["avg"]), ".2f"),
                       _diff(r), _n(r["mean_kept_tokens"], ".1f"), _n(r["mean_generated_tokens"], ".1f"),
                       _n(r["cut_rate"], ".3f"), _n(r["mean_cut_len"], ".1f"), _n(r["continue_rate"], ".3f"),
                       r["n_seeds"]] for r in controls])
    return "\n".join(lines) + "\n"


def _pct(v):
    return None if v is None else 100 * v


def _diff(r):
    if r["avg_diff_vs_opd"] is None:
        return ""
    s = f"{100 * r['avg_diff_vs_opd']:+.2f}"
    if r["avg_diff_ci_low"] is not None:
        s += f" [{100 * r['avg_diff_ci_low']:+.2f}, {100 * r['avg_diff_ci_high']:+.2f}]"
    return s


def _md(head, rows):
    from .common import md_table

    return md_table(head, rows) if rows else ["(no runs)"]
