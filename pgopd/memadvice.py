"""Advice for a phase of the memory plan that does not fit: computed, not listed.

For each config knob, the phase is re-planned with the knob moved step by step towards its best
value; a knob is named only if some value makes the phase fit (the mildest such value is given).
When no single knob does, the knobs together are tried (a marginal fit, or a teacher larger
than half the GPU, also gets the minimum and the structural options); when even that fails,
the message gives the minimum (every knob at its best value) and the structural changes that
would fit: a GPU model from the table (with :data:`MARGINAL` headroom), the teacher on its own
GPUs / served remotely, tensor parallelism for the teacher (the last two are not implemented in
pgopd as of 2026-12-05, and the message says so).
"""
from __future__ import annotations

import dataclasses
import math

from .memterms import GIB, PlanInputs, phases
from .memshapes import GPU_MODELS

MIN_LOGPROB_CHUNK = 128   # below this the LM-head calls dominate the update's time
MIN_ROLLOUT_CHUNK = 16

#: a fit by the knobs together with less headroom than this share of the GPU is marginal: the
#: plan's estimates (vLLM's residue, the runtime reserve) are not that exact, so the message
#: then also gives the minimum and the structural options
MARGINAL = 0.05


def _halvings(start: int, stop: int) -> list[int]:
    out, v = [], start // 2
    while v >= stop:
        out.append(v)
        v //= 2
    return out if (out and out[-1] == stop) or start <= stop else out + [stop]


def min_vllm_util(x: PlanInputs) -> float:
    """The least gpu_memory_utilization vLLM starts with: the student's weights, one sequence's
    KV at full length (vLLM refuses a max_model_len it cannot hold) and ~1 GiB of buffers and
    graphs, rounded up to 0.05."""
    need = x.dtype_bytes * x.student.params + x.seq_len * x.student.kv_bytes_per_token(x.dtype_bytes) + GIB
    return min(1.0, math.ceil(20 * need / (x.budget_gib * GIB)) / 20)


def knob_steps(x: PlanInputs) -> dict[str, list[tuple[str, PlanInputs]]]:
    """Per knob: (value as the user writes it, inputs with that value), mildest first; the
    last entry is the knob's best value.  Knobs already at their best are left out."""
    r = dataclasses.replace
    out = {
        "train.max_live_rows": [(str(v), r(x, live_rows=v)) for v in _halvings(x.live, 1)],
        "train.logprob_chunk_tokens": [(str(v), r(x, logprob_chunk=v))
                                       for v in _halvings(x.logits_chunk_tokens, MIN_LOGPROB_CHUNK)],
        "train.max_tokens_per_micro_batch": [
            (str(k * x.seq_len), r(x, micro_tokens=k * x.seq_len))
            for k in _halvings(x.micro_batch_tokens // x.seq_len, 1)],
        "train.chunk_size": [(str(v), r(x, rollout_chunk=v)) for v in _halvings(x.rollout_chunk, MIN_ROLLOUT_CHUNK)],
        "train.gradient_checkpointing": [] if x.gradient_checkpointing else [("true", r(x, gradient_checkpointing=True))],
        "train.teacher_offload": [] if x.teacher_offload else [("true", r(x, teacher_offload=True))],
        "train.zero_stage": [(str(s), r(x, zero_stage=s)) for s in range(x.zero_stage + 1, 4)],
    }
    if x.backend == "vllm":
        lo = min_vllm_util(x)
        utils = [round(u / 20, 2) for u in range(math.floor(20 * x.util - 1e-9), math.ceil(20 * lo) - 1, -1)]
        out["train.vllm.gpu_memory_utilization"] = [(f"{u:g}", r(x, vllm_util=u)) for u in utils if u >= lo]
        out["train.vllm.mode"] = [] if x.vllm_mode == "colocate" else [("colocate", r(x, vllm_mode="colocate"))]
    return {k: v for k, v in out.items() if v}


def need_bytes(x: PlanInputs, phase: str) -> float:
    return next(p.bytes for p in phases(x) if p.name == phase)


def _fits(x: PlanInputs, phase: str) -> bool:
    return need_bytes(x, phase) <= x.budget_gib * GIB


def _current(x: PlanInputs, knob: str) -> str:
    return {"train.max_live_rows": str(x.live), "train.logprob_chunk_tokens": str(x.logits_chunk_tokens),
            "train.max_tokens_per_micro_batch": str(x.micro_tokens), "train.chunk_size": str(x.rollout_chunk),
            "train.gradient_checkpointing": "false", "train.teacher_offload": "false",
            "train.zero_stage": str(x.zero_stage), "train.vllm.gpu_memory_utilization": f"{x.util:g}",
            "train.vllm.mode": x.vllm_mode}[knob]


def _apply(x: PlanInputs, knob: str, like: PlanInputs) -> PlanInputs:
    """``x`` with ``knob``'s input taken from ``like``."""
    field = {"train.max_live_rows": "live_rows", "train.logprob_chunk_tokens": "logprob_chunk",
             "train.max_tokens_per_micro_batch": "micro_tokens", "train.chunk_size": "rollout_chunk",
             "train.gradient_checkpointing": "gradient_checkpointing", "train.teacher_offload": "teacher_offload",
             "train.zero_stage": "zero_stage", "train.vllm.gpu_memory_utilization": "vllm_util",
             "train.vllm.mode": "vllm_mode"}[knob]
    return dataclasses.replace(x, **{field: getattr(like, field)})


def single_knob_fixes(x: PlanInputs, phase: str) -> list[tuple[str, str, float]]:
    """(knob, mildest value that fits, GiB then) for every knob that alone makes ``phase`` fit."""
    out = []
    for knob, steps in knob_steps(x).items():
        for value, y in steps:
            if _fits(y, phase):
                out.append((knob, value, need_bytes(y, phase) / GIB))
                break
    return out


def all_at_best(x: PlanInputs) -> PlanInputs:
    for knob, steps in knob_steps(x).items():
        x = _apply(x, knob, steps[-1][1])
    return x


def _together(x: PlanInputs, phase: str) -> list[str]:
    """Greedy: apply the knob (at its best) that saves most until the phase fits."""
    chosen, steps = [], knob_steps(x)
    while not _fits(x, phase) and steps:
        knob = min(steps, key=lambda k: need_bytes(_apply(x, k, steps[k][-1][1]), phase))
        chosen.append(f"{knob}: {steps[knob][-1][0]}")
        x = _apply(x, knob, steps.pop(knob)[-1][1])
    return chosen


def structural_options(x: PlanInputs, phase: str) -> list[str]:
    """What fits when no knob does (x has every knob at its best value)."""
    out = []
    for name, gib in sorted(GPU_MODELS.items(), key=lambda kv: kv[1]):
        if gib > x.budget_gib:
            y = all_at_best(dataclasses.replace(x, budget_gib=gib))
            if need_bytes(y, phase) <= (1 - MARGINAL) * gib * GIB:  # not a marginal fit again
                out.append(f"a larger GPU: resources.train.gpu_model: {name} ({gib:.1f} GiB; this phase "
                           f"then needs {need_bytes(y, phase) / GIB:.1f} GiB at the knobs' best values)")
                break
    p = next(p for p in phases(x) if p.name == phase)
    teacher = sum(t.bytes for t in p.terms if t.name.startswith("teacher"))
    rest = p.bytes - teacher
    if teacher and rest <= x.budget_gib * GIB:
        out.append(f"the teacher on its own GPUs or served remotely: the student side needs {rest / GIB:.1f} GiB "
                   f"(not implemented in pgopd as of 2026-12-05)")
    for k in (2, 4, 8):
        if teacher and rest + teacher / k <= x.budget_gib * GIB:
            out.append(f"tensor parallelism for the teacher over {k} GPUs: {(rest + teacher / k) / GIB:.1f} GiB "
                       f"(not implemented in pgopd as of 2026-12-05)")
            break
    return out or ["none of these fits: a smaller teacher or student"]


def _largest(best: PlanInputs, phase: str) -> str:
    p = next(p for p in phases(best) if p.name == phase)
    big = sorted(p.terms, key=lambda t: -t.bytes)[:4]
    return "largest: " + ", ".join(f"{t.name} {t.gib:.1f}" for t in big) + " GiB"


def _minimum(best: PlanInputs, phase: str) -> str:
    return (f"with every knob at its best value it still needs {need_bytes(best, phase) / GIB:.1f} GiB of "
            f"{best.budget_gib:.1f} ({_largest(best, phase)})")


def teacher_dominates(x: PlanInputs) -> bool:
    """The teacher's weights alone take more than half of the GPU."""
    return x.teacher_dtype_bytes * x.teacher.params > x.budget_gib * GIB / 2


def advice(x: PlanInputs, phase: str) -> str:
    """The sentence after "phase P needs N GiB": which knobs fit, or the minimum and structure.
    When only the knobs together fit, and that fit is marginal (headroom under
    :data:`MARGINAL` of the GPU) or the teacher's weights alone exceed half of the GPU, the
    minimum and the structural options follow too."""
    fixes = single_knob_fixes(x, phase)
    if fixes:
        return "any one of these fits: " + "; ".join(
            f"{k}: {v} (now {_current(x, k)}; {gib:.1f} GiB)" for k, v, gib in fixes)
    best = all_at_best(x)
    if _fits(best, phase):
        need = need_bytes(best, phase)
        msg = ("no single knob fits; together: " + ", ".join(_together(x, phase))
               + f" ({need / GIB:.1f} GiB with every knob at its best value)")
        headroom = x.budget_gib * GIB - need
        marginal = headroom < MARGINAL * x.budget_gib * GIB
        if marginal or teacher_dominates(x):
            why = (f"a marginal fit, {headroom / GIB:.1f} GiB to spare" if marginal
                   else f"the teacher's weights alone take {x.teacher_dtype_bytes * x.teacher.params / GIB:.1f} "
                        f"of {x.budget_gib:.1f} GiB")
            msg += (f"; {why}: the minimum is {need / GIB:.1f} GiB ({_largest(best, phase)})"
                    + "; structural options: " + "; ".join(structural_options(best, phase)))
        return msg
    return ("no knob fits: " + _minimum(best, phase) + "; structural options: "
            + "; ".join(structural_options(best, phase)))
