"""The memory plan against the committed measurements of bench/memory.py (bf16, ZeRO-2 and
ZeRO-3, two processes on CPU): every phase within 20%, except the deviations listed below with
their measured band; and every plan term matters: doubling or halving any one of them moves
some measured phase out of its band (halving: except :data:`HALVING_UNSEEN`).  The plan is
recomputed from today's pgopd.memplan (the JSON's own plan numbers are not used), so a change
to a term is judged against measurement; the update's plan is its largest moment."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pgopd.memterms import peak_bytes

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
# (stage, case, phase) -> the measured band of measured / plan; none since 2026-12-05
KNOWN: dict = {}


def _ratios(scale: dict | None = None) -> dict:
    """(stage, case, phase) -> measured / plan, the plan's terms scaled by ``scale``."""
    scale = scale or {}
    out = {}
    for row in BENCH["rows"]:
        plan = B.predicted(row["case"], row["zero_stage"], moments=True)
        for phase, terms in plan.items():
            if phase == "state":
                continue
            # the update: the largest of its moments (pgopd.memterms.Phase), each term scaled
            p = peak_bytes((v * scale.get(k, 1), ms) for k, (v, ms) in terms.items())
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
    assert all(len(r["ranks"]) == BENCH["cases"][r["case"]].get("world", 2) for r in BENCH["rows"])
    phases = {k[2] for k in _ratios()}
    assert phases == {"state", "update", "step", "sync", "scoring"}


def test_plan_within_20_percent_of_measured_per_phase():
    assert _out_of_band(_ratios()) == []


def _terms() -> set:
    names = set()
    for row in BENCH["rows"]:
        for phase, terms in B.predicted(row["case"], row["zero_stage"]).items():
            names |= {k for k, v in terms.items() if v and not k.startswith(B.CPU_ONLY)}
    return names


#: terms whose halving no case catches.  ZeRO-2's bucket (2 B per element) is only ever reduced
#: together with its copy + fp32 cast (6 B per element of its fill) and beside the gradient
#: partition, so halving it moves no moment by the 1/6 the 20% band needs; on CPU only its
#: written pages count besides.  (The head's gradient sum and the gathered parameters, unseen
#: before 2026-12-05, are caught by the cases head4 and deep.)
HALVING_UNSEEN = {"ZeRO-2 reduce bucket"}


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_doubling_or_halving_any_term_breaks_the_agreement(factor):
    names = _terms()
    assert {"activations (one micro-batch)", "log-prob logits (fwd+bwd)", "LM-head gradient",
            "ZeRO-2 reduce copy + fp32 cast", "ZeRO-3 reduce-scatter", "ZeRO-3 gathered parameters",
            "one layer's backward",
            "teacher GQA K/V expanded", "teacher KV growth (torch.cat)", "weight clones for vLLM",
            "ZeRO-3 reduce bucket", "optimizer states"} <= names
    missed = [n for n in sorted(names) if not _out_of_band(_ratios({n: factor}))]
    assert missed == ([] if factor > 1 else sorted(HALVING_UNSEEN)), f"x{factor} goes unnoticed for: {missed}"
