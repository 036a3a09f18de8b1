"""The ``evaluate`` stage: avg@k accuracy of one model on one benchmark, graded by math-verify.

avg@k = the mean over problems of the fraction of its k samples that are correct (the
papers' metric; evaluation n=16, T=0.7, top_p=0.95 at paper scale).  Writes one json line
per sample (``<out>.jsonl``) and a summary (``<out>.json``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from .config import EvalConfig

log = logging.getLogger("pgopd.evaluate")


def avg_at_k(correct_by_problem: list[list[bool]]) -> float:
    """Mean over problems of the per-problem fraction correct; 0 problems -> nan."""
    if not correct_by_problem:
        return float("nan")
    return sum(sum(c) / len(c) for c in correct_by_problem) / len(correct_by_problem)


def pass_at_k(correct_by_problem: list[list[bool]]) -> float:
    if not correct_by_problem:
        return float("nan")
    return sum(any(c) for c in correct_by_problem) / len(correct_by_problem)


def evaluate(cfg: EvalConfig, model_ref: str, bench_jsonls: list[Path], out_dir: Path) -> dict:
    """Evaluate one model on each benchmark; returns ``{bench: summary}``."""
    from .models.loading import load_model, load_tokenizer

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    tok = load_tokenizer(model_ref)
    model = load_model(model_ref) if cfg.backend == "hf" else None
    return {Path(b).stem: evaluate_one(cfg, model, tok, str(model_ref), Path(b), Path(out_dir) / Path(b).stem)
            for b in bench_jsonls}


def evaluate_one(cfg: EvalConfig, model, tok, model_name: str, bench_jsonl: Path, out: Path) -> dict:
    """avg@k on one benchmark; writes ``<out>.jsonl`` and ``<out>.json``."""
    from .data.loaders import read_jsonl, write_jsonl
    from .grading import grade_many
    from .models.loading import encode_prompts, response_text
    from .rollout import generate_with

    t0 = time.perf_counter()
    records = read_jsonl(bench_jsonl)
    prompts = encode_prompts(tok, [r["prompt"] for r in records])
    samples = generate_with(cfg.backend, model_name, model, prompts, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size,
                            desc=f"eval {bench_jsonl.stem}")
    texts = [response_text(tok, s["tokens"]) for s in samples]
    golds = [records[s["prompt_idx"]]["answer"] for s in samples]
    correct = grade_many(texts, golds, timeout_s=cfg.grade_timeout_s)
    rows, by_problem = [], [[] for _ in records]
    for s, text, ok in zip(samples, texts, correct):
        r = records[s["prompt_idx"]]
        rows.append({"id": r["id"], "sample_idx": s["sample_idx"], "answer": r["answer"], "response": text,
                     "correct": bool(ok), "n_tokens": len(s["tokens"])})
        by_problem[s["prompt_idx"]].append(bool(ok))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out.with_name(out.name + ".jsonl"), rows)
    summary = {"model": model_name, "bench": bench_jsonl.stem, "k": cfg.k, "n_problems": len(records),
               "accuracy": avg_at_k(by_problem), "pass_at_k": pass_at_k(by_problem),
               "per_problem": {r["id"]: sum(c) / len(c) for r, c in zip(records, by_problem)},
               "mean_response_tokens": sum(x["n_tokens"] for x in rows) / max(len(rows), 1),
               "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
               "wall_s": time.perf_counter() - t0}
    tmp = out.with_name(out.name + ".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out.with_name(out.name + ".json"))
    log.info("%s on %s: avg@%d = %.3f", model_name, bench_jsonl.stem, cfg.k, summary["accuracy"])
    return summary
