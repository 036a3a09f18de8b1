"""Control ``reweight_only``: the probe overlap is used only as a loss weight.

Nobody stops; every token of a candidate is weighted by the candidate's probe overlap
(the "overlap only for reweighting" ablation asked for in the PG-OPD review).  Before the
decision the prefix tokens carry weight 1 as placeholders; at the decision they are lowered
to the probe (overlap <= 1, so a weight is never raised).  A candidate that ends before the
probe window (no probe) keeps weight 1, as it would under PG-OPD.
"""
from __future__ import annotations

from pgopd.policies.common import lower_weights
from pgopd.policies.continue_all import ContinueAllPolicy
from pgopd.rollout.types import Candidate


class ReweightOnlyPolicy(ContinueAllPolicy):
    name = "reweight_only"

    def new_token_weight(self, c: Candidate) -> float:
        probe = c.info.get("probe_overlap")
        return 1.0 if probe is None else probe

    def apply(self, c: Candidate, continued: bool) -> None:
        self._reweight(c)

    def on_eos_in_prefix(self, c: Candidate) -> None:
        self._reweight(c)

    @staticmethod
    def _reweight(c: Candidate) -> None:
        probe = c.info.get("probe_overlap")
        if probe is not None:
            lower_weights(c, probe)
