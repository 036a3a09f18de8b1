"""The ``hf`` rollout backend: chunked sampling from a transformers model with its KV cache.

Sampling uses the Gumbel-max trick with uniform noise drawn for the *whole* batch at
every step (``B_total x V``) from one seeded generator, then indexed by the live rows.
The random stream therefore does not depend on chunk boundaries or on which rows have
already left the batch, so chunked generation equals one-shot generation token for token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv import KVBatch


def sample_tokens(logits_BV: torch.Tensor, temperature: float, top_p: float,
                  uniform_BV: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from ``softmax(logits / T)`` restricted to the top-p nucleus.

    ``uniform_BV`` in [0, 1) supplies the randomness (Gumbel-max); ``temperature == 0`` is greedy.
    Returns ``tokens_B`` (long).
    """
    if temperature == 0:
        return logits_BV.argmax(-1)
    scaled_BV = logits_BV / temperature
    if top_p < 1.0:
        sorted_BV, order_BV = scaled_BV.sort(-1, descending=True)
        probs_BV = sorted_BV.softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside_BV = probs_BV.cumsum(-1) - probs_BV >= top_p
        sorted_BV = sorted_BV.masked_fill(outside_BV, float("-inf"))
        scaled_BV = torch.empty_like(scaled_BV).scatter_(-1, order_BV, sorted_BV)
    gumbel_BV = -torch.log(-torch.log(uniform_BV.clamp(1e-20, 1 - 1e-7)))
    return (scaled_BV + gumbel_BV).argmax(-1)


@dataclass
class Chunk:
    """What one chunk of generation produced for the rows live during it."""

    tokens_BC: torch.Tensor        # long; pad_id after EOS
    valid_BC: torch.Tensor         # bool; True up to and including EOS
    logp_BC: torch.Tensor          # student log p(y_t) under the model's own distribution
    topk_ids_BCK: torch.Tensor     # student top-k ids at each position (from the sampling logits)
    topk_logp_BCK: torch.Tensor    # their log-probs
    finished_B: torch.Tensor       # bool; emitted EOS by the end of this chunk


class HFSampler:
    """Student sampler over a :class:`KVBatch`: ``start`` once, ``extend`` per chunk, ``select``."""

    def __init__(self, model, eos_id: int, pad_id: int, temperature: float = 1.0, top_p: float = 1.0,
                 topk: int = 8, seed: int = 0, row_offset: int = 0, n_global: int | None = None):
        """``row_offset`` / ``n_global``: this process's rows within a batch split over ranks;
        the noise is drawn for all ``n_global`` rows so a row samples the same tokens whether
        1 or N processes share the batch."""
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
        self.temperature, self.top_p, self.topk = temperature, top_p, topk
        self.seed, self.row_offset, self.n_global = seed, row_offset, n_global

    def start(self, prompts: list[list[int]]) -> None:
        self.kv = KVBatch(self.model, prompts, self.pad_id)
        self.logits_BV = self.kv.prefill()
        self.pending_B = None                      # sampled but not yet fed to the model
        self.rows_B = torch.arange(len(prompts))   # original row of each live row
        self.done_B = torch.zeros(len(prompts), dtype=torch.bool)
        self.n_total = self.n_global or len(prompts)
        if self.row_offset + len(prompts) > self.n_total:
            raise ValueError(f"rows {self.row_offset}..{self.row_offset + len(prompts)} exceed n_global={self.n_total}")
        self.gen = torch.Generator().manual_seed(self.seed)

    @property
    def n_live(self) -> int:
        return len(self.rows_B)

    @torch.no_grad()
    def extend(self, n_tokens: int) -> Chunk:
        toks, valid, logps, tk_ids, tk_logp = [], [], [], [], []
        V = self.logits_BV.shape[-1]
        for _ in range(n_tokens):
            if toks and bool(self.done_B.all()):
                break  # every row has ended: the rest of the chunk would be padding only
            if self.pending_B is not None:
                self.logits_BV = self.kv.forward_new(self.pending_B[:, None])[:, 0]
            # noise from a CPU generator (same stream on any device), used where the logits are
            noise_BV = torch.rand((self.n_total, V), generator=self.gen)[self.rows_B + self.row_offset]
            tok_dev_B = sample_tokens(self.logits_BV, self.temperature, self.top_p,
                                      noise_BV.to(self.logits_BV.device))
            logp_BV = torch.log_softmax(self.logits_BV, -1)
            top = logp_BV.topk(min(self.topk, V), dim=-1)
            tok_B = torch.where(self.done_B, torch.full_like(tok_dev_B.cpu(), self.pad_id), tok_dev_B.cpu())
            valid.append(~self.done_B)
            toks.append(tok_B)
            logps.append(logp_BV.gather(-1, tok_dev_B[:, None])[:, 0].cpu())
            tk_ids.append(top.indices.cpu())
            tk_logp.append(top.values.cpu())
            self.done_B = self.done_B | (tok_B == self.eos_id)
            self.pending_B = tok_B
        return Chunk(torch.stack(toks, 1), torch.stack(valid, 1), torch.stack(logps, 1),
                     torch.stack(tk_ids, 1), torch.stack(tk_logp, 1), self.done_B.clone())

    @property
    def positions(self) -> tuple[int, int]:
        """(prompt prefill positions, later positions) the student's forward ran, padding included."""
        return self.kv.n_prefill_positions, self.kv.n_positions

    def select(self, keep_B: torch.Tensor) -> None:
        """Keep live rows ``keep_B`` (indices into the current live batch)."""
        self.kv.select(keep_B)
        self.logits_BV = self.logits_BV.index_select(0, keep_B.to(self.logits_BV.device))
        self.rows_B = self.rows_B.index_select(0, keep_B)
        self.done_B = self.done_B.index_select(0, keep_B)
        if self.pending_B is not None:
            self.pending_B = self.pending_B.index_select(0, keep_B)

    def release(self) -> None:
        """Free the KV cache and the held logits once the rollout is done."""
        if getattr(self, "kv", None) is not None:
            self.kv.release()
        self.logits_BV = self.pending_B = None


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, eos_id: int, pad_id: int, n: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
             batch_size: int = 256, logprobs_k: int = 0, chunk_size: int = 16,
             progress: bool = False, desc: str = "generate") -> list[dict]:
    """Sample ``n`` responses per prompt.  Returns one dict per (prompt, sample) in order:
    ``{prompt_idx, sample_idx, tokens, logp}`` plus ``topk_ids`` / ``topk_logp`` (lists of
    length-k lists) when ``logprobs_k > 0``.  ``tokens`` end with EOS when the model stopped.
    Finished rows leave the batch every ``chunk_size`` tokens.
    """
    from tqdm import tqdm

    rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
    out: list[dict] = []
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, unit="seq")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        sampler = HFSampler(model, eos_id, pad_id, temperature, top_p, max(logprobs_k, 1),
                            seed=seed + start)
        sampler.start([prompts[p] for p, _ in batch])
        recs = [{"prompt_idx": p, "sample_idx": s, "tokens": [], "logp": [],
                 **({"topk_ids": [], "topk_logp": []} if logprobs_k else {})} for p, s in batch]
        generated = 0
        while sampler.n_live and generated < max_new_tokens:
            c = min(chunk_size, max_new_tokens - generated)
            ch = sampler.extend(c)
            generated += c
            for i, r in enumerate(sampler.rows_B.tolist()):
                m = ch.valid_BC[i]
                recs[r]["tokens"] += ch.tokens_BC[i][m].tolist()
                recs[r]["logp"] += ch.logp_BC[i][m].tolist()
                if logprobs_k:
                    recs[r]["topk_ids"] += ch.topk_ids_BCK[i][m].tolist()
                    recs[r]["topk_logp"] += [[round(x, 4) for x in row]
                                             for row in ch.topk_logp_BCK[i][m].tolist()]
            keep = (~ch.finished_B).nonzero()[:, 0]
            bar.update(int(ch.finished_B.sum()))
            if len(keep) < sampler.n_live:
                sampler.select(keep)
        bar.update(sampler.n_live)
        sampler.release()
        out += recs
    bar.close()
    return out
