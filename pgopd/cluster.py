"""What a cluster run needs settled before any job starts (issue: the cluster launch works
as written), pure functions on the typed config that :func:`pgopd.workflow.load_config` and
the Snakefile call:

* the training processes of a train job (launcher, processes per node) and the checks that
  would otherwise fail on the GPU node (``prompts_per_step`` vs processes, tensor parallel
  engines with several processes), pairs that name both models, local data files;
* the multi-node rendezvous host, found inside a slurm job step that has no
  ``SLURM_JOB_NODELIST``;
* the slurm profile: placeholders, doubled GPU flags, GPU-less rules on the GPU partition.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .config import Config, ConfigError

#: the base models every pair names
ROLES = ("teacher", "student")


# ----------------------------------------------------------------------------- training processes
def train_launcher(cfg: Config) -> str:
    """How the train jobs start: ``none`` (one process), ``torchrun`` or ``deepspeed``.

    ``auto`` is torchrun as soon as there is more than one GPU per node or more than one node
    (one process per GPU), else one process -- the local CPU default.
    """
    r = cfg.resources.train
    if r.launcher != "auto":
        return r.launcher
    return "torchrun" if r.gpu > 1 or r.nodes > 1 else "none"


def train_procs_per_node(cfg: Config) -> int:
    """Training processes per node: one per GPU under a launcher (at least one)."""
    r = cfg.resources.train
    return max(r.gpu, 1) if train_launcher(cfg) != "none" else 1


# ----------------------------------------------------------------------------- config checks
def check_pairs_raw(raw) -> None:
    """Every pair names both models: a left-out key would silently become the toy model
    (an 8B teacher distilled into the character-level toy student)."""
    pairs = raw.get("pairs") if isinstance(raw, dict) else None
    if not isinstance(pairs, dict):
        return  # absent: the default toy pair; wrong type: the typed parse names it
    for name, pair in pairs.items():
        if not isinstance(pair, dict):
            continue
        for role in ROLES:
            value = pair.get(role)
            if role not in pair or value is None or (isinstance(value, str) and not value.strip()):
                raise ConfigError(f"pairs.{name}.{role}: missing; every pair names a teacher and a "
                                  "student ('toy', a local directory or a Hugging Face model id)")


def train_processes(cfg: Config) -> int:
    """Training processes of one train job: processes per node x nodes."""
    return train_procs_per_node(cfg) * cfg.resources.train.nodes


def check_processes(cfg: Config) -> None:
    """What the train job would find out only on the GPU node, after loading the models."""
    n = train_processes(cfg)
    r, t = cfg.resources.train, cfg.train
    if t.prompts_per_step % n:
        raise ConfigError(
            f"train.prompts_per_step: {t.prompts_per_step} is not divisible by the {n} training "
            f"processes (resources.train.gpu {r.gpu} x nodes {r.nodes}); use a multiple of {n}")
    if t.backend == "vllm" and t.vllm.tensor_parallel_size > 1 and n > 1:
        raise ConfigError(
            f"train.vllm.tensor_parallel_size: {t.vllm.tensor_parallel_size} with {n} training "
            "processes; each process runs its own engine on its own GPU, so use 1")


def data_files(cfg: Config) -> dict[str, str]:
    """config key -> path of every local data file (``source: file``) prepare_data reads."""
    out = {}
    if cfg.data.train.source == "file":
        out["data.train.path"] = cfg.data.train.path
    for name, bench in cfg.data.benchmarks.items():
        if bench.source == "file":
            out[f"data.benchmarks.{name}.path"] = bench.path
    return out


def check_data_files(cfg: Config) -> None:
    """Local data files exist and have a type the loader reads (checked at load, not in the job)."""
    from .data.loaders import SUFFIXES

    for key, path in data_files(cfg).items():
        p = Path(os.path.expanduser(path))
        if p.suffix not in SUFFIXES:
            raise ConfigError(f"{key}: {path!r} is not a {' or '.join(SUFFIXES)} file")
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "does not exist"
            raise ConfigError(f"{key}: {path!r} {what} (relative paths start in the directory "
                              f"snakemake runs in: {os.getcwd()})")


def data_inputs(cfg: Config) -> list[str]:
    """Inputs of ``prepare_data``: the local data files (editing one reruns it and what follows)."""
    return sorted({os.path.expanduser(p) for p in data_files(cfg).values()})


# ----------------------------------------------------------------------------- multi-node rendezvous
def rendezvous_host_sh() -> str:
    """Shell statements that set ``PGOPD_RDZV_HOST`` to the first node of this slurm job, the
    torchrun rendezvous host, or stop with a message naming what is missing.

    The slurm job-step executor (snakemake-executor-plugin-slurm-jobstep 0.6) starts the
    rule's command with every ``SLURM_*`` variable removed except the job id, so
    ``SLURM_JOB_NODELIST`` is empty there; ``scontrol show job $SLURM_JOB_ID`` still answers
    and names the allocation's nodes (``NodeList=``).  ``SLURM_JOB_NODELIST`` is used when set.
    """
    need = ("resources.train.nodes > 1 needs a slurm allocation (snakemake --profile slurm): "
            "SLURM_JOB_ID is not set")
    nodelist = ("${SLURM_JOB_NODELIST:-$(scontrol show job \"$SLURM_JOB_ID\" | tr \" \" \"\\n\" "
                "| sed -n \"s/^NodeList=//p\" | head -n 1)}")
    missing = ("pgopd: no rendezvous host for the train job: SLURM_JOB_NODELIST is empty and "
               "'scontrol show job $SLURM_JOB_ID' gave no NodeList")
    return (f": \"${{SLURM_JOB_ID:?{need}}}\"; "
            f"PGOPD_RDZV_HOST=$(scontrol show hostnames \"{nodelist}\" | head -n 1 || true); "
            f"[ -n \"$PGOPD_RDZV_HOST\" ] || {{ echo \"{missing}\" >&2; exit 1; }};")


# ----------------------------------------------------------------------------- slurm profile
#: what each cluster-specific profile entry is, for the message when it is still a placeholder
_PROFILE_HELP = {
    "slurm_account": "your slurm account (sbatch -A; `sacctmgr show assoc user=$USER` lists them)",
    "slurm_partition": "a partition (sbatch -p; `sinfo -s` lists them)",
}


def _raw(value):
    return getattr(value, "raw", value)


def check_profile_placeholders(default_res: dict, set_res: dict[str, dict]) -> None:
    """Refuse profile values still reading ``CHANGE_ME`` (``default-resources`` and
    ``set-resources`` of slurm/config.yaml), naming the entry and what to fill in."""
    entries = [(f"default-resources: {k}", k, v) for k, v in (default_res or {}).items()]
    entries += [(f"set-resources: {rule}: {k}", k, v) for rule, res in (set_res or {}).items()
                for k, v in res.items()]
    for where, key, value in entries:
        if "CHANGE_ME" in str(_raw(value)):
            what = _PROFILE_HELP.get(key, "your cluster's value")
            raise ConfigError(f"slurm profile: {where} is still {_raw(value)!s}; fill in {what} in "
                              "slurm/config.yaml (or give it with --default-resources / --set-resources)")


def cpu_rules_sent_to_other_partition(cfg: Config, default_res: dict, set_res: dict[str, dict]) -> list[str]:
    """Rules of this config that use no GPU (``resources.<rule>.gpu: 0``) but whose profile
    entry sends them to another partition than the default (the GPU one): the Snakefile sends
    them to the default (CPU) partition instead, so e.g. the toy run never queues on GPUs."""
    default_part = _raw((default_res or {}).get("slurm_partition"))
    out = []
    for rule, res in (set_res or {}).items():
        part = _raw(res.get("slurm_partition"))
        if hasattr(cfg.resources, rule) and part is not None and part != default_part \
                and getattr(cfg.resources, rule).gpu == 0:
            out.append(rule)
    return out


def check_profile_gpu_flags(cfg: Config, set_res: dict[str, dict]) -> None:
    """GPUs come from ``resources.<rule>.gpu`` of the config: a profile ``gres`` / ``gpu`` /
    ``gpus`` entry for a rule with GPUs would make sbatch ask twice (``--gres`` and ``--gpus``)."""
    for rule, res in (set_res or {}).items():
        clash = sorted(set(res) & {"gres", "gpu", "gpus", "tasks_per_gpu"})
        if hasattr(cfg.resources, rule) and clash and getattr(cfg.resources, rule).gpu:
            raise ConfigError(
                f"slurm profile: set-resources: {rule}: {clash[0]} duplicates resources.{rule}.gpu "
                f"({getattr(cfg.resources, rule).gpu}) of the config (sbatch would get both --gres and "
                "--gpus); pick the GPU type with gpu_model (e.g. gpu_model: h100) or constraint instead")
    if "gpu_model" in (set_res or {}).get("train", {}) and cfg.resources.train.nodes > 1:
        raise ConfigError(
            "slurm profile: set-resources: train: gpu_model with resources.train.nodes > 1 (sbatch would "
            "get --gpus=<model>:1 next to --gres=gpu:N per node); pick the GPU type with constraint")


#: a ``default-resources`` entry of the profile saying GPU jobs on the default partition are intended
GPU_ON_DEFAULT_KEY = "gpu_on_default_partition"


def gpu_rules_on_default_partition(cfg: Config, default_res: dict, set_res: dict[str, dict]) -> list[str]:
    """Rules of this config with GPUs (``resources.<rule>.gpu > 0``) whose partition, after
    every source is merged (profile, ``--default-resources``, ``--set-resources``, which
    replaces a rule's whole profile entry), is the default one: a command-line
    ``--set-resources train:runtime=2880`` drops the profile's GPU partition that way.
    Empty when no default partition is set (local runs) or the profile says it is intended
    (``default-resources: gpu_on_default_partition: true``)."""
    default_res = default_res or {}
    default_part = _raw(default_res.get("slurm_partition"))
    if default_part is None or str(_raw(default_res.get(GPU_ON_DEFAULT_KEY, ""))).lower() in ("true", "1"):
        return []
    out = []
    for f in dataclasses.fields(cfg.resources):
        res = (set_res or {}).get(f.name)
        part = _raw(res.get("slurm_partition")) if res is not None else None
        part = default_part if part is None else part  # Resources.get takes no default
        if getattr(cfg.resources, f.name).gpu and part == default_part:
            out.append(f.name)
    return out


def check_gpu_rules_partition(cfg: Config, default_res: dict, set_res: dict[str, dict]) -> None:
    """Refuse GPU rules that would queue on the default (CPU) partition, naming them and the fix."""
    rules = gpu_rules_on_default_partition(cfg, default_res, set_res)
    if rules:
        part = _raw(default_res.get("slurm_partition"))
        raise ConfigError(
            f"slurm profile: {', '.join(rules)} use GPUs (resources.<rule>.gpu) but would go to the default "
            f"partition {part!s} (a --set-resources <rule>:... on the command line replaces the profile's "
            f"entry, partition included): add <rule>:slurm_partition=<gpu partition> to it, e.g. "
            f"--set-resources train:runtime=2880 train:slurm_partition=<gpu partition>; if the default "
            f"partition has the GPUs, set default-resources: {GPU_ON_DEFAULT_KEY}: true in the profile")
