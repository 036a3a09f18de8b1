"""Per-phase peak memory of one OPD step on CPU, bf16, DeepSpeed ZeRO-2 and ZeRO-3 over two
processes (gloo), against the memory plan (``pgopd.memplan``): ``make bench-memory``.

Each case runs two fresh processes (ranks 0 and 1; a case's ``world``: more).  In each, VmHWM is reset
(``/proc/self/clear_refs`` = 5) before a phase and read after it; a phase's *transient* is the
peak minus the RSS just before it, and is compared with the plan's phase-specific terms:

    state    RSS after the engine exists and one warm step ran, minus RSS after the imports
             (plan: student weights + gradients + optimizer states [+ ZeRO-3 reduce bucket]);
    update   ``pgopd.update.accumulate`` of one micro-batch (activations, LM-head chunk, the
             head's gradient, ZeRO-2 reduce bucket / ZeRO-3 gathered parameters); the plan is
             the largest of its moments (backward start, head gradient, layer reduces, last
             reduce), measured after one unmeasured update at the same shapes (ZeRO-3: two);
    step     ``engine.step()`` (ZeRO-3: fp32 gradient partition + AdamW temporary; ZeRO-2:
             the larger of the AdamW temporary and the fp64 copy of the gradient norm);
    sync     ``train._full_named_params`` (ZeRO-3: all weights gathered and cloned);
    scoring  a bf16 teacher's ``TeacherScorer`` over the live rows to full length (its KV,
             the KV growth, GQA's expanded K/V, one layer's MLP; or one chunk of logits),
             after one unmeasured scoring at the same shapes.

glibc is told to mmap every block >= 64 KiB so freed tensors leave the RSS.  On CPU only
touched pages count, so the ZeRO reduce bucket is set below the parameter count (it fills),
and torch's AdamW runs its foreach path (what CUDA uses).  Not measurable here: the vLLM
reservation / sleep residue, the CUDA context and NCCL (plan terms kept out of the comparison);
what only the CPU run holds (gloo's buffers, unwritten bucket pages) is added as "CPU only" terms
(:func:`cpu_only_terms`).  Eleven cases per stage and one on four ranks, ZeRO-2 only
(:data:`CASES`), each make one or two plan terms a large share of a phase.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 ** 2

STUDENT = dict(vocab_size=32_768, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
               num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
# a teacher whose GQA expansion and KV growth are a large share: 8 query heads per KV head, 2 layers
TEACHER = dict(vocab_size=32_768, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=8, num_key_value_heads=1, head_dim=64, tie_word_embeddings=False)
K = 16                        # train.loss_top_k
REDUCE_BUCKET = 2_000_000     # elements, < every bench model's parameter count (so it fills)
# Every case: the student's update / step / sync (rows x (prompt + response) tokens, logprob
# chunk, checkpointing) and a teacher scoring ``live`` rows of s_prompt + s_response tokens in
# chunks of score_chunk (its LM head s_chunk positions at a time).  Each case makes one or two
# plan terms the larger share of a phase, so that a wrong term shows (tests/test_memplan_bench.py).
DEFAULT = dict(student={}, teacher={}, bucket=REDUCE_BUCKET, rows=4, prompt=64, response=64, chunk=64, gc=True,
               live=4, s_prompt=64, s_response=64, score_chunk=64, s_chunk=64)
CASES = {name: {**DEFAULT, **c} for name, c in {
    # activations of 2,048 tokens without checkpointing
    "act": dict(rows=8, prompt=192, response=64, chunk=128, gc=False, live=8, s_prompt=192, score_chunk=64,
                s_chunk=128),
    # one LM-head chunk of 1,024 positions (fwd+bwd); the teacher's logits likewise
    "logits": dict(response=448, chunk=1024, s_response=448, score_chunk=256, s_chunk=1024),
    # a wide vocabulary, a short micro-batch: the head's gradient (and ZeRO-3's gathered head)
    "head": dict(student=dict(vocab_size=131_072, num_hidden_layers=2), rows=2, prompt=24, response=8, chunk=16,
                 live=2, s_prompt=24, s_response=16, score_chunk=16, s_chunk=16),
    # wide layers, a small vocabulary, 32 tokens: ZeRO-3's gathered layer, ZeRO-2's gradient partition
    "layer": dict(student=dict(vocab_size=4096, intermediate_size=16_384, num_hidden_layers=2), rows=1, prompt=24,
                  response=8, chunk=16, s_chunk=16),
    # the same with a reduce bucket of 20M elements (ZeRO-2: in the update; ZeRO-3: held)
    "bucket": dict(student=dict(vocab_size=4096, intermediate_size=16_384, num_hidden_layers=2), rows=1,
                   prompt=24, response=8, chunk=16, s_chunk=16, bucket=20_000_000),
    # wide layers, 1,024 checkpointed tokens: one layer's recompute in backward
    "recompute": dict(student=dict(vocab_size=4096, intermediate_size=16_384, num_hidden_layers=2), rows=2,
                      prompt=448, response=64, chunk=16, s_chunk=16),
    # a wide tied vocabulary, two LM-head chunks of 72 and 56 positions: the start of backward
    # binds (the head's gradient, running sum + one chunk's, and the chunk's logits) by 25%
    "tiedhead": dict(student=dict(vocab_size=131_072, num_hidden_layers=2), rows=2, prompt=8, response=64,
                     chunk=72, live=2, s_prompt=24, s_response=16, score_chunk=16, s_chunk=16),
    # the head case on four ranks, ZeRO-2 only: the last reduce binds with the head's gradient
    # sum half of it (on two ranks the gradient partition and the reduce's fp32 copy are each as
    # large as the sum, so no case there can show that sum halved)
    "head4": dict(student=dict(vocab_size=131_072, num_hidden_layers=2), rows=1, prompt=8, response=8, chunk=16,
                  live=2, s_prompt=24, s_response=16, score_chunk=16, s_chunk=16, world=4, stages=[2]),
    # 24 narrow layers, 32 tokens: ZeRO-3's gathered parameters are most of the layers' reduces
    "deep": dict(student=dict(vocab_size=4096, num_hidden_layers=24), rows=1, prompt=24, response=8, chunk=16,
                 live=2, s_prompt=24, s_response=16, score_chunk=16, s_chunk=16),
    # a one-layer MHA teacher at 2,048 tokens: its KV and the KV growth of torch.cat
    "kv": dict(student=dict(vocab_size=4096), teacher=dict(num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=256), live=16, s_prompt=64, s_response=1984, s_chunk=16),
    # a one-layer GQA teacher (8 query heads per KV head): the expanded K and V
    "gqa": dict(student=dict(vocab_size=4096), teacher=dict(num_hidden_layers=1, num_attention_heads=8,
                num_key_value_heads=1, intermediate_size=256), live=16, s_prompt=64, s_response=1984, s_chunk=16),
    # a one-layer teacher with a wide MLP and 256-token prompts: its prefill's MLP
    "mlp": dict(student=dict(vocab_size=4096), teacher=dict(num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1, intermediate_size=8192), live=8, s_prompt=256, s_response=64, s_chunk=16),
}.items()}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


class Meter:
    """Transient of a phase: VmHWM over it minus VmRSS before it (after malloc_trim)."""

    def __init__(self):
        import ctypes

        self.libc = ctypes.CDLL("libc.so.6")

    def rss(self) -> int:
        self.libc.malloc_trim(0)
        return _status("VmRSS")

    def __call__(self, fn):
        base = self.rss()
        Path("/proc/self/clear_refs").write_text("5")
        out = fn()
        return _status("VmHWM") - base, out


def _rollout(n: int, prompt: int, response: int, vocab: int, seed: int):
    import torch

    from pgopd.rollout.loop import RolloutResult
    from pgopd.rollout.types import Candidate

    g = torch.Generator().manual_seed(seed)
    cands, prompts, s_topk, t_topk = [], [], [], []
    for i in range(n):
        cands.append(Candidate(cid=i, group=i, tokens=torch.randint(2, vocab, (response,), generator=g).tolist(),
                               student_logp=[-1.0] * response, teacher_logp=[-1.0] * response,
                               overlap=[0.5] * response, weights=[1.0] * response, finished=True))
        prompts.append(torch.randint(2, vocab, (prompt,), generator=g).tolist())
        s_topk.append(torch.randint(2, vocab, (response, K), generator=g))
        t_topk.append(-torch.rand((response, K), generator=g) * 5)
    return RolloutResult(cands=cands, prompts=prompts, student_topk_ids=s_topk, teacher_logp_topk=t_topk)


def child(spec: dict) -> dict:
    """One rank of one case (its own process)."""
    import torch

    torch.set_num_threads(1)
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import _full_named_params, ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pgopd.rollout.scorer import TeacherScorer
    from pgopd.update import Dist, accumulate

    c, meter, out = spec["spec"], Meter(), {}
    rss0 = meter.rss()
    cfg = parse_dataclass(TrainConfig, {
        "loss": "topk_recipe", "loss_top_k": K, "max_tokens_per_micro_batch": 0, "bf16": True,
        "logprob_chunk_tokens": c["chunk"], "gradient_checkpointing": c["gc"], "lr": 1e-4,
        "zero_stage": spec["stage"]}, "train")
    ds = ds_config(cfg)
    ds["zero_optimization"]["reduce_bucket_size"] = c["bucket"]
    ds["optimizer"]["params"]["foreach"] = True   # the CUDA default path of torch's AdamW
    torch.manual_seed(0)
    shape = {**STUDENT, **c["student"]}
    model = Qwen3ForCausalLM(Qwen3Config(**shape, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1))
    if c["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, *_ = deepspeed.initialize(model=model, config=ds, model_parameters=list(model.parameters()))
    del model
    dist = Dist()
    engine.module.train()
    accumulate(engine, _rollout(1, 4, 4, shape["vocab_size"], 1), cfg, 0, dist)
    engine.step()  # optimizer states exist now
    out["state"] = meter.rss() - rss0
    # warm-up at the measured shapes (its own tokens), not measured: (1) on CPU the first call of
    # a new shape leaves RSS behind outside torch's allocator (oneDNN's bf16 matmul primitives:
    # ~0.6 MiB per new matmul shape, 2-3 MiB per new SDPA shape; measured 2026-12-05,
    # /proc/self/status around each op), ~14 MiB in the 8-layer cases, a CPU artefact a GPU does
    # not have; (2) ZeRO-3 runs on its recorded parameter trace from the second forward of the
    # same module order on (partitioned_param_coordinator.py reset_step: INVALID -> RECORD ->
    # COMPLETE; a differing order invalidates it): only with a COMPLETE trace are parameters
    # prefetched and kept within stage3_max_reuse_distance, as in steady training, so ZeRO-3
    # warms twice (the tiny step above recorded another order)
    for i in range(2 if spec["stage"] == 3 else 1):
        accumulate(engine, _rollout(c["rows"], c["prompt"], c["response"], shape["vocab_size"], 10 + 2 * i + dist.rank),
                   cfg, 0, dist)
        engine.step()
    res = _rollout(c["rows"], c["prompt"], c["response"], shape["vocab_size"], 2 + dist.rank)
    out["update"], acc = meter(lambda: accumulate(engine, res, cfg, 0, dist))
    out["n_micro_batches"] = acc["n_micro_batches"]
    out["step"], _ = meter(engine.step)
    out["sync"], _ = meter(lambda: len(_full_named_params(engine, spec["stage"])))
    # the teacher: plain bf16 module (no ZeRO), scoring the live rows chunk by chunk to full length
    tshape = {**TEACHER, **c["teacher"], "vocab_size": shape["vocab_size"]}
    teacher = Qwen3ForCausalLM(Qwen3Config(**tshape, max_position_embeddings=4096, pad_token_id=0,
                                           eos_token_id=1)).to(torch.bfloat16).eval()
    scorer = TeacherScorer(teacher, 0, topk=K, chunk_tokens=c["s_chunk"])
    g = torch.Generator().manual_seed(3)

    def score(live: int, prompt: int, n_chunks: int):
        scorer.start([torch.randint(2, shape["vocab_size"], (prompt,), generator=g).tolist() for _ in range(live)])
        for _ in range(n_chunks):
            toks = torch.randint(2, shape["vocab_size"], (live, c["score_chunk"]), generator=g)
            scorer.score(toks, torch.ones_like(toks, dtype=torch.bool))
        scorer.kv = None  # drop the cache (the plan's "kept" term is not what this measures)

    score(1, 4, 1)  # first calls (kernels, thread pools) outside the measurement
    score(c["live"], c["s_prompt"], c["s_response"] // c["score_chunk"])  # the same shapes, unmeasured (above)
    out["scoring"], _ = meter(lambda: score(c["live"], c["s_prompt"], c["s_response"] // c["score_chunk"]))
    return out


#: gloo's own buffers on CPU (measured 2026-12-05 with two processes, torch 2.13, VmHWM around
#: one collective of a tensor of N bytes, N = 2-32 MiB, fp32 and bf16): ``all_reduce`` and
#: ``reduce`` min(N / 2, 2 MiB); ``reduce_scatter_tensor`` a flat copy of its input plus the same;
#: ``all_gather_into_tensor`` a copy of its output.  NCCL on a GPU takes nothing from torch's
#: allocator (its buffers are the plan's runtime reserve), so these are terms of this CPU bench,
#: added to the plan's update here and never perturbed by tests/test_memplan_bench.py
CPU_ONLY = "CPU only: "
GLOO_SEGMENT = 2 * MIB


def cpu_only_terms(x, stage: int) -> dict:
    """Terms of this CPU bench that a GPU does not have, by phase (``x``: PlanInputs): gloo's
    scratch during ZeRO's reduces of the update, and the reduce bucket's pages that are never
    written (on CPU only touched pages count: ``torch.empty`` of the bucket, filled up to the
    largest fill of :func:`pgopd.memterms.reduce_fills`; a GPU allocates it whole)."""
    from pgopd.memterms import COMM_BYTES, LAST, LAYERS, Term, reduce_at, reduce_fills, zero2_reduce_elements

    out = {"update": [], "state": []}
    for at in (LAYERS, LAST):
        if stage == 2:   # all_reduce of the fp32 cast of a bucket (or of a parameter larger than it)
            n = COMM_BYTES * zero2_reduce_elements(x, at)
            out["update"].append(Term(f"{CPU_ONLY}gloo all-reduce scratch ({at})", min(n / 2, GLOO_SEGMENT),
                                      moments=(at,)))
        elif stage == 3:  # reduce_scatter_tensor of the fp32 flat buffer (a bucket's fill, or a larger parameter)
            fill, big = reduce_at(x, at)
            n = COMM_BYTES * (big if big > x.reduce_bucket else fill)
            out["update"].append(Term(f"{CPU_ONLY}gloo reduce-scatter copy + scratch ({at})",
                                      n + min(n / 2, GLOO_SEGMENT), moments=(at,)))
    if stage == 3:  # the forward's prefetch gathers up to stage3_prefetch_bucket_size (5e7) elements
        # in one all_gather_into_tensor, whose gloo copy (1x its output) is alive with the gathered
        # parameters; alive in the forward, counted at the start of backward (an upper bound)
        from pgopd.memterms import DS_PARAM_PERSISTENCE, START
        n = min(x.student.params - x.student.small_params(DS_PARAM_PERSISTENCE), 50_000_000)
        out["update"].append(Term(f"{CPU_ONLY}gloo all-gather copy (prefetch)", x.dtype_bytes * n, moments=(START,)))
    unwritten = x.reduce_bucket - reduce_fills(x.student, x.reduce_bucket)[2]
    if stage == 2:    # allocated at the first hook of each backward (setup_buckets), in bf16
        out["update"].append(Term(f"{CPU_ONLY}reduce bucket pages never written", -x.dtype_bytes * unwritten,
                                  moments=(LAYERS, LAST)))
    elif stage == 3:  # fp32, held from init
        out["state"].append(Term(f"{CPU_ONLY}reduce bucket pages never written", -COMM_BYTES * unwritten))
    return out


def predicted(case: str, stage: int, world: int = 2, moments: bool = False) -> dict:
    """The plan's phase-specific terms for a case, in bytes, by phase and term (``moments``:
    (bytes, the moments the term is alive in) instead; a phase's plan is
    ``pgopd.memterms.peak_bytes`` of those, the largest moment)."""
    import dataclasses

    from pgopd import memplan as M
    from pgopd.memterms import LAST, LAYERS

    c = CASES[case]
    world = c.get("world", world)
    s = M.Shape.from_config({**STUDENT, **c["student"], "model_type": "qwen3"})
    t = M.Shape.from_config({**TEACHER, **c["teacher"], "vocab_size": s.vocab, "model_type": "qwen3"})
    x = M.PlanInputs(student=s, teacher=t, rows=c["rows"], prompt_tokens=c["prompt"], max_new_tokens=c["response"],
                     budget_gib=1e6, world=world, rollout_chunk=c["score_chunk"], micro_tokens=0,
                     logprob_chunk=c["chunk"], live_rows=c["live"], zero_stage=stage, dtype_bytes=2,
                     teacher_dtype_bytes=2, gradient_checkpointing=c["gc"], teacher_offload=True,
                     backend="vllm", reduce_bucket=c["bucket"], teacher_kv_kept=False)
    # the teacher's own rows and lengths (the rollout's live rows at s_prompt + s_response)
    sx = dataclasses.replace(x, rows=c["live"], prompt_tokens=c["s_prompt"], logprob_chunk=c["s_chunk"],
                             max_new_tokens=c["s_response"] // c["score_chunk"] * c["score_chunk"])
    # ZeRO-2's gradient partition appears in the backward (a transient of the update here): one
    # micro-batch, so it is made at its first reduce (stage_1_and_2.py:1036) and is alive at the
    # reduces only (in training, from the second micro-batch on, it is alive throughout)
    grads = [dataclasses.replace(t, moments=(LAYERS, LAST)) for t in M.student_state_terms(x)
             if t.name == "student gradients"] if stage == 2 else []
    cpu = cpu_only_terms(x, stage)
    terms = {"state": [t for t in M.student_state_terms(x, training=False) if t.bytes] + cpu["state"],
             "update": M._update_terms(x) + grads + cpu["update"], "step": M._step_terms(x), "sync": M._sync_terms(x),
             "scoring": M._scoring_terms(sx)}
    return {ph: {t.name: ((t.bytes, t.moments) if moments else t.bytes) for t in ts} for ph, ts in terms.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(case: str, stage: int) -> dict:
    """Every rank of one case (two, or the case's ``world``); per phase the largest transient."""
    port = _free_port()
    procs = []
    world = CASES[case].get("world", 2)
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
               "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps({"case": case, "stage": stage, "spec": CASES[case]})],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ranks = []
    for p in procs:
        so, se = p.communicate(timeout=900)
        if p.returncode:
            raise RuntimeError(f"case {case} ZeRO-{stage} failed:\n{se[-3000:]}")
        ranks.append(json.loads(so.strip().splitlines()[-1]))
    return planned({"case": case, "zero_stage": stage, "ranks": ranks})


def planned(row: dict) -> dict:
    """``row`` (case, stage, every rank's measurements) with, per phase, the largest measurement
    of the ranks next to today's plan (its largest moment; the terms' bytes by name)."""
    from pgopd.memterms import peak_bytes

    row["phases"] = {}
    for ph, terms in predicted(row["case"], row["zero_stage"], moments=True).items():
        meas = max(r[ph] for r in row["ranks"])
        pl = peak_bytes(terms.values())
        row["phases"][ph] = {"measured": meas, "plan": pl, "ratio": round(meas / pl, 3) if pl else None,
                             "plan_terms": {k: b for k, (b, _) in terms.items()}}
    return row


def state_delta(big: dict, small: dict, stage: int) -> dict | None:
    """The student state of two cases' models, as a difference: the process's own growth
    (libraries loaded, allocator arenas: ~110-130 MiB here) cancels; plan terms likewise."""
    a, b = big["phases"]["state"], small["phases"]["state"]
    terms = {k: v - b["plan_terms"].get(k, 0) for k, v in a["plan_terms"].items()}
    meas, pl = a["measured"] - b["measured"], sum(terms.values())
    if not pl:
        return None
    return {"zero_stage": stage, "cases": [big["case"], small["case"]], "measured": meas, "plan": pl,
            "ratio": round(meas / pl, 3), "plan_terms": terms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "memory.json")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--replan", action="store_true",
                    help="measure nothing: recompute the plan columns of --out from today's pgopd.memterms")
    a = ap.parse_args(argv)
    if a.replan:
        out = json.loads(a.out.read_text())
        rows = {(r["case"], r["zero_stage"]): planned(r) for r in out["rows"]}
        out["state_delta"] = [state_delta(*(rows[(c, d["zero_stage"])] for c in d["cases"]), d["zero_stage"])
                              for d in out["state_delta"]]
        a.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"replanned {a.out}")
        return 0
    if a.child:
        from pgopd.teardown import end_process_group

        print(json.dumps(child(json.loads(a.child))), flush=True)
        end_process_group()  # else the child may abort at exit ("terminate called ...")
        return 0
    t0 = time.perf_counter()
    rows, deltas = [], []
    for stage in map(int, a.stages.split(",")):
        by_case = {}
        for case in a.cases.split(","):
            if stage not in CASES[case].get("stages", (2, 3)):
                continue
            row = by_case[case] = measure(case, stage)
            rows.append(row)
            for ph, v in row["phases"].items():
                print(f"ZeRO-{stage} {case:>6} {ph:>8}: measured {v['measured'] / MIB:8.1f} MiB  plan "
                      f"{v['plan'] / MIB:8.1f} MiB  ratio {v['ratio']}", flush=True)
        for big, small in (("head", "act"), ("bucket", "layer")):
            if {big, small} <= set(by_case) and (d := state_delta(by_case[big], by_case[small], stage)):
                deltas.append(d)
                print(f"ZeRO-{stage} state {big} - {small}: measured {d['measured'] / MIB:.1f} MiB  plan "
                      f"{d['plan'] / MIB:.1f} MiB  ratio {d['ratio']}", flush=True)
    out = {"student": STUDENT, "teacher": TEACHER, "cases": CASES,
           "dtype": "bfloat16", "world": 2, "threads_per_process": 1, "rows": rows,
           "state_delta": deltas,
           "wall_s": round(time.perf_counter() - t0, 1)}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out} ({out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
