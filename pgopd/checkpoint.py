"""A training run's files: the resumable checkpoints (DeepSpeed state + run state, each
written to a temp dir and renamed into place), the final HF checkpoint and atomic JSON writes.

Layout of ``<out>/resume/``: one ``step-<NNNNNN>/`` per checkpoint, newest last; each holds
DeepSpeed's ``state/`` files, ``run_state.pkl`` and, written last, ``manifest.json`` (every
file's size and the run's fingerprint, :mod:`pgopd.runguard`).  A checkpoint without a
manifest, or whose files differ from it in size, is incomplete (the job died while writing
it).  The previous complete checkpoints are kept (``train.keep_checkpoints``) until a newer
one is complete, so a node that dies mid-write costs the steps since the previous one.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("pgopd.checkpoint")

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be loaded; the message names the files and what to do."""


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


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """``<out>/resume/step-*`` directories, oldest first (temp dirs of a write in progress excluded)."""
    root = Path(out_dir) / "resume"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and d.name[5:].isdigit()]
    return sorted(found, key=lambda d: int(d.name[5:]))


def _file_sizes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def read_manifest(d: Path) -> dict | None:
    """The manifest of checkpoint ``d``, or None where it is missing or unreadable."""
    try:
        return json.loads((Path(d) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify(d: Path) -> str | None:
    """Why checkpoint ``d`` is incomplete (one line naming the file), or None if every file it
    lists is there with its recorded size."""
    man = read_manifest(d)
    if man is None:
        return f"{Path(d) / MANIFEST}: missing or unreadable (the job stopped while writing this checkpoint)"
    for name, size in man.get("files", {}).items():
        p = Path(d) / name
        if not p.is_file():
            return f"{p}: missing"
        if p.stat().st_size != size:
            return f"{p}: {p.stat().st_size} bytes, {size} written (truncated or changed)"
    return None


def save_resume(engine, state: RunState, out_dir: Path, dist, fingerprint: dict | None = None,
                keep: int = 2) -> None:
    """Checkpoint model, optimizer, scheduler (DeepSpeed) and the run state into
    ``resume/step-<state.step>``: written to a temp dir, manifest last, then renamed; only
    then are checkpoints beyond the newest ``keep`` removed."""
    import pickle
    import shutil

    root = Path(out_dir) / "resume"
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-{final.name}"
    if dist.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="state")
    dist.barrier()  # every rank's shards are on disk before the manifest lists them
    if dist.rank == 0:
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        with open(tmp / "run_state.pkl", "wb") as fh:
            pickle.dump({"state": state, "rng": rng}, fh)
        _write_json_atomic(tmp / MANIFEST, {"step": state.step, "fingerprint": fingerprint,
                                            "files": _file_sizes(tmp)})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out_dir)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _load_one(engine, d: Path) -> RunState:
    import pickle

    engine.load_checkpoint(str(d), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True)
    with open(d / "run_state.pkl", "rb") as fh:
        saved = pickle.load(fh)
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    return saved["state"]


def load_resume(engine, out_dir: Path) -> RunState | None:
    """The newest loadable checkpoint of this run, loaded into ``engine``; None if there is
    none.  A checkpoint that is incomplete or fails to load is skipped with a warning naming
    the file (the previous one is used); if every one fails, :class:`CheckpointError`."""
    dirs = checkpoint_dirs(out_dir)
    problems = []
    for d in reversed(dirs):
        why = verify(d)
        if why is None:
            try:
                state = _load_one(engine, d)
            except Exception as e:  # torch / pickle / DeepSpeed: any of them means unusable
                why = f"{d}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if why is None:
            if problems:
                log.warning("resuming from the previous checkpoint %s (newer ones unusable: %s)", d,
                            "; ".join(problems))
            return state
        log.warning("checkpoint %s is unusable: %s", d.name, why)
        problems.append(why)
    if problems:
        raise CheckpointError(
            "no checkpoint in " + str(Path(out_dir) / "resume") + " can be loaded: " + "; ".join(problems)
            + ". Delete that directory to start this run over (or rerun with --resume never, which "
              "moves it aside)")
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
