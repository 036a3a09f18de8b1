"""OPD losses: pure functions of log-probabilities, masks and per-token weights.

Every loss (``train.loss``: ``sampled`` -> :func:`opd_pg_loss`, ``topk_renorm`` ->
:func:`topk_renorm_loss`, ``topk_recipe`` -> :func:`topk_recipe_loss`) aggregates as a
*token mean*: the sum over valid (mask) tokens of the weighted per-token term divided by
the number of valid tokens.  Allocation policies express their
decisions through the mask (``train_len``, dropped candidates) and the weights (Prune-OPD's
drift down-weighting, the reweight-only control), so the loss itself is method-agnostic.
Dividing by the token count, not by the weight sum, keeps a down-weighted token a *smaller*
contribution instead of renormalising it back up.
"""
from __future__ import annotations

import torch


def _prep(mask_BT: torch.Tensor, weight_BT: torch.Tensor | None, like: torch.Tensor):
    """Float mask, weights zeroed off-mask, token count and a safe denominator."""
    valid_BT = mask_BT.to(torch.bool)
    mask = valid_BT.to(like.dtype)
    w = torch.ones_like(mask) if weight_BT is None else weight_BT.detach().to(like.dtype)
    w = torch.where(valid_BT, w, torch.zeros_like(w))
    n = mask.sum()
    return valid_BT, mask, w, n, n.clamp(min=1.0)


def _masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor, n: torch.Tensor) -> float:
    return float((x_BT * mask_BT).sum() / n) if float(n) > 0 else 0.0


def _valid_topk(student_logp_BTK: torch.Tensor, teacher_logp_BTK: torch.Tensor, valid_BT: torch.Tensor):
    """(B, T, K) student log-probs and detached teacher log-probs, zero off-mask (padding may
    hold -inf/NaN: select before any arithmetic so it never reaches forward or backward)."""
    valid_BT1 = valid_BT.unsqueeze(-1)
    s_BTK = torch.where(valid_BT1, student_logp_BTK, torch.zeros_like(student_logp_BTK))
    t_BTK = teacher_logp_BTK.detach().to(student_logp_BTK.dtype)
    return s_BTK, torch.where(valid_BT1, t_BTK, torch.zeros_like(t_BTK))


def _kl_stats(kl_mean: float, w: torch.Tensor, mask: torch.Tensor, n: torch.Tensor) -> dict:
    """Stats of the top-k losses: no sampled reward there, so reward_mean = -kl."""
    return {"reward_mean": -kl_mean, "kl": kl_mean, "n_tokens": int(round(float(n))),
            "weight_mean": _masked_mean(w, mask, n)}


def opd_pg_loss(logp_BT: torch.Tensor, teacher_logp_BT: torch.Tensor, mask_BT: torch.Tensor,
                weight_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Vanilla on-policy distillation as a policy-gradient loss on the sampled tokens.

    Thinking Machines' "On-Policy Distillation" and thunlp-OPD use the per-token reverse-KL
    reward ``r_t = log p_T(y_t) - log p_S(y_t)`` on student samples ``y ~ p_S`` (detached:
    it is a reward, not a path for gradients) and the REINFORCE loss
    ``-(w_t * r_t * log p_S(y_t))``.  Its gradient, ``-w r ∇log p_S``, is the score-function
    estimate of ``∇ KL(p_S || p_T)`` (the extra ``E[∇log p_S]`` term of the exact gradient
    has zero mean), so minimising it minimises the sampled reverse KL.  The loss *value*
    is zero when teacher == student; it is not itself the KL (see ``stats['kl']``).

    Args:
        logp_BT: (B, T) student log-prob of the sampled token, with grad.
        teacher_logp_BT: (B, T) teacher log-prob of the same token (no grad needed).
        mask_BT: (B, T) bool or 0/1: tokens that are trained (response, < train_len, kept).
        weight_BT: (B, T) per-token weights (default 1); treated as constants.

    Returns:
        loss: scalar, ``sum_{mask} -(w * r * logp) / n_tokens`` (0 if no token is valid).
        stats: ``reward_mean`` (masked mean of r), ``kl`` (= -reward_mean, the sampled
        reverse-KL estimate), ``n_tokens``, ``weight_mean`` (masked mean of w).
    """
    valid_BT, mask, w, n, denom = _prep(mask_BT, weight_BT, logp_BT)
    # Padding may hold -inf/NaN log-probs; select before multiplying so 0 * inf never
    # reaches the forward or backward pass.
    logp_BT = torch.where(valid_BT, logp_BT, torch.zeros_like(logp_BT))
    teacher_BT = teacher_logp_BT.detach().to(logp_BT.dtype)
    teacher_BT = torch.where(valid_BT, teacher_BT, torch.zeros_like(teacher_BT))
    reward_BT = teacher_BT - logp_BT.detach()
    per_tok_BT = -(w * reward_BT * logp_BT)
    loss = (per_tok_BT * mask).sum() / denom
    reward_mean = _masked_mean(reward_BT, mask, n)
    stats = {
        "reward_mean": reward_mean,
        "kl": -reward_mean,
        "n_tokens": int(round(float(n))),
        "weight_mean": _masked_mean(w, mask, n),
    }
    return loss, stats


def topk_renorm_loss(student_logp_BTK: torch.Tensor, teacher_logp_BTK: torch.Tensor,
                     mask_BT: torch.Tensor, weight_BT: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict]:
    """``loss: topk_renorm`` -- reverse KL between student and teacher *both renormalised*
    over the student's top-k ids (``loss_top_k`` of them).

    Both distributions are renormalised over the same K ids (log-softmax of the K
    log-probs), then ``KL_t = sum_k p~_s,k (log p~_s,k - log p~_t,k)`` -- an exact (not
    sampled) KL between the two *conditional* distributions on that support.  It is not the
    public OPD recipe's objective (that is :func:`topk_recipe_loss`): the renormalisation
    removes the student's log-normaliser, so the gradient on the logit of any token outside
    the student's top-k is exactly 0 (analytically; in floats, the rounding of a sum that is
    0) -- the loss cannot move mass into or out of the top-k as a whole, only reshuffle it
    inside.  With K = V it is the full reverse KL.

    Args:
        student_logp_BTK: (B, T, K) student log-probs at its top-k ids, with grad.
        teacher_logp_BTK: (B, T, K) teacher log-probs at the *same* ids (finite values).
        mask_BT: (B, T) bool or 0/1 trained tokens.
        weight_BT: (B, T) per-token weights (default 1), constants.

    Returns:
        loss: scalar ``sum_{mask} w * KL_t / n_tokens``.
        stats: ``kl`` (masked mean KL_t), ``reward_mean`` (= -kl; no sampled reward here),
        ``n_tokens``, ``weight_mean``.
    """
    valid_BT, mask, w, n, denom = _prep(mask_BT, weight_BT, student_logp_BTK)
    s_BTK, t_BTK = _valid_topk(student_logp_BTK, teacher_logp_BTK, valid_BT)
    ls_BTK = torch.log_softmax(s_BTK, dim=-1)
    lt_BTK = torch.log_softmax(t_BTK, dim=-1)
    kl_BT = (ls_BTK.exp() * (ls_BTK - lt_BTK)).sum(dim=-1)
    loss = (w * kl_BT * mask).sum() / denom
    kl_mean = _masked_mean(kl_BT.detach(), mask, n)
    return loss, _kl_stats(kl_mean, w, mask, n)


def topk_recipe_loss(student_logp_BTK: torch.Tensor, teacher_logp_BTK: torch.Tensor,
                     mask_BT: torch.Tensor, weight_BT: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict]:
    """``loss: topk_recipe`` -- the public OPD recipe's top-k objective (Rethinking-OPD
    training script: top-k 16, strategy "only the student's top-k", reward weight "student
    probability").

    For each of the student's top-k tokens x at a position, with *full-vocabulary*
    log-probs, the advantage ``A(x) = w(x) (log p_t(x) - log p_s(x))`` with the student's
    probability *renormalised over the top-k*, ``w(x) = p_s(x) / sum_{x' in topk} p_s(x')``
    (thunlp/OPD's ``compute_reward_weights(..., normalize=True)`` in verl's ``dp_actor.py``:
    a softmax of the K log-probs), is held constant and the loss is ``-sum_x A(x) log p_s(x)``
    per position.  Its gradient w.r.t. the logits is ``-sum_x A(x) (onehot(x) - p_s)``:
    nonzero on every logit, tokens outside the top-k included (through the log-normaliser),
    unlike :func:`topk_renorm_loss`.  With K = V it is the exact gradient of the full reverse
    KL (the weights are then p_s itself and ``sum_x p_s(x) ∇log p_s(x) = 0``).

    Args:
        student_logp_BTK: (B, T, K) student full-vocabulary log-probs at its top-k ids, with grad.
        teacher_logp_BTK: (B, T, K) teacher full-vocabulary log-probs at the same ids.
        mask_BT: (B, T) bool or 0/1 trained tokens.
        weight_BT: (B, T) per-token weights (default 1), constants; multiply each position.

    Returns:
        loss: scalar ``sum_{mask} w * (-sum_k A_k log p_s,k) / n_tokens``.
        stats: ``kl`` (masked mean of ``sum_k w_k (log p_s,k - log p_t,k)``, the recipe's
        weighted top-k reward, negated), ``reward_mean`` (= -kl), ``n_tokens``, ``weight_mean``.
    """
    valid_BT, mask, w, n, denom = _prep(mask_BT, weight_BT, student_logp_BTK)
    s_BTK, t_BTK = _valid_topk(student_logp_BTK, teacher_logp_BTK, valid_BT)
    s_det = s_BTK.detach()
    # the recipe's weights: p_s renormalised over the K ids (without it the gradient is the
    # recipe's times the student's top-k mass, position by position)
    adv_BTK = torch.softmax(s_det, dim=-1) * (t_BTK - s_det)
    per_pos_BT = -(adv_BTK * s_BTK).sum(dim=-1)
    loss = (w * per_pos_BT * mask).sum() / denom
    kl_mean = _masked_mean(-adv_BTK.sum(dim=-1), mask, n)
    return loss, _kl_stats(kl_mean, w, mask, n)


LOSSES = ("sampled", "topk_renorm", "topk_recipe")
