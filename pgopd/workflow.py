"""Pure-python helpers the Snakefile and ``workflow/rules/*.smk`` use (testable without Snakemake).

Everything a rule needs from the config goes through here: the typed config
(:func:`load_config`), output paths, and the ``params`` of each rule.  A rule's params are
the JSON of *only its own* config slice (sorted keys, so the string is stable); Snakemake
reruns a job when its params change, so e.g. changing a PG-OPD knob reruns only the jobs
that use PG-OPD, and adding a method to ``train.methods`` reruns nothing else.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

from . import config as C
from . import inputcheck, memplan
from .cluster import (check_data_files, check_gpu_rules_partition, check_pairs_raw,  # noqa: F401 (Snakefile)
                      check_processes,
                      check_profile_gpu_flags, check_profile_placeholders, cpu_rules_sent_to_other_partition,
                      data_files, data_inputs, rendezvous_host_sh, train_launcher, train_procs_per_node,
                      train_processes)
from .config import ALL_METHODS, METHODS, Config, ConfigError

#: rows of the tables that are not trained: the base models, evaluated with tag ``base``.
BASE_MODELS = ("teacher", "student")
ROLES = BASE_MODELS

#: train-config knob blocks each method reads, on top of the common train keys.
METHOD_BLOCKS = {
    "opd": (),
    "pgopd": ("pgopd",),
    "pruneopd": ("pruneopd",),
    "continue_all": ("pgopd", "controls"),
    "reweight_only": ("pgopd", "controls"),
    "fixed_truncation": ("controls",),
    "random_prune": ("pgopd", "controls"),
    "pruneopd_drift_only": ("pruneopd",),
    "pruneopd_window_only": ("pruneopd",),
    "pruneopd_reweight_only": ("pruneopd",),
    # matched to Prune-OPD: the cut point and rate come from the reference run only
    "random_prune-pruneopd": ("controls",),
}
for _m in ALL_METHODS:  # fixed_truncation-<ref>, random_prune-pgopd: as the bare control
    METHOD_BLOCKS.setdefault(_m, METHOD_BLOCKS[C.split_control(_m)[0]])
#: knobs a method does not act on but logs with (OPD continues every candidate, so its
#: candidates.jsonl gives the falsification outcomes over the whole probe / window range).
LOG_KEYS = {"opd": {"pgopd": ("prefix_len", "probe_start", "probe_end"), "pruneopd": ("window",)}}
#: controls that copy a length / rate from the reference run (``--reference``).
NEEDS_REFERENCE = C.MATCHED
_BLOCKS = ("pgopd", "pruneopd", "controls")
#: train keys that select jobs rather than configure one (never part of a job's params).
_WORKFLOW_ONLY_TRAIN_KEYS = ("methods",)

RULES = ("prepare_data", "build_toy_models", "cache_teacher", "train", "evaluate", "report")

TABLES = ("results/tables/main.csv", "results/tables/main.md")


# ----------------------------------------------------------------------------- config
def load_config(raw: dict) -> Config:
    """Typed config from Snakemake's ``config`` dict, with the workflow-level cross checks.

    Raises :class:`ConfigError` whose message starts with the offending key.
    """
    try:
        check_pairs_raw(raw)
        cfg = C.parse(raw if raw is not None else {})
        train_methods(cfg)
        teachers(cfg)
        check_processes(cfg)
        check_data_files(cfg)
        inputcheck.check_config(cfg)  # top-k vs vocabulary, reserved benchmark names, prompt count
        memplan.check_config(cfg)  # GPU configs only: refuse a step that cannot fit the GPU
    except ConfigError as e:
        raise ConfigError(f"invalid config: {e}") from None
    return cfg


def params_json(obj) -> str:
    """Stable JSON (sorted keys, compact) of a config slice: what rules pass as ``--params``."""
    return json.dumps(C.to_dict(obj), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- models
def model_path(ref: str, role: str) -> str:
    """``toy`` -> the toy model built by ``build_toy_models``; anything else (path, HF id) unchanged."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if ref == "toy":
        return f"results/models/toy/{role}"
    return ref


def is_local_path(ref: str) -> bool:
    """A model reference that names a local directory rather than an HF hub id."""
    return (ref.startswith(("/", "./", "../", "~")) or ref in (".", "..")
            or os.path.exists(ref))


def model_inputs(ref: str, role: str) -> list[str]:
    """Files a job reading this model depends on: toy models and local dirs; HF ids none."""
    if ref == "toy":
        return [model_path(ref, role)]
    if is_local_path(ref):
        return [os.path.expanduser(ref)]
    return []


def uses_toy(cfg: Config) -> bool:
    """Whether any pair names the toy teacher or student (then build_toy_models runs)."""
    return any("toy" in (p.teacher, p.student) for p in cfg.pairs.values())


def teacher_slug(ref: str) -> str:
    """Filesystem-safe name of a teacher: ``toy`` -> ``toy``, ``Qwen/Qwen3-8B`` -> ``Qwen--Qwen3-8B``."""
    s = ref.strip().rstrip("/")
    while s.startswith(("./", "/", "~/")):
        s = s.split("/", 1)[1]
    s = s.replace("/", "--")
    s = re.sub(r"[^A-Za-z0-9._-]", "_", s).strip(".")
    if not s:
        raise ConfigError(f"pairs: cannot make a directory name from teacher {ref!r}")
    return s


def teachers(cfg: Config) -> dict[str, str]:
    """slug -> teacher reference, one per distinct teacher (config order)."""
    out: dict[str, str] = {}
    for name, pair in cfg.pairs.items():
        slug = teacher_slug(pair.teacher)
        if out.get(slug, pair.teacher) != pair.teacher:
            raise ConfigError(f"pairs.{name}.teacher: {pair.teacher!r} and {out[slug]!r} map to the "
                              f"same cache directory results/teacher/{slug}; rename one")
        out[slug] = pair.teacher
    return out


def pair_teacher_slug(cfg: Config, pair: str) -> str:
    return teacher_slug(cfg.pairs[pair].teacher)


def students_of(cfg: Config, slug: str) -> list[str]:
    """Model paths of the students distilled from teacher ``slug`` (their tokenizers must match)."""
    out = []
    for pair in cfg.pairs.values():
        if teacher_slug(pair.teacher) == slug:
            p = model_path(pair.student, "student")
            if p not in out:
                out.append(p)
    return out


def teacher_cache_dir(slug: str) -> str:
    return f"results/teacher/{slug}"


def report_teacher_samples(cfg: Config) -> str:
    """``--teacher-samples`` of the report: PAIR=<its teacher cache>/samples.jsonl, shell-quoted."""
    return " ".join(shlex.quote(f"{p}={teacher_cache_dir(pair_teacher_slug(cfg, p))}/samples.jsonl")
                    for p in cfg.pairs)


# ----------------------------------------------------------------------------- methods
def train_methods(cfg: Config) -> list[str]:
    """Methods trained for every pair and seed: ``train.methods`` plus, when controls are
    enabled, per reference of ``controls.references`` its matched controls (and ablations)."""
    methods = list(cfg.train.methods)
    ctl = cfg.train.controls
    if ctl.enabled:
        if not ctl.references:
            raise ConfigError("train.controls.references: empty; name pgopd and/or pruneopd (or set "
                              "train.controls.enabled: false)")
        for ref in dict.fromkeys(ctl.references):
            if ref not in methods:
                raise ConfigError(
                    f"train.controls.references: {ref!r} is not in train.methods {list(cfg.train.methods)}; "
                    f"the matched controls copy their numbers from that run (add it, or set "
                    f"train.controls.enabled: false)")
            methods += [m for m in C.controls_of(ref, ctl.ablations) if m not in methods]
    return methods


def run_seeds(cfg: Config, method: str) -> list:
    """Training seeds of ``method``: every seed, except for the methods ``train.controls`` adds,
    which run on the first seed only with ``controls.first_seed_only`` (their Δ vs OPD is then
    paired on that seed, its CI over problems)."""
    if cfg.train.controls.first_seed_only and method not in cfg.train.methods:
        return list(cfg.seeds[:1])
    return list(cfg.seeds)


def reference_method(cfg: Config, method: str) -> Optional[str]:
    """The run a matched control copies its length / rate from (None for other methods)."""
    return C.split_control(method)[1]


def reference_arg(reference: Optional[str]) -> str:
    """``--reference <summary.json>`` for a matched control, '' otherwise (shell-quoted)."""
    return f"--reference {shlex.quote(str(reference))}" if reference else ""


def train_dir(pair: str, method: str, seed) -> str:
    return f"results/train/{pair}/{method}/seed{seed}"


def train_summaries(cfg: Config) -> list[str]:
    return [f"{train_dir(p, m, s)}/summary.json"
            for p in cfg.pairs for m in train_methods(cfg) for s in run_seeds(cfg, m)]


# ----------------------------------------------------------------------------- rule inputs
DATA_TRAIN = "results/data/train.jsonl"


def bench_data(bench: str) -> str:
    return f"results/data/bench/{bench}.jsonl"


def cache_teacher_inputs(cfg: Config, slug: str) -> dict:
    """Inputs of ``cache_teacher`` for teacher ``slug``: prompts, the teacher, its students."""
    students = []
    for pair in cfg.pairs.values():
        if teacher_slug(pair.teacher) == slug:
            students += [s for s in model_inputs(pair.student, "student") if s not in students]
    return {"train": DATA_TRAIN, "teacher": model_inputs(teachers(cfg)[slug], "teacher"),
            "students": students}


def train_inputs(cfg: Config, pair: str, method: str, seed) -> dict:
    """Inputs of one ``train`` job (``reference``: the run a matched control copies from)."""
    p = cfg.pairs[pair]
    out = {
        "train": DATA_TRAIN,
        "teacher_cache": f"{teacher_cache_dir(teacher_slug(p.teacher))}/summary.json",
        "teacher": model_inputs(p.teacher, "teacher"),
        "student": model_inputs(p.student, "student"),
    }
    ref = reference_method(cfg, method)
    if ref:
        out["reference"] = f"{train_dir(pair, ref, seed)}/summary.json"
    return out


# ----------------------------------------------------------------------------- params
def train_params(cfg: Config, method: str) -> dict:
    """JSON of ``method``'s train slice: the common keys plus only the knob blocks it reads."""
    if method not in METHOD_BLOCKS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(ALL_METHODS)}")
    d = C.to_dict(cfg.train)
    out = {k: v for k, v in d.items() if k not in _BLOCKS and k not in _WORKFLOW_ONLY_TRAIN_KEYS}
    for block in METHOD_BLOCKS[method]:
        out[block] = d[block]
    for block, keys in LOG_KEYS.get(method, {}).items():
        out.setdefault(block, {k: d[block][k] for k in keys})
    return out


def data_params(cfg: Config) -> dict:
    return C.to_dict(cfg.data)


def toy_params(cfg: Config, role: str | None = None) -> dict:
    """The ``toy_models`` slice, or only ``{role: ...}`` of it (a student change leaves the
    teacher job, and so the teacher cache, untouched)."""
    d = C.to_dict(cfg.toy_models)
    return d if role is None else {role: d[role]}


def teacher_cache_params(cfg: Config) -> dict:
    return C.to_dict(cfg.teacher_cache)


def eval_params(cfg: Config) -> dict:
    return C.to_dict(cfg.eval)


def rule_resources(cfg: Config, rule: str) -> dict:
    """Scheduler resources of one job of ``rule`` (gpu, cpus_per_task, mem_mb, runtime, nodes)."""
    out = C.to_dict(getattr(cfg.resources, rule))
    out.pop("launcher", None)  # how train starts its processes, not a scheduler resource
    for k in ("gpu_model", "gpu_mem_gb", "plan_prompt_tokens"):  # the memory plan's inputs, not resources either
        out.pop(k, None)
    return out


# ----------------------------------------------------------------------------- targets
def bench_names(cfg: Config) -> list[str]:
    return list(cfg.data.benchmarks)


def eval_targets(cfg: Config) -> list[str]:
    """Every evaluation summary: base teacher and student per pair, each trained run per seed."""
    out = []
    for pair in cfg.pairs:
        runs = [(m, "base") for m in BASE_MODELS]
        runs += [(m, f"seed{s}") for m in train_methods(cfg) for s in run_seeds(cfg, m)]
        for method, tag in runs:
            for bench in bench_names(cfg):
                out.append(f"results/eval/{pair}/{method}/{tag}/{bench}.json")
    return out


def eval_model(cfg: Config, pair: str, method: str, tag: str) -> str:
    """The model an evaluation job loads: a base model for tag ``base``, else the trained checkpoint."""
    if tag == "base":
        if method not in BASE_MODELS:
            raise ValueError(f"tag 'base' is only for {BASE_MODELS}, not {method!r}")
        return model_path(getattr(cfg.pairs[pair], method), method)
    m = re.fullmatch(r"seed(\d+)", tag)
    if not m or method in BASE_MODELS:
        raise ValueError(f"evaluation tag {tag!r} of method {method!r}: expected base "
                         f"(teacher/student) or seed<k> (trained methods)")
    return f"{train_dir(pair, method, m.group(1))}/checkpoint"


def eval_model_inputs(cfg: Config, pair: str, method: str, tag: str) -> list[str]:
    if tag == "base":
        eval_model(cfg, pair, method, tag)  # checks the method / tag combination
        return model_inputs(getattr(cfg.pairs[pair], method), method)
    return [eval_model(cfg, pair, method, tag)]


def evaluate_inputs(cfg: Config, pair: str, method: str, tag: str) -> dict:
    """Inputs of one ``evaluate`` job (one model, every benchmark: the model loads once)."""
    return {"bench": [bench_data(b) for b in bench_names(cfg)],
            "model": eval_model_inputs(cfg, pair, method, tag)}


def targets(cfg: Config) -> list[str]:
    """Final outputs of the workflow (``rule all``)."""
    return list(TABLES)


# ----------------------------------------------------------------------------- snakemake glue
def alternation(names) -> str:
    """A regex matching exactly one of ``names`` (for wildcard_constraints)."""
    names = sorted(set(names), key=lambda s: (-len(s), s))
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def wildcard_patterns(cfg: Config) -> dict[str, str]:
    return {
        "pair": alternation(cfg.pairs),
        "method": alternation(BASE_MODELS + ALL_METHODS),
        "tag": r"base|seed\d+",
        "seed": r"\d+",
        "bench": alternation(bench_names(cfg)),
        "teacher": alternation(teachers(cfg)),
    }


def pgopd_command(root: Optional[str] = None) -> str:
    """How rules call ``pgopd``: the script of the running interpreter's env when present,
    else ``pgopd`` on PATH, else ``python -m pgopd.cli`` with ``root`` (the repo) on PYTHONPATH."""
    exe = Path(sys.executable)
    sibling = exe.parent / "pgopd"
    if sibling.exists():
        found = shutil.which("pgopd")
        if found and Path(found).resolve() == sibling.resolve():
            return "pgopd"
        return shlex.quote(str(sibling))  # a checkout path may hold spaces
    if shutil.which("pgopd"):
        return "pgopd"
    env = f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}} " if root else ""
    return f"{env}{shlex.quote(str(exe))} -m pgopd.cli"


__all__ = [
    "load_config", "model_path", "teacher_slug", "train_methods", "train_params", "params_json", "data_params",
    "eval_params", "teacher_cache_params", "toy_params", "targets", "eval_targets", "METHODS",
]


# ----------------------------------------------------------------------------- report inputs
def train_run_files(cfg: Config, name: str) -> list[str]:
    """``name`` (metrics.jsonl, candidates.jsonl, ...) of every train run, as the report reads them."""
    return [f"{train_dir(p, m, s)}/{name}" for p in cfg.pairs for m in train_methods(cfg) for s in run_seeds(cfg, m)]


def report_hparams(cfg: Config) -> dict:
    """The config the report prints under its tables: everything but the scheduler resources
    (so a change of resources reruns nothing, any other change reruns the report)."""
    out = C.to_dict(cfg)
    out.pop("resources", None)
    return out


# ----------------------------------------------------------------------------- multi-process training
#: torchrun's ``-m`` target when pgopd runs as ``python -m pgopd.cli``.
_MODULE = " -m pgopd.cli"


def _launch_parts(root: Optional[str]) -> tuple[str, str]:
    """(python that runs the launcher module, what the launcher starts per rank)."""
    pgopd = pgopd_command(root)
    if pgopd.endswith(_MODULE):  # `[PYTHONPATH=...] python -m pgopd.cli`: launch the module
        return pgopd[:-len(_MODULE)], "module"
    return shlex.quote(sys.executable), pgopd


def train_command(cfg: Config, root: Optional[str] = None) -> str:
    """Shell prefix of the train rule, up to and including the ``pgopd`` program; the rule
    appends ``train --params ...``.

    * one process: ``OMP_NUM_THREADS=<cpus> pgopd``;
    * one node, several GPUs: ``python -m torch.distributed.run --standalone --nproc_per_node <gpu>``
      (a free rendezvous port per job) or the deepspeed launcher, starting ``pgopd`` per rank;
    * several nodes (slurm): ``srun`` starts one torchrun per node of the allocation, which
      meet at a c10d rendezvous on the first node (``SLURM_JOB_ID`` / ``SLURM_JOB_NODELIST``).

    ``OMP_NUM_THREADS`` is ``cpus_per_task`` split over the processes of a node.  Under
    torchrun, ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` is the job's whole runtime: on SIGTERM (slurm's
    time limit, ``scancel``) the agent passes the signal on and SIGKILLs the training processes
    after this many seconds (torch's default: 30), while they finish the current step and
    write a checkpoint (minutes at paper scale); slurm's ``KillWait`` stays the bound.
    """
    r = cfg.resources.train
    kind = train_launcher(cfg)
    nproc = train_procs_per_node(cfg)
    threads = max(1, r.cpus_per_task // nproc)
    env = f"OMP_NUM_THREADS={threads}"
    if kind == "none":
        return f"{env} {pgopd_command(root)}"
    if kind == "torchrun":
        env += f" TORCH_ELASTIC_SHUTDOWN_TIMEOUT={int(r.runtime) * 60}"
    py, target = _launch_parts(root)
    if kind == "deepspeed":
        if r.nodes > 1:
            raise ConfigError("resources.train.launcher: deepspeed supports one node here; use torchrun")
        prog = "--module pgopd.cli" if target == "module" else f"--no_python {target}"
        port = (f"$({py} -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
                f"print(s.getsockname()[1])')")
        return f"{env} {py} -m deepspeed.launcher.runner --num_gpus {nproc} --master_port {port} {prog}"
    prog = "-m pgopd.cli" if target == "module" else f"--no-python {target}"
    torchrun = f"{py} -m torch.distributed.run"
    if r.nodes == 1:
        return f"{env} {torchrun} --standalone --nnodes 1 --nproc_per_node {nproc} {prog}"
    gres = f" --gres=gpu:{r.gpu}" if r.gpu else ""
    return (f"{rendezvous_host_sh()} {env} srun --nodes={r.nodes} --ntasks={r.nodes} --ntasks-per-node=1{gres} "
            f"--kill-on-bad-exit=1 {torchrun} --nnodes {r.nodes} --nproc_per_node {nproc} "
            f"--rdzv_backend c10d --rdzv_id \"$SLURM_JOB_ID\" "
            f"--rdzv_endpoint \"$PGOPD_RDZV_HOST:$((29500 + SLURM_JOB_ID % 1000))\" {prog}")


def train_resources(cfg: Config) -> dict:
    """Scheduler resources of a train job.  One node: those of ``resources.train``.

    Several nodes: ``gpu`` becomes ``gres: gpu:<gpu>`` (slurm's ``--gpus`` counts GPUs per
    job, ``--gres`` per node), ``tasks`` one per node, and ``mpi: srun`` tells the slurm
    executor that the command starts its own ``srun`` (it then does not wrap the job in a
    one-task ``srun``); ``tasks_per_gpu: 0`` keeps it from turning ``tasks`` into
    ``--ntasks-per-gpu``.
    """
    out = rule_resources(cfg, "train")
    nodes = cfg.resources.train.nodes
    if nodes > 1:
        gpu = out.pop("gpu")
        if gpu:
            out["gres"] = f"gpu:{gpu}"
        out.update(mpi="srun", tasks=nodes, tasks_per_gpu=0)
    return out
