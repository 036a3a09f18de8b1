"""The ``train`` stage: on-policy distillation through DeepSpeed, one method per run.

Per step (sampling, teacher scoring and the update are separate, with plain data between):
  1. rollout:  the student samples ``n_samples`` responses per prompt, chunk by chunk, the
               teacher scores every new token once, the method's policy allocates
               (``pgopd.rollout.loop``);
  2. assemble: kept tokens, weights and the teacher's log-probs become padded tensors;
  3. update:   one forward/backward of the student under the OPD loss (``pgopd.loss``),
               ``engine.step()`` (DeepSpeed: ZeRO stage, clipping, bf16 from config).
The same code runs on CPU here (DeepSpeed's CPU accelerator, gloo) and on GPUs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import stepstats
from .config import TrainConfig
from .rollout.loop import RolloutResult, rollout

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
    if cfg.warmup_steps:
        out["scheduler"] = {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": cfg.warmup_steps,
            "warmup_type": "linear"}}
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


def assemble(res: RolloutResult, pad_id: int) -> dict | None:
    """Padded tensors for the update (right padding); ``None`` when no token is trained.

    Positions are those of the *targets*: response token t of row b sits at column
    ``P_b - 1 + t`` of the shifted sequence, where P_b is the prompt length.
    Returns input_ids_BS, attention_BS, mask_BT, weight_BT, teacher_logp_BT, and
    student_topk_ids_BTK / teacher_logp_topk_BTK when the rollout kept them.
    """
    rows = [(i, c, res.train_len(c)) for i, c in enumerate(res.cands)]
    rows = [(i, c, L) for i, c, L in rows if L > 0]
    if not rows:
        return None
    seqs = [res.prompts[i] + c.tokens[:L] for i, c, L in rows]
    S = max(len(s) for s in seqs)
    B, T = len(rows), S - 1
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    att = torch.zeros((B, S), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    weight = torch.zeros((B, T))
    t_logp = torch.zeros((B, T))
    topk = bool(res.student_topk_ids)
    if topk:
        K = res.student_topk_ids[0].shape[-1]
        s_ids = torch.zeros((B, T, K), dtype=torch.long)
        t_lp = torch.zeros((B, T, K))
    for b, ((i, c, L), seq) in enumerate(zip(rows, seqs)):
        P = len(res.prompts[i])
        ids[b, :len(seq)] = torch.tensor(seq)
        att[b, :len(seq)] = 1
        sl = slice(P - 1, P - 1 + L)
        mask[b, sl] = True
        weight[b, sl] = torch.tensor(c.weights[:L], dtype=torch.float32)
        t_logp[b, sl] = torch.tensor(c.teacher_logp[:L], dtype=torch.float32)
        if topk:
            s_ids[b, sl] = res.student_topk_ids[i][:L]
            t_lp[b, sl] = res.teacher_logp_topk[i][:L]
    out = {"input_ids_BS": ids, "attention_BS": att, "mask_BT": mask, "weight_BT": weight,
           "teacher_logp_BT": t_logp}
    if topk:
        out.update(student_topk_ids_BTK=s_ids, teacher_logp_topk_BTK=t_lp)
    return out


def opd_loss_on_batch(model, batch: dict, loss_top_k: int):
    """Student forward on the assembled batch and the OPD loss (pure functions in pgopd.loss)."""
    from .loss import opd_pg_loss, topk_reverse_kl_loss

    dev = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids_BS"].to(dev), attention_mask=batch["attention_BS"].to(dev)).logits
    logp_BTV = torch.log_softmax(logits[:, :-1].float(), -1)
    targets_BT = batch["input_ids_BS"][:, 1:].to(dev)
    mask, weight = batch["mask_BT"].to(dev), batch["weight_BT"].to(dev)
    logp_BT = logp_BTV.gather(-1, targets_BT[..., None])[..., 0]
    if loss_top_k:
        s_BTK = logp_BTV.gather(-1, batch["student_topk_ids_BTK"].to(dev))
        loss, stats = topk_reverse_kl_loss(s_BTK, batch["teacher_logp_topk_BTK"].to(dev), mask, weight)
        # the sampled-token reward is still what we report, so runs compare on one scale
        r = (batch["teacher_logp_BT"].to(dev) - logp_BT.detach())[mask]
        stats["reward_mean"] = float(r.mean()) if r.numel() else 0.0
        return loss, stats
    return opd_pg_loss(logp_BT, batch["teacher_logp_BT"].to(dev), mask, weight)


def sft_loss(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Cross-entropy on response tokens only (the off-policy cold start on teacher samples)."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        ids[b, :len(s)] = torch.tensor(s)
        att[b, :len(s)] = 1
        labels[b, len(p):len(s)] = torch.tensor(s[len(p):])
    dev = next(model.parameters()).device
    return model(input_ids=ids.to(dev), attention_mask=att.to(dev), labels=labels.to(dev)).loss


# ----------------------------------------------------------------------------- the stage
def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _candidate_log(step: int, res: RolloutResult, prefix_len: int, answers: list[str], tokenizer,
                   cid_offset: int = 0, group_offset: int = 0, extras=None) -> list[dict]:
    """Per-candidate record: decisions, lengths, weights, teacher reward on prefix / suffix,
    final correctness where the response finished (feeds the falsification analysis)."""
    from .grading import grade
    from .models.loading import response_text

    out = []
    for c in res.cands:
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
               "correct": grade(response_text(tokenizer, c.tokens), answers[c.group]) if c.finished else None,
               **(extras(c) if extras else {}), **c.info}
        out.append(rec)
    return out


class Stop(Exception):
    """SIGTERM arrived: a checkpoint was written; the job should exit and be rerun."""


class Diverged(RuntimeError):
    """More non-finite steps than ``train.max_bad_steps``."""


@dataclass
class RunState:
    """Everything besides model / optimizer / scheduler that a resumed run needs."""

    step: int = 0                     # next step to run
    prompt_position: int = 0          # PromptSampler.position
    bad_steps: int = 0
    totals: dict = field(default_factory=lambda: {k: 0 for k in (
        "gen", "scored", "trained", "cands", "continued", "decided")})
    wall_s: float = 0.0               # training wall time before this process
    policy: object = None             # the allocation policy
    metrics_lines: int = 0            # lines of metrics.jsonl.tmp that belong to steps < step
    candidates_lines: int = 0


class _Dist:
    """Rank / world size and the few collectives the loop needs (no-ops on one process)."""

    def __init__(self):
        import torch.distributed as td

        self.td = td if td.is_available() and td.is_initialized() else None
        self.rank = self.td.get_rank() if self.td else 0
        self.world = self.td.get_world_size() if self.td else 1

    def sum(self, *xs: float) -> list[float]:
        if not self.td:
            return list(xs)
        t = torch.tensor(xs, dtype=torch.float64)
        self.td.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if not self.td:
            return [obj]
        out = [None] * self.world
        self.td.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.td:
            self.td.barrier()


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first ``n`` lines of ``path`` (metrics of steps after the checkpoint go)."""
    if not path.exists():
        path.write_text("")
        return
    lines = path.read_text().splitlines(keepends=True)[:n]
    path.write_text("".join(lines))


def save_resume(engine, state: RunState, out_dir: Path, dist: "_Dist") -> None:
    """Checkpoint model, optimizer, scheduler (DeepSpeed) and the run state, atomically:
    written to ``resume.tmp`` and renamed over ``resume``."""
    import pickle
    import shutil

    tmp, final, old = out_dir / "resume.tmp", out_dir / "resume", out_dir / "resume.old"
    if dist.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="state")
    if dist.rank == 0:
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        with open(tmp / "run_state.pkl", "wb") as fh:
            pickle.dump({"state": state, "rng": rng}, fh)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_resume(engine, out_dir: Path) -> RunState | None:
    """The last complete checkpoint of this run, loaded into ``engine``; None if there is none."""
    import pickle

    for d in (out_dir / "resume", out_dir / "resume.old"):  # .old: killed between the two renames
        if (d / "run_state.pkl").exists():
            engine.load_checkpoint(str(d), tag="state", load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
            with open(d / "run_state.pkl", "rb") as fh:
                saved = pickle.load(fh)
            random.setstate(saved["rng"]["python"])
            torch.set_rng_state(saved["rng"]["torch"])
            return saved["state"]
    return None


def grads_finite(engine) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in engine.module.parameters())


def train(cfg: TrainConfig, *, method: str, seed: int, teacher: str, student: str, train_data: Path,
          teacher_cache: Path, out_dir: Path, reference: Path | None = None) -> dict:
    """Run (or resume) one training job; returns the summary written to ``summary.json``."""
    import signal

    init_distributed_env()
    import deepspeed
    from tqdm import tqdm

    from .data.loaders import read_jsonl
    from .models.loading import check_tokenizers_compatible, encode_prompts, load_model, load_tokenizer
    from .policies import make_policy
    from .rollout.hf import HFSampler
    from .rollout.scorer import TeacherScorer

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)

    tok_t, tok_s = load_tokenizer(teacher), load_tokenizer(student)
    check_tokenizers_compatible(tok_t, tok_s, teacher, student)  # before any training
    records = read_jsonl(train_data)
    if cfg.select_solved:
        solved = set(json.loads((Path(teacher_cache) / "summary.json").read_text())["solved_ids"])
        records = [r for r in records if r["id"] in solved]
        if not records:
            raise ValueError("train.select_solved: the teacher solved none of the training prompts")
        log.info("teacher-aligned selection: %d prompts kept", len(records))
    ref = json.loads(Path(reference).read_text()) if reference else None

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
    dist = _Dist()
    if cfg.zero_stage == 3 and dist.world > 1 and cfg.backend == "hf":
        # ZeRO-3 gathers parameters with a collective in every forward; ranks that generate
        # different numbers of tokens would deadlock in the hf sampler
        raise ValueError("train.zero_stage: 3 with several processes needs train.backend: vllm "
                         "(the hf sampler's per-token forwards differ across ranks); use zero_stage <= 2")
    if cfg.prompts_per_step % dist.world:
        raise ValueError(f"train.prompts_per_step ({cfg.prompts_per_step}) must be divisible by the "
                         f"number of training processes ({dist.world})")
    pad_id, eos_id = tok_s.pad_token_id, tok_s.eos_token_id
    prompt_ids = encode_prompts(tok_s, [r["prompt"] for r in records])

    state = load_resume(engine, out_dir)
    metrics_path, cands_path = out_dir / "metrics.jsonl.tmp", out_dir / "candidates.jsonl.tmp"
    if state is None:
        state = RunState(policy=make_policy(method, cfg, seed=seed, reference=ref))
        if dist.rank == 0:
            metrics_path.write_text("")
            cands_path.write_text("")
        if cfg.cold_start_steps:
            _cold_start(engine, cfg, Path(teacher_cache), records, prompt_ids, pad_id, seed)
    else:
        log.info("resuming from step %d", state.step)
        if dist.rank == 0:
            _truncate_lines(metrics_path, state.metrics_lines)
            _truncate_lines(cands_path, state.candidates_lines)
    policy = state.policy
    prompts = PromptSampler(len(records), seed)
    prompts.position = state.prompt_position

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))  # slurm's warning

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out_dir / "tb")) if dist.rank == 0 else None
    scorer = TeacherScorer(teacher_model, pad_id, topk=cfg.overlap_k)
    vllm_engine = _vllm_engine(cfg, student, engine, seed) if cfg.backend == "vllm" else None
    per_rank = cfg.prompts_per_step // dist.world
    n_rows = cfg.prompts_per_step * cfg.n_samples
    bar = tqdm(range(state.step, cfg.steps), desc=f"train {method}", unit="step", disable=dist.rank != 0)
    for step in bar:
        idx_all = prompts.next(cfg.prompts_per_step)
        idx = idx_all[dist.rank * per_rank:(dist.rank + 1) * per_rank]
        engine.module.eval()
        topk = max(cfg.overlap_k, cfg.loss_top_k)
        if vllm_engine is not None:
            from .rollout.vllm_backend import VLLMSampler

            # each rank's engine serves its own rows; seeds are per (row, offset) there
            sampler = VLLMSampler(vllm_engine, eos_id, pad_id, cfg.temperature, cfg.top_p, topk=topk,
                                  seed=seed * 1_000_003 + step * 1009 + dist.rank)
        else:
            sampler = HFSampler(engine.module, eos_id, pad_id, cfg.temperature, cfg.top_p, topk=topk,
                                seed=seed * 1_000_003 + step,
                                row_offset=dist.rank * per_rank * cfg.n_samples, n_global=n_rows)
        policy.begin_step(step, group_offset=dist.rank * per_rank)
        res = rollout(sampler, scorer, policy, [prompt_ids[i] for i in idx], n_samples=cfg.n_samples,
                      max_new_tokens=cfg.max_new_tokens, chunk_size=cfg.chunk_size,
                      overlap_k=cfg.overlap_k, loss_top_k=cfg.loss_top_k)
        if vllm_engine is not None:
            vllm_engine.sleep()  # colocated: free the GPUs for the update (no-op otherwise)
        m = _update(engine, res, cfg, pad_id, dist, state, step, out_dir)
        if vllm_engine is not None:  # the next rollout samples from the updated student
            vllm_engine.update_weights(_full_named_params(engine, cfg.zero_stage))
        sums = dist.sum(*stepstats.local_sums(res))  # counts and positions of every process
        stepstats.add_totals(state.totals, sums)
        m.update(stepstats.step_metrics(sums))
        m.update({"t_rollout_s": res.t_rollout_s, "t_teacher_s": res.t_teacher_s, "bad_steps": state.bad_steps})
        answers = [records[i]["answer"] for i in idx]
        cand_recs = [r for rank_recs in dist.gather(
            _candidate_log(step, res, cfg.pgopd.prefix_len, answers, tok_s,
                           cid_offset=dist.rank * per_rank * cfg.n_samples, group_offset=dist.rank * per_rank,
                           extras=lambda c: stepstats.candidate_extras(c, cfg.pgopd.probe_start, cfg.pgopd.probe_end,
                                                                       cfg.pruneopd.window)))
            for r in rank_recs]
        if dist.rank == 0:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(m) + "\n")
            with open(cands_path, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in cand_recs)
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    tb.add_scalar(f"train/{k}", v, step)
        state.step, state.prompt_position = step + 1, prompts.position
        state.metrics_lines += 1
        state.candidates_lines += len(cand_recs)
        interrupted = bool(dist.sum(float(stop["flag"]))[0])
        last = step + 1 == cfg.steps
        if interrupted or (cfg.save_every and (step + 1) % cfg.save_every == 0 and not last):
            state.wall_s += time.perf_counter() - t_start
            t_start = time.perf_counter()
            save_resume(engine, state, out_dir, dist)
            if interrupted:
                log.warning("SIGTERM: checkpoint written at step %d; rerun the job to resume", step + 1)
                raise Stop(f"interrupted after step {step + 1}")
    bar.close()
    if tb:
        tb.close()
    return _finish(engine, tok_s, cfg, state, out_dir, dist, t_start, method, seed, teacher, student)


def _vllm_engine(cfg: TrainConfig, student: str, engine, seed: int):
    """The rollout engine of backend ``vllm`` (one per rank), loaded with the current weights."""
    from .rollout.vllm_backend import VLLMEngine

    v = cfg.vllm
    kw = {k: val for k, val in (("block_size", v.block_size),
                                ("gpu_memory_utilization", v.gpu_memory_utilization)) if val is not None}
    eng = VLLMEngine(student, mode=v.mode, dtype=v.dtype, seed=seed, tensor_parallel_size=v.tensor_parallel_size,
                     max_logprobs=max(cfg.overlap_k, cfg.loss_top_k, 20), **kw)
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


def _update(engine, res: RolloutResult, cfg: TrainConfig, pad_id: int, dist: "_Dist", state: RunState,
            step: int, out_dir: Path) -> dict:
    """Assemble, loss, backward, step — skipping (and counting) non-finite steps."""
    t0 = time.perf_counter()
    lr = engine.get_lr()[0]  # the rate this step's update uses
    engine.module.train()
    batch = assemble(res, pad_id)
    n_local = float(batch["mask_BT"].sum()) if batch is not None else 0.0
    (n_global,) = dist.sum(n_local)
    stats, loss_val, ok = {}, 0.0, True
    if batch is not None:
        loss, stats = opd_loss_on_batch(engine, batch, cfg.loss_top_k)
        # token-mean over the *global* batch: DeepSpeed averages gradients over ranks, so each
        # rank's token-mean is rescaled by its share of the tokens
        scale = n_local * dist.world / n_global if n_global else 0.0
        loss = loss * scale
        loss_val = float(loss.detach())
        ok = math.isfinite(loss_val)
        if ok:
            engine.backward(loss)
            ok = grads_finite(engine)
    elif n_global:
        # this rank trains no token but others do: join the gradient all-reduce with a zero loss
        loss = sum(p.sum() for p in engine.module.parameters()) * 0.0
        engine.backward(loss)
    ok = bool(dist.sum(float(not ok))[0] == 0)
    if not ok:
        state.bad_steps += 1
        log.warning("step %d: non-finite loss or gradient, update skipped (%d so far)", step, state.bad_steps)
        engine.optimizer.zero_grad()
        if state.bad_steps > cfg.max_bad_steps:
            save_resume(engine, state, out_dir, dist)
            raise Diverged(f"{state.bad_steps} non-finite steps, more than train.max_bad_steps = "
                               f"{cfg.max_bad_steps}; stopping (last checkpoint kept)")
    elif n_global:
        engine.step()
    loss_sum, reward_sum = dist.sum(loss_val / dist.world, stats.get("reward_mean", 0.0) * n_local)
    return {"step": step, "loss": loss_sum, "reward_mean": reward_sum / n_global if n_global else None,
            "kl": -reward_sum / n_global if n_global else None, "t_update_s": time.perf_counter() - t0,
            "lr": lr}


def _finish(engine, tok, cfg, state: RunState, out_dir: Path, dist, t_start, method, seed, teacher,
            student) -> dict:
    import shutil

    _save_hf(engine, tok, out_dir / "checkpoint", cfg.zero_stage, dist)
    t = state.totals
    summary = {"method": method, "seed": seed, "steps": cfg.steps,
               "train_wall_s": state.wall_s + time.perf_counter() - t_start,
               **stepstats.summary_fields(t),
               "bad_steps": state.bad_steps, "world_size": dist.world, "teacher": teacher, "student": student}
    if dist.rank == 0:
        os.replace(out_dir / "metrics.jsonl.tmp", out_dir / "metrics.jsonl")
        os.replace(out_dir / "candidates.jsonl.tmp", out_dir / "candidates.jsonl")
        _write_json_atomic(out_dir / "summary.json", summary)
        shutil.rmtree(out_dir / "resume", ignore_errors=True)  # the HF checkpoint is the result
    dist.barrier()
    log.info("done: %s", summary)
    return summary


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _save_hf(engine, tokenizer, path: Path, zero_stage: int, dist=None) -> None:
    """Save the student in HF format from rank 0, atomically (temp dir, then rename)."""
    import shutil

    rank0 = dist is None or dist.rank == 0
    tmp = path.with_name(path.name + ".tmp")
    module = engine.module
    if zero_stage == 3:  # parameters are sharded: gather them (collective) before saving
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            if rank0:
                shutil.rmtree(tmp, ignore_errors=True)
                module.save_pretrained(tmp)
    elif rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(tmp)
    if rank0:
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)


def _cold_start(engine, cfg: TrainConfig, cache_dir: Path, records, prompt_ids, pad_id, seed) -> None:
    """Off-policy warm start: SFT on the teacher's cached correct samples (Agarwal et al. /
    thunlp-OPD start OPD from a distilled student; optional here)."""
    from .data.loaders import read_jsonl

    by_id = {r["id"]: i for i, r in enumerate(records)}
    pairs = [(by_id[s["id"]], s["tokens"]) for s in read_jsonl(cache_dir / "samples.jsonl")
             if s.get("correct") and s["id"] in by_id]
    if not pairs:
        raise ValueError("train.cold_start_steps > 0 but the teacher cache has no correct sample")
    rng = random.Random(seed)
    engine.module.train()
    for _ in range(cfg.cold_start_steps):
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(cfg.prompts_per_step * cfg.n_samples)]
        loss = sft_loss(engine, [prompt_ids[i] for i, _ in batch], [t for _, t in batch], pad_id)
        engine.backward(loss)
        engine.step()
