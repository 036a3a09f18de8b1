"""Inputs the workflow cannot serve, refused before any job runs (or at a stage's start,
where only the models or data say it), each with one line naming the key.

* :func:`check_config` (workflow load, ``pgopd check-config``): top-k sizes against the
  vocabulary (when the models' config.json is at hand), benchmark names that are columns of
  main.csv, fewer training prompts than a step takes.
* :func:`check_lengths` (train / evaluate start): the longest prompt plus the generation
  limit within every model's ``max_position_embeddings``.
* :func:`check_reference` (train start): a matched control copies its numbers from a run of
  the method it is matched to, not from any summary.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from . import config as C
from .config import Config, ConfigError

log = logging.getLogger("pgopd.inputcheck")


def _fixed_columns() -> set[str]:
    from .report.table import csv_columns

    return set(csv_columns([]))


def check_benchmark_names(names) -> None:
    """A benchmark's name becomes a main.csv column (and ``<name>_std``): no clash allowed."""
    fixed = _fixed_columns()
    for name in names:
        if name in fixed or name.endswith("_std"):
            raise ConfigError(f"data.benchmarks.{name}: the name is a column of main.csv (reserved: "
                              f"{', '.join(sorted(fixed))}, and any name ending in _std); rename the benchmark")


def vocab_size(cfg: Config, ref: str, where: str) -> int | None:
    """The vocabulary of model ``ref`` when its config is at hand (toy, local dir, HF cache)."""
    from . import memplan

    try:
        return memplan.model_shape(ref, where, cfg).vocab
    except ConfigError:  # no config.json yet: checked again when train starts
        return None


def check_topk(k_overlap: int, k_loss: int, vocab: int, uses_loss_k: bool, where: str) -> None:
    """top-k sets as large as the vocabulary always overlap fully: the methods decide nothing."""
    if k_overlap >= vocab:
        raise ConfigError(f"train.overlap_k: {k_overlap} is not below the vocabulary of {where} ({vocab}); "
                          "every overlap would be 1.0 and PG-OPD / Prune-OPD would decide nothing")
    if uses_loss_k and k_loss >= vocab:
        raise ConfigError(f"train.loss_top_k: {k_loss} is not below the vocabulary of {where} ({vocab}); "
                          "use loss: sampled or a smaller k")


def check_config(cfg: Config) -> None:
    """The workflow-level checks of this module (see the module doc)."""
    check_benchmark_names(cfg.data.benchmarks)
    t = cfg.train
    for pair, p in cfg.pairs.items():
        for role in ("teacher", "student"):
            v = vocab_size(cfg, getattr(p, role), f"pairs.{pair}.{role}")
            if v is not None:
                check_topk(t.overlap_k, t.loss_top_k, v, t.loss != "sampled", f"pairs.{pair}.{role}")
    src = cfg.data.train
    n = cfg.data.synthetic.n_train if src.source == "synthetic" else src.limit
    if n and n < t.prompts_per_step:
        key = "data.synthetic.n_train" if src.source == "synthetic" else "data.train.limit"
        raise ConfigError(f"train.prompts_per_step: {t.prompts_per_step} is more than the {n} training "
                          f"prompts ({key}); a step would repeat prompts")


def check_prompt_count(n: int, prompts_per_step: int, where: str) -> None:
    if n < prompts_per_step:
        raise ValueError(f"train.prompts_per_step: {prompts_per_step} is more than the {n} training prompts "
                         f"of {where}; a step would repeat prompts (lower prompts_per_step or add prompts)")


def max_positions(model_ref: str) -> int | None:
    """``max_position_embeddings`` of a model's config.json (None when it has none)."""
    from .memplan import find_config_json

    path = find_config_json(str(model_ref))
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None


def check_lengths(prompt_lens: list[int], ids: list, max_new_tokens: int, key: str, models: dict) -> None:
    """Refuse when the longest prompt plus ``max_new_tokens`` exceeds a model's positions.

    ``models``: role -> model path (teacher / student / model); ``key``: the config key of
    ``max_new_tokens`` (``train.max_new_tokens``)."""
    if not prompt_lens:
        return
    i = max(range(len(prompt_lens)), key=prompt_lens.__getitem__)
    need = prompt_lens[i] + max_new_tokens
    for role, ref in models.items():
        limit = max_positions(ref)
        if limit is not None and need > limit:
            raise ValueError(f"{key}: the longest prompt (id {ids[i]}, {prompt_lens[i]} tokens) plus {key} "
                             f"({max_new_tokens}) is {need} positions, more than the {role}'s "
                             f"max_position_embeddings ({limit}, {ref}); shorten the prompts or lower {key}")


def check_reference(method: str, reference: Path | None) -> None:
    """A matched control (``random_prune-pruneopd``) needs the summary of its reference method."""
    base, ref = C.split_control(method)
    if ref is None or reference is None:
        return
    try:
        got = json.loads(Path(reference).read_text()).get("method")
    except (OSError, ValueError) as e:
        raise ValueError(f"--reference {reference}: not a readable summary.json ({e})") from None
    if got is not None and got != ref:
        raise ValueError(f"--reference {reference}: a {got} run, but {method} is matched to {ref}; give the "
                         f"summary.json of the {ref} run of the same pair and seed")


def check_train_inputs(cfg: C.TrainConfig, records: list[dict], prompt_ids: list[list[int]], models: dict,
                       vocab: int) -> None:
    """At train start, what only the data and models tell: enough prompts for a step, top-k
    below the vocabulary, every prompt + ``max_new_tokens`` within the models' positions."""
    check_prompt_count(len(records), cfg.prompts_per_step, "the training data")
    check_topk(cfg.overlap_k, cfg.loss_top_k, vocab, cfg.loss != "sampled", "the models")
    check_lengths([len(p) for p in prompt_ids], [r.get("id") for r in records], cfg.max_new_tokens,
                  "train.max_new_tokens", models)
