"""Per-step cost and allocation counts of a rollout, summed over processes, and the run totals.

Cost is counted where it is spent: ``positions_student`` / ``positions_teacher`` are the
positions each model's forward ran after the prompt prefill (padding after EOS inside a
chunk and tokens generated past a cut included), next to ``tokens_generated`` (kept by the
sampler) and ``tokens_trained`` (what the update sees).  A backend that does not count
(vLLM) reports None.

A candidate is *cut* when the policy ended its rollout or its training before EOS and the
length limit (``stop_reason`` not ``eos`` / ``length``); the matched controls copy the
reference run's cut rate and mean kept length from the summary fields below.
"""
from __future__ import annotations

import math

#: local sums of one step, in the order they are all-reduced
SUM_KEYS = ("gen", "scored", "trained", "cands", "decided", "continued", "kept", "n_overlap", "sum_overlap",
            "pos_student", "pos_teacher", "prefill_student", "prefill_teacher", "cut", "cut_trained", "tail", "tail_tokens")
#: totals kept over the run (RunState.totals) for the summary
TOTAL_KEYS = ("gen", "scored", "trained", "cands", "decided", "continued", "pos_student", "pos_teacher",
              "cut", "cut_trained", "tail", "tail_tokens")
_UNCUT = ("eos", "length")


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def local_sums(res, tail: list[bool]) -> list[float]:
    """This process's sums for one step (a :class:`pgopd.rollout.loop.RolloutResult`), SUM_KEYS order.

    ``tail`` flags the candidates in the long tail (one per candidate, see :func:`tail_flags`)."""
    cands = res.cands
    if len(tail) != len(cands):
        raise ValueError(f"tail has {len(tail)} flags for {len(cands)} candidates")
    decided = [c for c in cands if c.info.get("decision_step") is not None]  # live at the probe
    cut = [c for c in cands if c.info.get("stop_reason") not in _UNCUT]
    return [res.tokens_generated, res.tokens_teacher_scored, res.tokens_trained, len(cands), len(decided),
            sum(bool(c.info["continued"]) for c in decided), sum(c.keep for c in cands),
            sum(len(c.overlap) for c in cands), sum(sum(c.overlap) for c in cands),
            _num(res.positions_student), _num(res.positions_teacher),
            _num(res.prefill_positions_student), _num(res.prefill_positions_teacher),
            len(cut), sum(res.train_len(c) for c in cut),
            sum(tail), sum(c.length for c, t in zip(cands, tail) if t)]


def tail_flags(cands, texts: list[str], max_new_tokens: int) -> list[bool]:
    """Which candidates are in the long tail (issue 15): they ran to their own end (EOS or the
    length limit, not a policy cut) and hit the limit or never wrote a ``\\boxed{}`` answer.
    A candidate the policy cut is not counted: its rollout was not allowed to show either."""
    from .tailstats import is_tail

    return [c.info.get("stop_reason") in _UNCUT and is_tail(c.length, c.finished, t, max_new_tokens)
            for c, t in zip(cands, texts)]


def _int_or_none(x: float):
    return int(x) if math.isfinite(x) else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def step_metrics(sums: list[float]) -> dict:
    """The metrics.jsonl fields of one step from the all-reduced sums."""
    g = dict(zip(SUM_KEYS, sums))
    pos_s, pos_t = _int_or_none(g["pos_student"]), _int_or_none(g["pos_teacher"])
    return {"tokens_generated": int(g["gen"]), "tokens_teacher_scored": int(g["scored"]),
            "tokens_trained": int(g["trained"]), "positions_student": pos_s, "positions_teacher": pos_t,
            "prefill_positions_student": _int_or_none(g["prefill_student"]),
            "prefill_positions_teacher": _int_or_none(g["prefill_teacher"]),
            "teacher_positions_per_trained": _ratio(pos_t, g["trained"]),
            "student_positions_per_generated": _ratio(pos_s, g["gen"]),
            "n_candidates": int(g["cands"]), "n_kept": int(g["kept"]), "n_cut": int(g["cut"]),
            "n_tail": int(g["tail"]), "tokens_tail": int(g["tail_tokens"]),
            "tail_token_share": g["tail_tokens"] / g["gen"] if g["gen"] else None,
            "mean_length": g["gen"] / max(g["cands"], 1),
            "overlap_mean": g["sum_overlap"] / g["n_overlap"] if g["n_overlap"] else None,
            "continue_rate": g["continued"] / g["decided"] if g["decided"] else None}


def add_totals(totals: dict, sums: list[float]) -> None:
    """Add one step's sums to the run totals (a position count of None makes that total None)."""
    g = dict(zip(SUM_KEYS, sums))
    for k in TOTAL_KEYS:
        v = g[k]
        if k in totals and totals[k] is None:
            continue
        totals[k] = None if not math.isfinite(v) else totals.get(k, 0) + int(v)


def summary_fields(t: dict) -> dict:
    """summary.json fields from the totals; what the matched controls copy from a reference run:
    ``mean_kept_tokens`` (trained tokens per candidate), ``cut_rate`` (share of candidates the
    policy cut), ``mean_cut_len`` (their mean trained length), ``continue_rate`` (PG-OPD)."""
    n = max(t.get("cands", 0), 1)
    cut = t.get("cut") or 0
    return {"gen_tokens": t["gen"], "tokens_teacher_scored": t["scored"], "tokens_trained": t["trained"],
            "positions_student": t.get("pos_student"), "positions_teacher": t.get("pos_teacher"),
            "teacher_positions_per_trained": _ratio(t.get("pos_teacher"), t["trained"]),
            "student_positions_per_generated": _ratio(t.get("pos_student"), t["gen"]),
            "n_candidates": t["cands"], "mean_generated_tokens": t["gen"] / n,
            "mean_kept_tokens": t["trained"] / n, "cut_rate": cut / n,
            "mean_cut_len": (t.get("cut_trained") or 0) / cut if cut else None,
            "continue_rate": t["continued"] / t["decided"] if t["decided"] else None,
            "tail_token_share": (t.get("tail_tokens") or 0) / t["gen"] if t["gen"] else None}


#: most windows logged per candidate (longer responses use wider windows)
MAX_WINDOWS = 64


def window_pairs(overlap: list, reward: list, window: int, max_windows: int = MAX_WINDOWS) -> tuple[list, list]:
    """Per non-overlapping window of the response: (mean top-k overlap, variance of the
    per-token reward r_t = log p_T - log p_S).  Windows are ``window`` tokens, widened to
    ``ceil(len / max_windows)`` for long responses; a last window shorter than 2 tokens is
    left out (no variance).  Shapes: overlap, reward length T; returns two lists of length n_win."""
    n = min(len(overlap), len(reward))
    w = max(window, -(-n // max_windows)) if n else window
    ov, var = [], []
    for lo in range(0, n, w):
        o, r = overlap[lo:lo + w], reward[lo:lo + w]
        if len(r) < 2:
            continue
        m = sum(r) / len(r)
        ov.append(round(sum(o) / len(o), 4))
        var.append(round(sum((x - m) ** 2 for x in r) / (len(r) - 1), 5))
    return ov, var


def candidate_extras(c, probe_start: int, probe_end: int, window: int) -> dict:
    """Fields every method logs per candidate for the falsification analysis: the PG-OPD probe
    overlap measured on any run (``probe_window_overlap``; OPD continues everyone, so its
    candidates give the outcome at every probe value) and the per-window overlap / reward
    variance pairs (Prune-OPD's rebuttal: is low window overlap a noisy reward?)."""
    vals = c.overlap[probe_start:probe_end]
    ov, var = window_pairs(c.overlap, c.reward(), window)
    return {"probe_window_overlap": sum(vals) / len(vals) if vals else None,
            "probe_window_complete": len(c.overlap) >= probe_end,
            "win_overlap": ov, "win_reward_var": var}
