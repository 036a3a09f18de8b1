"""Statistics for the report tables and the falsification analysis (pure functions, numpy/scipy).

Conventions
-----------
* Standard deviations over seeds are *sample* standard deviations (ddof = 1); with fewer
  than two values there is none (``None``).
* Every resampling procedure takes a ``seed`` and uses its own ``numpy.random.Generator``,
  so a report is reproducible bit for bit.
* Confidence intervals are percentile intervals at level ``1 - alpha`` (default 95 %).
* "Not available" is ``None`` (never ``nan``) in every returned value, so callers can
  write an empty cell without special cases.

Paired comparison of two methods (:func:`paired_bootstrap`)
----------------------------------------------------------
The unit of pairing is the *problem*: the same problem id of the same benchmark, evaluated
with the model of the same training seed for both methods.  ``diffs[b]`` is an array
``[n_seeds, n_problems_b]`` of per-problem differences in fraction correct (method minus
baseline) for benchmark ``b``.  The statistic is the table's ``avg`` difference:

    stat = mean_b ( mean_problems ( mean_seeds d[s, p] ) )

i.e. every benchmark counts equally, as in the ``avg`` column, however many problems it
has.  Its sampling distribution is estimated by a two-way ("pigeonhole", Owen 2007)
bootstrap for the crossed seeds x problems design: each replicate redraws the seeds (with
replacement) and, independently, the problems within each benchmark (with replacement,
stratified, so every replicate has every benchmark at its size).  With one seed only the
problems are redrawn.  The matching test (:func:`sign_flip_test`) flips the sign of
each problem's seed-averaged difference at random (the null: the two methods are
exchangeable on every problem).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

#: a two-sided exact Wilcoxon signed-rank test on n pairs cannot give p < 2 / 2**n; below 6
#: pairs it can never reach 0.05, so no p-value is reported (``None``).
MIN_WILCOXON_PAIRS = 6
N_BOOT = 2000
ALPHA = 0.05


def _finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def _none_if_nan(x) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


# ----------------------------------------------------------------------------- over seeds
def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, sample std (ddof 1), n) of the finite values; mean None if none, std None if n < 2."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return None, None, 0
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n >= 2 else None
    return mean, std, n


def wilcoxon_paired(x: Sequence[float], y: Sequence[float], min_pairs: int = MIN_WILCOXON_PAIRS,
                    ) -> Optional[float]:
    """Two-sided Wilcoxon signed-rank p-value of paired ``x - y`` (scipy), or None.

    None when there are fewer than ``min_pairs`` pairs.  All differences zero: p = 1 (no
    evidence of a difference; scipy would return nan).  Zero differences are dropped
    (``zero_method="wilcox"``); the exact distribution is used when scipy can.
    """
    from scipy.stats import wilcoxon

    if len(x) != len(y):
        raise ValueError(f"paired samples of different lengths: {len(x)} and {len(y)}")
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < min_pairs:
        return None
    if not np.any(d != 0):
        return 1.0
    res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return _none_if_nan(res.pvalue)


# ----------------------------------------------------------------------------- paired methods
def _as_blocks(diffs) -> list[np.ndarray]:
    blocks = []
    for d in diffs:
        a = np.asarray(d, dtype=float)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError(f"expected [n_seeds, n_problems] per benchmark, got shape {a.shape}")
        if a.size == 0:
            continue
        if not np.all(np.isfinite(a)):
            raise ValueError("paired differences must be finite")
        blocks.append(a)
    if blocks and len({b.shape[0] for b in blocks}) != 1:
        raise ValueError("every benchmark needs the same seeds (rows)")
    return blocks


def paired_stat(diffs) -> Optional[float]:
    """mean over benchmarks of mean over problems and seeds of the paired differences."""
    blocks = _as_blocks(diffs)
    if not blocks:
        return None
    return float(np.mean([b.mean() for b in blocks]))


def paired_bootstrap(diffs, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> dict:
    """Statistic and two-way bootstrap CI of a paired accuracy difference (see module doc).

    ``diffs``: per benchmark an array ``[n_seeds, n_problems]`` (or 1-d: one seed).
    Returns ``{"diff", "ci_low", "ci_high", "n_seeds", "n_problems"}`` (None when empty).
    """
    blocks = _as_blocks(diffs)
    out = {"diff": None, "ci_low": None, "ci_high": None, "n_seeds": 0, "n_problems": 0}
    if not blocks:
        return out
    rng = np.random.default_rng(seed)
    S = blocks[0].shape[0]
    out["n_seeds"], out["n_problems"] = S, int(sum(b.shape[1] for b in blocks))
    out["diff"] = paired_stat(blocks)
    # seed weights (multinomial counts), shared by all benchmarks of a replicate
    ws = rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot) if S > 1 else np.ones((n_boot, 1))
    stats = np.zeros(n_boot)
    for b in blocks:
        P = b.shape[1]
        wp = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot)  # [n_boot, P]
        stats += ((ws @ b) * wp).sum(axis=1) / (S * P)
    stats /= len(blocks)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def sign_flip_test(diffs, n_perm: int = N_BOOT, seed: int = 0) -> Optional[float]:
    """Two-sided paired randomization p-value of :func:`paired_stat` over problems.

    Each problem's seed-averaged difference gets a random sign (null: the two methods are
    exchangeable on every problem).  p = (1 + #{|T*| >= |T|}) / (1 + n_perm).
    """
    blocks = _as_blocks(diffs)
    if not blocks:
        return None
    rng = np.random.default_rng(seed)
    per_problem = [b.mean(axis=0) for b in blocks]  # [P_b]
    t_obs = abs(float(np.mean([p.mean() for p in per_problem])))
    if not any(np.any(p != 0) for p in per_problem):
        return 1.0
    stats = np.zeros(n_perm)
    for p in per_problem:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, p.size))
        stats += (signs * p).mean(axis=1)
    stats = np.abs(stats / len(per_problem))
    return float((1 + np.sum(stats >= t_obs - 1e-12)) / (1 + n_perm))


# ----------------------------------------------------------------------------- association
def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None if either side is constant."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    rx, ry = rankdata(x), rankdata(y)
    return _none_if_nan(np.corrcoef(rx, ry)[0, 1])


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    num = (rx * ry).sum(axis=1)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def spearman_ci(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA,
                seed: int = 0, chunk: int = 200) -> dict:
    """Spearman rho, its scipy p-value and a pairs-bootstrap percentile CI.

    Returns ``{"rho", "p", "ci_low", "ci_high", "n"}``; None entries when n < 3 or a side
    is constant.  Replicates in which a side is constant are left out of the CI.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    out = {"rho": None, "p": None, "ci_low": None, "ci_high": None, "n": n}
    rho = spearman(x, y) if n >= 3 else None
    if rho is None:
        return out
    out["rho"] = rho
    out["p"] = _none_if_nan(spearmanr(x, y).pvalue)
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        reps.append(_rowwise_spearman(x[idx], y[idx]))
    reps = np.concatenate(reps)
    reps = reps[np.isfinite(reps)]
    if reps.size:
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def bootstrap_mean_diff(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT,
                        alpha: float = ALPHA, seed: int = 0) -> dict:
    """mean(a) - mean(b) of two independent samples with a percentile bootstrap CI.

    Returns ``{"diff", "ci_low", "ci_high", "n_a", "n_b"}`` (None when a side is empty).
    """
    a, b = _finite(a), _finite(b)
    out = {"diff": None, "ci_low": None, "ci_high": None, "n_a": int(a.size), "n_b": int(b.size)}
    if a.size == 0 or b.size == 0:
        return out
    out["diff"] = float(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    rb = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    lo, hi = np.quantile(ra - rb, [alpha / 2, 1 - alpha / 2])
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA,
                      seed: int = 0) -> dict:
    """mean of one sample with a percentile bootstrap CI: ``{"mean", "ci_low", "ci_high", "n"}``."""
    a = _finite(values)
    out = {"mean": None, "ci_low": None, "ci_high": None, "n": int(a.size)}
    if a.size == 0:
        return out
    out["mean"] = float(a.mean())
    rng = np.random.default_rng(seed)
    reps = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def _quantile_edges(x: np.ndarray, n_bins: int) -> np.ndarray:
    return np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))


def bin_members(x: Sequence[float], n_bins: int = 5) -> np.ndarray:
    """Quantile-bin index of every x (-1 for non-finite x), as :func:`quantile_bins` bins it.

    Edges are the ``k / n_bins`` quantiles of the finite x; repeated edges (ties) are
    merged, so there may be fewer bins.  Bin i holds ``edge_i <= x < edge_{i+1}`` (the last
    bin is closed).  Empty bins are skipped: indices are consecutive from 0 (lowest x).
    """
    x = np.asarray(x, dtype=float)
    out = np.full(x.size, -1, dtype=int)
    ok = np.isfinite(x)
    if not ok.any():
        return out
    edges = _quantile_edges(x[ok], n_bins)
    if edges.size == 1:
        out[ok] = 0
        return out
    raw = np.clip(np.searchsorted(edges, x[ok], side="right") - 1, 0, edges.size - 2)
    used, dense = np.unique(raw, return_inverse=True)
    out[ok] = dense
    return out


def quantile_bins(x: Sequence[float], y: Sequence[float], n_bins: int = 5) -> list[dict]:
    """Quantile bins of ``x`` (see :func:`bin_members`) with the mean of ``y`` in each.

    Pairs where x or y is not finite are left out first.  Each bin: ``bin, x_low, x_high``
    (the observed range of x in the bin), ``x_mean, y_mean, y_sem`` (None when n < 2), ``n``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    idx = bin_members(x, n_bins)
    out = []
    for i in range(int(idx.max()) + 1 if idx.size else 0):
        sel = idx == i
        n = int(sel.sum())
        xx, yy = x[sel], y[sel]
        out.append({"bin": i, "x_low": float(xx.min()), "x_high": float(xx.max()),
                    "x_mean": float(xx.mean()), "y_mean": float(yy.mean()),
                    "y_sem": float(yy.std(ddof=1) / math.sqrt(n)) if n >= 2 else None, "n": n})
    return out


def ci_excludes_zero(lo: Optional[float], hi: Optional[float]) -> bool:
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def significant_sign(value: Optional[float], lo: Optional[float], hi: Optional[float]) -> int:
    """+1 / -1: ``value``'s sign when its CI [lo, hi] excludes 0; 0 otherwise (or no value)."""
    if value is None or not ci_excludes_zero(lo, hi):
        return 0
    return 1 if value > 0 else -1 if value < 0 else 0


def premise_verdict(a: int, b: int) -> str:
    """The verdict of two tests of one premise, each +1 (significantly for it), -1 (against)
    or 0: *mixed* when they are significant in opposite directions (not monotone: neither
    direction may be claimed), *contradicted* when one is against and the other not for,
    *supported* when both are for, else *not_supported*."""
    if a * b < 0:
        return "mixed"
    if -1 in (a, b):
        return "contradicted"
    return "supported" if a == b == 1 else "not_supported"
