"""Plain data passed between sampling, teacher scoring, the allocation policy and the update.

The chunked rollout loop (``pgopd.rollout.loop``) owns the tensors; policies see only
:class:`Candidate` records (lists of floats), decide, and write their decisions back into
the same records.  Every live candidate of a step has generated the same number of tokens
when the policy is asked (they advance in lock-step, chunk by chunk).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    """One sampled response (of ``n_samples`` per prompt) while and after it is generated."""

    cid: int                      # index of the candidate within the step's batch
    group: int                    # index of its prompt within the step (candidates of a prompt share it)
    tokens: list = field(default_factory=list)         # response token ids so far (EOS included)
    student_logp: list = field(default_factory=list)   # log p_student(y_t), from the sampling logits
    teacher_logp: list = field(default_factory=list)   # log p_teacher(y_t), scored once per token
    overlap: list = field(default_factory=list)        # |TopK_s ∩ TopK_t| / k at each position
    finished: bool = False        # emitted EOS: leaves the batch after this chunk
    stopped: bool = False         # the policy stopped it: leaves the batch after this chunk
    keep: bool = True             # False: dropped, contributes nothing to the loss
    train_len: int | None = None  # only tokens [0, train_len) are trained; None = all generated
    weights: list = field(default_factory=list)        # per-token loss weight, len == len(tokens)
    info: dict = field(default_factory=dict)           # per-candidate log (probe overlap, drift, ...)

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def live(self) -> bool:
        return not (self.finished or self.stopped)

    def reward(self) -> list:
        """Per-token reverse-KL reward r_t = log p_T(y_t) - log p_S(y_t)."""
        return [t - s for t, s in zip(self.teacher_logp, self.student_logp)]


class Policy:
    """Allocation policy interface.  Subclasses live in ``pgopd.policies``.

    The loop calls ``next_chunk`` before each chunk and ``decide`` after the chunk has been
    generated and teacher-scored, on the candidates that were live during that chunk.
    ``decide`` must make ``len(c.weights) == len(c.tokens)`` for every candidate it sees
    and may set ``stopped``, ``keep``, ``train_len`` and ``info``.  ``finalize`` runs once
    on all candidates of the step after generation ends.
    """

    name = "base"

    def begin_step(self, step: int, group_offset: int = 0) -> None:
        """Called before each step's rollout with the training step and the global index of
        this process's first prompt group (its local group ``g`` is global group
        ``group_offset + g``).  Policies that draw random numbers key them on these, so a
        batch split over N processes makes the same draws as one process."""

    def next_chunk(self, generated: int, max_new_tokens: int, chunk_size: int) -> int:
        return min(chunk_size, max_new_tokens - generated)

    def decide(self, live: list[Candidate], generated: int) -> None:
        raise NotImplementedError

    def finalize(self, cands: list[Candidate]) -> None:
        pass
