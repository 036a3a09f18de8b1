"""Long-tail statistics of a batch of student rollouts (issue 15).

PG-OPD and Prune-OPD save time by cutting rollouts whose teacher signal is no longer
usable: those that drift, loop and run to the length limit.  Whether a task has such a tail
is measured here on plain rollout records, before any training:

* a rollout is in the *tail* when it hit the length limit (no EOS) or never wrote a
  ``\\boxed{}`` answer;
* ``tail_token_share`` is the fraction of all generated tokens that tail rollouts hold
  (the acceptance point: >= 0.3 of OPD's tokens in its first steps);
* per-position top-k overlap with the teacher, split into tail and non-tail rollouts, shows
  whether the teacher is off-distribution on drifted prefixes.

All functions are pure (lists in, dicts out).
"""
from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def is_tail(n_tokens: int, finished: bool, text: str, max_new_tokens: int) -> bool:
    """True for a rollout that hit the length limit without EOS or never boxed an answer."""
    hit_limit = not finished and n_tokens >= max_new_tokens
    return hit_limit or _BOXED.search(text) is None


def histogram(values: list[float], edges: list[float]) -> list[int]:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])``; the last bin is closed."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be at least two increasing numbers, got {edges}")
    counts = [0] * (len(edges) - 1)
    for v in values:
        if v < edges[0] or v > edges[-1]:
            continue
        i = next((j for j in range(len(counts)) if v < edges[j + 1]), len(counts) - 1)
        counts[i] += 1
    return counts


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def tail_stats(rollouts: list[dict], max_new_tokens: int, *, length_bins: int = 8,
               overlap_window: int = 8) -> dict:
    """Summary of rollouts given as ``{n_tokens, finished, text, correct, overlap}`` dicts.

    ``overlap`` is the per-position teacher/student top-k overlap of that rollout (may be
    empty); an optional ``teacher_logp`` (log p_teacher of each sampled token) gives the
    teacher's mean token log-likelihood on tail vs other rollouts.  Returns counts, the tail's share of rollouts and of tokens, a response-length
    histogram (``length_bins`` equal bins over ``[0, max_new_tokens]``), a histogram of
    per-position overlap (tail vs rest, bins of 1/8), and the mean overlap by position
    window of ``overlap_window`` tokens (tail vs rest): where along a rollout the teacher's
    signal degrades.
    """
    if not rollouts:
        raise ValueError("tail_stats needs at least one rollout")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tail = [is_tail(r["n_tokens"], r["finished"], r["text"], max_new_tokens) for r in rollouts]
    tokens = [r["n_tokens"] for r in rollouts]
    hit = [not r["finished"] and r["n_tokens"] >= max_new_tokens for r in rollouts]
    total = sum(tokens)
    edges = [max_new_tokens * i / length_bins for i in range(length_bins + 1)]
    ov_edges = [i / 8 for i in range(9)]
    ov = {"tail": [], "rest": []}
    tlp = {"tail": [], "rest": []}
    by_window: dict[str, dict[int, list[float]]] = {"tail": {}, "rest": {}}
    for r, t in zip(rollouts, tail):
        key = "tail" if t else "rest"
        ov[key] += r.get("overlap", [])
        tlp[key] += r.get("teacher_logp", [])
        for pos, o in enumerate(r.get("overlap", [])):
            by_window[key].setdefault(pos // overlap_window, []).append(o)
    return {
        "n_rollouts": len(rollouts),
        "max_new_tokens": max_new_tokens,
        "tokens": total,
        "mean_length": total / len(rollouts),
        "hit_limit_rate": sum(hit) / len(rollouts),
        "boxed_rate": sum(_BOXED.search(r["text"]) is not None for r in rollouts) / len(rollouts),
        "correct_rate": _mean([float(bool(r.get("correct"))) for r in rollouts]),
        "tail_rate": sum(tail) / len(rollouts),
        "tail_token_share": sum(n for n, t in zip(tokens, tail) if t) / total if total else 0.0,
        "length_hist": {"edges": edges, "counts": histogram(tokens, edges)},
        "overlap_hist": {"edges": ov_edges, "tail": histogram(ov["tail"], ov_edges),
                         "rest": histogram(ov["rest"], ov_edges)},
        "mean_overlap": {"tail": _mean(ov["tail"]), "rest": _mean(ov["rest"])},
        "mean_teacher_logp": {"tail": _mean(tlp["tail"]), "rest": _mean(tlp["rest"])},
        "overlap_by_window": {k: {f"{w * overlap_window}-{(w + 1) * overlap_window}": round(_mean(v), 4)
                                  for w, v in sorted(d.items())} for k, d in by_window.items()},
    }
