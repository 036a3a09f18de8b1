"""``pgopd prepare-data``: training prompts and every benchmark as ``{id, prompt, answer}`` jsonl.

Writes ``train.jsonl``, ``bench/<name>.jsonl`` and ``stats.json`` (counts per split and
skipped rows by reason) into ``out_dir``, each atomically.  Synthetic benchmarks use
``ops`` operations per problem and their own seed, and never repeat an expression of the
training set or of another benchmark (benchmarks are drawn in config order, each excluding
everything drawn before it).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import BenchmarkConfig, DataConfig
from .loaders import BAD_ROW_REASONS, load_hf_records, load_records, write_json, write_jsonl
from .synthetic import make_split

log = logging.getLogger(__name__)


def _synthetic_stats(records: list[dict], **extra) -> dict:
    return {"source": "synthetic", "rows": len(records), "kept": len(records),
            "skipped": {r: 0 for r in BAD_ROW_REASONS}, **extra}


def _load_file(cfg: DataConfig, *, path: str, prompt_field: str, answer_field: str,
               id_field: str, limit: int, name: str, key: str) -> tuple[list[dict], dict]:
    """A local file; any error names the config entry (``data.benchmarks.aime``) and the file."""
    try:
        records, stats = load_records(path, prompt_field=prompt_field, answer_field=answer_field,
                                      id_field=id_field, limit=limit, on_bad_row=cfg.on_bad_row,
                                      prompt_suffix=cfg.prompt_suffix, source_name=name)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{key}: {e}") from None
    except ValueError as e:
        try:
            err = type(e)(f"{key}: {e}")  # keeps BadRow etc.
        except TypeError:  # an exception class with another signature
            err = ValueError(f"{key}: {e}")
        raise err from None
    return records, {"source": "file", **stats}


def _load_hf(cfg: DataConfig, src, *, limit: int, name: str, key: str) -> tuple[list[dict], dict]:
    """A Hugging Face dataset (``src``: a TrainDataConfig / BenchmarkConfig with source hf)."""
    records, stats = load_hf_records(src.hf_name, split=src.hf_split, config=src.hf_config, key=key,
                                     prompt_field=src.prompt_field, answer_field=src.answer_field,
                                     id_field=src.id_field, limit=limit, on_bad_row=cfg.on_bad_row,
                                     prompt_suffix=cfg.prompt_suffix, source_name=name)
    return records, {"source": "hf", **stats}


def build_train(cfg: DataConfig) -> tuple[list[dict], dict]:
    """Training records (synthetic ones carry ``solution`` and ``ops``) and their stats."""
    t = cfg.train
    if t.source == "synthetic":
        s = cfg.synthetic
        records = make_split(s.n_train, s.min_ops, s.max_ops, s.operand_max, s.seed, "train", task=s.task)
        return records, _synthetic_stats(records, task=s.task, min_ops=s.min_ops, max_ops=s.max_ops, seed=s.seed)
    if t.source == "hf":
        return _load_hf(cfg, t, limit=t.limit, name="train", key="data.train")
    return _load_file(cfg, path=t.path, prompt_field=t.prompt_field, answer_field=t.answer_field,
                      id_field=t.id_field, limit=t.limit, name="train", key="data.train")


def build_benchmark(cfg: DataConfig, name: str, bench: BenchmarkConfig,
                    exclude: set[str]) -> tuple[list[dict], dict]:
    """One benchmark's records; synthetic ones avoid every prompt in ``exclude``."""
    if bench.source == "synthetic":
        if bench.n < 1:
            raise ValueError(f"data.benchmarks.{name}.n: a synthetic benchmark needs n >= 1, got {bench.n}")
        try:
            records = make_split(bench.n, bench.ops, bench.ops, cfg.synthetic.operand_max,
                                 bench.seed, name, exclude=exclude, task=cfg.synthetic.task)
        except ValueError as e:
            raise ValueError(f"data.benchmarks.{name}: {e}") from None
        return records, _synthetic_stats(records, ops=bench.ops, seed=bench.seed)
    if bench.source == "hf":
        return _load_hf(cfg, bench, limit=bench.n, name=name, key=f"data.benchmarks.{name}")
    return _load_file(cfg, path=bench.path, prompt_field=bench.prompt_field,
                      answer_field=bench.answer_field, id_field=bench.id_field, limit=bench.n,
                      name=name, key=f"data.benchmarks.{name}")


def prompt_lengths(cfg: DataConfig, records: list[dict], tokenizer) -> list[int]:
    """Tokens of each record's prompt as the model sees it (chat template, system prompt and
    generation prompt included: ``encode_prompts``, what train / evaluate feed the model)."""
    from ..models.loading import encode_prompts

    return [len(ids) for ids in encode_prompts(tokenizer, [r["prompt"] for r in records], cfg.system_prompt)]


def limit_prompt_length(cfg: DataConfig, split: str, records: list[dict], stats: dict,
                        lengths: list[int]) -> list[dict]:
    """Records whose prompt fits ``data.max_prompt_tokens``: with ``on_bad_row: error`` a longer
    one stops the stage, naming how many and the longest (a 1 MB prompt would otherwise reach
    training and die allocating its KV cache); with ``skip`` they are dropped and counted in
    ``stats["skipped"]["prompt_too_long"]`` (``stats["longest_dropped"]`` names the longest)."""
    limit = cfg.max_prompt_tokens
    over = [(n, r["id"]) for n, r in zip(lengths, records) if n > limit]
    stats["skipped"]["prompt_too_long"] = len(over)
    if not over:
        return records
    n_max, id_max = max(over, key=lambda x: x[0])
    what = (f"data.max_prompt_tokens: {split}: {len(over)} of {len(records)} prompts are longer than "
            f"{limit} tokens (data.tokenizer {cfg.tokenizer!r}); the longest, id {id_max!r}, has {n_max}")
    if cfg.on_bad_row == "error":
        raise ValueError(what + "; raise the limit, or set data.on_bad_row: skip to drop them")
    log.warning("%s: dropped", what)
    stats["longest_dropped"] = {"id": id_max, "tokens": n_max}
    stats["kept"] -= len(over)
    too_long = {i for _, i in over}
    return [r for r in records if r["id"] not in too_long]


def _apply_prompt_limit(cfg: DataConfig, splits: dict[str, tuple[list[dict], dict]]) -> dict:
    if not cfg.max_prompt_tokens:
        return splits
    from ..models.loading import load_tokenizer

    try:
        tok = load_tokenizer(cfg.tokenizer)
    except Exception as e:  # noqa: BLE001 -- any loading failure: name the key and the cause
        raise ValueError(f"data.tokenizer: cannot load {cfg.tokenizer!r} to count max_prompt_tokens "
                         f"({type(e).__name__}: {e})") from None
    return {split: (limit_prompt_length(cfg, split, recs, st, prompt_lengths(cfg, recs, tok)), st)
            for split, (recs, st) in splits.items()}


def prepare_data(cfg: DataConfig, out_dir: Path) -> dict:
    """Write ``train.jsonl``, ``bench/<name>.jsonl`` and ``stats.json``; returns the stats."""
    out_dir = Path(out_dir)
    train, train_stats = build_train(cfg)
    seen = {r["prompt"] for r in train}
    benches: dict[str, tuple[list[dict], dict]] = {}
    for name, bench in cfg.benchmarks.items():
        if not isinstance(bench, BenchmarkConfig):
            raise TypeError(f"data.benchmarks.{name}: expected a parsed BenchmarkConfig, "
                            f"got {type(bench).__name__} (parse the config first)")
        records, stats = build_benchmark(cfg, name, bench, seen)
        seen |= {r["prompt"] for r in records}
        benches[name] = (records, stats)

    limited = _apply_prompt_limit(cfg, {"train": (train, train_stats),
                                        **{f"bench/{n}": v for n, v in benches.items()}})
    train, train_stats = limited.pop("train")
    benches = {n.removeprefix("bench/"): v for n, v in limited.items()}
    write_jsonl(out_dir / "train.jsonl", train)
    for name, (records, _) in benches.items():
        write_jsonl(out_dir / "bench" / f"{name}.jsonl", records)
    stats = {"train": train_stats, "bench": {name: st for name, (_, st) in benches.items()}}
    write_json(out_dir / "stats.json", stats)
    for split, st in [("train", train_stats), *stats["bench"].items()]:
        skipped = sum(st["skipped"].values())
        log.info("%s: %d records (%s)%s", split, st["kept"], st["source"],
                 f", {skipped} malformed rows skipped" if skipped else "")
    return stats
