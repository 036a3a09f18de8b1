"""Glue from parsed CLI arguments to the library functions (one per stage)."""
from __future__ import annotations


def prepare_data(args):
    from .data.prepare import prepare_data as run
    run(args.cfg, args.out_dir)


def build_toy_models(args):
    from .models.toy import build_toy_models as run
    run(args.cfg, args.train, args.out_dir, roles=tuple(args.role))


def cache_teacher(args):
    from .teacher import cache_teacher as run
    run(args.cfg, args.teacher, args.students, args.train, args.out_dir)


def train(args):
    import os

    from .checkpoint import CheckpointError
    from .runguard import ResumeRefused, RunDirBusy, lock_run_dir

    try:
        # one writer per run directory: rank 0 holds the lock for the whole run (taken before
        # the heavy imports, so a second writer exits at once)
        lock = lock_run_dir(args.out_dir) if os.environ.get("RANK", "0") == "0" else None
    except RunDirBusy as e:
        raise SystemExit(f"pgopd train: error: {e}") from None
    from .train import Diverged, Stop, train as run  # (a failed import exits: the kernel drops the lock)

    try:
        _train(run, args)
    except (ResumeRefused, CheckpointError) as e:
        raise SystemExit(f"pgopd train: error: {e}") from None
    except Stop as e:  # SIGTERM: checkpoint written; a rerun of the job resumes
        raise SystemExit(f"pgopd train: {e}; checkpoint in {args.out_dir}/resume") from None
    except Diverged as e:
        raise SystemExit(f"pgopd train: error: {e}; checkpoint in {args.out_dir}/resume") from None
    finally:
        if lock:
            lock.release()
    from .teardown import end_process_group

    end_process_group()  # the process ends next (a rank aborted at interpreter exit otherwise)


def _train(run, args):
    run(args.cfg, method=args.method, seed=args.seed, teacher=args.teacher, student=args.student,
        train_data=args.train_data, teacher_cache=args.teacher_cache, out_dir=args.out_dir,
        reference=args.reference, resume=args.resume)


def evaluate(args):
    from .evaluate import evaluate as run
    run(args.cfg, args.model, args.bench, args.out_dir)


def report(args):
    import json
    from pathlib import Path

    from . import config as C
    from .report.build import report as run

    hparams = None
    if args.hparams:
        text = Path(args.hparams[1:]).read_text() if args.hparams.startswith("@") else args.hparams
        try:
            hparams = json.loads(text)
        except json.JSONDecodeError as e:
            raise C.ConfigError(f"--hparams is not valid JSON: {e}") from None
    elif args.config:
        hparams = C.to_dict(C.load(args.config))
        hparams.pop("resources", None)
    samples = {}
    for item in args.teacher_samples:
        pair, sep, path = item.partition("=")
        if not sep or not pair or not path:
            raise C.ConfigError(f"--teacher-samples: {item!r} is not PAIR=PATH")
        samples[pair] = Path(path)
    run(args.eval, args.train, args.out_dir, metrics=args.metrics, candidates=args.candidates,
        fig_dir=args.fig_dir, hparams=hparams, n_boot=args.n_boot, seed=args.stats_seed,
        teacher_samples=samples, train_data=args.train_data)
