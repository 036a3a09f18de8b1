"""The memory plan against a hand computation from the published Qwen3 shapes (each term typed
here from the model cards' numbers, not from pgopd.memplan), and its refusal advice: it names
only knobs that really make the phase fit, else the minimum and structural options."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pgopd import config as C
from pgopd import memadvice as A
from pgopd import memplan as M

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30
V = 151_936
P_17B, P_8B, P_32B = 1_720_574_976, 8_190_735_360, 32_762_123_264   # published parameter counts
LAYER_17B = 2048 * (2048 + 2 * 1024) + 2048 * 2048 + 3 * 2048 * 6144 + 2 * 2048 + 2 * 128  # 50,336,000
# bytes one 1.7B layer saves per token in bf16: 2 RMSNorms (4 + 2 + 2 B x 2048), q/k norms (4 + 2 B
# x (2048 + 1024)), roped q, k, v and attention output, the MLP's gate, up, act and product
ACT_17B = 8 * 2 * 2048 + 6 * (2048 + 1024) + 2 * (2 * 2048 + 2 * 1024) + 8 * 6144
KV_17B, KV_8B, KV_32B = 114_688, 147_456, 262_144                    # bytes per token, bf16
H100 = 81_559 / 1024                                                  # GiB an H100 80 GB exposes


def paper_raw() -> dict:
    return yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def _plan(raw: dict, pair: str) -> M.Plan:
    (p,) = [p for p in M.plan_config(C.parse(raw)) if p.pair == pair]
    return p


def _hand(W: int, stage: int, rows_live: int, seq: int, micro: int, util: float) -> dict:
    """Per phase, per term, bytes of Qwen3-8B -> 1.7B (bf16, checkpointed, teacher offloaded,
    vLLM colocated, logprob chunk 1024, rollout chunk 256, 3 GiB reserve)."""
    shard = lambda s: W if stage >= s else 1  # noqa: E731
    state = {"student weights": 2 * P_17B / shard(3), "optimizer states": 12 * P_17B / shard(1),
             "runtime reserve": 3 * GIB,  # ZeRO-2 grads exist from backward to step only
             # fp32 gradients: train.bf16_precision_keys sets data_types.grad_accum_dtype fp32
             "student gradients": 4 * P_17B / shard(2) if stage != 2 else 0}
    grads = {"student gradients": 4 * P_17B / shard(2)}
    if stage == 3:  # communication_data_type fp32: the bucket is fp32
        state["ZeRO-3 reduce bucket"] = 4 * 5e8
    kv = rows_live * seq * KV_8B
    vllm = util * H100 * GIB
    kept = {}  # the rollout loop releases the teacher KV before the update (pgopd/rollout/loop.py)
    # the update: resident terms, then the largest of four moments of backward (memterms._update_terms)
    update = {**state, **grads, **kept, "vLLM asleep (buffers, graphs)": 1 * GIB}
    act = micro * (28 * 2 * 2048 + 8 * 2048)  # layer inputs + final norm (checkpointed)
    # the tied head's gradient: the running sum while a chunk's logits are worked on (16 B per
    # logit in bf16); sum + a contribution + their new sum while it is added (the chunk's logits
    # gradient in bf16 then); the sum after
    start = {"activations (one micro-batch)": act, "LM-head gradient": 2 * V * 2048,
             "log-prob logits (fwd+bwd)": 1024 * V * 16}
    head = {"activations (one micro-batch)": act, "LM-head gradient": 3 * 2 * V * 2048,
            "log-prob logits (fwd+bwd)": 1024 * V * 2}
    layers = {"activations (one micro-batch)": act, "LM-head gradient": 2 * V * 2048,
              # recompute + the SwiGLU backward's two T x i gradients beyond its freed product
              "one layer's backward": micro * (ACT_17B + 2 * 6144 * 2),
              "one layer's full gradient": 2 * LAYER_17B}
    last = {"LM-head gradient": 2 * V * 2048}
    # the 5e8-element bucket in backward order: 9 layers (453M) + the 10th's post/input norms,
    # down, up, gate, q/k norms, o, v, k (46.94M - 0.79M left): its fill at a reduce is
    # 5e8 - 786,176; after the 28th layer the remaining 411M are reduced when the 311M-element
    # embedding arrives, which the epilogue then reduces alone (it fits the bucket)
    fill, emb = 5e8 - 786_176, V * 2048
    if stage == 2:
        for m in (layers, last):
            m["ZeRO-2 reduce bucket"] = 2 * 5e8
        layers["ZeRO-2 reduce copy + fp32 cast"] = (2 + 4) * fill  # bf16 flatten + fp32 cast
        last["ZeRO-2 reduce copy + fp32 cast"] = (2 + 4) * emb
    else:  # DeepSpeed's stage3_max_live_parameters: 1e9 elements stay gathered; at the first
        # reduce the 9 layers reduced are released (the prefetch keeps up to 1e9 gathered: the
        # remaining 1.26B non-persistent elements exceed it), at the last the embedding alone
        start["ZeRO-3 gathered parameters"] = head["ZeRO-3 gathered parameters"] = 2 * 1e9
        layers["ZeRO-3 gathered parameters"] = 2 * min(1e9, P_17B - 9 * (LAYER_17B - 2 * 2048 - 2 * 128) - 28 * 4352
                                                     - 2048)
        last["ZeRO-3 gathered parameters"] = 2 * emb
        layers["ZeRO-3 reduce-scatter"] = 4 * fill   # fp32 flat buffer of one bucket's fill
        last["ZeRO-3 reduce-scatter"] = 4 * emb
    peak = max(sum(m.values()) for m in (start, head, layers, last))
    by_moment = {n: max(m.get(n, 0) for m in (start, head, layers, last)) for n in {**start, **head, **layers, **last}}
    resident = sum(update.values())
    update = {**update, **by_moment, "= peak": peak,
              "= moments": {m: resident + sum(v.values()) for m, v in
                            (("backward start", start), ("head gradient", head), ("layer reduces", layers),
                             ("last reduce", last))}}
    if stage == 2:  # the fp32 partition is stepped on as is; the norm's fp64 copy of the
        # embedding's slice (311M elements > the partition, P / 8) beats AdamW's 4 B x P / 8
        step = {"fp64 gradient-norm copy": 8 * P_17B / W}
    else:
        step = {"fp32 gradient partition": 4 * P_17B / shard(1), "AdamW temporary": 4 * P_17B / shard(1)}
    sync = {**state, **kept, "vLLM reservation": vllm}
    if stage == 3:
        sync.update({"ZeRO-3 gathered weights (all)": 2 * P_17B, "weight clones for vLLM": 2 * P_17B})
    # scoring: a teacher layer runs (KV growth, GQA expansion, MLP), then its LM head (logits)
    t_layer = {"teacher KV growth (torch.cat)": kv / 36,
               "teacher GQA K/V expanded": 2 * rows_live * seq * 32 * 128 * 2,
               "teacher layer transient": 3 * rows_live * 1024 * 12288 * 2}  # the prompt's prefill
    # 1,024 positions a chunk: fp32 logits + logsumexp's fp32 temporary (8 B; the previous
    # chunk's are freed first, pgopd.logprobs.teacher_pieces)
    t_head = {"teacher logits": 1024 * V * 8}
    return {
        "rollout": {**state, "teacher weights": 2 * P_8B, "vLLM reservation": vllm, "teacher KV (live rows)": kv},
        "scoring": {**state, "teacher weights": 2 * P_8B, "vLLM reservation": vllm, "teacher KV (live rows)": kv,
                    **t_layer, **t_head, "= peak": max(sum(t_layer.values()), sum(t_head.values()))},
        "update": update,
        "step": {**state, **grads, **kept, "vLLM asleep (buffers, graphs)": 1 * GIB, **step},
        "sync": sync,
    }


def _agree(plan: M.Plan, hand: dict) -> None:
    assert [p.name for p in plan.phases] == ["rollout", "scoring", "update", "step", "sync"]
    for p in plan.phases:
        got = {t.name: t.bytes for t in p.terms}
        want = {k: v for k, v in hand[p.name].items() if not k.startswith("= ")}
        for m, b in hand[p.name].get("= moments", {}).items():   # the update: each moment
            assert p.moments()[m] == pytest.approx(b, rel=0.05), (m, p.moments()[m] / GIB, b / GIB)
        assert set(got) == set(want), (p.name, set(got) ^ set(want))
        for name, b in want.items():
            assert got[name] == pytest.approx(b, rel=0.05), (p.name, name, got[name] / GIB, b / GIB)
        moments = {"= peak"} & set(hand[p.name])  # the update: resident + its largest moment
        total = (sum(hand[p.name][k] for k in hand[p.name] if k in ("student weights", "optimizer states",
                                                                  "runtime reserve", "student gradients",
                                                                  "ZeRO-3 reduce bucket",
                                                                  "vLLM asleep (buffers, graphs)",
                                                                  "teacher weights", "vLLM reservation",
                                                                  "teacher KV (live rows)"))
                 + hand[p.name]["= peak"]) if moments else sum(want.values())
        assert p.bytes == pytest.approx(total, rel=0.05)


def test_paper_yaml_agrees_with_the_hand_computation():
    plan = _plan(paper_raw(), "qwen3_8b_to_1_7b")
    assert plan.inputs.budget_gib == pytest.approx(79.65, abs=0.01)  # "H100-80", not 80 GiB
    _agree(plan, _hand(W=8, stage=2, rows_live=16, seq=8192, micro=16384, util=0.35))
    assert plan.fits


def test_8b_to_1_7b_at_16k_tokens_on_4_gpus_zero3_agrees_with_the_hand_computation():
    raw = paper_raw()
    raw["train"].update(zero_stage=3, max_new_tokens=16384)
    raw["resources"]["train"]["gpu"] = 4
    plan = _plan(raw, "qwen3_8b_to_1_7b")
    # micro-batch budget 16,384 < one 17,408-token sequence: one sequence per micro-batch
    _agree(plan, _hand(W=4, stage=3, rows_live=16, seq=1024 + 16384, micro=17408, util=0.35))
    # the numbers: GQA expansion 4.25 GiB, sync gathers + clones 3.2 + 3.2 GiB
    scoring, sync = plan.phase("scoring"), plan.phase("sync")
    assert [t.gib for t in scoring.terms if "GQA" in t.name] == [pytest.approx(4.25, abs=0.01)]
    assert sum(t.gib for t in sync.terms if "weights (all)" in t.name or "clones" in t.name) == pytest.approx(6.41, abs=0.01)


def test_params_of_the_built_in_shapes_are_the_published_ones():
    for ref, p in (("Qwen/Qwen3-0.6B", 596_049_920), ("Qwen/Qwen3-1.7B", P_17B), ("Qwen/Qwen3-8B", P_8B),
                   ("Qwen/Qwen3-14B", 14_768_307_200), ("Qwen/Qwen3-32B", P_32B)):
        assert M.Shape.from_config(M.KNOWN_CONFIGS[ref]).params == p, ref
    assert M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-32B"]).kv_bytes_per_token(2) == KV_32B
    assert M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-1.7B"]).kv_bytes_per_token(2) == KV_17B


# ----------------------------------------------------------------------------- advice
_KNOB = re.compile(r"(train\.[a-z_.]+): ([\w.]+) \(now")


def _named_knobs(msg: str) -> list[tuple[str, str]]:
    return _KNOB.findall(msg)


def _set(raw: dict, knob: str, value: str) -> dict:
    """raw with ``train.a.b: value`` set, the value parsed as YAML would."""
    node = raw
    *path, last = knob.split(".")
    for k in path:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)
    return raw


def _over(raw: dict) -> list[str]:
    return [line for p in M.plan_config(C.parse(raw)) for line in p.problems()]


def test_every_knob_named_really_makes_its_phase_fit():
    raw = paper_raw()
    raw["train"].update(max_live_rows=0, logprob_chunk_tokens=8192)
    lines = _over(raw)
    assert lines
    for line in lines:
        pair, phase = re.match(r"pair (\S+): phase (\S+) needs", line).groups()
        knobs = _named_knobs(line)
        assert knobs, line
        for knob, value in knobs:  # applied through the config, each alone, the phase fits
            fixed = _plan(_set(paper_raw() | {"train": dict(raw["train"])}, knob, value), pair)
            assert fixed.phase(phase).bytes <= fixed.budget_bytes, (knob, value)


def test_24_gib_names_no_knob_and_gives_the_minimum_and_structure():
    raw = paper_raw()
    raw["resources"]["train"]["gpu_mem_gb"] = 24
    lines = [x for x in _over(raw) if x.startswith("pair qwen3_8b_to_1_7b:")]  # (4B: knobs can fit it)
    assert lines and all(not _named_knobs(x) for x in lines), lines
    # teacher 8B weights + student state (ZeRO-2 over 8) + reserve already exceed 24 GiB
    floor = (2 * P_8B + 2 * P_17B + 14 * P_17B / 8) / GIB + 3
    assert floor > 24
    rollout = next(x for x in lines if "phase rollout" in x)
    least = float(re.search(r"at its best value it still needs ([\d.]+) GiB", rollout).group(1))
    assert least >= floor
    assert "gpu_model: A100-40" in rollout and "teacher on its own GPUs" in rollout


def test_32b_teacher_on_80gb_names_no_impossible_knob():
    raw = paper_raw()
    raw["pairs"] = {"qwen3_32b_to_1_7b": {"teacher": "Qwen/Qwen3-32B", "student": "Qwen/Qwen3-1.7B"}}
    lines = _over(raw)
    assert lines
    for line in lines:
        phase = re.match(r"pair \S+: phase (\S+) needs", line).group(1)
        knobs = _named_knobs(line) or re.findall(r"(train\.[a-z_.]+): ([\w.]+)[,( ]", line.split("together: ")[-1])
        one_each = "any one of these fits" in line
        train = dict(raw["train"])
        for knob, value in knobs:  # each alone, or all together when the message says "together"
            cfg = _set(paper_raw() | {"pairs": raw["pairs"], "train": dict(raw["train"] if one_each else train)},
                       knob, value)
            train = cfg["train"] if not one_each else train
            if one_each:
                fixed = _plan(cfg, "qwen3_32b_to_1_7b")
                assert fixed.phase(phase).bytes <= fixed.budget_bytes, (line, knob, value)
        if not one_each:
            fixed = _plan(paper_raw() | {"pairs": raw["pairs"], "train": train}, "qwen3_32b_to_1_7b")
            assert fixed.phase(phase).bytes <= fixed.budget_bytes or "structural options" in line, line
    # 61 GiB of teacher weights + the vLLM reservation: no single knob fits scoring on 79.6 GiB
    scoring = next(x for x in lines if "phase scoring" in x)
    assert "any one of these fits" not in scoring, scoring
    assert 2 * P_32B / GIB > 61


def _raw_32b(gpu_mem_gb=None):
    raw = paper_raw()
    raw["pairs"] = {"qwen3_32b_to_1_7b": {"teacher": "Qwen/Qwen3-32B", "student": "Qwen/Qwen3-1.7B"}}
    if gpu_mem_gb is not None:
        raw["resources"]["train"]["gpu_mem_gb"] = gpu_mem_gb
    return raw


def _says_minimum_and_structure(line: str, teacher_gib: float) -> float:
    least = float(re.search(r"(?:still needs|the minimum is) ([\d.]+) GiB", line).group(1))
    assert least > teacher_gib, line   # the minimum holds at least the teacher's weights
    assert "structural options: a larger GPU: resources.train.gpu_model: " in line, line
    assert "the teacher on its own GPUs or served remotely" in line, line
    assert "tensor parallelism for the teacher" in line, line
    return least


def test_32b_teacher_on_80gb_says_the_minimum_and_the_structural_options():
    lines = _over(_raw_32b())   # H100-80: 79.6 GiB
    assert any("phase scoring" in x for x in lines), lines
    for line in lines:
        least = _says_minimum_and_structure(line, 2 * P_32B / GIB)
        if "no knob fits" in line:   # then it names no knob as a fix
            assert not _named_knobs(line) and "together" not in line, line
            assert least > 79.6, line
        # the larger GPU it names fits this phase with headroom (not another marginal fit)
        name = re.search(r"gpu_model: (\S+) \(", line).group(1)
        gib = float(re.search(r"this phase then needs ([\d.]+) GiB", line).group(1))
        assert gib <= (1 - A.MARGINAL) * M.GPU_MODELS[name], line


@pytest.mark.parametrize("gpu_mem_gb, why", [(82, "a marginal fit"), (90, "the teacher's weights alone take 61.0")])
def test_a_fit_by_every_knob_together_that_is_marginal_or_teacher_bound_also_gives_minimum_and_structure(
        gpu_mem_gb, why):
    lines = _over(_raw_32b(gpu_mem_gb))
    assert lines
    for line in lines:
        assert "no single knob fits; together: " in line and why in line, line
        least = _says_minimum_and_structure(line, 2 * P_32B / GIB)
        assert least <= gpu_mem_gb, line
        together = re.findall(r"(train\.[a-z_.]+): ([\w.]+)[,( ]", line.split("together: ")[1].split(" (")[0] + " ")
        assert together, line
        train = dict(paper_raw()["train"])
        raw = _raw_32b(gpu_mem_gb) | {"train": train}
        for knob, value in together:   # the knobs it names, together, really fit the phase
            raw = _set(raw, knob, value)
        phase = re.match(r"pair \S+: phase (\S+) needs", line).group(1)
        fixed = _plan(raw, "qwen3_32b_to_1_7b")
        assert fixed.phase(phase).bytes <= fixed.budget_bytes, line


def test_gpu_model_choices_and_help_follow_the_table():
    f = C.TrainResources.__dataclass_fields__["gpu_model"]
    assert set(f.metadata["choices"]) == set(M.GPU_MODELS)
    for name, gib in M.GPU_MODELS.items():  # the help (and so the schema) quotes the table
        assert f"{name} {gib:.1f}" in f.metadata["help"]
    raw = paper_raw()
    raw["resources"]["train"].update(gpu_model="H200-141")
    assert _plan(raw, "qwen3_8b_to_1_7b").inputs.budget_gib == pytest.approx(140.4, abs=0.05)
    raw["resources"]["train"]["gpu_mem_gb"] = 100  # given: it wins over the model
    assert _plan(raw, "qwen3_8b_to_1_7b").inputs.budget_gib == 100
