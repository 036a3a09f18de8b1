"""Rollout-allocation policies: ``opd``, ``pgopd``, ``pruneopd`` and the matched controls.

Each policy is one small class (one file) implementing :class:`pgopd.rollout.types.Policy`;
the rollout loop is the same for all of them.  Build one with :func:`make_policy`.
"""
from __future__ import annotations

from pgopd.config import ABLATIONS, ALL_METHODS, PGOPDConfig, TrainConfig, split_control
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


def reference_kept_key(reference: dict | None) -> str:
    """The reference summary's field a fixed cut is matched to: ``mean_kept_tokens`` (trained
    tokens per candidate: what the reference kept), or ``mean_generated_tokens`` in summaries
    written before ``mean_kept_tokens`` existed."""
    if reference is not None and reference.get("mean_kept_tokens") is not None:
        return "mean_kept_tokens"
    return "mean_generated_tokens"


def fixed_cut_length(length) -> int:
    """A fixed cut at ``length`` tokens: rounded half-up; at least one token is always generated."""
    return max(1, round_half_up(float(length)))


def make_policy(method: str, cfg: TrainConfig, seed: int = 0, reference: dict | None = None) -> Policy:
    """The allocation policy of ``method`` (one of ``pgopd.config.ALL_METHODS``).

    ``reference`` is the summary of the run the matched controls copy from
    (``mean_kept_tokens``, ``continue_rate``, ``cut_rate``, ``mean_cut_len``); explicit
    ``cfg.controls`` values win.  ``seed`` only matters for ``random_prune``.
    """
    base, ref = split_control(method)
    if method == "opd":
        return OPDPolicy()
    if method == "pgopd":
        return PGOPDPolicy(cfg.pgopd)
    if method in ("pruneopd", *ABLATIONS["pruneopd"]):
        parts = {"pruneopd": {}, "pruneopd_drift_only": {"reweight": False, "window": False},
                 "pruneopd_window_only": {"reweight": False, "truncate": False},
                 "pruneopd_reweight_only": {"truncate": False, "window": False}}[method]
        return PruneOPDPolicy(cfg.pruneopd, cfg.max_new_tokens, name=method, **parts)
    if method == "continue_all":
        return ContinueAllPolicy(cfg.pgopd)
    if method == "reweight_only":
        return ReweightOnlyPolicy(cfg.pgopd)
    if base == "fixed_truncation":
        length = _matched(cfg.controls.fixed_truncation_len, reference, reference_kept_key(reference),
                          "fixed_truncation_len", method)
        return FixedTruncationPolicy(fixed_cut_length(length), cfg.max_new_tokens)
    if base == "random_prune" and ref == "pruneopd":
        return _random_cut(cfg, reference, seed, method)
    if base == "random_prune":
        rate = _matched(cfg.controls.random_continue_rate, reference, "continue_rate",
                        "random_continue_rate", method)
        return RandomPrunePolicy(cfg.pgopd, float(rate), seed=seed)
    raise ValueError(f"unknown method {method!r}; allowed: {', '.join(ALL_METHODS)}")


def _random_cut(cfg: TrainConfig, reference: dict | None, seed: int, method: str) -> Policy:
    """random_prune matched to Prune-OPD: at the reference's mean cut length (its candidates
    cut for drift / window end, mean trained length), ``cut_rate * n_samples`` of each prompt
    group's candidates (stochastic rounding) stop, chosen at random among those still live;
    the rest run to EOS or the limit.

    Prune-OPD cuts at varying points; where fewer candidates than that are still live at the
    matched point, all of them stop and the realised cut rate falls below the reference's
    (the report's control table shows both).  An explicit ``controls.random_continue_rate``
    instead continues that fraction of the live candidates.
    """
    if reference is None or reference.get("cut_rate") is None:
        raise ValueError(f"{method}: needs the reference run's summary with 'cut_rate' and 'mean_cut_len' "
                         f"(a Prune-OPD summary.json written by this version)")
    cut_rate, cut_len = float(reference["cut_rate"]), reference.get("mean_cut_len")
    if cut_len is None or cut_rate == 0.0:  # the reference cut nothing: neither does this
        cut_rate, cut_len = 0.0, cfg.max_new_tokens
    L = max(1, min(cfg.max_new_tokens, round_half_up(float(cut_len))))
    pg = PGOPDConfig(prefix_len=L, probe_start=0, probe_end=L)
    rate = cfg.controls.random_continue_rate
    if rate is not None:
        return RandomPrunePolicy(pg, rate, seed=seed)
    return RandomPrunePolicy(pg, 1.0 - cut_rate, seed=seed, cuts_per_group=cut_rate * cfg.n_samples)
