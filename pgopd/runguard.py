"""What keeps a training run directory from mixing two runs: its fingerprint, its lock.

* :func:`fingerprint`: everything that determines a run's result (method, seed, the model
  pair and their files, the train / method parameters, the data files, the number of
  processes) as a flat ``key -> value`` mapping, stored in every checkpoint's manifest.
  A run resumes only from checkpoints with an equal fingerprint; otherwise the old state
  is moved aside (kept) and the run starts at step 0, one log line naming the keys that
  differ (:func:`prepare_run_dir`).
* :func:`lock_run_dir`: an OS file lock (``flock``) on ``<out>/.lock`` held for the
  run's lifetime.  The kernel drops it when the holder dies, so a stale lock file left by a
  killed job never blocks; a second live writer exits at once naming the holder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from . import config as C
from .checkpoint import checkpoint_dirs, read_manifest

log = logging.getLogger("pgopd.runguard")

RESUME_MODES = ("auto", "never", "must")
#: train keys that change how a run is executed or saved, not its numbers
OPERATIONAL_KEYS = ("save_every", "max_bad_steps", "keep_checkpoints", "methods")
#: files of a run directory that belong to one run (moved aside together)
RUN_FILES = ("resume", "metrics.jsonl.tmp", "candidates.jsonl.tmp", "metrics.jsonl", "candidates.jsonl",
             "summary.json", "checkpoint", "tb")
_HEAD_TAIL = 1 << 20  # bytes hashed at each end of a large file


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class ResumeRefused(RuntimeError):
    """``--resume must`` and no matching checkpoint."""


# ----------------------------------------------------------------------------- fingerprint
def file_digest(path: Path) -> str:
    """sha256 of a file's size, first and last MiB (whole file when small): cheap on
    multi-GB weights, still changes when a model is retrained or a file is cut short."""
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 2 * _HEAD_TAIL:
            h.update(fh.read())
        else:
            h.update(fh.read(_HEAD_TAIL))
            fh.seek(size - _HEAD_TAIL)
            h.update(fh.read())
    return h.hexdigest()[:16]


def model_digest(ref: str) -> str:
    """A local model directory's files (names and :func:`file_digest`); a hub id as given
    (its files live in the hub cache, pinned by the id and revision the user names)."""
    p = Path(ref)
    if not p.is_dir():
        return f"hub:{ref}"
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p)}={file_digest(f)};".encode())
    return h.hexdigest()[:16]


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def fingerprint(cfg: C.TrainConfig, *, method: str, seed: int, teacher: str, student: str,
                train_data: Path, teacher_cache: Path | None = None, reference: Path | None = None,
                world: int = 1) -> dict:
    """The run's identity: ``key -> value`` (JSON-able).  Keys ``train.*`` are the config;
    operational keys (:data:`OPERATIONAL_KEYS`) are left out, so changing how often a run
    saves does not restart it."""
    params = {k: v for k, v in C.to_dict(cfg).items() if k not in OPERATIONAL_KEYS}
    fp = {"method": method, "seed": seed, "teacher": str(teacher), "student": str(student),
          "teacher_files": model_digest(teacher), "student_files": model_digest(student),
          "train_data": file_digest(train_data), "world_size": world,
          **_flatten(params, "train")}
    cache_summary = Path(teacher_cache) / "summary.json" if teacher_cache else None
    if (cfg.select_solved or cfg.cold_start_steps) and cache_summary and cache_summary.exists():
        fp["teacher_cache"] = file_digest(cache_summary)
    if reference:
        fp["reference"] = file_digest(reference)
    return json.loads(json.dumps(fp))  # the form a manifest stores (tuples -> lists)


def differing_keys(old: dict | None, new: dict) -> list[str]:
    """Keys whose values differ (present on one side only counts)."""
    if old is None:
        return ["<no fingerprint: written by an older pgopd>"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ----------------------------------------------------------------------------- the directory
def move_aside(out_dir: Path, reason: str) -> Path | None:
    """Move this directory's run files into ``<out>/stale-<UTC time>/`` (kept, never deleted);
    returns it, or None when there was nothing to move."""
    out_dir = Path(out_dir)
    present = [n for n in RUN_FILES if (out_dir / n).exists()]
    if not present:
        return None
    dest = out_dir / time.strftime("stale-%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while dest.exists():
        dest, n = dest.with_name(f"{dest.name.split('.')[0]}.{n}"), n + 1
    dest.mkdir()
    for name in present:
        os.replace(out_dir / name, dest / name)
    (dest / "REASON").write_text(reason + "\n")
    return dest


def prepare_run_dir(out_dir: Path, fp: dict, mode: str = "auto") -> bool:
    """Decide, before anything is loaded, whether this run resumes from ``<out>/resume``.

    auto: resume when the newest checkpoint's fingerprint equals ``fp``; otherwise the old
    state (checkpoints, logs, a finished run's outputs) is moved aside and the run starts
    fresh.  never: always fresh (old state moved aside).  must: resume or raise
    :class:`ResumeRefused`.  Returns True when the run should resume.  Rank 0 only.
    """
    if mode not in RESUME_MODES:
        raise ValueError(f"--resume: {mode!r} is not one of {', '.join(RESUME_MODES)}")
    out_dir = Path(out_dir)
    dirs = checkpoint_dirs(out_dir)
    manifests = [m for m in (read_manifest(d) for d in reversed(dirs)) if m is not None]
    old_fp = manifests[0].get("fingerprint") if manifests else None
    diff = differing_keys(old_fp, fp) if manifests else []
    if mode == "must":
        if not manifests:
            raise ResumeRefused(f"--resume must: {out_dir / 'resume'} holds no complete checkpoint")
        if diff:
            raise ResumeRefused(f"--resume must: the checkpoints in {out_dir / 'resume'} belong to another "
                                f"run; keys that differ: {', '.join(diff)}")
        return True
    if mode == "auto" and manifests and not diff:
        return True
    if mode == "never":
        reason = "--resume never"
    elif dirs and not manifests:
        reason = "only incomplete checkpoints (the job died while writing its first one)"
    elif diff:
        reason = "config changed; keys that differ: " + ", ".join(diff)
    else:
        reason = "files of an earlier run without a checkpoint"
    dest = move_aside(out_dir, reason)
    if dest is not None:
        log.warning("%s: earlier run state moved aside to %s (%s); starting at step 0", out_dir, dest, reason)
    return False


# ----------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive ``flock`` on ``<dir>/.lock``; :meth:`release` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_run_dir(out_dir: Path) -> RunLock:
    """Take ``<out>/.lock`` or raise :class:`RunDirBusy` naming the directory and the holder
    (pid@host, from the lock file).  A lock file whose holder died is not locked: taken."""
    import fcntl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown (starting up)"
        os.close(fd)
        raise RunDirBusy(f"{out_dir} is in use by another training process ({holder}); wait for it or "
                         f"stop it, or use another --out-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n".encode(), 0)
    return RunLock(fd, path)
