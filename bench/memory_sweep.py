"""Peak memory of the update (``pgopd.update.apply_update``) on CPU, against the memory plan.

Real-shape Qwen3-architecture models with random weights: vocabulary 151,936, head_dim 128,
GQA (4 query / 2 KV heads), 2 layers, a narrow hidden size; fp32, DeepSpeed ZeRO-0 on CPU,
the paper's loss (topk_recipe, k = 16).  Every measurement is a fresh subprocess:

    rss0   VmRSS after the imports, before the model exists (the process's own baseline);
    warm   one update on a single short sequence (creates the AdamW states);
    reset  the peak (``echo 5 > /proc/self/clear_refs`` resets VmHWM);
    peak   VmHWM over one ``apply_update`` of N sequences under the micro-batch budget.

``measured = peak - rss0`` is compared with the plan's prediction for the same shapes
(``pgopd.memplan``, dtype_bytes 4: weights + gradients + Adam states + activations of one
micro-batch + one log-prob chunk fwd+bwd).  glibc is told to mmap every block >= 64 KiB
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS instead of staying cached.

Two sweeps: (a) the number of sequences at a fixed micro-batch budget (memory must stay flat:
max/min <= 1.15); (b) the micro-batch budget at a fixed number of sequences (memory grows
roughly linearly).  Writes bench/memory_sweep.json; ``make bench-memory``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 ** 2

# the bench models: real vocabulary / head size / GQA, 2 narrow layers (tied, as Qwen3-1.7B)
SHAPE = dict(vocab_size=151_936, hidden_size=128, intermediate_size=1024, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
             model_type="qwen3")
# long prompts, short responses: every token runs through the layers (activations), only the
# 16 trained ones through the 151,936-wide LM head (which dominates the CPU time)
PROMPT, RESPONSE, K = 112, 16, 16     # tokens per sequence = 128
CHUNK = 64                            # train.logprob_chunk_tokens: every micro-batch fills one
SWEEP_SEQS = dict(budget=512, n=(8, 16, 32, 64))
SWEEP_BUDGET = dict(n=32, budget=(512, 1024, 2048, 4096))


def _status(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _fake_rollout(n: int, prompt: int, response: int, k: int, vocab: int, seed: int):
    """A RolloutResult of ``n`` kept candidates of ``response`` tokens, with teacher log-probs
    and the student's top-k ids (what the rollout hands the update)."""
    import torch

    from pgopd.rollout.loop import RolloutResult
    from pgopd.rollout.types import Candidate

    g = torch.Generator().manual_seed(seed)
    cands, prompts, s_topk, t_topk = [], [], [], []
    for i in range(n):
        toks = torch.randint(2, vocab, (response,), generator=g)
        c = Candidate(cid=i, group=i // 4, tokens=toks.tolist(),
                      student_logp=(-torch.rand(response, generator=g) * 5).tolist(),
                      teacher_logp=(-torch.rand(response, generator=g) * 5).tolist(),
                      overlap=[0.5] * response, weights=[1.0] * response, finished=True)
        cands.append(c)
        prompts.append(torch.randint(2, vocab, (prompt,), generator=g).tolist())
        s_topk.append(torch.randint(2, vocab, (response, k), generator=g))
        t_topk.append(-torch.rand((response, k), generator=g) * 5)
    return RolloutResult(cands=cands, prompts=prompts, student_topk_ids=s_topk, teacher_logp_topk=t_topk)


def child(spec: dict) -> dict:
    """One measurement (runs in its own process)."""
    import ctypes

    import torch

    torch.set_num_threads(1)
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pgopd.update import apply_update

    libc = ctypes.CDLL("libc.so.6")
    rss0 = _status("VmRSS")
    cfg = parse_dataclass(TrainConfig, {
        "loss": "topk_recipe", "loss_top_k": K, "max_tokens_per_micro_batch": spec["budget"],
        "logprob_chunk_tokens": spec["chunk"], "gradient_checkpointing": spec["gc"], "lr": 1e-4}, "train")
    torch.manual_seed(0)
    shape = {k: v for k, v in SHAPE.items() if k != "model_type"}
    model = Qwen3ForCausalLM(Qwen3Config(**shape, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1))
    if spec["gc"]:
        model.gradient_checkpointing_enable()
    engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg), model_parameters=list(model.parameters()))
    apply_update(engine, _fake_rollout(1, 4, 4, K, SHAPE["vocab_size"], 1), cfg, 0)  # AdamW states exist now
    res = _fake_rollout(spec["n"], PROMPT, RESPONSE, K, SHAPE["vocab_size"], 2)
    libc.malloc_trim(0)
    rss1 = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    m = apply_update(engine, res, cfg, 0)
    dt = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"rss0": rss0, "rss_before_update": rss1, "peak": peak, "t_update_s": round(dt, 2),
            "n_micro_batches": m["n_micro_batches"], "finite": m["finite"]}


def predicted(spec: dict) -> dict:
    """The plan's update phase for the bench shapes (fp32, ZeRO-0, one rank, no teacher)."""
    from pgopd import memplan as M

    s = M.Shape.from_config(SHAPE)
    x = M.PlanInputs(student=s, teacher=s, rows=spec["n"], prompt_tokens=PROMPT, max_new_tokens=RESPONSE,
                     budget_gib=1e6, micro_tokens=spec["budget"], logprob_chunk=spec["chunk"], zero_stage=0,
                     dtype_bytes=4, teacher_dtype_bytes=4, gradient_checkpointing=spec["gc"],
                     teacher_offload=True)
    ph = {p.name: p for p in M.phases(x)}
    return {"update": ph["update"].bytes, "step": ph["step"].bytes,
            "terms": {t.name: t.bytes for t in ph["update"].terms}}


def measure(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "MALLOC_TRIM_THRESHOLD_": "0", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, timeout=900)
    if r.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{r.stderr[-3000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pred = predicted(spec)
    got["measured"] = got["peak"] - got["rss0"]
    got["predicted"] = max(pred["update"], pred["step"])
    got["ratio"] = round(got["measured"] / got["predicted"], 3)
    got["predicted_terms_mib"] = {k: round(v / MIB, 1) for k, v in pred["terms"].items()}
    return {**spec, **got}


def run(sweeps: dict, jobs: int = 2) -> dict:
    """Every measurement of ``sweeps`` (``jobs`` processes at a time: VmHWM is per process)."""
    from concurrent.futures import ThreadPoolExecutor

    out = {"shape": SHAPE, "prompt_tokens": PROMPT, "response_tokens": RESPONSE, "loss_top_k": K,
           "dtype": "float32", "zero_stage": 0, "threads_per_measurement": 1}
    flat = [(name, spec) for name, specs in sweeps.items() for spec in specs]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda ns: measure(ns[1]), flat))
    for (name, _), row in zip(flat, results):
        out.setdefault(name, []).append(row)
        print(f"{name:>13}: n={row['n']:3d} budget={row['budget']:5d} gc={row['gc']!s:5} "
              f"measured {row['measured'] / MIB:7.1f} MiB  plan {row['predicted'] / MIB:7.1f} MiB  "
              f"ratio {row['ratio']:.2f}  (update {row['t_update_s']} s)", flush=True)
    a = [r["measured"] for r in out.get("sequences", [])]
    if a:
        out["sequences_max_over_min"] = round(max(a) / min(a), 3)
    b = out.get("budget", [])
    if len(b) > 1:  # least-squares line through (budget, bytes): measured and planned slope, R^2
        out["budget_fit"] = {key: _fit([r["budget"] for r in b], [r[key] for r in b])
                             for key in ("measured", "predicted")}
    return out


def _fit(xs: list, ys: list) -> dict:
    """Slope (bytes per micro-batch token) and R^2 of the least-squares line."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    ss = sum((y - my) ** 2 for y in ys)
    res = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return {"bytes_per_token": round(slope), "r2": round(1 - res / ss, 3) if ss else 1.0, "points": n}


def sweeps(quick: bool = False) -> dict:
    """The full grid, or (quick: the test suite) two sizes of each sweep and no checkpointing."""
    seqs = SWEEP_SEQS["n"][:2] if quick else SWEEP_SEQS["n"]
    # quick: budgets 4x apart, so the activations' growth stands clear of the run-to-run noise
    budgets = (SWEEP_BUDGET["budget"][0], SWEEP_BUDGET["budget"][2]) if quick else SWEEP_BUDGET["budget"]
    n_b = SWEEP_BUDGET["n"]
    out = {"sequences": [dict(n=n, budget=SWEEP_SEQS["budget"], chunk=CHUNK, gc=False) for n in seqs],
           "budget": [dict(n=n_b, budget=b, chunk=CHUNK, gc=False) for b in budgets]}
    if not quick:
        out["checkpointing"] = [dict(n=n_b, budget=budgets[-1], chunk=CHUNK, gc=True)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "memory_sweep.json")
    ap.add_argument("--quick", action="store_true", help="two points per sweep (the test suite)")
    ap.add_argument("--jobs", type=int, default=2, help="measurements at a time (default 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        from pgopd.teardown import end_process_group

        print(json.dumps(child(json.loads(a.child))), flush=True)
        end_process_group()  # else the child may abort at exit ("terminate called ...")
        return 0
    t0 = time.perf_counter()
    out = run(sweeps(a.quick), a.jobs)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out} ({out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
