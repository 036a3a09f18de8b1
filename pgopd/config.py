"""Typed configuration: the one place where every option, its default and its range live.

The YAML config is parsed into these dataclasses by :func:`parse`, which names the full key
(``train.pgopd.prefix_len``) in every error.  The JSON schema Snakemake validates against
(``workflow/schemas/config.schema.json``) is generated from the same dataclasses by
:func:`json_schema`, so the two cannot drift apart (a test checks the committed copy).

Field metadata: ``help`` (shown by ``pgopd <stage> --help``), ``min`` / ``max`` (inclusive),
``choices`` (allowed strings).
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

METHODS = ("opd", "pgopd", "pruneopd")
#: controls matched to a reference run's numbers; the workflow names them ``<control>-<reference>``
#: (``fixed_truncation-pruneopd``); the bare name means ``-pgopd``.
MATCHED = ("fixed_truncation", "random_prune")
#: ablations of each reference method: its parts run one at a time
ABLATIONS = {"pgopd": ("continue_all", "reweight_only"),
             "pruneopd": ("pruneopd_drift_only", "pruneopd_window_only", "pruneopd_reweight_only")}
REFERENCES = ("pgopd", "pruneopd")
CONTROLS = ("continue_all", "reweight_only", "fixed_truncation", "random_prune")
ALL_METHODS = (METHODS + CONTROLS + ABLATIONS["pruneopd"]
               + tuple(f"{m}-{r}" for r in REFERENCES for m in MATCHED))


def split_control(method: str) -> tuple[str, str | None]:
    """``fixed_truncation-pruneopd`` -> (``fixed_truncation``, ``pruneopd``); a bare matched
    control -> (name, ``pgopd``); any other method -> (method, None)."""
    base, _, ref = method.partition("-")
    if base in MATCHED:
        return base, ref or "pgopd"
    return method, None


def controls_of(reference: str, ablations: bool = True) -> tuple[str, ...]:
    """Methods ``controls.enabled`` adds for one reference: its matched controls and, with
    ``ablations``, its parts run alone."""
    return (ABLATIONS[reference] if ablations else ()) + tuple(f"{m}-{reference}" for m in MATCHED)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what is allowed."""


def opt(default, help: str, *, min=None, max=None, choices=None):
    """A dataclass field with help text and range metadata."""
    meta = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    return field(default=default, metadata=meta)


def sub(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    """The embedded default task: multi-step integer arithmetic with worked solutions."""
    task: str = opt("arith", "solution format: arith (17+38=55. 55-9=46. \\boxed{46}), reduce (55-9 = 46. "
                    "\\boxed{46}: each step rewrites the expression with one operation done, so solutions grow "
                    "faster than linearly with the operations) or long (each step also rewrites the rest)",
                    choices=("arith", "reduce", "long"))
    n_train: int = opt(3000, "number of training prompts", min=1)
    operand_max: int = opt(30, "operands are drawn from 1..operand_max", min=2, max=999)
    min_ops: int = opt(1, "fewest operations (+/-) in a training problem", min=1, max=8)
    max_ops: int = opt(3, "most operations (+/-) in a training problem", min=1, max=8)
    seed: int = opt(0, "seed of the generator", min=0)


@dataclass
class BenchmarkConfig:
    """One evaluation set: synthetic (``ops`` operations), a real file, or a Hugging Face dataset."""
    source: str = opt("synthetic", "where the problems come from", choices=("synthetic", "file", "hf"))
    ops: int = opt(1, "synthetic only: operations per problem (difficulty)", min=1, max=8)
    n: int = opt(50, "number of problems (synthetic: generated; file/hf: first n, 0 = all)", min=0)
    seed: int = opt(1, "synthetic only: seed, kept apart from the training seed", min=0)
    path: str = opt("", "file only: parquet or jsonl path")
    hf_name: str = opt("", "hf only: dataset name on the Hugging Face Hub (needs the `datasets` package)")
    hf_split: str = opt("test", "hf only: split")
    hf_config: str = opt("", "hf only: dataset configuration ('' = the default one)")
    prompt_field: str = opt("", "file/hf: prompt column ('' = auto: verl 'prompt' or 'problem')")
    answer_field: str = opt("", "file/hf: answer column ('' = auto: verl "
                            "'reward_model.ground_truth' or 'answer')")
    id_field: str = opt("", "file/hf: id column ('' = row number)")


@dataclass
class TrainDataConfig:
    source: str = opt("synthetic", "training prompts: synthetic task, a file or a Hugging Face dataset",
                      choices=("synthetic", "file", "hf"))
    path: str = opt("", "file only: parquet or jsonl path")
    hf_name: str = opt("", "hf only: dataset name on the Hugging Face Hub (needs the `datasets` package)")
    hf_split: str = opt("train", "hf only: split")
    hf_config: str = opt("", "hf only: dataset configuration ('' = the default one)")
    prompt_field: str = opt("", "file/hf: prompt column ('' = auto)")
    answer_field: str = opt("", "file/hf: answer column ('' = auto)")
    id_field: str = opt("", "file/hf: id column ('' = row number)")
    limit: int = opt(0, "keep the first `limit` rows (0 = all)", min=0)


@dataclass
class DataConfig:
    train: TrainDataConfig = sub(TrainDataConfig, "training prompt set")
    synthetic: SyntheticConfig = sub(SyntheticConfig, "embedded synthetic task")
    benchmarks: dict = opt(
        {
            "easy": {"source": "synthetic", "ops": 1, "n": 50, "seed": 101},
            "medium": {"source": "synthetic", "ops": 2, "n": 50, "seed": 102},
            "hard": {"source": "synthetic", "ops": 3, "n": 50, "seed": 103},
        },
        "name -> benchmark; names become table columns")
    on_bad_row: str = opt("error", "a malformed row (no answer, empty prompt): stop with its id, "
                          "or skip it and count it", choices=("error", "skip"))
    system_prompt: str = opt("", "optional system message put before every prompt")
    prompt_suffix: str = opt("", "text appended to every user prompt (e.g. the \\boxed{} instruction)")
    max_prompt_tokens: int = opt(0, "longest prompt kept, in tokens of data.tokenizer with the chat template "
                                    "and system prompt (0 = no limit); a longer one stops prepare_data "
                                    "(on_bad_row: error) or is dropped and counted (skip)", min=0)
    tokenizer: str = opt("", "the tokenizer that counts max_prompt_tokens: a local model directory or a "
                             "Hugging Face id (usually the student's)")

    _item_types = {"benchmarks": BenchmarkConfig}


# ----------------------------------------------------------------------------- models
@dataclass
class ToyModelConfig:
    """A tiny Qwen2-architecture model trained from scratch on the synthetic solutions."""
    n_layers: int = opt(4, "transformer layers", min=1, max=48)
    d_model: int = opt(128, "hidden size", min=16)
    n_heads: int = opt(4, "attention heads (head size d_model/n_heads; vLLM needs >= 32)", min=1)
    d_ff: int = opt(0, "MLP size (0 = 4 * d_model)", min=0)
    train_steps: int = opt(700, "supervised steps on worked solutions", min=0)
    batch_size: int = opt(64, "sequences per step", min=1)
    lr: float = opt(3e-3, "peak learning rate (one-cycle)", min=0.0)
    final_lr_fraction: float = opt(0.01, "learning rate at the last step as a fraction of lr (cosine decay; "
                                         "1 = no decay): a student left un-annealed keeps room to learn", min=0.0, max=1.0)
    seed: int = opt(0, "init and data-order seed", min=0)
    loop_fraction: float = opt(0.0, "share of the warm-start solutions replaced by a looping trace (a step "
                               "repeated up to loop_len tokens, no EOS): a student that drifts into "
                               "non-terminating rollouts (issue 15); 0 = clean solutions only", min=0.0, max=1.0)
    loop_len: int = opt(160, "response length of a looping trace, in characters", min=8, max=240)
    loop_phrase: str = opt("", "'' = a looping trace repeats a step; else this phrase is repeated after "
                           "the clean steps (a rambling student)")
    loop_max_start: int = opt(-1, "ramble only: clean steps before the phrase are drawn from 0..this "
                              "(-1 = any)", min=-1)


@dataclass
class ToyModelsConfig:
    teacher: ToyModelConfig = sub(ToyModelConfig, "toy teacher")
    student: ToyModelConfig = opt(ToyModelConfig(n_layers=2, d_model=64, n_heads=2, train_steps=1000,
                                                 batch_size=64, lr=3e-3, final_lr_fraction=0.33, seed=1,
                                                 loop_fraction=0.3, loop_len=192,
                                                 loop_phrase="wait, let me check again.", loop_max_start=1),
                                  "toy student (smaller, shorter warm start, 30% of it rambling: clearly "
                                  "weaker, with a long tail of rollouts that never box an answer)")


@dataclass
class PairConfig:
    teacher: str = opt("toy", "'toy' (built by build_toy_models), a local path or an HF model id")
    student: str = opt("toy", "'toy' (built by build_toy_models), a local path or an HF model id")


# ----------------------------------------------------------------------------- teacher cache
@dataclass
class TeacherCacheConfig:
    n_samples: int = opt(1, "teacher samples per training prompt", min=1)
    max_new_tokens: int = opt(64, "generation length limit", min=1)
    temperature: float = opt(0.7, "sampling temperature (0 = greedy)", min=0.0)
    top_p: float = opt(1.0, "nucleus sampling mass", min=0.0, max=1.0)
    logprobs_k: int = opt(8, "top-k log-probs kept per token", min=1)
    batch_size: int = opt(256, "prompts per generation batch", min=1)
    seed: int = opt(0, "sampling seed", min=0)
    backend: str = opt("hf", "generation backend", choices=("hf", "vllm"))
    vllm_enforce_eager: Optional[bool] = opt(None, "vllm backend: no CUDA graphs (null = auto: CUDA graphs "
                                             "on GPU, eager on CPU)")


# ----------------------------------------------------------------------------- methods
@dataclass
class PGOPDConfig:
    """PG-OPD (prefix-guided): decode all to prefix_len, continue only high-overlap ones."""
    prefix_len: int = opt(16, "tokens every candidate decodes before the probe decision", min=1)
    probe_start: int = opt(0, "first response position of the probe window", min=0)
    probe_end: int = opt(16, "end (exclusive) of the probe window, <= prefix_len", min=1)
    threshold: Optional[float] = opt(None, "continue if probe overlap >= threshold (null: use top_fraction)",
                                     min=0.0, max=1.0)
    top_fraction: float = opt(0.5, "fraction of each prompt's group that continues", min=0.0, max=1.0)
    low_overlap: str = opt("train_prefix", "what happens to stopped candidates",
                           choices=("train_prefix", "drop"))


@dataclass
class PruneOPDConfig:
    """Prune-OPD: monitor sliding-window overlap, down-weight after drift, truncate severe drift."""
    window: int = opt(8, "sliding window (tokens) of the overlap monitor", min=1)
    drift_threshold: float = opt(0.35, "window overlap below this is a drift event", min=0.0, max=1.0)
    decay: float = opt(0.5, "weight multiplier per drift event", min=0.0, max=1.0)
    truncate_threshold: float = opt(0.2, "window overlap below this truncates the rollout", min=0.0, max=1.0)
    min_weight: float = opt(0.1, "weight below this truncates the rollout", min=0.0, max=1.0)
    initial_window: int = opt(24, "initial training window (tokens)", min=1)
    expand_threshold: float = opt(0.45, "window expands while mean overlap stays above this", min=0.0, max=1.0)
    expand_by: int = opt(16, "tokens added to the window per expansion", min=1)


@dataclass
class ControlsConfig:
    """Matched controls; lengths and rates are measured from a reference run when null."""
    enabled: bool = opt(True, "also train, per reference, the matched fixed_truncation-<ref> and "
                        "random_prune-<ref> (and its ablations, see `ablations`)")
    ablations: bool = opt(False, "with enabled: also train each reference's parts alone (pgopd: continue_all, "
                          "reweight_only; pruneopd: pruneopd_{drift,window,reweight}_only)")
    first_seed_only: bool = opt(True, "the methods these keys add run on the first of `seeds` only (false: "
                                "on every seed; a control named in train.methods always runs on every seed)")
    fixed_truncation_len: Optional[int] = opt(None, "length for fixed_truncation (null: matched to "
                                              "the reference run's mean generated tokens)", min=1)
    random_continue_rate: Optional[float] = opt(None, "continue rate for random_prune (null: matched "
                                                "to the reference run)", min=0.0, max=1.0)
    references: list = opt(["pgopd", "pruneopd"], "runs the controls are matched to (each in train.methods): pgopd -> "
                           "continue_all, reweight_only; pruneopd -> pruneopd_{drift,window,reweight}_only; "
                           "both -> fixed_truncation-<ref>, random_prune-<ref>", choices=REFERENCES)


@dataclass
class VLLMConfig:
    """vLLM engine options (backend: vllm)."""
    mode: str = opt("separate", "separate: the engine keeps its own memory; colocate: it sleeps "
                    "during the update on the training GPUs", choices=("separate", "colocate"))
    dtype: str = opt("auto", "engine dtype (auto = the checkpoint's; float32 matches hf on CPU)")
    block_size: Optional[int] = opt(None, "KV block size = prefix-cache granularity (CPU: multiple of 32)",
                                    min=1)
    gpu_memory_utilization: Optional[float] = opt(None, "fraction of GPU memory for the engine",
                                                  min=0.0, max=1.0)
    tensor_parallel_size: int = opt(1, "GPUs per engine (several training processes: 1, one engine per "
                                    "process on its own GPU)", min=1)
    enforce_eager: Optional[bool] = opt(None, "no CUDA graphs (null = auto: CUDA graphs on GPU, eager on CPU)")


@dataclass
class TrainConfig:
    methods: list = opt(["opd", "pgopd", "pruneopd"], "methods trained for every pair and seed",
                        choices=METHODS)
    steps: int = opt(80, "optimizer steps", min=1)
    prompts_per_step: int = opt(16, "prompts per step", min=1)
    n_samples: int = opt(4, "student responses per prompt", min=1)
    max_new_tokens: int = opt(192, "rollout length limit", min=1)
    chunk_size: int = opt(8, "tokens generated between teacher scoring / policy decisions", min=1)
    temperature: float = opt(1.0, "rollout sampling temperature", min=0.0)
    top_p: float = opt(1.0, "rollout nucleus mass", min=0.0, max=1.0)
    overlap_k: int = opt(2, "k of the top-k overlap (the toy's 2 of 102 tokens; paper.yaml: 16 of 151k)", min=1)
    loss: str = opt("topk_renorm", "OPD loss. sampled: REINFORCE on the sampled token with reward "
                    "log p_T - log p_S; topk_renorm: reverse KL with both distributions renormalised "
                    "over the student's top-k (no gradient on logits outside it); topk_recipe: the "
                    "OPD recipe's top-k objective, advantage p_S(x)(log p_T(x) - log p_S(x)) at each "
                    "student top-k token x with full-vocabulary log-probs",
                    choices=("sampled", "topk_renorm", "topk_recipe"))
    loss_top_k: int = opt(8, "k of the top-k losses (topk_renorm / topk_recipe); unused by loss: sampled",
                          min=1)
    lr: float = opt(3e-5, "learning rate (constant after warmup)", min=0.0)
    warmup_steps: int = opt(0, "linear warmup steps", min=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    grad_clip: float = opt(1.0, "gradient norm clip (0 = off)", min=0.0)
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage", min=0, max=3)
    bf16: bool = opt(False, "bf16 training (DeepSpeed)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward")
    max_tokens_per_micro_batch: int = opt(0, "update micro-batches hold at most this many prompt+response "
                                          "tokens (sequences packed by length, a longer one goes alone; "
                                          "gradients accumulate, one optimizer step); 0 = one micro-batch",
                                          min=0)
    logprob_chunk_tokens: int = opt(1024, "positions per chunk when computing log-probs from the LM head "
                                    "(student update and teacher scoring): extra memory ~ 4 fp32 (chunk x vocab) tensors "
                                    "in the update's backward",
                                    min=1)
    max_live_rows: int = opt(0, "rollout in groups of at most this many rows (whole prompt groups) to "
                             "bound the student's and teacher's KV caches; 0 = all of a rank's rows at once",
                             min=0)
    teacher_offload: bool = opt(False, "move the teacher to CPU during the update and back before the rollout")
    select_solved: bool = opt(False, "keep only prompts the teacher solved in the cache")
    cold_start_steps: int = opt(0, "off-policy SFT steps on cached teacher samples before OPD", min=0)
    save_every: int = opt(0, "checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = opt(2, "resumable checkpoints kept in <run>/resume (the newest ones; an older "
                                "one is deleted only once a newer one is complete)", min=1)
    max_bad_steps: int = opt(5, "non-finite steps tolerated before the run stops", min=0)
    backend: str = opt("hf", "rollout backend", choices=("hf", "vllm"))
    vllm: VLLMConfig = sub(VLLMConfig, "vLLM engine (backend: vllm)")
    pgopd: PGOPDConfig = sub(PGOPDConfig, "PG-OPD knobs")
    pruneopd: PruneOPDConfig = sub(PruneOPDConfig, "Prune-OPD knobs")
    controls: ControlsConfig = sub(ControlsConfig, "matched controls")


@dataclass
class EvalConfig:
    k: int = opt(4, "samples per problem (avg@k)", min=1)
    temperature: float = opt(0.7, "sampling temperature (0 = greedy)", min=0.0)
    top_p: float = opt(0.95, "nucleus mass", min=0.0, max=1.0)
    max_new_tokens: int = opt(64, "generation length limit", min=1)
    batch_size: int = opt(256, "sequences per generation batch", min=1)
    grade_timeout_s: float = opt(5.0, "math-verify time limit per answer (s)", min=0.1)
    seed: int = opt(1234, "sampling seed", min=0)
    backend: str = opt("hf", "generation backend", choices=("hf", "vllm"))
    vllm_enforce_eager: Optional[bool] = opt(None, "vllm backend: no CUDA graphs (null = auto: CUDA graphs "
                                             "on GPU, eager on CPU)")


@dataclass
class RuleResources:
    """What one job of a rule asks the scheduler for (slurm reads these; local runs use cpus)."""
    gpu: int = opt(0, "GPUs per node of a job (slurm: --gpus, or --gres=gpu:N per node when nodes > 1); "
                   "train: one process per GPU", min=0)
    cpus_per_task: int = opt(1, "CPU cores per node of a job (also torch threads, split over its processes)",
                             min=1)
    mem_mb: int = opt(4000, "memory per node of a job in MB", min=100)
    runtime: int = opt(60, "wall-time limit per job in minutes", min=1)
    nodes: int = opt(1, "nodes per job (train only: multi-node training through torchrun)", min=1)
    launcher: str = opt("auto", "train only: how the training processes start. auto: torchrun when "
                        "gpu > 1 or nodes > 1, else one process; deepspeed: the deepspeed launcher "
                        "(one node); none: always one process", choices=("auto", "torchrun", "deepspeed", "none"))


@dataclass
class TrainResources(RuleResources):
    """The train rule's resources, plus what the memory plan (``pgopd plan``) checks against."""
    gpu_model: str = opt("H100-80", "GPU model of the train jobs: the memory plan's budget per GPU "
                         "(`pgopd plan`; checked when the workflow loads if gpu > 0) is the memory it exposes, "
                         "in GiB: A100-40 40.0, A100-80 80.0, H100-80 79.6, H200-141 140.4, B200-180 179.1",
                         choices=("A100-40", "A100-80", "H100-80", "H200-141", "B200-180"))
    gpu_mem_gb: Optional[float] = opt(None, "instead of gpu_model: GiB one GPU exposes (nvidia-smi's "
                                      "memory.total / 1024; an H100 '80 GB' is 79.6)", min=1.0)
    plan_prompt_tokens: int = opt(1024, "longest prompt (tokens) the memory plan assumes", min=1)


@dataclass
class ResourcesConfig:
    """Per-rule resources; cluster-specific values (partition, account) live in the profile."""
    prepare_data: RuleResources = sub(RuleResources, "prepare_data jobs")
    build_toy_models: RuleResources = opt(RuleResources(cpus_per_task=2), "build_toy_models jobs (one per role)")
    cache_teacher: RuleResources = sub(RuleResources, "cache_teacher jobs")
    train: TrainResources = sub(TrainResources, "train jobs")
    evaluate: RuleResources = sub(RuleResources, "evaluate jobs")
    report: RuleResources = sub(RuleResources, "report job")


@dataclass
class Config:
    pairs: dict = opt({"toy": {"teacher": "toy", "student": "toy"}}, "name -> teacher-student pair")
    seeds: list = opt([0, 1], "training seeds; every training and evaluation job fans out over them", min=0,
                      max=2 ** 31 - 1)  # sampler seeds are seed * 1_000_003 + ...: within int64
    data: DataConfig = sub(DataConfig, "data preparation")
    toy_models: ToyModelsConfig = sub(ToyModelsConfig, "toy models (pairs that name 'toy')")
    teacher_cache: TeacherCacheConfig = sub(TeacherCacheConfig, "teacher caching")
    train: TrainConfig = sub(TrainConfig, "on-policy distillation")
    eval: EvalConfig = sub(EvalConfig, "benchmark evaluation")
    resources: ResourcesConfig = sub(ResourcesConfig, "per-rule scheduler resources")

    _item_types = {"pairs": PairConfig}


# ----------------------------------------------------------------------------- parsing
def _r(value) -> str:
    """``repr`` for error messages; an int past Python's int->str digit limit cannot be shown."""
    try:
        return repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    return {int: "integer", float: "number", bool: "boolean", str: "string", list: "list",
            dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_scalar(key: str, value, tp, meta):
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean (true/false), got {_r(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_r(value)}")
    elif tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string: the number meant
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_r(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond the float range
            raise ConfigError(f"{key}: expected a finite number, got {_r(value)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {_r(value)}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_r(value)}")
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {_r(value)} is not allowed; allowed values: {', '.join(map(str, choices))}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: {_r(value)} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {_r(value)} is above the maximum {hi}")
    return value


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _parse_value(key: str, value, tp, meta, item_type=None):
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[x]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _parse_value(key, value, inner, meta)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, key)
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_r(value)}")
        if not value:
            raise ConfigError(f"{key}: must not be empty")
        out = []
        for i, v in enumerate(value):
            if "choices" in meta:
                out.append(_check_scalar(f"{key}[{i}]", v, str, meta))
            else:
                out.append(_check_scalar(f"{key}[{i}]", v, int, meta))
        if len(set(out)) != len(out):
            raise ConfigError(f"{key}: duplicate entries in {_r(value)}")
        return out
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_r(value)}")
        if not value:
            raise ConfigError(f"{key}: must not be empty")
        out = {}
        for name, v in value.items():
            if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"{key}: name {_r(name)} must be letters, digits, '-' or '_'")
            out[name] = parse_dataclass(item_type, v, f"{key}.{name}") if item_type else v
        return out
    if value is None:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got null")
    return _check_scalar(key, value, tp, meta)


def parse_dataclass(cls, raw, prefix: str = ""):
    """Build ``cls`` from a mapping, checking keys, types and ranges; errors name the key."""
    where = prefix or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_r(raw)}")
    types = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)  # YAML keys may be ints, null, ...
    if unknown:
        u = unknown[0]
        u = u if isinstance(u, str) and u and u == u.strip() else _r(u)  # '' or ' x' must show
        k = f"{prefix}.{u}" if prefix else u
        raise ConfigError(f"{k}: unknown key; allowed keys under {where}: {', '.join(fields)}")
    item_types = getattr(cls, "_item_types", {})
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            value = raw[name]
            if dataclasses.is_dataclass(types[name]) and isinstance(value, dict):
                # keys left out keep this field's own default (e.g. the toy student's), not
                # the class defaults of its type
                value = {**to_dict(f.default_factory()), **value}
            kwargs[name] = _parse_value(key, value, types[name], f.metadata, item_types.get(name))
        elif name in item_types:  # default mapping of sub-configs
            default = f.default_factory()
            kwargs[name] = _parse_value(key, default, dict, f.metadata, item_types[name])
        elif dataclasses.is_dataclass(types[name]):  # absent section: its defaults, parsed
            kwargs[name] = parse_dataclass(types[name], to_dict(f.default_factory()), key)
    obj = cls(**kwargs)
    _cross_checks(obj, prefix)
    return obj


def _cross_checks(obj, prefix):
    def err(k, msg):
        raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: {msg}")

    if isinstance(obj, SyntheticConfig) and obj.min_ops > obj.max_ops:
        err("min_ops", f"{_r(obj.min_ops)} is larger than max_ops ({_r(obj.max_ops)})")
    if isinstance(obj, BenchmarkConfig) and obj.source == "file" and not obj.path:
        err("path", "a benchmark with source: file needs a path")
    if isinstance(obj, TrainDataConfig) and obj.source == "file" and not obj.path:
        err("path", "source: file needs a path")
    if isinstance(obj, (BenchmarkConfig, TrainDataConfig)) and obj.source == "hf" and not obj.hf_name:
        err("hf_name", "source: hf needs hf_name (a dataset name on the Hugging Face Hub)")
    if isinstance(obj, DataConfig) and obj.max_prompt_tokens and not obj.tokenizer:
        err("tokenizer", f"max_prompt_tokens ({_r(obj.max_prompt_tokens)}) counts tokens of a tokenizer: "
            "name one (a model directory or Hugging Face id, usually the student's)")
    if isinstance(obj, RuleResources):
        if obj.launcher == "deepspeed" and obj.nodes > 1:
            err("launcher", "the deepspeed launcher needs a hostfile and ssh across nodes; with "
                "nodes > 1 use launcher: torchrun (or auto)")
        if obj.launcher == "none" and obj.nodes > 1:
            err("launcher", f"none starts one process, which cannot use nodes: {_r(obj.nodes)}")
    if isinstance(obj, ToyModelConfig) and obj.d_model % obj.n_heads:
        err("n_heads", f"d_model ({_r(obj.d_model)}) must be divisible by n_heads ({_r(obj.n_heads)})")
    if isinstance(obj, PGOPDConfig):
        if obj.probe_end > obj.prefix_len:
            err("probe_end", f"{_r(obj.probe_end)} is beyond prefix_len ({_r(obj.prefix_len)})")
        if obj.probe_start >= obj.probe_end:
            err("probe_start", f"{_r(obj.probe_start)} must be below probe_end ({_r(obj.probe_end)})")
    if isinstance(obj, PruneOPDConfig) and obj.truncate_threshold > obj.drift_threshold:
        err("truncate_threshold", f"{_r(obj.truncate_threshold)} must not exceed drift_threshold "
            f"({_r(obj.drift_threshold)})")
    if isinstance(obj, PruneOPDConfig) and obj.drift_threshold > obj.expand_threshold:
        err("drift_threshold", f"{_r(obj.drift_threshold)} must not exceed expand_threshold "
            f"({_r(obj.expand_threshold)}): the window would expand while drifting")
    if isinstance(obj, TrainConfig):
        for k, v in (("pgopd.prefix_len", obj.pgopd.prefix_len), ("pruneopd.window", obj.pruneopd.window),
                     ("controls.fixed_truncation_len", obj.controls.fixed_truncation_len)):
            if v is not None and v > obj.max_new_tokens:
                err(k, f"{_r(v)} exceeds max_new_tokens ({_r(obj.max_new_tokens)})")


def parse(raw: dict) -> Config:
    """Parse a whole config mapping (as loaded from YAML)."""
    return parse_dataclass(Config, raw)


def load_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error names the file, line and column (one line)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_unique_key_loader())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _unique_key_loader():
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"key {key!r} given twice (first on line {seen[key] + 1}; only the last would count)",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load(path: str | Path) -> Config:
    return parse(load_yaml(path))


def to_dict(obj) -> Any:
    """Plain dict/list form of a config object (what rules pass to ``pgopd`` as params)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- schema + help
def json_schema(cls=Config) -> dict:
    """JSON schema (2020-12) equivalent to the dataclass checks that a schema can express."""
    types = _field_types(cls)
    props = {}
    item_types = getattr(cls, "_item_types", {})
    for f in dataclasses.fields(cls):
        props[f.name] = _schema_for(types[f.name], f.metadata, item_types.get(f.name))
        if f.metadata.get("help"):
            props[f.name]["description"] = f.metadata["help"]
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if cls is Config:
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}
    return out


def _schema_for(tp, meta, item_type=None) -> dict:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        s = _schema_for(inner, meta)
        s["type"] = [s["type"], "null"]
        return s
    if dataclasses.is_dataclass(tp):
        return json_schema(tp)
    if tp is list:
        item = {"type": "string", "enum": list(meta["choices"])} if "choices" in meta else {"type": "integer"}
        for bound, name in (("min", "minimum"), ("max", "maximum")):
            if bound in meta and "choices" not in meta:
                item[name] = meta[bound]
        return {"type": "array", "minItems": 1, "uniqueItems": True, "items": item}
    if tp is dict:
        s = {"type": "object", "minProperties": 1}
        if item_type:
            s["additionalProperties"] = json_schema(item_type)
        return s
    s = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[tp]}
    if "choices" in meta:
        s["enum"] = list(meta["choices"])
    if "min" in meta:
        s["minimum"] = meta["min"]
    if "max" in meta:
        s["maximum"] = meta["max"]
    return s


def describe(cls, prefix: str = "", defaults=None) -> list[str]:
    """One line per option: ``key (default): help`` — used in ``pgopd <stage> --help``.

    Defaults are read off ``defaults`` (an instance; ``cls()`` if None), so a nested block
    whose owner overrides its class defaults (``toy_models.student``) shows its own values.
    """
    defaults = cls() if defaults is None else defaults
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = _field_types(cls)[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, key, default)
            continue
        default = to_dict(default)
        extra = ""
        if "choices" in f.metadata:
            extra = f" [{' | '.join(map(str, f.metadata['choices']))}]"
        elif "min" in f.metadata or "max" in f.metadata:
            extra = f" [{f.metadata.get('min', '')}..{f.metadata.get('max', '')}]"
        lines.append(f"  {key} (default {json.dumps(default)}){extra}: {f.metadata.get('help', '')}")
    return lines
