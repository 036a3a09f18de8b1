"""Vanilla OPD: every candidate gets the same budget (max_new_tokens or EOS), weight 1."""
from __future__ import annotations

from pgopd.policies.common import extend_weights
from pgopd.rollout.types import Candidate, Policy


class OPDPolicy(Policy):
    """The baseline both PG-OPD and Prune-OPD reallocate from: no stopping, no weighting."""

    name = "opd"

    def decide(self, live: list[Candidate], generated: int) -> None:
        for c in live:
            extend_weights(c, 1.0)
