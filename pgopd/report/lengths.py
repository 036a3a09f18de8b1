"""How long the teacher's correct solutions are per difficulty, and what a fixed cut truncates.

The matched control ``fixed_truncation-<ref>`` stops every rollout at the reference method's
mean kept length L.  Whether that blind budget can match PG-OPD / Prune-OPD depends on how the
length of a *useful* rollout varies: if every correct solution ends before L, the cut removes
only waste; if hard problems need longer solutions than L, it cuts them (the referees'
question, ``shared/papers``).  This module measures that on the teacher cache (the teacher's
samples on the training prompts, the only correct long-form solutions the workflow has):

* per difficulty level (the training record's ``ops`` for the embedded task, else one level
  ``all``): the number of correct samples and their response length in tokens (EOS included,
  as the rollout counts it): mean, p10 / p50 / p90, max;
* per reference run: the cut L each seed's matched control uses (its summary's
  ``fixed_truncation_len``; without that run, the reference's mean kept tokens through
  :func:`pgopd.policies.fixed_cut_length`, as the control would), and the share of correct
  solutions longer than L (a sample ending exactly at L is complete), averaged over seeds.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..config import REFERENCES
from ..policies import fixed_cut_length, reference_kept_key
from .common import label, md_table, read_jsonl

ALL = "all"


def levels_of(train_records: list[dict]) -> dict[str, str]:
    """id -> difficulty level (``ops`` of the embedded task as a string, else ``all``)."""
    return {str(r["id"]): (str(r["ops"]) if r.get("ops") is not None else ALL) for r in train_records}


def correct_lengths(samples: list[dict], levels: dict[str, str]) -> dict[str, list[int]]:
    """level -> response lengths (tokens) of the correct teacher samples, levels in order."""
    by = defaultdict(list)
    for s in samples:
        if s.get("correct"):
            by[levels.get(str(s["id"]), ALL)].append(len(s["tokens"]))
    return dict(sorted(by.items(), key=lambda kv: _level_key(kv[0])))


def _level_key(level: str):
    return (0, int(level), "") if level.isdigit() else (1, 0, level)


def cut_lengths(trains: dict, pair: str) -> dict[str, dict[int, int]]:
    """reference method -> {seed: L} of its matched fixed cut (see module doc)."""
    out = {}
    for ref in REFERENCES:
        ls = {}
        for (p, m, s), d in trains.items():
            kept = d.get(reference_kept_key(d))
            if p == pair and m == ref and kept is not None:
                ls[s] = fixed_cut_length(kept)
        for (p, m, s), d in trains.items():
            if p == pair and m == f"fixed_truncation-{ref}" and d.get("fixed_truncation_len") is not None:
                ls[s] = int(d["fixed_truncation_len"])  # what the control really used
        if ls:
            out[ref] = ls
    return out


def _quantile(sorted_vals: list[int], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a sorted list."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def share_longer(lengths: list[int], cut: int) -> float:
    """Share of ``lengths`` strictly above ``cut`` (those a cut at ``cut`` tokens truncates)."""
    return sum(n > cut for n in lengths) / len(lengths)


def length_rows(teacher_samples: dict[str, Path], train_records: list[dict], trains: dict) -> list[dict]:
    """One row per (pair, level) plus a level ``all`` row per pair; ``cut_<ref>_len`` (mean L
    over seeds) and ``cut_<ref>_share`` (mean over seeds of the truncated share)."""
    levels = levels_of(train_records)
    rows = []
    for pair, path in teacher_samples.items():
        by = correct_lengths(read_jsonl(Path(path), ["id", "tokens", "correct"]), levels)
        if len(by) > 1:
            by[ALL] = [n for v in by.values() for n in v]
        cuts = cut_lengths(trains, pair)
        for level, lens in by.items():
            lens = sorted(lens)
            row = {"pair": pair, "level": level, "n_correct": len(lens),
                   "mean_tokens": sum(lens) / len(lens), "p10": _quantile(lens, 0.1),
                   "p50": _quantile(lens, 0.5), "p90": _quantile(lens, 0.9), "max_tokens": lens[-1]}
            for ref, ls in cuts.items():
                row[f"cut_{ref}_len"] = sum(ls.values()) / len(ls)
                row[f"cut_{ref}_share"] = sum(share_longer(lens, L) for L in ls.values()) / len(ls)
            rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    base = ["pair", "level", "n_correct", "mean_tokens", "p10", "p50", "p90", "max_tokens"]
    extra = [f"cut_{ref}_{k}" for ref in REFERENCES for k in ("len", "share")
             if any(f"cut_{ref}_len" in r for r in rows)]
    return base + extra


def spread(rows: list[dict], pair: str):
    """Mean length of the hardest level over the easiest (None with fewer than 2 levels)."""
    lv = [r for r in rows if r["pair"] == pair and r["level"] != ALL]
    return lv[-1]["mean_tokens"] / lv[0]["mean_tokens"] if len(lv) > 1 else None


def render_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    refs = [ref for ref in REFERENCES if any(f"cut_{ref}_len" in r for r in rows)]
    lines = ["## The teacher's correct solutions: length per difficulty, and what a fixed cut truncates", "",
             "Response length in tokens (EOS included) of the teacher-cache samples graded correct, per "
             "difficulty level (operations, for the embedded task). Cut: the fixed length the matched control "
             "uses per reference (its mean kept tokens per candidate); truncated: share of these correct "
             "solutions longer than the cut, mean over seeds.", ""]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        head = ["Level", "Correct", "Mean", "p10", "p50", "p90", "Max"]
        head += [f"Truncated at {label(ref)}'s cut" for ref in refs]
        body = []
        for r in (x for x in rows if x["pair"] == pair):
            cells = [r["level"], r["n_correct"], f"{r['mean_tokens']:.1f}", f"{r['p10']:.0f}", f"{r['p50']:.0f}",
                     f"{r['p90']:.0f}", r["max_tokens"]]
            cells += [f"{100 * r[f'cut_{ref}_share']:.1f}% (L {r[f'cut_{ref}_len']:.1f})"
                      if f"cut_{ref}_share" in r else "" for ref in refs]
            body.append(cells)
        if len(set(r["pair"] for r in rows)) > 1:
            lines += [f"### {pair}", ""]
        lines += md_table(head, body)
        ratio = spread(rows, pair)
        if ratio is not None:
            lines += ["", f"Mean length, hardest level / easiest: {ratio:.2f}x."]
        lines.append("")
    return "\n".join(lines)
