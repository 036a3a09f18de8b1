"""Control ``random_prune``: at the prefix a *random* subset continues, at a matched rate.

Same decision point, same stop treatment (``low_overlap``) and same logs as PG-OPD, but
the continuing subset ignores the overlap, so a PG-OPD gain over this control is due to
*which* candidates continue, not how many.

Count rule: in each prompt group with ``n`` live candidates at the decision,
``floor(rate * n + u)`` continue (``u ~ U[0,1)``: stochastic rounding, so the expected
count is exactly ``rate * n`` and ``rate * n`` integral gives exactly that many), chosen
uniformly without replacement.  The generator is ``random.Random(seed)`` owned by the
policy; groups are visited in order and candidates sorted by cid, so a run is reproducible
under its seed.
"""
from __future__ import annotations

import math
import random

from pgopd.config import PGOPDConfig
from pgopd.policies.pgopd import PGOPDPolicy
from pgopd.rollout.types import Candidate


class RandomPrunePolicy(PGOPDPolicy):
    name = "random_prune"

    def __init__(self, cfg: PGOPDConfig, continue_rate: float, seed: int = 0):
        super().__init__(cfg)
        if not 0.0 <= continue_rate <= 1.0:
            raise ValueError(f"continue_rate must be in [0, 1], got {continue_rate}")
        self.continue_rate = continue_rate
        self.rng = random.Random(seed)

    def select(self, cands: list[Candidate], probes: dict) -> set:
        n = len(cands)
        n_keep = min(n, int(math.floor(self.continue_rate * n + self.rng.random())))
        cids = sorted(c.cid for c in cands)
        return set(self.rng.sample(cids, n_keep))
