"""PG-OPD: decode every candidate to a fixed prefix, continue only the high-overlap ones.

PG-OPD (prefix-guided OPD) decodes all candidates to ``prefix_len`` tokens, scores each by
its mean teacher-student top-k overlap over an early probe window ``[probe_start,
probe_end)`` of that prefix, and continues only the high-overlap ones to the full length;
the rest stop at the prefix, saving the suffix generation and keeping low-compatibility
suffixes out of the update (see the PG-OPD review: low prefix overlap is taken to predict a
noisy, weakly exploitable long-horizon signal).

Rules chosen here (the paper leaves them open):

* A candidate that emits EOS within the prefix (``len <= prefix_len`` when finished) is
  complete: it is not ranked, is trained on everything (weight 1) and logs its probe over
  the probe tokens it has (``None`` if it ended before ``probe_start``), with
  ``selected = None``, ``continued = False``.
* Ranking is per prompt group, over the group's candidates still live at the decision.
  With ``threshold`` set: continue iff ``probe >= threshold``.  Otherwise continue the top
  ``ceil(top_fraction * n_live)`` by probe (so any ``top_fraction > 0`` keeps at least one
  candidate per group), ties broken by lower ``cid``.
* Stopped candidates: ``low_overlap: train_prefix`` -> trained on the prefix
  (``train_len = prefix_len``); ``drop`` -> ``keep = False``.
* ``info``: ``probe_overlap``, ``selected`` (what this rule picks), ``continued`` (what
  actually happened; equal to ``selected`` here, different in the controls),
  ``decision_step`` (generated count at the decision, ``None`` for EOS within the prefix).

The controls ``continue_all``, ``reweight_only`` and ``random_prune`` subclass this policy
and override only ``select`` / ``apply``, so the probe is computed by the same code.
"""
from __future__ import annotations

from collections import defaultdict

from pgopd.config import PGOPDConfig
from pgopd.policies.common import ceil_count, chunk_to, extend_weights, probe_overlap
from pgopd.rollout.types import Candidate, Policy


class PGOPDPolicy(Policy):
    name = "pgopd"
    stop_label = "prefix"  # candidates.jsonl stop_reason of a candidate stopped at the decision

    def __init__(self, cfg: PGOPDConfig):
        self.cfg = cfg

    # ------------------------------------------------------------------ loop interface
    def next_chunk(self, generated: int, max_new_tokens: int, chunk_size: int) -> int:
        # Land a chunk boundary exactly on prefix_len: every candidate is decided after the
        # same number of tokens and nothing is generated past the prefix before the decision.
        boundary = self.cfg.prefix_len if generated < self.cfg.prefix_len else None
        return chunk_to(generated, max_new_tokens, chunk_size, boundary)

    def decide(self, live: list[Candidate], generated: int) -> None:
        P = self.cfg.prefix_len
        due: dict[int, list[Candidate]] = defaultdict(list)
        for c in live:
            extend_weights(c, self.new_token_weight(c))
            if "probe_overlap" in c.info:
                continue  # already decided
            if c.finished and c.length <= P:  # EOS within the prefix: complete, not ranked
                c.info.update(probe_overlap=self.probe(c), selected=None, continued=False,
                              decision_step=None)
                self.on_eos_in_prefix(c)
            elif c.length >= P:
                due[c.group].append(c)
        for group in sorted(due):
            cands = sorted(due[group], key=lambda c: c.cid)
            probes = {c.cid: self.probe(c) for c in cands}
            rule = self.rule_select(cands, probes)
            chosen = self.select(cands, probes)
            for c in cands:
                c.info.update(probe_overlap=probes[c.cid], selected=c.cid in rule,
                              continued=c.cid in chosen, decision_step=generated)
                self.apply(c, continued=c.cid in chosen)

    # ------------------------------------------------------------------ pieces
    def probe(self, c: Candidate) -> float | None:
        return probe_overlap(c.overlap, self.cfg.probe_start, self.cfg.probe_end)

    def rule_select(self, cands: list[Candidate], probes: dict) -> set:
        """The PG-OPD rule: cids of one group's live candidates that continue."""
        if self.cfg.threshold is not None:
            return {c.cid for c in cands if probes[c.cid] >= self.cfg.threshold}
        n_keep = ceil_count(self.cfg.top_fraction, len(cands))
        ranked = sorted(cands, key=lambda c: (-probes[c.cid], c.cid))
        return {c.cid for c in ranked[:n_keep]}

    def select(self, cands: list[Candidate], probes: dict) -> set:
        """Which candidates actually continue (controls override this)."""
        return self.rule_select(cands, probes)

    def apply(self, c: Candidate, continued: bool) -> None:
        """Write the decision into a ranked candidate (controls override this)."""
        if continued:
            return
        if not c.finished:
            c.stopped = True
            c.info["stop_reason"] = self.stop_label
        # Only the prefix is trained even if the loop generated past it.
        c.train_len = self.cfg.prefix_len
        if self.cfg.low_overlap == "drop":
            c.keep = False

    def on_eos_in_prefix(self, c: Candidate) -> None:
        """A candidate that ended within the prefix: nothing to decide (weight stays 1)."""

    def new_token_weight(self, c: Candidate) -> float:
        return 1.0
