"""Control ``continue_all``: PG-OPD's probe is computed and logged, but nobody stops.

Isolates the early-stop decision (the PG-OPD referee's §3.2 ablation): same probe code,
same logs (``selected`` is what PG-OPD would have picked), full budget for everyone,
weight 1.
"""
from __future__ import annotations

from pgopd.policies.pgopd import PGOPDPolicy
from pgopd.rollout.types import Candidate


class ContinueAllPolicy(PGOPDPolicy):
    name = "continue_all"

    def select(self, cands: list[Candidate], probes: dict) -> set:
        return {c.cid for c in cands}
