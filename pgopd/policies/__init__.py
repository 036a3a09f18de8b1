"""Rollout-allocation policies: ``opd``, ``pgopd``, ``pruneopd`` and the matched controls.

Each policy is one small class (one file) implementing :class:`pgopd.rollout.types.Policy`;
the rollout loop is the same for all of them.  Build one with :func:`make_policy`.
"""
from __future__ import annotations

from pgopd.config import ALL_METHODS, TrainConfig
from pgopd.policies.common import round_half_up
from pgopd.policies.continue_all import ContinueAllPolicy
from pgopd.policies.fixed_truncation import FixedTruncationPolicy
from pgopd.policies.opd import OPDPolicy
from pgopd.policies.pgopd import PGOPDPolicy
from pgopd.policies.pruneopd import PruneOPDPolicy
from pgopd.policies.random_prune import RandomPrunePolicy
from pgopd.policies.reweight_only import ReweightOnlyPolicy
from pgopd.rollout.types import Policy

__all__ = ["make_policy", "OPDPolicy", "PGOPDPolicy", "PruneOPDPolicy", "ContinueAllPolicy",
           "ReweightOnlyPolicy", "FixedTruncationPolicy", "RandomPrunePolicy"]


def _matched(explicit, reference: dict | None, ref_key: str, cfg_key: str, method: str):
    """An explicit config value wins; else the reference run's number; else a clear error."""
    if explicit is not None:
        return explicit
    if reference is not None and reference.get(ref_key) is not None:
        return reference[ref_key]
    raise ValueError(f"{method}: set train.controls.{cfg_key} or pass a reference run summary "
                     f"with '{ref_key}' (missing: {cfg_key} / reference['{ref_key}'])")


def make_policy(method: str, cfg: TrainConfig, seed: int = 0, reference: dict | None = None) -> Policy:
    """The allocation policy of ``method`` (one of ``pgopd.config.ALL_METHODS``).

    ``reference`` is the summary of the run the matched controls copy from
    (``mean_generated_tokens``, ``continue_rate``); explicit ``cfg.controls`` values win.
    ``seed`` only matters for ``random_prune``.
    """
    if method == "opd":
        return OPDPolicy()
    if method == "pgopd":
        return PGOPDPolicy(cfg.pgopd)
    if method == "pruneopd":
        return PruneOPDPolicy(cfg.pruneopd, cfg.max_new_tokens)
    if method == "continue_all":
        return ContinueAllPolicy(cfg.pgopd)
    if method == "reweight_only":
        return ReweightOnlyPolicy(cfg.pgopd)
    if method == "fixed_truncation":
        length = _matched(cfg.controls.fixed_truncation_len, reference, "mean_generated_tokens",
                          "fixed_truncation_len", method)
        # The reference mean is rounded half-up; at least one token is always generated.
        return FixedTruncationPolicy(max(1, round_half_up(float(length))), cfg.max_new_tokens)
    if method == "random_prune":
        rate = _matched(cfg.controls.random_continue_rate, reference, "continue_rate",
                        "random_continue_rate", method)
        return RandomPrunePolicy(cfg.pgopd, float(rate), seed=seed)
    raise ValueError(f"unknown method {method!r}; allowed: {', '.join(ALL_METHODS)}")
