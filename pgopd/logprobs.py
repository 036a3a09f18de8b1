"""Log-probabilities from final hidden states and the LM head, a chunk of positions at a time.

At paper scale the (B, T, V) logits of a rank's sequences do not fit (32 x 7k tokens x
151,936 vocabulary ~ 70 GB in bf16, twice that as the fp32 log-softmax).  Every OPD loss
here needs log p at a *few* ids per position (the sampled token, the student's top-k), so
the logits of ``chunk`` positions are made, reduced to ``logsumexp`` and a gather, and
dropped.  In training the chunk is wrapped in a non-reentrant ``torch.utils.checkpoint``:
only the chunk's hidden states are kept, and backward recomputes that chunk's logits, so
the extra memory is O(chunk x V) in forward and in backward.

The LM head is called as a module (``lm_head(h)``), never through ``.weight``: a tied head
(Qwen3-1.7B) is then the embedding's parameter as usual, and under ZeRO-3 the module hooks
gather the sharded weight for each call.  Under ZeRO-3 every rank must call it the same
number of times; ``n_chunks`` pads the calls with empty chunks for that.

All functions are pure (no state); shapes: N positions, H hidden, J / K ids per position.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint


def n_chunks_for(n_positions: int, chunk: int) -> int:
    """How many LM-head calls :func:`logp_at_ids` makes for ``n_positions`` (at least 1)."""
    return max(1, math.ceil(n_positions / chunk))


def _logp_chunk(lm_head, h_CH: torch.Tensor, ids_CJ: torch.Tensor) -> torch.Tensor:
    """(C, H), (C, J) -> (C, J) fp32 log-softmax of ``lm_head(h)`` at ``ids``."""
    logits_CV = lm_head(h_CH).float()
    return logits_CV.gather(-1, ids_CJ) - torch.logsumexp(logits_CV, -1, keepdim=True)


def logp_at_ids(hidden_NH: torch.Tensor, lm_head, ids_NJ: torch.Tensor, chunk: int,
                n_chunks: int | None = None) -> torch.Tensor:
    """Full-vocabulary log-probs ``log softmax(lm_head(h_n))[ids_n,j]`` without an (N, V) tensor.

    Args:
        hidden_NH: (N, H) final hidden states (after the model's last norm), with grad or not.
        lm_head: the output-embedding module, ``(.., H) -> (.., V)``.
        ids_NJ: (N, J) long token ids per position (e.g. sampled token + student top-k).
        chunk: positions per LM-head call (memory ~ chunk x V x 4 bytes, twice in backward).
        n_chunks: make exactly this many LM-head calls (>= the chunks needed; the extra ones
            are empty), so that ranks under ZeRO-3 run the same collectives.

    Returns:
        logp_NJ: (N, J) float32; differentiable w.r.t. ``hidden_NH`` and the head's weight,
        including through the log-normaliser (so gradients reach logits of *all* V tokens).
    """
    N = hidden_NH.shape[0]
    need = n_chunks_for(N, chunk)
    n_chunks = need if n_chunks is None else n_chunks
    if n_chunks < need:
        raise ValueError(f"logp_at_ids: {N} positions need {need} chunks of {chunk}, got n_chunks={n_chunks}")
    ids_NJ = ids_NJ.to(hidden_NH.device)
    grad = torch.is_grad_enabled() and (hidden_NH.requires_grad
                                        or any(p.requires_grad for p in lm_head.parameters()))
    outs = []
    for i in range(n_chunks):
        h, ids = hidden_NH[i * chunk:(i + 1) * chunk], ids_NJ[i * chunk:(i + 1) * chunk]
        if grad:  # keep only h; backward recomputes this chunk's logits
            outs.append(checkpoint(_logp_chunk, lm_head, h, ids, use_reentrant=False))
        else:
            outs.append(_logp_chunk(lm_head, h, ids))
    return torch.cat(outs, 0)


@torch.no_grad()
def teacher_pieces(hidden_NH: torch.Tensor, lm_head, tokens_N: torch.Tensor, k: int, chunk: int,
                   at_ids_NK: torch.Tensor | None = None):
    """What the teacher's scoring keeps per position, a chunk of positions at a time.

    Args:
        hidden_NH: (N, H) teacher final hidden states predicting each position's token.
        lm_head: the teacher's output-embedding module.
        tokens_N: (N,) sampled token ids.
        k: teacher top-k size (for the overlap; clipped to V).
        chunk: positions per LM-head call.
        at_ids_NK: (N, K') optional ids (the student's top-k) to read log p_T at.

    Returns:
        logp_N: (N,) float32 log p_T(token);
        topk_ids_NK: (N, min(k, V)) long teacher top-k ids (ordered by logit, as ``topk``);
        logp_at_NK: (N, K') float32 log p_T at ``at_ids_NK``, or None.
    """
    N = hidden_NH.shape[0]
    dev = hidden_NH.device
    tokens_N = tokens_N.to(dev)
    logp, top, at = [], [], []
    for s in range(0, N, chunk):
        logits_CV = lm_head(hidden_NH[s:s + chunk]).float()
        lse_C1 = torch.logsumexp(logits_CV, -1, keepdim=True)
        logp.append((logits_CV.gather(-1, tokens_N[s:s + chunk, None]) - lse_C1)[:, 0])
        top.append(logits_CV.topk(min(k, logits_CV.shape[-1]), dim=-1).indices)
        if at_ids_NK is not None:
            at.append(logits_CV.gather(-1, at_ids_NK[s:s + chunk].to(dev)) - lse_C1)
        # free this chunk's fp32 logits before the next chunk's are made (else both are alive:
        # 4 B per logit more at the scoring peak, docs/memory.md)
        del logits_CV, lse_C1
    V = lm_head.out_features if hasattr(lm_head, "out_features") else None
    if not logp:  # no position: empty tensors of the right widths
        kk = k if V is None else min(k, V)
        return (torch.zeros(0, device=dev), torch.zeros((0, kk), dtype=torch.long, device=dev),
                None if at_ids_NK is None else torch.zeros((0, at_ids_NK.shape[-1]), device=dev))
    return torch.cat(logp), torch.cat(top), (torch.cat(at) if at_ids_NK is not None else None)


def naive_logp_at_ids(logits_NV: torch.Tensor, ids_NJ: torch.Tensor) -> torch.Tensor:
    """Reference: the full (N, V) fp32 log-softmax, gathered (tests compare against it)."""
    return torch.log_softmax(logits_NV.float(), -1).gather(-1, ids_NJ)
