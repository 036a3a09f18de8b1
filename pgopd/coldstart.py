"""The optional off-policy cold start: supervised steps on the teacher's cached correct
samples before OPD (``train.cold_start_steps``; Agarwal et al. and thunlp/OPD start OPD from
a distilled student).

Memory as in the OPD update (:mod:`pgopd.update`): every rank takes its share of the step's
rows, packs them into micro-batches of at most ``train.max_tokens_per_micro_batch`` padded
tokens, and sends only response positions through the LM head, in chunks of
``train.logprob_chunk_tokens``.  No (rows x length x vocabulary) logits are made: at
config/paper.yaml's shapes one plain ``model(labels=...)`` forward over a step's 256 rows
would hold ~480 GB of bf16 logits and their fp32 copy."""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from .config import TrainConfig
from .logprobs import logp_at_ids, n_chunks_for
from .update import Dist, agree_micro_batches, discard_gradients, pack_micro_batches, student_hidden


def sft_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Right-padded rows ``prompt + response``.

    Returns ``input_ids_BS`` / ``attention_BS`` (B, S) and ``mask_BT`` (B, S - 1): True where
    position t predicts a response token (``input_ids_BS[:, t + 1]``)."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    S = max(2, max((len(s) for s in seqs), default=0))
    ids_BS = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    att_BS = torch.zeros_like(ids_BS)
    mask_BT = torch.zeros((len(seqs), S - 1), dtype=torch.bool)
    for b, (p, s) in enumerate(zip(prompts, seqs)):
        ids_BS[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        att_BS[b, :len(s)] = 1
        mask_BT[b, max(len(p) - 1, 0):len(s) - 1] = True
    return {"input_ids_BS": ids_BS, "attention_BS": att_BS, "mask_BT": mask_BT}


def sft_nll_sum(model, module, batch: dict, chunk: int, n_chunks: int | None = None) -> torch.Tensor:
    """Summed negative log-likelihood of the response tokens of one micro-batch (a 0-dim
    tensor; divide by the token count for the cross-entropy ``model(labels=...)`` gives).
    ``model`` is what is called (the DeepSpeed engine), ``module`` the HF model inside it."""
    dev = next(module.parameters()).device
    ids_BS = batch["input_ids_BS"].to(dev)
    mask_BT = batch["mask_BT"].to(dev)
    h_NH = student_hidden(model, module, ids_BS, batch["attention_BS"].to(dev))[:, :-1][mask_BT]
    logp_N1 = logp_at_ids(h_NH, module.get_output_embeddings(), ids_BS[:, 1:][mask_BT][:, None], chunk, n_chunks)
    return -logp_N1.sum()


def cold_start_rows(cache_dir: Path, records: list[dict]) -> list[tuple[int, list[int]]]:
    """(training-record index, response tokens) of every correct cached teacher sample."""
    from .data.loaders import read_jsonl

    by_id = {r["id"]: i for i, r in enumerate(records)}
    rows = [(by_id[s["id"]], s["tokens"]) for s in read_jsonl(cache_dir / "samples.jsonl")
            if s.get("correct") and s["id"] in by_id]
    if not rows:
        raise ValueError("train.cold_start_steps > 0 but the teacher cache has no correct sample")
    return rows


def cold_start_step(engine, rows: list[tuple[list[int], list[int]]], cfg: TrainConfig, pad_id: int,
                    dist: Dist) -> float:
    """One supervised step on this rank's (prompt, response) rows: micro-batches with a
    chunked LM head, gradients summed over every rank's response tokens, one optimizer
    step.  Returns the global token-mean loss; raises on a non-finite one (on every rank)."""
    lengths = [len(p) + len(r) for p, r in rows]
    mbs = pack_micro_batches(lengths, cfg.max_tokens_per_micro_batch)
    chunks = [n_chunks_for(sum(len(rows[i][1]) for i in mb), cfg.logprob_chunk_tokens) for mb in mbs]
    mbs, chunks = agree_micro_batches(mbs, chunks, dist)
    (n_global,) = dist.sum(float(sum(len(r) for _, r in rows)))
    total, ok = 0.0, True
    for j, (mb, n_chunks) in enumerate(zip(mbs, chunks)):
        # an empty micro-batch (padding, for the same calls on every rank): one row with no
        # response, so nothing is trained
        batch = sft_batch([rows[i][0] for i in mb] or [[pad_id]], [rows[i][1] for i in mb] or [[]], pad_id)
        engine.set_gradient_accumulation_boundary(j == len(mbs) - 1)
        # DeepSpeed averages gradients over ranks: x world makes them a sum over all tokens
        loss = sft_nll_sum(engine, engine.module, batch, cfg.logprob_chunk_tokens, n_chunks) * (dist.world / n_global)
        value = float(loss.detach())
        ok = ok and math.isfinite(value)
        engine.backward(torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0))
        total += value
    if dist.sum(float(not ok))[0]:
        discard_gradients(engine)
        raise FloatingPointError("train.cold_start_steps: non-finite SFT loss; lower train.lr")
    engine.step()
    return dist.sum(total / dist.world)[0]


def cold_start(engine, cfg: TrainConfig, cache_dir: Path, records: list[dict], prompt_ids: list[list[int]],
               pad_id: int, seed: int, dist: Dist | None = None) -> list[float]:
    """``cfg.cold_start_steps`` supervised steps of ``prompts_per_step x n_samples`` rows drawn
    (with replacement, the same draw on every rank) from the correct cached samples; each
    rank trains on its slice.  Returns the per-step losses."""
    dist = dist or Dist()
    pool = cold_start_rows(cache_dir, records)
    rng = random.Random(seed)
    engine.module.train()
    losses = []
    for _ in range(cfg.cold_start_steps):
        draw = [pool[rng.randrange(len(pool))] for _ in range(cfg.prompts_per_step * cfg.n_samples)]
        mine = [(prompt_ids[i], toks) for i, toks in draw[dist.rank::dist.world]]
        losses.append(cold_start_step(engine, mine, cfg, pad_id, dist))
    return losses
