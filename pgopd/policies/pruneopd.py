"""Prune-OPD: monitor drift along the response, down-weight after it, truncate severe drift.

Prune-OPD (arXiv 2605.07804) watches local teacher-student compatibility (top-k overlap)
while a rollout is generated.  When the student's prefix drifts from the teacher's thought
process, the teacher's dense reward stops being locally exploitable, so later rewards are
monotonically down-weighted and, on severe drift, generation stops; when compatibility
stays high the training window is expanded to keep long-context supervision.

Monitor (per candidate, position t = 0, 1, ... of the response), with ``W = window``:

* window overlap ``w_t = mean(overlap[max(0, t-W+1) : t+1])`` (trailing; the first W-1
  positions average the prefix that exists), as :func:`pgopd.overlap.sliding_window_mean`.
* drift event at t iff ``w_t < drift_threshold`` and ``w_{t-1} >= drift_threshold``
  (a *crossing* into drift; the state before position 0 counts as not drifted).  A long
  drifted stretch is one event; recovering and drifting again is a new one.
* weight ``weight_t = decay ** (events in [0, t])``: the token of an event is already
  down-weighted.  Events only accumulate, so weights are non-increasing along the response.
* severe drift at t iff ``w_t < truncate_threshold`` or ``weight_t < min_weight``: the
  rollout is truncated *before* t: ``train_len = t`` (the trigger token's reward is the
  first one judged unreliable, so it is not trained), ``stopped = True``, and tokens from t
  on get weight 0.  Truncation at t = 0 leaves nothing to train: ``keep = False``.
* training window: it starts at ``min(initial_window, max_new_tokens)``.  When a live
  candidate's token count reaches its window end (< max_new_tokens), the window grows by
  ``expand_by`` (capped at max_new_tokens) iff ``w_t >= expand_threshold`` (the mean
  overlap over the last W tokens); otherwise it stops there (``train_len`` = window end).

Everything is decided position by position from the overlap stream, so the outcome does
not depend on how the loop chunks generation; ``next_chunk`` only makes chunk boundaries
land on the window-end grid ``initial_window + m * expand_by`` so no token is generated
past a window end before its expansion check.

Ablations (``pruneopd_*_only``): ``reweight`` off trains every token at weight 1;
``truncate`` off never cuts for drift (events are still counted and logged); ``window`` off
starts the window at max_new_tokens, so it never cuts.

``info``: ``drift_events``, ``drifted`` (current state), ``window_end`` (final window),
``expansions``, ``truncated_at`` (position t or None), ``stop_reason`` (``"drift"``,
``"window"`` or None), ``weight_min`` / ``weight_mean`` over the trained tokens.
"""
from __future__ import annotations

from pgopd.config import PruneOPDConfig
from pgopd.policies.common import chunk_to
from pgopd.rollout.types import Candidate, Policy


class PruneOPDPolicy(Policy):
    """``reweight`` / ``truncate`` / ``window``: Prune-OPD's three parts, each switchable so
    the ablations run one part alone (the monitor is the same code in all of them)."""

    name = "pruneopd"

    def __init__(self, cfg: PruneOPDConfig, max_new_tokens: int, *, reweight: bool = True,
                 truncate: bool = True, window: bool = True, name: str | None = None):
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self.reweight, self.truncate, self.window = reweight, truncate, window
        self.name = name or self.name

    def next_chunk(self, generated: int, max_new_tokens: int, chunk_size: int) -> int:
        c = self.cfg
        if not self.window:
            return chunk_to(generated, max_new_tokens, chunk_size, None)
        if generated < c.initial_window:
            boundary = c.initial_window
        else:  # next point of initial_window + m * expand_by strictly after `generated`
            boundary = c.initial_window + ((generated - c.initial_window) // c.expand_by + 1) * c.expand_by
        return chunk_to(generated, max_new_tokens, chunk_size, boundary)

    def decide(self, live: list[Candidate], generated: int) -> None:
        for c in live:
            self._advance(c)

    # ------------------------------------------------------------------ monitor
    def _advance(self, c: Candidate) -> None:
        cfg, st = self.cfg, c.info
        if "window_end" not in st:
            start = cfg.initial_window if self.window else self.max_new_tokens  # no window: never cut
            st.update(drift_events=0, drifted=False, window_end=min(start, self.max_new_tokens),
                      expansions=0, truncated_at=None, stop_reason=None)
        if len(c.overlap) < len(c.tokens):
            raise ValueError(f"candidate {c.cid}: {len(c.tokens)} tokens but only "
                             f"{len(c.overlap)} overlap values")
        W = cfg.window
        for t in range(len(c.weights), len(c.tokens)):
            if c.train_len is not None:  # already cut in this chunk: tokens past the cut
                c.weights.append(0.0)
                continue
            lo = max(0, t - W + 1)
            w_t = sum(c.overlap[lo:t + 1]) / (t + 1 - lo)
            below = w_t < cfg.drift_threshold
            if below and not st["drifted"]:
                st["drift_events"] += 1
            st["drifted"] = below
            weight = cfg.decay ** st["drift_events"]
            if self.truncate and (w_t < cfg.truncate_threshold or weight < cfg.min_weight):
                self._cut(c, t, "drift")
                st["truncated_at"] = t
                c.weights.append(0.0)
                continue
            c.weights.append(weight if self.reweight else 1.0)
            last_token_of_finished = c.finished and t == len(c.tokens) - 1
            if t + 1 == st["window_end"] and st["window_end"] < self.max_new_tokens \
                    and not last_token_of_finished:
                if w_t >= cfg.expand_threshold:
                    st["window_end"] = min(st["window_end"] + cfg.expand_by, self.max_new_tokens)
                    st["expansions"] += 1
                else:
                    self._cut(c, t + 1, "window")
        n = c.length if c.train_len is None else c.train_len
        trained = c.weights[:n]
        st["weight_min"] = min(trained) if trained else None
        st["weight_mean"] = sum(trained) / len(trained) if trained else None

    @staticmethod
    def _cut(c: Candidate, train_len: int, reason: str) -> None:
        c.train_len = train_len
        c.info["stop_reason"] = reason
        if not c.finished:
            c.stopped = True
        if train_len == 0:
            c.keep = False
