"""A training run's files: the resumable checkpoint (DeepSpeed state + run state, written
atomically), the final HF checkpoint and atomic JSON writes."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


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


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first ``n`` lines of ``path`` (metrics of steps after the checkpoint go)."""
    if not path.exists():
        path.write_text("")
        return
    lines = path.read_text().splitlines(keepends=True)[:n]
    path.write_text("".join(lines))


def save_resume(engine, state: RunState, out_dir: Path, dist) -> None:
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
