"""The ``evaluate`` stage: avg@k accuracy of one model on one benchmark, graded by math-verify.

avg@k = the mean over problems of the fraction of its k samples that are correct (the
papers' metric; evaluation n=16, T=0.7, top_p=0.95 at paper scale).  Writes one json line
per sample (``<out>.jsonl``) and a summary (``<out>.json``).  Finished blocks of problems
go to ``<out>.jsonl.partial`` as they complete, so an interrupted evaluation resumes there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from .config import EvalConfig

log = logging.getLogger("pgopd.evaluate")

_ROW_KEYS = {"id", "sample_idx", "answer", "response", "correct", "n_tokens"}


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


def _fingerprint(cfg: EvalConfig, model_name: str, bench_jsonl: Path) -> dict:
    """What a partial file must have been written under for its rows to be reused."""
    from .config import to_dict

    digest = hashlib.sha256(Path(bench_jsonl).read_bytes()).hexdigest()
    return {"model": model_name, "bench": bench_jsonl.stem, "bench_sha256": digest, "eval": to_dict(cfg)}


def _read_partial(partial: Path, records: list[dict], k: int, fingerprint: dict) -> dict[int, list[dict]]:
    """Problem index -> its k rows (by sample_idx), for every *complete* problem in ``partial``.

    The first line is the header (the fingerprint); a partial written for another model,
    benchmark or config, or holding ids / answers that do not match the benchmark, is
    ignored as a whole (with a warning).  Lines that are not valid JSON (a half-written
    last line after a kill) are dropped; problems with fewer than k samples are redone.
    """
    if not partial.exists():
        return {}
    index = {r["id"]: i for i, r in enumerate(records)}
    if len(index) != len(records):
        log.warning("%s: benchmark ids are not unique; not resuming from it", partial)
        return {}
    header, rows, bad_lines = None, [], 0
    with open(partial, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                bad_lines += 1
                continue
            if lineno == 1:
                header = obj
            else:
                rows.append(obj)
    if bad_lines:
        log.warning("%s: dropped %d unreadable line(s) (interrupted write)", partial, bad_lines)
    if not isinstance(header, dict) or header.get("partial_of") != fingerprint:
        log.warning("%s: written for another model, benchmark or eval config; ignoring it", partial)
        return {}
    by_problem: dict[int, dict[int, dict]] = {}
    for row in rows:
        ok = (isinstance(row, dict) and set(row) == _ROW_KEYS
              and isinstance(row["id"], (str, int)) and row["id"] in index
              and isinstance(row["sample_idx"], int) and not isinstance(row["sample_idx"], bool)
              and 0 <= row["sample_idx"] < k and isinstance(row["correct"], bool)
              and isinstance(row["n_tokens"], int) and row["answer"] == records[index[row["id"]]]["answer"])
        if not ok:
            log.warning("%s: row %s does not match benchmark %s; ignoring the partial file",
                        partial, json.dumps(row)[:200], fingerprint["bench"])
            return {}
        by_problem.setdefault(index[row["id"]], {})[row["sample_idx"]] = row
    return {p: [s[j] for j in range(k)] for p, s in by_problem.items() if len(s) == k}


def _append(partial: Path, rows: list[dict]) -> None:
    """Append rows to the partial file and make them durable before going on."""
    with open(partial, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def evaluate_one(cfg: EvalConfig, model, tok, model_name: str, bench_jsonl: Path, out: Path) -> dict:
    """avg@k on one benchmark; writes ``<out>.jsonl`` and ``<out>.json``.

    Problems are generated and graded in blocks of ``max(1, batch_size // k)``; each
    finished block's rows are appended to ``<out>.jsonl.partial`` (fsynced), so a killed
    run resumes after its last complete problem.  A block's sampling seed is
    ``cfg.seed + its first problem index`` and blocks are aligned on problem indices, so
    a resumed run yields exactly the samples of an uninterrupted one.  The outputs are
    written atomically at the end, then the partial file is removed.
    """
    from .data.loaders import read_jsonl, write_jsonl
    from .grading import grade_many
    from .inputcheck import check_lengths
    from .models.loading import encode_prompts, response_text
    from .rollout import generate_with

    t0 = time.perf_counter()
    bench_jsonl, out = Path(bench_jsonl), Path(out)
    records = read_jsonl(bench_jsonl)
    prompt_ids = encode_prompts(tok, [r["prompt"] for r in records])  # once: the check and every block
    check_lengths([len(p) for p in prompt_ids], [r["id"] for r in records],
                  cfg.max_new_tokens, "eval.max_new_tokens", {"model": model_name})
    k = cfg.k
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".jsonl.partial")
    fingerprint = _fingerprint(cfg, model_name, bench_jsonl)
    done = _read_partial(partial, records, k, fingerprint)
    # start the partial afresh with only the complete problems: no torn line stays in it
    write_jsonl(partial, [{"partial_of": fingerprint}] + [r for p in sorted(done) for r in done[p]])
    if done:
        log.info("%s: resuming %s with %d/%d problems already done", model_name, bench_jsonl.stem,
                 len(done), len(records))
    block = max(1, cfg.batch_size // k)
    engine = None  # vllm: one engine for all blocks (generate_with would build one per call)
    try:
        for start in range(0, len(records), block):
            idx = list(range(start, min(start + block, len(records))))
            todo = [p for p in idx if p not in done]
            if not todo:
                continue
            if cfg.backend == "vllm" and engine is None:
                from .rollout.vllm_backend import VLLMEngine

                engine = VLLMEngine(model_name, max_logprobs=20, enforce_eager=cfg.vllm_enforce_eager)
            # the whole block is generated even if part of it is done: its samples depend only on start
            samples = generate_with(cfg.backend, engine or model_name, model, [prompt_ids[p] for p in idx],
                                    eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, n=k, temperature=cfg.temperature,
                                    top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + start,
                                    batch_size=cfg.batch_size, desc=f"eval {bench_jsonl.stem} @{start}")
            samples = [s for s in samples if idx[s["prompt_idx"]] not in done]
            texts = [response_text(tok, s["tokens"]) for s in samples]
            golds = [records[idx[s["prompt_idx"]]]["answer"] for s in samples]
            correct = grade_many(texts, golds, timeout_s=cfg.grade_timeout_s)
            new: dict[int, list[dict]] = {p: [None] * k for p in todo}
            for s, text, ok in zip(samples, texts, correct):
                r = records[idx[s["prompt_idx"]]]
                new[idx[s["prompt_idx"]]][s["sample_idx"]] = {
                    "id": r["id"], "sample_idx": s["sample_idx"], "answer": r["answer"], "response": text,
                    "correct": bool(ok), "n_tokens": len(s["tokens"])}
            _append(partial, [row for p in todo for row in new[p]])
            done.update(new)
    finally:
        if engine is not None:
            engine.shutdown()
    rows = [row for p in range(len(records)) for row in done[p]]
    by_problem = [[row["correct"] for row in done[p]] for p in range(len(records))]
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
    partial.unlink(missing_ok=True)
    log.info("%s on %s: avg@%d = %.3f", model_name, bench_jsonl.stem, cfg.k, summary["accuracy"])
    return summary
