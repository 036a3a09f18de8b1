"""Incremental teacher scoring: the teacher keeps its own KV cache and scores each new
token exactly once, right after the chunk that produced it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv import KVBatch


@dataclass
class TeacherScores:
    logp_BC: torch.Tensor                 # log p_T(y_t) of the sampled tokens
    topk_ids_BCK: torch.Tensor            # teacher top-k ids (for the overlap)
    logp_at_student_BCK: torch.Tensor | None  # log p_T at the student's top-k ids (top-k loss)


class TeacherScorer:
    """The teacher over its own :class:`KVBatch`: ``start`` on the prompts, ``score`` each
    chunk once, ``select`` the rows that stay live.

    Memory: the forward returns final hidden states, and log p_T is computed from them a
    ``chunk_tokens`` block of positions at a time (``pgopd.logprobs.teacher_pieces``): no
    (B, C, V) tensor is made, only (chunk_tokens, V) logits."""

    def __init__(self, model, pad_id: int, topk: int = 8, chunk_tokens: int = 1024):
        self.model, self.pad_id, self.topk, self.chunk_tokens = model, pad_id, topk, chunk_tokens
        self.n_scored = 0  # valid tokens scored so far (each exactly once)

    def start(self, prompts: list[list[int]]) -> None:
        self.kv = KVBatch(self.model, prompts, self.pad_id)
        self.n_scored = 0
        self.next_hidden_BH = self.kv.prefill(hidden=True)

    @torch.no_grad()
    def score(self, tokens_BC: torch.Tensor, valid_BC: torch.Tensor,
              student_topk_ids_BCK: torch.Tensor | None = None) -> TeacherScores:
        """Score ``tokens_BC`` (the chunk just generated for the live rows)."""
        from ..logprobs import teacher_pieces

        new_BCH = self.kv.forward_new(tokens_BC, hidden=True)
        # the state predicting token t comes from position t-1: the held-over last position
        # of the previous chunk (or the prompt) followed by this chunk's first C-1 positions
        h_BCH = torch.cat([self.next_hidden_BH[:, None], new_BCH[:, :-1]], dim=1)
        self.next_hidden_BH = new_BCH[:, -1]
        B, C, H = h_BCH.shape
        self.n_scored += int(valid_BC.sum())
        at = None if student_topk_ids_BCK is None else student_topk_ids_BCK.reshape(B * C, -1)
        logp_N, top_NK, at_NK = teacher_pieces(h_BCH.reshape(B * C, H), self.model.get_output_embeddings(),
                                               tokens_BC.reshape(-1), self.topk, self.chunk_tokens, at)
        return TeacherScores(  # plain CPU tensors for the policy and the update
            logp_BC=logp_N.reshape(B, C).cpu(), topk_ids_BCK=top_NK.reshape(B, C, -1).cpu(),
            logp_at_student_BCK=None if at_NK is None else at_NK.reshape(B, C, -1).cpu())

    @property
    def positions(self) -> tuple[int, int]:
        """(prompt prefill positions, later positions) the teacher's forward ran, padding included."""
        return self.kv.n_prefill_positions, self.kv.n_positions

    def select(self, keep_B: torch.Tensor) -> None:
        self.kv.select(keep_B)
        self.next_hidden_BH = self.next_hidden_BH.index_select(0, keep_B.to(self.next_hidden_BH.device))

    def release(self) -> None:
        """Free the teacher's KV cache and held hidden states once the rollout is done
        (``teacher_offload`` moves only the weights)."""
        if getattr(self, "kv", None) is not None:
            self.kv.release()
        self.next_hidden_BH = None
