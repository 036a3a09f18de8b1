"""Teacher-student top-k overlap: the compatibility signal both allocation methods read.

"Rethinking On-Policy Distillation" (thunlp/OPD, arXiv 2604.13016) measures local
teacher-student compatibility on student-visited prefixes as

    M_overlap = E_t [ |S(p)_t ∩ S(q)_t| / k ],

where S(p)_t and S(q)_t are the top-k token sets of the student and teacher next-token
distributions at position t.  PG-OPD averages it over an early probe window of a fixed
prefix; Prune-OPD (arXiv 2605.07804) watches a trailing window of it along the response.

All functions here are pure.
"""
from __future__ import annotations

import torch


def topk_overlap(student_topk_ids_BTK: torch.Tensor, teacher_topk_ids_BTK: torch.Tensor) -> torch.Tensor:
    """Per-position top-k overlap ``|TopK_s ∩ TopK_t| / K``.

    Args:
        student_topk_ids_BTK: (B, T, K) integer ids of the student's top-k tokens; the K ids
            of one position are distinct (as ``torch.topk`` returns them).
        teacher_topk_ids_BTK: (B, T, K) the teacher's top-k ids at the same positions.

    Returns:
        overlap_BT: (B, T) float32 in [0, 1], in steps of 1/K.
    """
    if student_topk_ids_BTK.shape != teacher_topk_ids_BTK.shape:
        raise ValueError(f"top-k id shapes differ: student {tuple(student_topk_ids_BTK.shape)} "
                         f"vs teacher {tuple(teacher_topk_ids_BTK.shape)}")
    k = student_topk_ids_BTK.shape[-1]
    if k == 0:
        raise ValueError("top-k overlap needs K >= 1")
    # (B,T,K,1) == (B,T,1,K): a student id is in the intersection if it equals any teacher id.
    # Ids are distinct within a row, so counting matched student ids counts the intersection.
    match_BTKK = student_topk_ids_BTK.unsqueeze(-1) == teacher_topk_ids_BTK.unsqueeze(-2)
    inter_BT = match_BTKK.any(dim=-1).sum(dim=-1)
    return inter_BT.to(torch.float32) / k


def window_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Mean of ``x`` over the valid positions in ``[start, end)`` of each row.

    Used for PG-OPD's probe: the mean overlap over the probe window of the prefix.

    Args:
        x_BT: (B, T) values (e.g. per-token overlap).
        mask_BT: (B, T) bool or 0/1, True where the position exists (not padding / past EOS).
        start, end: window bounds on the T axis (clipped to [0, T]).

    Returns:
        mean_B: (B,) float; NaN for a row with no valid position in the window (no evidence,
        rather than a made-up 0 that would read as "fully drifted").
    """
    T = x_BT.shape[-1]
    start, end = max(0, start), min(T, end)
    x = x_BT[:, start:end].to(torch.float32)
    m = mask_BT[:, start:end].to(torch.float32)
    n_B = m.sum(dim=-1)
    total_B = (x * m).sum(dim=-1)
    return torch.where(n_B > 0, total_B / n_B.clamp(min=1), torch.full_like(total_B, float("nan")))


def sliding_window_mean(values: list[float], window: int) -> list[float]:
    """Trailing window mean at each position: ``mean(values[max(0, t-window+1) : t+1])``.

    The first ``window - 1`` positions average the prefix that exists (so the output has the
    same length as the input).  This is the per-candidate drift monitor of Prune-OPD.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    # Each window is summed afresh (O(T*window), tiny here) rather than with a running sum,
    # so values exactly on a threshold are not pushed across it by accumulated rounding.
    out = []
    for t in range(len(values)):
        lo = max(0, t - window + 1)
        out.append(sum(values[lo:t + 1]) / (t + 1 - lo))
    return out
