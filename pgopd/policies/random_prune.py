"""Control ``random_prune``: at the prefix a *random* subset continues, at a matched rate.

Same decision point, same stop treatment (``low_overlap``) and same logs as PG-OPD, but
the continuing subset ignores the overlap, so a PG-OPD gain over this control is due to
*which* candidates continue, not how many.

Count rule: in each prompt group with ``n`` live candidates at the decision,
``floor(rate * n + u)`` continue (``u ~ U[0,1)``: stochastic rounding, so the expected
count is exactly ``rate * n`` and ``rate * n`` integral gives exactly that many), chosen
uniformly without replacement (by position among the group's candidates sorted by cid).
Each group draws from its own generator keyed on (seed, training step, *global* group index,
see ``Policy.begin_step``): a run is reproducible under its seed, and a batch split over N
processes continues the same candidates as on one process.
"""
from __future__ import annotations

import math
import random

from pgopd.config import PGOPDConfig
from pgopd.policies.pgopd import PGOPDPolicy
from pgopd.rollout.types import Candidate


class RandomPrunePolicy(PGOPDPolicy):
    name = "random_prune"
    stop_label = "random"

    def __init__(self, cfg: PGOPDConfig, continue_rate: float, seed: int = 0, cuts_per_group: float | None = None):
        super().__init__(cfg)
        if not 0.0 <= continue_rate <= 1.0:
            raise ValueError(f"continue_rate must be in [0, 1], got {continue_rate}")
        self.continue_rate = continue_rate
        self.seed, self.step, self.group_offset = seed, 0, 0
        # cuts per prompt group (matched to Prune-OPD, whose cut rate is over *all* of a
        # group's candidates): when set, floor(cuts_per_group + u) of the live ones stop
        self.cuts_per_group = cuts_per_group

    def begin_step(self, step: int, group_offset: int = 0) -> None:
        self.step, self.group_offset = step, group_offset

    def select(self, cands: list[Candidate], probes: dict) -> set:
        # a str seed is hashed with SHA-512: stable across processes and Python runs
        rng = random.Random(f"random_prune:{self.seed}:{self.step}:{self.group_offset + cands[0].group}")
        n = len(cands)
        if self.cuts_per_group is not None:
            n_keep = max(0, n - int(math.floor(self.cuts_per_group + rng.random())))
        else:
            n_keep = min(n, int(math.floor(self.continue_rate * n + rng.random())))
        cids = sorted(c.cid for c in cands)
        return set(rng.sample(cids, n_keep))
