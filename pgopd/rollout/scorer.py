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
    def __init__(self, model, pad_id: int, topk: int = 8):
        self.model, self.pad_id, self.topk = model, pad_id, topk
        self.n_scored = 0  # valid tokens scored so far (each exactly once)

    def start(self, prompts: list[list[int]]) -> None:
        self.kv = KVBatch(self.model, prompts, self.pad_id)
        self.n_scored = 0
        self.next_logits_BV = self.kv.prefill()

    @torch.no_grad()
    def score(self, tokens_BC: torch.Tensor, valid_BC: torch.Tensor,
              student_topk_ids_BCK: torch.Tensor | None = None) -> TeacherScores:
        """Score ``tokens_BC`` (the chunk just generated for the live rows)."""
        new_BCV = self.kv.forward_new(tokens_BC)
        # logits predicting token t come from position t-1: the held-over last position of
        # the previous chunk (or the prompt) followed by this chunk's first C-1 positions
        logits_BCV = torch.cat([self.next_logits_BV[:, None], new_BCV[:, :-1]], dim=1)
        self.next_logits_BV = new_BCV[:, -1]
        logp_BCV = torch.log_softmax(logits_BCV, -1)
        self.n_scored += int(valid_BC.sum())
        at_student = None
        if student_topk_ids_BCK is not None:
            at_student = logp_BCV.gather(-1, student_topk_ids_BCK.to(logp_BCV.device))
        return TeacherScores(  # plain CPU tensors for the policy and the update
            logp_BC=logp_BCV.gather(-1, tokens_BC.to(logp_BCV.device)[..., None])[..., 0].cpu(),
            topk_ids_BCK=logp_BCV.topk(min(self.topk, logp_BCV.shape[-1]), dim=-1).indices.cpu(),
            logp_at_student_BCK=None if at_student is None else at_student.cpu())

    @property
    def positions(self) -> tuple[int, int]:
        """(prompt prefill positions, later positions) the teacher's forward ran, padding included."""
        return self.kv.n_prefill_positions, self.kv.n_positions

    def select(self, keep_B: torch.Tensor) -> None:
        self.kv.select(keep_B)
        self.next_logits_BV = self.next_logits_BV.index_select(0, keep_B.to(self.next_logits_BV.device))
