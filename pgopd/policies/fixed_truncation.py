"""Control ``fixed_truncation``: everyone stops at the same length L.

Matches a method's mean generated tokens with a blind cut (the Prune-OPD referee's
"fixed-length cutoff" control), so a gain cannot be explained by shorter rollouts alone.
Candidates that reach L unfinished are stopped with ``train_len = L``; weight 1 everywhere.
If L >= max_new_tokens nobody is stopped (it is then plain OPD).
"""
from __future__ import annotations

from pgopd.policies.common import chunk_to, extend_weights
from pgopd.rollout.types import Candidate, Policy


class FixedTruncationPolicy(Policy):
    name = "fixed_truncation"

    def __init__(self, length: int, max_new_tokens: int):
        if length < 1:
            raise ValueError(f"fixed truncation length must be >= 1, got {length}")
        self.length = length
        self.max_new_tokens = max_new_tokens

    def next_chunk(self, generated: int, max_new_tokens: int, chunk_size: int) -> int:
        boundary = self.length if generated < self.length else None
        return chunk_to(generated, max_new_tokens, chunk_size, boundary)

    def decide(self, live: list[Candidate], generated: int) -> None:
        for c in live:
            extend_weights(c, 1.0)
            if self.length >= self.max_new_tokens or c.length < self.length:
                continue
            if c.finished and c.length == self.length:
                continue  # EOS exactly at L: complete, nothing cut
            if not c.finished:
                c.stopped = True
            c.train_len = self.length
            c.info["stop_reason"] = "fixed"
            c.info["truncated_at"] = self.length
