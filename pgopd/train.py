"""The ``train`` stage: on-policy distillation through DeepSpeed, one method per run.

Per step (sampling, teacher scoring and the update are separate, with plain data between):
  1. rollout:  the student samples ``n_samples`` responses per prompt, chunk by chunk, the
               teacher scores every new token once, the method's policy allocates
               (``pgopd.rollout.loop``);
  2. update:   token-budget micro-batches of the kept tokens, gradients accumulated under the
               OPD loss, one ``engine.step()`` (``pgopd.update``; DeepSpeed: ZeRO stage,
               clipping, bf16 from config).
The same code runs on CPU here (DeepSpeed's CPU accelerator, gloo) and on GPUs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import inputcheck, runguard, stepstats
from .coldstart import cold_start
from .config import TrainConfig
from .checkpoint import RunState, _save_hf, _truncate_lines, _write_json_atomic, load_resume, save_resume
from .rollout.loop import RolloutResult, rollout_in_groups
from .update import Dist, apply_update

log = logging.getLogger("pgopd.train")


# ----------------------------------------------------------------------------- DeepSpeed
def init_distributed_env() -> None:
    """Single-process defaults for the launcher variables (else DeepSpeed tries MPI discovery)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The CPU shared-memory all-reduce kernel is a JIT build of ~50-90 s on first use
        # and only speeds up multi-process CPU all-reduce; gloo does the same job without it.
        import sys

        import deepspeed.comm  # noqa: F401  (loads the submodule patched below)

        # `deepspeed.comm.torch` as an attribute is the torch module (star import), so
        # patch the submodule through sys.modules
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def ds_config(cfg: TrainConfig) -> dict:
    out = {
        "train_micro_batch_size_per_gpu": 1,  # we feed whole batches ourselves
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        "optimizer": {"type": "AdamW", "params": {
            "lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
            "torch_adam": True}},  # torch's AdamW: no FusedAdam JIT build (environment.md)
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.bf16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if cfg.bf16:
        out.update(bf16_precision_keys(cfg.zero_stage))
    if cfg.warmup_steps:
        out["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": cfg.warmup_steps,
            "warmup_type": "linear"}}
    return out


def bf16_precision_keys(zero_stage: int) -> dict:
    """DeepSpeed 0.19.8 keys for bf16 weights with fp32 gradients: accumulation over a
    method-dependent number of micro-batches and the all-reduce / reduce-scatter in fp32
    (bf16's 8-bit mantissa loses small per-micro-batch terms), and the non-finite check
    before the optimizer step.  ``data_types.grad_accum_dtype`` only under ZeRO 1-3: at
    stage 0 DeepSpeed refuses bf16 with fp32 accumulation ("unsupported mix")."""
    out = {"communication_data_type": "fp32",
           "bf16": {"enabled": True, "check_grad_overflow": True}}
    if zero_stage >= 1:
        out["data_types"] = {"grad_accum_dtype": "fp32"}
    return out


# ----------------------------------------------------------------------------- batching
class PromptSampler:
    """Epoch-shuffled prompt order; ``position`` is all that is needed to resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.position = n, seed, 0

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            epoch, i = divmod(self.position, self.n)
            order = list(range(self.n))
            random.Random(self.seed * 100003 + epoch).shuffle(order)
            out.append(order[i])
            self.position += 1
        return out


# ----------------------------------------------------------------------------- the stage
def _candidate_log(step: int, res: RolloutResult, prefix_len: int, answers: list[str], tokenizer,
                   cid_offset: int = 0, group_offset: int = 0, extras=None, texts=None) -> list[dict]:
    """Per-candidate record: decisions, lengths, weights, teacher reward on prefix / suffix,
    final correctness where the rollout ran to its own end (feeds the falsification analysis):
    EOS, or the length limit -- graded as the evaluation grades a truncated response (no answer
    within the budget is wrong); a candidate the policy cut gets None.  ``texts``: the decoded
    responses, when the caller has them already."""
    from .grading import grade
    from .models.loading import response_text

    texts = texts if texts is not None else [response_text(tokenizer, c.tokens) for c in res.cands]
    out = []
    for c, text in zip(res.cands, texts):
        r = c.reward()
        pre, suf = r[:prefix_len], r[prefix_len:]
        rec = {"step": step, "cid": c.cid + cid_offset, "group": c.group + group_offset, "length": c.length,
               "finished": c.finished,
               "stopped": c.stopped, "keep": c.keep, "train_len": res.train_len(c),
               "reward_prefix": sum(pre) / len(pre) if pre else None,
               "reward_suffix": sum(suf) / len(suf) if suf else None,
               "overlap_mean": sum(c.overlap) / len(c.overlap) if c.overlap else None,
               "weight_min": min(c.weights) if c.weights else None,
               "weight_mean": sum(c.weights) / len(c.weights) if c.weights else None,
               "correct": (grade(text, answers[c.group])
                           if c.finished or c.info.get("stop_reason") == "length" else None),
               **(extras(c) if extras else {}), **c.info}
        out.append(rec)
    return out


class Stop(Exception):
    """SIGTERM arrived: a checkpoint was written; the job should exit and be rerun."""


class Diverged(RuntimeError):
    """More non-finite steps than ``train.max_bad_steps``."""


@dataclass
class _Run:
    """What the step loop's pieces share (built once by :func:`train`)."""

    cfg: TrainConfig
    method: str
    seed: int
    out_dir: Path
    records: list
    prompt_ids: list
    tok: object
    engine: object
    teacher_model: object
    scorer: object
    dist: Dist
    device: torch.device
    vllm_engine: object = None
    tb: object = None
    fingerprint: dict = None  # pgopd.runguard: stored with every checkpoint

    @property
    def per_rank(self) -> int:
        return self.cfg.prompts_per_step // self.dist.world

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl.tmp"

    @property
    def cands_path(self) -> Path:
        return self.out_dir / "candidates.jsonl.tmp"


def train(cfg: TrainConfig, *, method: str, seed: int, teacher: str, student: str, train_data: Path,
          teacher_cache: Path, out_dir: Path, reference: Path | None = None, resume: str = "auto") -> dict:
    """Run (or resume) one training job; returns the summary written to ``summary.json``.
    ``resume``: auto / never / must (:func:`pgopd.runguard.prepare_run_dir`).  Whether it
    returns or raises, the DeepSpeed engine is destroyed and every model and cache dropped
    (``pgopd.teardown``): a later run in the same process starts empty."""
    from .teardown import release_run

    held: dict = {}
    try:
        return _train(cfg, method=method, seed=seed, teacher=teacher, student=student, train_data=train_data,
                      teacher_cache=teacher_cache, out_dir=out_dir, reference=reference, resume=resume,
                      held=held)
    finally:
        release_run(held.pop("run", None))


def _train(cfg: TrainConfig, *, method: str, seed: int, teacher: str, student: str, train_data: Path,
           teacher_cache: Path, out_dir: Path, reference: Path | None, resume: str, held: dict) -> dict:
    import signal

    from tqdm import tqdm

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputcheck.check_reference(method, reference)
    t_start = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    run = held["run"] = _setup(cfg, method, seed, teacher, student, train_data, teacher_cache, out_dir)
    run.fingerprint = runguard.fingerprint(cfg, method=method, seed=seed, teacher=teacher, student=student,
                                           train_data=train_data, teacher_cache=teacher_cache,
                                           reference=reference, world=run.dist.world)
    state = _start_state(run, teacher_cache, reference, resume)
    prompts = PromptSampler(len(run.records), seed)
    prompts.position = state.prompt_position

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))  # slurm's warning
    if run.dist.rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        run.tb = SummaryWriter(str(out_dir / "tb"))
    run.vllm_engine = _vllm_engine(cfg, student, run.engine, seed) if cfg.backend == "vllm" else None
    bar = tqdm(range(state.step, cfg.steps), desc=f"train {method}", unit="step", disable=run.dist.rank != 0)
    for step in bar:
        idx_all = prompts.next(cfg.prompts_per_step)
        idx = idx_all[run.dist.rank * run.per_rank:(run.dist.rank + 1) * run.per_rank]
        res = _rollout_step(run, state, step, idx)
        m = _update_step(run, res, state, step)
        _log_step(run, state, step, res, m, idx)
        state.step, state.prompt_position = step + 1, prompts.position
        interrupted = bool(run.dist.sum(float(stop["flag"]))[0])
        last = step + 1 == cfg.steps
        if interrupted or (cfg.save_every and (step + 1) % cfg.save_every == 0 and not last):
            state.wall_s += time.perf_counter() - t_start
            t_start = time.perf_counter()
            save_resume(run.engine, state, out_dir, run.dist, run.fingerprint, cfg.keep_checkpoints)
            if interrupted:
                log.warning("SIGTERM: checkpoint written at step %d; rerun the job to resume", step + 1)
                raise Stop(f"interrupted after step {step + 1}")
    bar.close()
    if run.tb:
        run.tb.close()
    return _finish(run.engine, run.tok, cfg, state, out_dir, run.dist, t_start, method, seed, teacher, student)


def _load_records(cfg: TrainConfig, train_data: Path, teacher_cache: Path) -> list[dict]:
    """The training prompts (only those the teacher solved with ``select_solved``)."""
    from .data.loaders import read_jsonl

    records = read_jsonl(train_data)
    if cfg.select_solved:
        solved = set(json.loads((Path(teacher_cache) / "summary.json").read_text())["solved_ids"])
        records = [r for r in records if r["id"] in solved]
        if not records:
            raise ValueError("train.select_solved: the teacher solved none of the training prompts")
        log.info("teacher-aligned selection: %d prompts kept", len(records))
    return records


def _setup(cfg: TrainConfig, method: str, seed: int, teacher: str, student: str, train_data: Path,
           teacher_cache: Path, out_dir: Path) -> _Run:
    """Tokenizers (checked compatible before any training), prompts, the teacher, the student's
    DeepSpeed engine and the teacher scorer."""
    init_distributed_env()
    import deepspeed

    from .models.loading import check_tokenizers_compatible, encode_prompts, load_model, load_tokenizer
    from .rollout.scorer import TeacherScorer

    tok_t, tok_s = load_tokenizer(teacher), load_tokenizer(student)
    check_tokenizers_compatible(tok_t, tok_s, teacher, student)  # before any training
    records = _load_records(cfg, train_data, teacher_cache)
    # the teacher runs inference next to the student: on this rank's accelerator, in bf16
    # when training is (CPU here); the student is placed by DeepSpeed
    device = (torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available()
              else torch.device("cpu"))
    teacher_model = load_model(teacher, dtype=torch.bfloat16 if cfg.bf16 else torch.float32, device=device)
    student_model = load_model(student)
    if cfg.gradient_checkpointing:
        student_model.gradient_checkpointing_enable()
    engine, _, _, _ = deepspeed.initialize(model=student_model, config=ds_config(cfg),
                                           model_parameters=[p for p in student_model.parameters()
                                                             if p.requires_grad])
    dist = Dist()
    if dist.world > 1:  # where each process runs: a multi-node job's log names every node
        log.info("process %d of %d on %s", dist.rank, dist.world,
                 os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    if cfg.zero_stage == 3 and dist.world > 1 and cfg.backend == "hf":
        # ZeRO-3 gathers parameters with a collective in every forward; ranks that generate
        # different numbers of tokens would deadlock in the hf sampler
        raise ValueError("train.zero_stage: 3 with several processes needs train.backend: vllm "
                         "(the hf sampler's per-token forwards differ across ranks); use zero_stage <= 2")
    if cfg.prompts_per_step % dist.world:
        raise ValueError(f"train.prompts_per_step ({cfg.prompts_per_step}) must be divisible by the "
                         f"number of training processes ({dist.world})")
    scorer = TeacherScorer(teacher_model, tok_s.pad_token_id, topk=cfg.overlap_k,
                           chunk_tokens=cfg.logprob_chunk_tokens)
    prompt_ids = encode_prompts(tok_s, [r["prompt"] for r in records])
    inputcheck.check_train_inputs(cfg, records, prompt_ids, {"teacher": teacher, "student": student},
                                  min(teacher_model.config.vocab_size, student_model.config.vocab_size))
    return _Run(cfg=cfg, method=method, seed=seed, out_dir=out_dir, records=records,
                prompt_ids=prompt_ids, tok=tok_s, engine=engine,
                teacher_model=teacher_model, scorer=scorer, dist=dist, device=device)


def _start_state(run: _Run, teacher_cache: Path, reference: Path | None, resume: str = "auto") -> RunState:
    """A resumed run's state (its logs cut back to the checkpoint), or a fresh one (after the
    optional cold start); checkpoints of another config are moved aside first (runguard)."""
    from .policies import make_policy

    go = runguard.prepare_run_dir(run.out_dir, run.fingerprint, resume) if run.dist.rank == 0 else True
    run.dist.barrier()  # the other ranks look at resume/ only once rank 0 has sorted it
    state = load_resume(run.engine, run.out_dir) if go else None
    if state is None:
        ref = json.loads(Path(reference).read_text()) if reference else None
        state = RunState(policy=make_policy(run.method, run.cfg, seed=run.seed, reference=ref))
        if run.dist.rank == 0:
            run.metrics_path.write_text("")
            run.cands_path.write_text("")
        if run.cfg.cold_start_steps:
            cold_start(run.engine, run.cfg, Path(teacher_cache), run.records, run.prompt_ids,
                       run.tok.pad_token_id, run.seed, run.dist)
    else:
        log.info("resuming from step %d", state.step)
        if run.dist.rank == 0:
            _truncate_lines(run.metrics_path, state.metrics_lines)
            _truncate_lines(run.cands_path, state.candidates_lines)
    return state


def _rollout_step(run: _Run, state: RunState, step: int, idx: list[int]) -> RolloutResult:
    """This rank's rollout of prompts ``idx``, in groups of at most ``max_live_rows`` rows."""
    from .rollout.hf import HFSampler

    cfg, dist, engine = run.cfg, run.dist, run.engine
    eos_id, pad_id = run.tok.eos_token_id, run.tok.pad_token_id
    engine.module.eval()
    if cfg.teacher_offload:
        run.teacher_model.to(run.device)
    loss_k = 0 if cfg.loss == "sampled" else cfg.loss_top_k
    topk = max(cfg.overlap_k, loss_k)
    row0 = dist.rank * run.per_rank * cfg.n_samples

    def make_sampler(row_start: int):
        if run.vllm_engine is not None:
            from .rollout.vllm_backend import VLLMSampler

            # each rank's engine serves its own rows; seeds are per (row, offset) there, and
            # per row group here (rows restart at 0 in each group)
            return VLLMSampler(run.vllm_engine, eos_id, pad_id, cfg.temperature, cfg.top_p, topk=topk,
                               seed=run.seed * 1_000_003 + step * 1009 + dist.rank + 7919 * row_start)
        return HFSampler(engine.module, eos_id, pad_id, cfg.temperature, cfg.top_p, topk=topk,
                         seed=run.seed * 1_000_003 + step, row_offset=row0 + row_start,
                         n_global=cfg.prompts_per_step * cfg.n_samples)

    res = rollout_in_groups(make_sampler, run.scorer, state.policy, [run.prompt_ids[i] for i in idx],
                            n_samples=cfg.n_samples, max_live_rows=cfg.max_live_rows, step=step,
                            group_offset=dist.rank * run.per_rank, max_new_tokens=cfg.max_new_tokens,
                            chunk_size=cfg.chunk_size, overlap_k=cfg.overlap_k, loss_top_k=loss_k)
    if cfg.teacher_offload:  # like the vLLM engine's sleep: the update gets the teacher's memory
        run.teacher_model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return res


def _update_step(run: _Run, res: RolloutResult, state: RunState, step: int) -> dict:
    """The update (``pgopd.update``) between the rollout engine's sleep and weight push;
    counts non-finite steps and stops the run after ``max_bad_steps`` of them."""
    cfg = run.cfg
    if run.vllm_engine is not None:
        run.vllm_engine.sleep()  # colocated: free the GPUs for the update (no-op otherwise)
    m = {"step": step, **apply_update(run.engine, res, cfg, run.tok.pad_token_id, run.dist)}
    if not m.pop("finite"):
        state.bad_steps += 1
        log.warning("step %d: non-finite loss or gradient, update skipped (%d so far)", step, state.bad_steps)
        if state.bad_steps > cfg.max_bad_steps:
            save_resume(run.engine, state, run.out_dir, run.dist, run.fingerprint, cfg.keep_checkpoints)
            raise Diverged(f"{state.bad_steps} non-finite steps, more than train.max_bad_steps = "
                           f"{cfg.max_bad_steps}; stopping (last checkpoint kept)")
    if run.vllm_engine is not None:  # the next rollout samples from the updated student
        run.vllm_engine.update_weights(_full_named_params(run.engine, cfg.zero_stage))
    return m


def _log_step(run: _Run, state: RunState, step: int, res: RolloutResult, m: dict, idx: list[int]) -> None:
    """Totals, the step's metrics line, candidate records and tensorboard scalars (rank 0 writes)."""
    from .models.loading import response_text

    cfg, dist = run.cfg, run.dist
    texts = [response_text(run.tok, c.tokens) for c in res.cands]
    tail = stepstats.tail_flags(res.cands, texts, cfg.max_new_tokens)
    sums = dist.sum(*stepstats.local_sums(res, tail))  # counts and positions of every process
    for c, t in zip(res.cands, tail):
        c.info["tail"] = t  # logged per candidate: the report's tail histograms
    stepstats.add_totals(state.totals, sums)
    m.update(stepstats.step_metrics(sums))
    m.update({"t_rollout_s": res.t_rollout_s, "t_teacher_s": res.t_teacher_s, "bad_steps": state.bad_steps})
    answers = [run.records[i]["answer"] for i in idx]
    cand_recs = [r for rank_recs in dist.gather(
        _candidate_log(step, res, cfg.pgopd.prefix_len, answers, run.tok,
                       cid_offset=dist.rank * run.per_rank * cfg.n_samples, group_offset=dist.rank * run.per_rank,
                       extras=lambda c: stepstats.candidate_extras(c, cfg.pgopd.probe_start, cfg.pgopd.probe_end,
                                                                   cfg.pruneopd.window),
                       texts=texts))
        for r in rank_recs]
    if dist.rank == 0:
        with open(run.metrics_path, "a") as fh:
            fh.write(json.dumps(m) + "\n")
        with open(run.cands_path, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in cand_recs)
        for k, v in m.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                run.tb.add_scalar(f"train/{k}", v, step)
    state.metrics_lines += 1
    state.candidates_lines += len(cand_recs)


def _vllm_engine(cfg: TrainConfig, student: str, engine, seed: int):
    """The rollout engine of backend ``vllm``: one per rank, inside this process on this
    rank's device (vLLM's external_launcher; see ``rank_engine_options``), loaded with the
    current weights."""
    from .rollout.vllm_backend import VLLMEngine

    v = cfg.vllm
    kw = {k: val for k, val in (("block_size", v.block_size),
                                ("gpu_memory_utilization", v.gpu_memory_utilization)) if val is not None}
    eng = VLLMEngine(student, mode=v.mode, dtype=v.dtype, seed=seed, tensor_parallel_size=v.tensor_parallel_size,
                     max_logprobs=max(cfg.overlap_k, cfg.loss_top_k, 20), enforce_eager=v.enforce_eager,
                     distributed=True, **kw)
    eng.update_weights(_full_named_params(engine, cfg.zero_stage))  # e.g. after a resume
    return eng


def _full_named_params(engine, zero_stage: int):
    """HF-named full tensors of the student (ZeRO-3 shards are gathered first)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return [(n, p.detach().clone()) for n, p in module.named_parameters()]
    return [(n, p.detach()) for n, p in module.named_parameters()]


def _finish(engine, tok, cfg, state: RunState, out_dir: Path, dist, t_start, method, seed, teacher,
            student) -> dict:
    import shutil

    _save_hf(engine, tok, out_dir / "checkpoint", cfg.zero_stage, dist)
    t = state.totals
    summary = {"method": method, "seed": seed, "steps": cfg.steps,
               "train_wall_s": state.wall_s + time.perf_counter() - t_start,
               **stepstats.summary_fields(t),
               "bad_steps": state.bad_steps, "world_size": dist.world, "teacher": teacher, "student": student}
    if getattr(state.policy, "name", None) == "fixed_truncation":
        summary["fixed_truncation_len"] = state.policy.length  # the cut the report measures solutions against
    if dist.rank == 0:
        os.replace(out_dir / "metrics.jsonl.tmp", out_dir / "metrics.jsonl")
        os.replace(out_dir / "candidates.jsonl.tmp", out_dir / "candidates.jsonl")
        _write_json_atomic(out_dir / "summary.json", summary)
        shutil.rmtree(out_dir / "resume", ignore_errors=True)  # the HF checkpoint is the result
    dist.barrier()
    log.info("done: %s", summary)
    return summary
