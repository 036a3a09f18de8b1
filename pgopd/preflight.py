"""``pgopd preflight --configfile FILE``: what a cluster user runs once on one GPU node before
submitting the config's training jobs.

With dummy weights of the config's model shapes (the first pair, or ``--pair``), each run in
its own process (``pgopd.preflight_worker``: nothing of one run is left when the next
starts), it trains

* 1 step of every method of ``train.methods`` at a short response length
  (``--short-tokens``, default 64): the methods' code paths on the GPU;
* 1 OPD step at the config's full ``train.max_new_tokens``: the memory peak;

each with ``--prompts`` prompts (default: one row group, ``max_live_rows / n_samples``), one
process, the ``hf`` rollout backend (the one every machine has), and everything else as the
config trains.  It prints and writes (``--out``, default ``$OUT`` or ``preflight_out``) one
small ``preflight.json``: per run and phase the peak allocated and reserved GiB next to the
memory plan's figure for the same run (``pgopd.memplan``, matched by phase name), phase times,
decode tokens/s, update tokens/s, and the GPU-hours of the config's full run at those rates.
Model directories, data and run folders go to a temporary directory that is removed.

The run's length is checked before anything starts (``--budget-s``, default 360): an estimate
from the shapes, lengths and the rates in :data:`RATES` (assumed for one H100 with the hf
backend, eager; corrected by the measured rates in the JSON); ``--dry`` prints that budget and
exits.  ``--tiny``: tiny shapes and lengths, fp32, on CPU (the test suite's variant).  A run
at the config's shapes without a CUDA device is refused ("no CUDA device").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import config as C

#: assumed rates of an estimate before anything has been measured (one H100, hf backend,
#: eager, bf16): seconds to start a process and build the models + DeepSpeed engine; seconds
#: per decode step of the student (a token for every live row, launch-bound at these batch
#: sizes); seconds per teacher scoring forward of one chunk; update throughput (tokens/s).
RATES = {"gpu": {"startup_s": 30.0, "decode_step_s": 0.025, "score_chunk_s": 0.05, "update_tok_s": 20000.0},
         "cpu-tiny": {"startup_s": 12.0, "decode_step_s": 0.004, "score_chunk_s": 0.01, "update_tok_s": 2000.0}}
TINY_MODEL = dict(model_type="qwen3", vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
                  max_position_embeddings=512)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    method: str
    max_new_tokens: int
    prompts: int


def plan_runs(t: C.TrainConfig, short_tokens: int, prompts: int, methods: list[str] | None = None) -> list[Run]:
    """One short step per method, then one OPD step at the full ``max_new_tokens``."""
    short = min(short_tokens, t.max_new_tokens)
    runs = [Run(f"{m}_short", m, short, prompts) for m in (methods or t.methods)]
    return runs + [Run("opd_full", "opd", t.max_new_tokens, prompts)]


def run_train_config(t: C.TrainConfig, run: Run, tiny: bool) -> C.TrainConfig:
    """The config's train block for one preflight run: 1 step, this run's length and prompts,
    the hf backend, no cache-dependent options (no teacher cache here), no checkpoints."""
    over = dict(steps=1, prompts_per_step=run.prompts, max_new_tokens=run.max_new_tokens, backend="hf",
                save_every=0, select_solved=False, cold_start_steps=0, warmup_steps=0, methods=[run.method])
    if tiny:
        over.update(bf16=False, chunk_size=8, overlap_k=4, loss_top_k=4, logprob_chunk_tokens=16,
                    max_tokens_per_micro_batch=64, max_live_rows=4, zero_stage=min(t.zero_stage, 2))
    # the policies' lengths must fit the run's: scale PG-OPD's prefix / Prune-OPD's windows down
    cap = max(1, run.max_new_tokens // 2)
    over["pgopd"] = dataclasses.replace(t.pgopd, prefix_len=min(t.pgopd.prefix_len, cap),
                                        probe_start=min(t.pgopd.probe_start, cap - 1 if cap > 1 else 0),
                                        probe_end=min(t.pgopd.probe_end, cap))
    over["pruneopd"] = dataclasses.replace(t.pruneopd, window=min(t.pruneopd.window, max(1, cap // 2)),
                                           initial_window=min(t.pruneopd.initial_window, cap),
                                           expand_by=min(t.pruneopd.expand_by, max(1, cap // 2)))
    return C.parse_dataclass(C.TrainConfig, C.to_dict(dataclasses.replace(t, **over)), "train")


def estimate_s(t: C.TrainConfig, run: Run, rates: dict) -> float:
    """Seconds one run takes by ``rates``: start-up, decode steps (every row group decodes
    ``max_new_tokens`` steps: random weights never emit EOS), teacher chunks, the update."""
    rows = run.prompts * t.n_samples
    groups = -(-rows // (t.max_live_rows or rows))
    decode = groups * run.max_new_tokens * rates["decode_step_s"]
    score = groups * -(-run.max_new_tokens // t.chunk_size) * rates["score_chunk_s"]
    update = rows * (run.max_new_tokens + 512) / rates["update_tok_s"]
    return rates["startup_s"] + decode + score + update


def budget(t: C.TrainConfig, runs: list[Run], rates: dict) -> dict:
    per = [{"run": r.name, "steps": 1, "rows": r.prompts * t.n_samples, "max_new_tokens": r.max_new_tokens,
            "tokens": r.prompts * t.n_samples * r.max_new_tokens, "est_s": round(estimate_s(t, r, rates), 1)}
           for r in runs]
    return {"runs": per, "steps": len(per), "tokens": sum(p["tokens"] for p in per),
            "est_s": round(sum(p["est_s"] for p in per), 1), "rates_assumed": rates}


def budget_text(plan: dict) -> str:
    lines = [f"{'run':<16}{'steps':>6}{'rows':>6}{'max_new_tokens':>16}{'tokens':>10}{'est. s':>8}"]
    lines += [f"{r['run']:<16}{r['steps']:>6}{r['rows']:>6}{r['max_new_tokens']:>16}{r['tokens']:>10}{r['est_s']:>8.0f}"
              for r in plan["runs"]]
    lines.append(f"preflight budget: {plan['steps']} steps, {plan['tokens']} tokens, est. {plan['est_s']:.0f} s "
                 f"(assumed rates: {json.dumps(plan['rates_assumed'])})")
    return "\n".join(lines)


def plan_gib(cfg: C.Config, pair: str, t_run: C.TrainConfig) -> dict:
    """The memory plan's GiB per phase for one run: one process, its lengths and rows; the
    phases are whatever ``pgopd.memplan`` plans (matched to the measured ones by name)."""
    from . import memplan

    res = dataclasses.replace(cfg.resources.train, gpu=min(cfg.resources.train.gpu, 1), nodes=1)
    one = dataclasses.replace(cfg, train=t_run, pairs={pair: cfg.pairs[pair]},
                              resources=dataclasses.replace(cfg.resources, train=res))
    (p,) = memplan.plan_config(one, reserve_gib=0.0)
    return {ph.name: round(ph.gib, 3) for ph in p.phases}


# ----------------------------------------------------------------------------- set-up
def write_model_dir(path: Path, config: dict, seed: int) -> Path:
    """A dummy-weights model directory: config.json of the shape, the toy char tokenizer,
    and the marker ``pgopd.preflight_worker`` builds random weights for."""
    from transformers import AutoConfig

    from .models.tokenizer import build_char_tokenizer
    from .preflight_worker import MARKER

    tok = build_char_tokenizer()
    path.mkdir(parents=True, exist_ok=True)
    conf = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")}
    cfg = AutoConfig.for_model(config.get("model_type", "qwen3"), **conf, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=None)
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    (path / MARKER).write_text(json.dumps({"seed": seed}))
    return path


def model_config(ref: str, where: str, cfg: C.Config) -> dict:
    """The config.json of a pair's model (local dir, HF cache or the memory plan's table)."""
    from . import memplan

    path = memplan.find_config_json(ref)
    if path is not None:
        return json.loads(Path(path).read_text())
    if ref in memplan.KNOWN_CONFIGS:
        return dict(memplan.KNOWN_CONFIGS[ref])
    memplan.model_shape(ref, where, cfg)  # raises, naming what to download
    raise C.ConfigError(f"{where}: no config.json for {ref!r}")


def write_data(path: Path, n: int, prompt_tokens: int) -> Path:
    """``n`` arithmetic prompts padded to ~``prompt_tokens`` characters (= char-tokenizer tokens)."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        pad = " ".join(f"{rng.randint(1, 99)}+{rng.randint(1, 99)}" for _ in range(prompt_tokens // 5 + 1))
        rows.append({"id": f"p{i}", "prompt": (pad + f" {a}+{b}")[-prompt_tokens:], "answer": str(a + b)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _worker(spec: dict, work: Path, timeout: float) -> dict:
    """One run in a fresh process (its engine, models and CUDA context die with it)."""
    spec_path, out_path = work / f"{spec['name']}.spec.json", work / f"{spec['name']}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PGOPD_LOG": os.environ.get("PGOPD_LOG", "WARNING")}
    r = subprocess.run([sys.executable, "-m", "pgopd.preflight_worker", str(spec_path), str(out_path)],
                       env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"preflight run {spec['name']} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------- results
def rates(rec: dict) -> dict:
    """Measured decode and update throughput of one run (tokens/s)."""
    s = rec["seconds"]
    return {"decode_tok_s": round(rec["tokens_generated"] / s["rollout"], 1) if s.get("rollout") else None,
            "update_tok_s": round(rec["tokens_trained"] / s["update"], 1) if s.get("update") else None}


def full_run_gpu_hours(cfg: C.Config, full: dict) -> float | None:
    """GPU-hours of every training job of ``cfg`` at the rates of the full-length run: per
    rank and step, its row groups' rollout + scoring time and the update scaled by rows."""
    from .memplan import _world

    t, world = cfg.train, _world(cfg)
    s = full["seconds"]
    if not s.get("rollout"):
        return None
    rows_rank = -(-t.prompts_per_step // world) * t.n_samples
    groups = -(-rows_rank // full["rows"])
    step_s = groups * (s["rollout"] + s.get("scoring", 0.0)) + s.get("update", 0.0) * rows_rank / full["rows"]
    jobs = len(t.methods) * len(cfg.seeds) * len({(p.teacher, p.student) for p in cfg.pairs.values()})
    return round(t.steps * step_s * world * jobs / 3600, 1)


def table(report: dict) -> str:
    lines = [f"{'run':<16}{'phase':<10}{'plan GiB':>10}{'alloc GiB':>11}{'reserved':>10}{'seconds':>9}"]
    for rec in report["runs"]:
        names = list(rec["plan_gib"]) + [p for p in rec["seconds"] if p not in rec["plan_gib"]]
        for ph in names:
            cells = [rec["plan_gib"].get(ph), rec["peak_allocated_gib"].get(ph), rec["peak_reserved_gib"].get(ph),
                     rec["seconds"].get(ph)]
            f = [f"{c:.2f}" if isinstance(c, (int, float)) else "-" for c in cells]
            lines.append(f"{rec['name']:<16}{ph:<10}{f[0]:>10}{f[1]:>11}{f[2]:>10}{f[3]:>9}")
        lines.append(f"{'':<16}decode {rec['decode_tok_s']} tok/s, update {rec['update_tok_s']} tok/s, "
                     f"wall {rec['wall_s']} s")
    lines.append(f"full run ({report['jobs']} jobs): ~{report['gpu_hours_full_run']} GPU-hours at these rates "
                 "(hf decoding; the vllm backend decodes faster)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", required=True, type=Path, help="the workflow config (YAML)")
    p.add_argument("--pair", default=None, help="pair of the config to check (default: the first)")
    p.add_argument("--out", type=Path, default=None, help="where preflight.json goes (default $OUT or preflight_out)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and lengths, fp32, CPU or GPU (the test-suite variant)")
    p.add_argument("--dry", action="store_true", help="print the planned budget (steps, tokens, est. time) and exit")
    p.add_argument("--methods", default=None, help="comma-separated methods of the short steps (default train.methods)")
    p.add_argument("--short-tokens", type=int, default=64, help="response length of the short steps (default 64)")
    p.add_argument("--prompts", type=int, default=0,
                   help="prompts per step (default: one row group, max_live_rows / n_samples, at least 1)")
    p.add_argument("--budget-s", type=float, default=360.0, help="refuse to start when the estimate is longer (default 360)")


def preflight(args) -> int:
    """``pgopd preflight``: see the module docstring.  Returns the exit code."""
    cfg = C.load(args.configfile)
    pair = args.pair or next(iter(cfg.pairs))
    if pair not in cfg.pairs:
        raise C.ConfigError(f"--pair {pair!r}: not a pair of {args.configfile} ({', '.join(cfg.pairs)})")
    t = cfg.train
    if args.tiny:
        t = dataclasses.replace(t, n_samples=min(t.n_samples, 2), max_new_tokens=min(t.max_new_tokens, 24),
                                max_live_rows=4, chunk_size=8)
    prompts = args.prompts or max(1, (t.max_live_rows or t.n_samples) // t.n_samples)
    methods = args.methods.split(",") if args.methods else None
    runs = plan_runs(t, min(args.short_tokens, 16) if args.tiny else args.short_tokens, prompts, methods)
    plan = budget(t, runs, RATES["cpu-tiny" if args.tiny else "gpu"])
    print(budget_text(plan))
    if args.dry:
        return 0
    if plan["est_s"] > args.budget_s:
        raise C.ConfigError(f"preflight: estimated {plan['est_s']:.0f} s is over --budget-s {args.budget_s:g}; "
                            "lower --prompts or --short-tokens (or raise --budget-s)")
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("pgopd preflight: no CUDA device; the config's shapes need a GPU (use --tiny for the CPU "
              "variant, --dry for the budget)", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or "preflight_out")
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": str(args.configfile), "pair": pair, "tiny": args.tiny, "budget": plan,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "gpu_mem_gib": (round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
                              if torch.cuda.is_available() else None), "torch": torch.__version__, "runs": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pgopd-preflight-") as tmp:
        work = Path(tmp)
        shapes = ((TINY_MODEL, {**TINY_MODEL, "num_hidden_layers": 1}) if args.tiny else
                  (model_config(cfg.pairs[pair].teacher, f"pairs.{pair}.teacher", cfg),
                   model_config(cfg.pairs[pair].student, f"pairs.{pair}.student", cfg)))
        teacher, student = write_model_dir(work / "teacher", shapes[0], 1), write_model_dir(work / "student", shapes[1], 0)
        plan_cfg = dataclasses.replace(cfg, pairs={pair: C.PairConfig(teacher=str(teacher), student=str(student))})
        prompt_tokens = 12 if args.tiny else cfg.resources.train.plan_prompt_tokens
        data = write_data(work / "data" / "train.jsonl", 4 * prompts, prompt_tokens)
        (work / "cache").mkdir()
        for r in runs:
            t_run = run_train_config(t, r, args.tiny)
            spec = {"name": r.name, "method": r.method, "train": C.to_dict(t_run), "teacher": str(teacher),
                    "student": str(student), "train_data": str(data), "work": str(work)}
            left = args.budget_s * 2 - (time.perf_counter() - t0)  # the estimate may be off 2x
            rec = _worker(spec, work, timeout=max(left, 60.0))
            rec.update(plan_gib=plan_gib(plan_cfg, pair, t_run), **rates(rec))
            report["runs"].append(rec)
            print(f"preflight {r.name}: {rec['wall_s']} s", flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    t_cfg = cfg.train
    report["jobs"] = len(t_cfg.methods) * len(cfg.seeds) * len({(p.teacher, p.student) for p in cfg.pairs.values()})
    report["gpu_hours_full_run"] = full_run_gpu_hours(cfg, report["runs"][-1])
    (out / "preflight.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"preflight: wrote {out / 'preflight.json'} ({report['wall_s']} s)")
    return 0
