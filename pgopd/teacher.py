"""The ``cache_teacher`` stage: run the teacher once over the training prompts.

Keeps, under ``results/teacher/<teacher>/``, its samples (``samples.jsonl``: tokens,
response text, correctness), per-token top-k log-probs (``topk.pt``) and a summary with
the ids of the prompts it solved.  Every training run of that teacher reuses them:
teacher-aligned prompt selection (``train.select_solved``) and the optional off-policy
cold start (``train.cold_start_steps``).  Tokenizer compatibility with every student of
this teacher is checked here, before any training job starts.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from .config import TeacherCacheConfig

log = logging.getLogger("pgopd.teacher")


def cache_teacher(cfg: TeacherCacheConfig, teacher: str, students: list[str], train_jsonl: Path,
                  out_dir: Path) -> dict:
    from .data.loaders import read_jsonl, write_jsonl
    from .grading import grade_many
    from .models.loading import (check_tokenizers_compatible, encode_prompts, load_model,
                                 load_tokenizer, response_text)
    from .rollout import generate_with

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    tok = load_tokenizer(teacher)
    for s in students:
        check_tokenizers_compatible(tok, load_tokenizer(s), teacher, s)
    records = read_jsonl(train_jsonl)
    model = load_model(teacher) if cfg.backend == "hf" else None
    prompts = encode_prompts(tok, [r["prompt"] for r in records])
    from .inputcheck import check_lengths

    check_lengths([len(p) for p in prompts], [r["id"] for r in records], cfg.max_new_tokens,
                  "teacher_cache.max_new_tokens", {"teacher": teacher})
    samples = generate_with(cfg.backend, teacher, model, prompts, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, n=cfg.n_samples, temperature=cfg.temperature,
                            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                            batch_size=cfg.batch_size, logprobs_k=cfg.logprobs_k, desc="teacher samples",
                            vllm_options={"enforce_eager": cfg.vllm_enforce_eager})
    texts = [response_text(tok, s["tokens"]) for s in samples]
    correct = grade_many(texts, [records[s["prompt_idx"]]["answer"] for s in samples])
    rows, topk = [], []
    for s, text, ok in zip(samples, texts, correct):
        rows.append({"id": records[s["prompt_idx"]]["id"], "sample_idx": s["sample_idx"],
                     "response": text, "tokens": s["tokens"], "correct": bool(ok),
                     "finished": bool(s["tokens"]) and s["tokens"][-1] == tok.eos_token_id})
        topk.append({"ids": torch.tensor(s["topk_ids"], dtype=torch.int32),
                     "logp": torch.tensor(s["topk_logp"], dtype=torch.float16)})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "samples.jsonl", rows)
    tmp = out_dir / "topk.pt.tmp"
    torch.save(topk, tmp)
    os.replace(tmp, out_dir / "topk.pt")
    solved = sorted({r["id"] for r in rows if r["correct"]})
    summary = {"teacher": teacher, "students_checked": list(students), "vocab_size": len(tok),
               "n_prompts": len(records), "n_samples": cfg.n_samples,
               "accuracy": sum(r["correct"] for r in rows) / max(len(rows), 1),
               "solved_fraction": len(solved) / max(len(records), 1), "solved_ids": solved,
               "tokens": sum(len(r["tokens"]) for r in rows), "wall_s": time.perf_counter() - t0}
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, out_dir / "summary.json")
    log.info("teacher cache: accuracy %.3f on %d prompts", summary["accuracy"], len(records))
    return summary
