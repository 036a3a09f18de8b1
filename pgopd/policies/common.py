"""Small helpers shared by the allocation policies (no policy logic lives here)."""
from __future__ import annotations

import math

from pgopd.rollout.types import Candidate


def extend_weights(c: Candidate, value: float) -> None:
    """Append ``value`` for every token that has no weight yet (past weights are untouched)."""
    missing = len(c.tokens) - len(c.weights)
    if missing > 0:
        c.weights.extend([float(value)] * missing)


def lower_weights(c: Candidate, value: float, start: int = 0) -> None:
    """Cap the weights from ``start`` on at ``value``: a weight may go down, never up."""
    for i in range(start, len(c.weights)):
        c.weights[i] = min(c.weights[i], float(value))


def probe_overlap(overlap: list, start: int, end: int) -> float | None:
    """Mean overlap over the positions of ``[start, end)`` that exist; None if none do."""
    vals = overlap[start:end]
    return sum(vals) / len(vals) if vals else None


def chunk_to(generated: int, max_new_tokens: int, chunk_size: int, boundary: int | None) -> int:
    """Chunk length that never steps over ``boundary`` (so every candidate lands on it)."""
    n = min(chunk_size, max_new_tokens - generated)
    if boundary is not None and boundary > generated:
        n = min(n, boundary - generated)
    return n


def ceil_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` with a 1e-9 guard so 0.7 * 10 is 7, not 8 (float error)."""
    return min(n, max(0, math.ceil(fraction * n - 1e-9)))


def round_half_up(x: float) -> int:
    """Round to nearest with .5 going up (Python's round() goes to even)."""
    return int(math.floor(x + 0.5))
