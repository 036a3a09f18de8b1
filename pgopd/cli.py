"""``pgopd <stage>``: the thin entry points the Snakemake rules call.

Every stage takes ``--params``: the JSON of its own config slice (what the rule's
``params:`` hold, so a change to that slice reruns that stage only).  The slice is parsed
by :mod:`pgopd.config`, so a bad value stops the stage with the key named.  ``pgopd
<stage> --help`` lists every option of the slice with its default and range.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import config as C


def _params(cls, prefix):
    def parse(text: str):
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        try:
            raw = json.loads(text) if text.strip() else {}
        except ValueError as e:  # JSONDecodeError, or ints past Python's digit limit
            raise argparse.ArgumentTypeError(f"--params is not valid JSON: {e}")
        return C.parse_dataclass(cls, raw, prefix)
    return parse


def _add(sub, name, cls, prefix, help):
    epilog = f"Options in --params (JSON of the '{prefix}' config slice):\n" + "\n".join(C.describe(cls, prefix))
    p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="{}", type=str,
                   help=f"JSON (or @file) of the '{prefix}' slice; missing keys take their defaults")
    p.set_defaults(_cls=cls, _prefix=prefix)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pgopd",
        description="On-policy distillation (OPD) with PG-OPD and Prune-OPD rollout allocation. "
                    "Each subcommand is one stage of the Snakemake workflow.")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="stage", required=True)

    p = _add(sub, "prepare-data", C.DataConfig, "data",
             "Write the training prompts and every benchmark as {id, prompt, answer} jsonl.")
    p.add_argument("--out-dir", required=True, type=Path, help="writes train.jsonl, bench/<name>.jsonl, stats.json")

    p = _add(sub, "build-toy-models", C.ToyModelsConfig, "toy_models",
             "Build the char tokenizer and train the toy teacher and/or student from scratch.")
    p.add_argument("--train", required=True, type=Path, help="train.jsonl from prepare-data (worked solutions)")
    p.add_argument("--role", nargs="+", choices=("teacher", "student"), default=["teacher", "student"],
                   help="which toy models to build (the workflow runs one job per role)")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="writes <role>/ (HF format) and build_<role>.json per role")

    p = _add(sub, "cache-teacher", C.TeacherCacheConfig, "teacher_cache",
             "Sample the teacher once on the training prompts; keep samples, correctness, top-k log-probs.")
    p.add_argument("--teacher", required=True, help="teacher model path or HF id")
    p.add_argument("--students", nargs="+", default=[], help="student models whose tokenizers must match")
    p.add_argument("--train", required=True, type=Path, help="train.jsonl from prepare-data")
    p.add_argument("--out-dir", required=True, type=Path, help="writes samples.jsonl, topk.pt, summary.json")

    p = _add(sub, "train", C.TrainConfig, "train", "On-policy distillation of the student with one method.")
    p.add_argument("--method", required=True, choices=C.ALL_METHODS, help="allocation policy")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--teacher", required=True, help="teacher model path or HF id")
    p.add_argument("--student", required=True, help="student model path or HF id")
    p.add_argument("--train-data", required=True, type=Path, help="train.jsonl from prepare-data")
    p.add_argument("--teacher-cache", required=True, type=Path, help="directory written by cache-teacher")
    p.add_argument("--reference", type=Path, default=None,
                   help="summary.json of the run a matched control copies its length / rate from")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="writes checkpoint/ (HF), metrics.jsonl, candidates.jsonl, summary.json, tb/")
    p.add_argument("--resume", choices=("auto", "never", "must"), default="auto",
                   help="auto (default): resume from <out-dir>/resume when its checkpoints were written with "
                        "the same method, seed, models, data and train params, else move them aside to "
                        "<out-dir>/stale-<time>/ and start at step 0; never: always start at step 0 (old "
                        "state moved aside); must: resume or stop with an error")

    p = _add(sub, "evaluate", C.EvalConfig, "eval", "avg@k accuracy of one model on each benchmark.")
    p.add_argument("--model", required=True, help="model path or HF id")
    p.add_argument("--bench", required=True, nargs="+", type=Path, help="bench/<name>.jsonl files from prepare-data")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="writes <name>.jsonl (one line per sample) and <name>.json (summary) per benchmark")

    p = sub.add_parser("report", help="Paper tables (CSV, markdown, LaTeX), paired tests vs OPD, the "
                       "falsification analysis and figures from every evaluation and training run.")
    p.add_argument("--eval", nargs="+", required=True, type=Path, help="summary json files from evaluate")
    p.add_argument("--train", nargs="*", default=[], type=Path, help="summary.json files from train")
    p.add_argument("--metrics", nargs="*", default=[], type=Path,
                   help="metrics.jsonl files from train (tokens-per-step figure)")
    p.add_argument("--candidates", nargs="*", default=[], type=Path,
                   help="candidates.jsonl files from train (falsification analysis, PG-OPD / Prune-OPD figures)")
    hp = p.add_mutually_exclusive_group()
    hp.add_argument("--hparams", default=None,
                    help="JSON (or @file) of the run's config, printed under the tables")
    hp.add_argument("--config", default=None, type=Path,
                    help="the run's YAML config file (instead of --hparams), printed under the tables")
    p.add_argument("--teacher-samples", nargs="*", default=[], metavar="PAIR=PATH",
                   help="per pair, the teacher cache's samples.jsonl (solution lengths per difficulty)")
    p.add_argument("--train-data", type=Path, default=None,
                   help="train.jsonl from prepare-data (the difficulty level of each training prompt)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap / permutation resamples (default 2000)")
    p.add_argument("--stats-seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="writes main.{csv,md,tex}, falsification.{csv,md}, main.html")
    p.add_argument("--fig-dir", type=Path, default=None,
                   help="writes the figures (<name>.png) and their data (<name>.csv)")

    p = sub.add_parser("schema", help="Print the JSON schema of the whole config (workflow/schemas/).")

    p = sub.add_parser("plan", help="The memory plan: GiB per GPU of each phase of a training step "
                       "(rollout, teacher scoring, update, optimizer step, weight sync) against the GPU's memory "
                       "(resources.train.gpu_model or gpu_mem_gb); exits 1 with computed advice (the knobs "
                       "that would make a phase fit, or the minimum and structural options) when one does not.")
    p.add_argument("--configfile", required=True, type=Path, help="the workflow config (YAML)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--reserve-gb", type=float, default=3.0,
                   help="GiB kept for the CUDA context, NCCL and fragmentation (default 3)")

    p = sub.add_parser("preflight", help="Once on one GPU node before submitting: 1 short step per method and "
                       "one OPD step at full length with dummy weights of the config's shapes, each in its own "
                       "process; peak GiB per phase next to the memory plan, times, tokens/s, GPU-hours.")
    from .preflight import add_arguments

    add_arguments(p)

    p = sub.add_parser("check-config", help="Check config files as `snakemake -n --configfile <files>` does, "
                       "and their YAML syntax (file and line; Snakemake names neither for a --configfile).")
    p.add_argument("files", nargs="+", type=Path,
                   help="YAML config files, merged in order as Snakemake does (e.g. config/paper.yaml "
                        "config/two_nodes.yaml)")
    return ap


def _plan(args) -> int:
    from . import memplan

    try:
        plans = memplan.plan_config(C.load(args.configfile), reserve_gib=args.reserve_gb)
    except (C.ConfigError, OSError) as e:
        print(f"pgopd plan: config error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([p.to_json() for p in plans], indent=2))
    else:
        print("\n\n".join(p.table() for p in plans))
    problems = [line for p in plans for line in p.problems()]
    for line in problems:
        print(f"pgopd plan: {line}", file=sys.stderr)
    return 1 if problems else 0


def _merge(into: dict, new: dict) -> dict:
    """Deep merge, as Snakemake merges several --configfile (later files win)."""
    for k, v in new.items():
        into[k] = _merge(dict(into[k]), v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
    return into


def _check_config(files) -> int:
    """The config that `snakemake --configfile <files>` would see, checked as the Snakefile does."""
    from . import workflow as W

    raw: dict = {}
    try:
        for f in files:
            part = C.load_yaml(f)
            if part is not None and not isinstance(part, dict):
                raise C.ConfigError(f"{f}: expected a mapping of config keys, got {type(part).__name__}")
            _merge(raw, part or {})
        W.load_config(raw)
    except (C.ConfigError, OSError) as e:
        print(f"pgopd check-config: {e}", file=sys.stderr)
        return 2
    print(f"{' + '.join(map(str, files))}: ok")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("PGOPD_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.stage == "schema":
        print(json.dumps(C.json_schema(), indent=2))
        return 0
    if args.stage == "plan":
        return _plan(args)
    if args.stage == "check-config":
        return _check_config(args.files)
    if args.stage == "preflight":
        from .preflight import preflight

        try:
            return preflight(args)
        except (C.ConfigError, OSError, RuntimeError) as e:
            print(f"pgopd preflight: {e}", file=sys.stderr)
            return 2
    if hasattr(args, "_cls"):
        try:
            args.cfg = _params(args._cls, args._prefix)(args.params)
        except (C.ConfigError, argparse.ArgumentTypeError) as e:
            print(f"pgopd {args.stage}: config error: {e}", file=sys.stderr)
            return 2
    from . import stages  # heavy imports (torch) only once the arguments are known

    try:
        getattr(stages, args.stage.replace("-", "_"))(args)
    except C.ConfigError as e:
        print(f"pgopd {args.stage}: config error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        # bad input (data, tokenizers, paths): the message says what to fix; PGOPD_DEBUG=1
        # shows the traceback
        if os.environ.get("PGOPD_DEBUG"):
            raise
        print(f"pgopd {args.stage}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
