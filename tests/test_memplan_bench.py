"""The memory plan against the committed measurements of bench/memory.py (bf16, ZeRO-2 and
ZeRO-3, two processes on CPU): every phase within 20%, except the deviations listed below with
their measured band; and every plan term matters: doubling or halving any one of them moves
some measured phase out of its band.  The plan is recomputed from today's pgopd.memplan (the
JSON's own plan numbers are not used), so a change to a term is judged against measurement."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = json.loads((ROOT / "bench/memory.json").read_text())
_spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench/memory.py")
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)

TOL = (0.8, 1.2)
#: differences of resident state are allocated bytes, not the timing of a peak: within 10%
TOL_STATE = (0.9, 1.1)
#: below this the process's own small allocations (Python objects, the heap arena that
#: MALLOC_MMAP_THRESHOLD_ does not cover) dominate: a phase may differ from the plan by it
FLOOR = 3 * 2 ** 20   # (2.0-2.5 MiB seen in the cases whose scoring is a few MiB)
# Measured, not understood well enough to model (docs/memory.md, "Known deviations"):
KNOWN = {
    # the plan sums what backward holds at its start (every kept activation, the LM-head chunk
    # and gradient) with what it holds at ZeRO's reduces later on (the fp32 gradient partition,
    # the reduce copies of a bucket or of a parameter larger than it): conservative where the
    # start dominates; the head case's 33.5M-element tied embedding is reduced alone at the end
    (2, "act", "update"): (0.75, 0.8),
    (2, "head", "update"): (0.6, 0.7),
    # wide layers, 1,024 checkpointed tokens: the recompute and the 8 B/element reduce of one
    # 4.2M-element MLP matrix are not alive together
    (3, "recompute", "update"): (0.7, 0.8),
    # the teacher's logits over a 131,072-wide vocabulary, 16 positions: ~7 MiB beyond 8 B/logit
    **{(s, "head", "scoring"): (1.4, 1.5) for s in (2, 3)},
    # on CPU only touched pages count: the 20M-element bucket is flushed before it is full
    # (the next 4.2M-element gradient does not fit at 17M), so ~3M elements (11 MiB) are never written
    (3, "bucket-layer", "state"): (0.85, 0.9),
}


def _ratios(scale: dict | None = None) -> dict:
    """(stage, case, phase) -> measured / plan, the plan's terms scaled by ``scale``."""
    scale = scale or {}
    out = {}
    for row in BENCH["rows"]:
        plan = B.predicted(row["case"], row["zero_stage"])
        for phase, terms in plan.items():
            if phase == "state":
                continue
            p = sum(v * scale.get(k, 1) for k, v in terms.items())
            m = max(r[phase] for r in row["ranks"])
            out[(row["zero_stage"], row["case"], phase)] = (m, p)
    for d in BENCH["state_delta"]:  # the student state, as a difference of two models
        big, small = (B.predicted(c, d["zero_stage"])["state"] for c in d["cases"])
        p = sum((v - small.get(k, 0)) * scale.get(k, 1) for k, v in big.items())
        out[(d["zero_stage"], "-".join(d["cases"]), "state")] = (d["measured"], p)
    return out


def _out_of_band(ratios: dict) -> list:
    bad = []
    for key, (m, p) in ratios.items():
        if not p:  # nothing planned (ZeRO-2 sync): nothing may be measured either (< 1 MiB)
            if m > FLOOR:
                bad.append((key, m, p))
            continue
        lo, hi = KNOWN.get(key, TOL_STATE if key[2] == "state" else TOL)
        if not lo <= m / p <= hi and not (key not in KNOWN and abs(m - p) <= FLOOR):
            bad.append((key, round(m / p, 3)))
    return bad


def test_bench_covers_bf16_zero2_zero3_two_ranks_every_phase():
    assert BENCH["dtype"] == "bfloat16" and BENCH["world"] == 2
    assert {r["zero_stage"] for r in BENCH["rows"]} == {2, 3}
    assert all(len(r["ranks"]) == 2 for r in BENCH["rows"])
    phases = {k[2] for k in _ratios()}
    assert phases == {"state", "update", "step", "sync", "scoring"}


def test_plan_within_20_percent_of_measured_per_phase():
    assert _out_of_band(_ratios()) == []


def _terms() -> set:
    names = set()
    for row in BENCH["rows"]:
        for phase, terms in B.predicted(row["case"], row["zero_stage"]).items():
            names |= {k for k, v in terms.items() if v}
    return names


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_doubling_or_halving_any_term_breaks_the_agreement(factor):
    names = _terms()
    assert {"activations (one micro-batch)", "log-prob logits (fwd+bwd)", "LM-head gradient (sum + chunk)",
            "teacher GQA K/V expanded", "teacher KV growth (torch.cat)", "weight clones for vLLM",
            "ZeRO-3 reduce bucket", "optimizer states"} <= names
    missed = [n for n in sorted(names) if not _out_of_band(_ratios({n: factor}))]
    assert missed == [], f"x{factor} goes unnoticed for: {missed}"
