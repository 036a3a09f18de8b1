import pytest
import torch

from pgopd.loss import opd_pg_loss, topk_recipe_loss, topk_renorm_loss


def gather_logp(logits_BTV, y_BT):
    return torch.log_softmax(logits_BTV, -1).gather(-1, y_BT.unsqueeze(-1)).squeeze(-1)


def rand_case(seed=0, B=3, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    t_logits = torch.randn(B, T, V, generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    w = torch.rand(B, T, generator=g)
    return logits, t_logits, y, mask, w


# ----------------------------------------------------------------------------- opd_pg_loss
def test_pg_zero_loss_and_grad_when_teacher_equals_student():
    logits, _, y, mask, w = rand_case()
    logits.requires_grad_(True)
    logp = gather_logp(logits, y)
    loss, stats = opd_pg_loss(logp, logp.detach().clone(), mask, w)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0
    assert stats["reward_mean"] == 0.0 and stats["kl"] == 0.0


def test_pg_hand_computed_two_tokens():
    # r = teacher - student = [-0.5 - (-1), -3 - (-2)] = [0.5, -1.0]
    # per token -(w r logp): -(1 * 0.5 * -1) = 0.5 ;  -(0.5 * -1 * -2) = -1.0
    # loss = (0.5 - 1.0) / 2 = -0.25 ; d loss / d logp = -(w r) / N = [-0.25, 0.25]
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -3.0]])
    loss, stats = opd_pg_loss(logp, teacher, torch.tensor([[1, 1]]), torch.tensor([[1.0, 0.5]]))
    loss.backward()
    assert loss.item() == pytest.approx(-0.25)
    assert logp.grad.tolist() == [[pytest.approx(-0.25), pytest.approx(0.25)]]
    assert stats == {"reward_mean": pytest.approx(-0.25), "kl": pytest.approx(0.25),
                     "n_tokens": 2, "weight_mean": pytest.approx(0.75)}


def test_pg_equals_loop_reference_with_mask_and_weights():
    logits, t_logits, y, mask, w = rand_case(seed=3)
    logp = gather_logp(logits, y)
    tlogp = gather_logp(t_logits, y)
    loss, stats = opd_pg_loss(logp, tlogp, mask, w)
    total, n, rsum, wsum = 0.0, 0, 0.0, 0.0
    B, T = y.shape
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                r = tlogp[b, t].item() - logp[b, t].item()
                total += -(w[b, t].item() * r * logp[b, t].item())
                rsum += r
                wsum += w[b, t].item()
                n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert stats["reward_mean"] == pytest.approx(rsum / n, rel=1e-5)
    assert stats["kl"] == pytest.approx(-rsum / n, rel=1e-5)
    assert stats["weight_mean"] == pytest.approx(wsum / n, rel=1e-5)
    assert stats["n_tokens"] == n


def test_pg_gradient_wrt_logits_is_analytic_score_function():
    logits, t_logits, y, mask, w = rand_case(seed=5)
    logits.requires_grad_(True)
    logp = gather_logp(logits, y)
    tlogp = gather_logp(t_logits, y)
    loss, _ = opd_pg_loss(logp, tlogp, mask, w)
    loss.backward()
    # d logp(y) / d logits = onehot(y) - softmax(logits);  coefficient -(w r / N) on valid tokens
    with torch.no_grad():
        r = tlogp - logp
        coef = -(w * r * mask) / mask.sum()
        dlogp = torch.nn.functional.one_hot(y, logits.shape[-1]) - torch.softmax(logits, -1)
        expected = coef.unsqueeze(-1) * dlogp
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_pg_default_weight_is_one():
    logits, t_logits, y, mask, _ = rand_case(seed=6)
    logp, tlogp = gather_logp(logits, y), gather_logp(t_logits, y)
    a, sa = opd_pg_loss(logp, tlogp, mask)
    b, _ = opd_pg_loss(logp, tlogp, mask, torch.ones_like(logp))
    assert a.item() == pytest.approx(b.item())
    assert sa["weight_mean"] == 1.0


def test_pg_masked_tokens_contribute_nothing_even_if_garbage():
    logits, t_logits, y, mask, w = rand_case(seed=7)
    logits.requires_grad_(True)
    logp = gather_logp(logits, y)
    tlogp = gather_logp(t_logits, y)
    loss_a, st_a = opd_pg_loss(logp, tlogp, mask, w)
    tl_garbage = torch.where(mask, tlogp, torch.full_like(tlogp, float("-inf")))
    w_garbage = torch.where(mask, w, torch.full_like(w, 1e6))
    loss_b, st_b = opd_pg_loss(logp, tl_garbage, mask, w_garbage)
    loss_b.backward()
    assert loss_b.item() == pytest.approx(loss_a.item())
    assert st_b == pytest.approx(st_a)
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad[~mask]) == 0


def test_pg_empty_mask_gives_zero():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, stats = opd_pg_loss(logp, torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and stats["n_tokens"] == 0


# ----------------------------------------------------------------------------- top-k KL
def topk_inputs(seed=0, B=2, T=4, V=9, K=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    t_logits = torch.randn(B, T, V, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    w = torch.rand(B, T, generator=g)
    return logits, t_logits, mask, w, K


def select_topk(logits, t_logits, K):
    s_lp = torch.log_softmax(logits, -1)
    t_lp = torch.log_softmax(t_logits, -1)
    idx = s_lp.topk(K, -1).indices
    return s_lp.gather(-1, idx), t_lp.gather(-1, idx)


def test_topk_zero_loss_and_grad_when_equal():
    logits, _, mask, w, K = topk_inputs()
    logits.requires_grad_(True)
    s, _ = select_topk(logits, logits.detach(), K)
    loss, stats = topk_renorm_loss(s, s.detach().clone(), mask, w)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert logits.grad.abs().max().item() < 1e-7
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)


def test_topk_equals_loop_reference_and_is_nonnegative():
    logits, t_logits, mask, w, K = topk_inputs(seed=2)
    s, t = select_topk(logits, t_logits, K)
    loss, stats = topk_renorm_loss(s, t, mask, w)
    B, T = mask.shape
    total, klsum, n = 0.0, 0.0, 0
    for b in range(B):
        for i in range(T):
            ps = torch.softmax(s[b, i], -1).tolist()
            pt = torch.softmax(t[b, i], -1).tolist()
            kl = sum(p * (torch.tensor(p).log().item() - torch.tensor(q).log().item()) for p, q in zip(ps, pt))
            assert kl >= -1e-7
            if mask[b, i]:
                total += w[b, i].item() * kl
                klsum += kl
                n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert stats["kl"] == pytest.approx(klsum / n, rel=1e-5)
    assert stats["reward_mean"] == pytest.approx(-klsum / n, rel=1e-5)
    assert stats["n_tokens"] == n
    assert loss.item() >= 0


def test_topk_with_k_equal_v_is_full_reverse_kl():
    logits, t_logits, mask, _, _ = topk_inputs(seed=4)
    V = logits.shape[-1]
    s, t = select_topk(logits, t_logits, V)
    loss, _ = topk_renorm_loss(s, t, mask)
    ps, ls, lt = torch.softmax(logits, -1), torch.log_softmax(logits, -1), torch.log_softmax(t_logits, -1)
    full_kl = (ps * (ls - lt)).sum(-1)
    assert loss.item() == pytest.approx((full_kl * mask).sum().item() / mask.sum().item(), rel=1e-5)


def test_topk_grad_only_through_student_and_masked_positions_silent():
    logits, t_logits, mask, w, K = topk_inputs(seed=8)
    logits.requires_grad_(True)
    t_logits.requires_grad_(True)
    s, t = select_topk(logits, t_logits, K)
    t_garbage = torch.where(mask.unsqueeze(-1), t, torch.full_like(t, float("nan")))
    loss, _ = topk_renorm_loss(s, t_garbage, mask, w)
    loss.backward()
    assert t_logits.grad is None or torch.count_nonzero(t_logits.grad) == 0
    assert torch.isfinite(logits.grad).all()
    assert torch.count_nonzero(logits.grad[~mask]) == 0
    assert torch.count_nonzero(logits.grad[mask]) > 0


# ----------------------------------------------------------------------------- topk_recipe_loss
def outside_topk(logits, K):
    """(B, T, V) bool: tokens not among the student's top-K at each position."""
    out = torch.ones_like(logits, dtype=torch.bool)
    out.scatter_(-1, logits.topk(K, -1).indices, False)
    return out


def _recipe_port_loss(S_logp, T_on_S, response_mask, clip=0.2, clip_c=3.0):
    """thunlp/OPD (commit 0a44395), ported line by line, strategy ``only_stu`` and
    ``reward_weight_mode="student_p"`` as its ``on_policy_distillation.sh`` runs it:
    ``dp_actor.compute_reward_weights(..., normalize=True)`` -> rm_scores,
    ``core_algos.compute_token_reward_direct_advantage`` -> advantages and the 3D branch of
    ``compute_policy_loss_vanilla`` with ``old_log_prob = log_prob.detach()`` (on-policy),
    ``loss_agg_mode="token-mean"``.  Written from the recipe's code, not from pgopd's."""
    # dp_actor.py: compute_reward_weights
    log_probs = S_logp
    valid_mask = torch.ones_like(S_logp, dtype=torch.bool)
    log_probs = torch.where(valid_mask, log_probs, torch.full_like(log_probs, -float("inf")))
    norm_log_weights = log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)
    weights = torch.nan_to_num(torch.exp(norm_log_weights), nan=0.0, posinf=0.0, neginf=0.0)
    kl_val = S_logp - T_on_S
    rm_scores = -kl_val * weights
    # core_algos.py: token_reward_direct (3D rewards, mask broadcast over k)
    advantages = (rm_scores * response_mask.unsqueeze(-1)).detach()
    # core_algos.py: compute_policy_loss_vanilla, 3D branch
    log_prob, old_log_prob = S_logp, S_logp.detach()
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    clip_pg_losses2 = torch.min(-advantages * clip_c, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1).sum(dim=-1)
    # agg_loss token-mean: masked mean over (B, T)
    return (pg_losses * response_mask).sum() / response_mask.sum()


def test_recipe_gradient_equals_a_port_of_thunlp_opd():
    """The recipe's gradient (its loss value differs: PPO's ratio is 1, not log p).  pgopd's
    ``topk_recipe_loss`` before 2026-12-05 weighted by raw p_s: its gradient was the recipe's
    times the student's top-k mass (0.1-0.4 relative off at this K/V)."""
    logits, t_logits, mask, _, K = topk_inputs(seed=5, V=40, K=4)
    maskf = mask.float()
    x = logits.clone().requires_grad_(True)
    s, t = select_topk(x, t_logits, K)
    topk_recipe_loss(s, t, mask)[0].backward()
    y = logits.clone().requires_grad_(True)
    s2, t2 = select_topk(y, t_logits, K)
    _recipe_port_loss(s2, t2, maskf).backward()
    assert y.grad.abs().max() > 1e-3
    assert torch.allclose(x.grad, y.grad, atol=1e-7, rtol=1e-5)


def test_recipe_equals_hand_formula_values_and_gradients():
    logits, t_logits, mask, w, K = topk_inputs(seed=5)
    logits.requires_grad_(True)
    s, t = select_topk(logits, t_logits, K)
    loss, stats = topk_recipe_loss(s, t, mask, w)
    loss.backward()
    # by hand: q = p_s / sum_topk p_s, A = q (log p_t - log p_s), constant;
    # loss = mean_mask w * -sum_k A_k log p_s,k;
    # d/dlogits of -sum_k A_k log p_s,k = -sum_k A_k (onehot_k - p_s) (all V logits)
    B, T, V = logits.shape
    ls = torch.log_softmax(logits.detach(), -1)
    lt = torch.log_softmax(t_logits, -1)
    idx = ls.topk(K, -1).indices
    total, kl_sum, n = 0.0, 0.0, int(mask.sum())
    grad = torch.zeros(B, T, V)
    for b in range(B):
        for i in range(T):
            if not mask[b, i]:
                continue
            p = ls[b, i].exp()
            mass = sum(p[k].item() for k in idx[b, i].tolist())
            g = torch.zeros(V)
            for k in idx[b, i].tolist():
                A = p[k].item() / mass * (lt[b, i, k].item() - ls[b, i, k].item())
                total += w[b, i].item() * -A * ls[b, i, k].item()
                kl_sum += -A
                onehot = torch.zeros(V)
                onehot[k] = 1.0
                g += -A * (onehot - p)
            grad[b, i] = w[b, i] * g / n
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert stats["kl"] == pytest.approx(kl_sum / n, rel=1e-5) and stats["n_tokens"] == n
    assert torch.allclose(logits.grad, grad, atol=1e-6)


def test_gradient_outside_the_student_topk_recipe_nonzero_renorm_exactly_zero():
    logits, t_logits, mask, w, K = topk_inputs(seed=6)
    out = outside_topk(logits, K) & mask[..., None]
    grads = {}
    for name, fn in (("recipe", topk_recipe_loss), ("renorm", topk_renorm_loss)):
        x = logits.clone().requires_grad_(True)
        s, t = select_topk(x, t_logits, K)
        fn(s, t, mask, w)[0].backward()
        grads[name] = x.grad
    # renormalised: the loss is invariant to shifting a position's K log-probs, so the
    # log-normaliser (the only path to logits outside the top-k) gets sum_k dL/ds_k = 0:
    # zero up to float rounding of that sum (~1e-10 here, against top-k gradients ~1e-2)
    inside = grads["renorm"][~outside_topk(logits, K) & mask[..., None]].abs().max()
    assert inside > 1e-3
    assert grads["renorm"][out].abs().max() <= 1e-6 * inside
    # the recipe's advantages are constants: the normaliser gets -sum_k A_k != 0, and every
    # logit outside the top-k moves, by a non-negligible amount
    assert (grads["recipe"][out].abs() > 1e-4 * inside).float().mean() > 0.99


def test_recipe_and_renorm_zero_gradient_when_teacher_equals_student():
    logits, _, mask, w, K = topk_inputs(seed=7)
    for fn in (topk_recipe_loss, topk_renorm_loss):
        x = logits.clone().requires_grad_(True)
        s, _ = select_topk(x, x.detach(), K)
        loss, stats = fn(s, s.detach().clone(), mask, w)
        loss.backward()
        assert x.grad.abs().max().item() < 1e-7, fn.__name__
        assert stats["kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fn", [topk_recipe_loss, topk_renorm_loss])
def test_topk_weights_multiply_each_positions_terms(fn):
    logits, t_logits, mask, w, K = topk_inputs(seed=10)
    s, t = select_topk(logits, t_logits, K)
    n = int(mask.sum())
    # per-position terms: the loss with a one-hot weight on that position, times n
    per_pos = torch.zeros(mask.shape)
    for b, i in mask.nonzero().tolist():
        one = torch.zeros(mask.shape)
        one[b, i] = 1.0
        per_pos[b, i] = fn(s, t, mask, one)[0].item() * n
    loss, _ = fn(s, t, mask, w)
    assert loss.item() == pytest.approx(float((w * per_pos * mask).sum()) / n, rel=1e-5)
    # weights count, the token number divides: halving every weight halves the loss
    assert fn(s, t, mask, w / 2)[0].item() == pytest.approx(loss.item() / 2, rel=1e-6)


def test_recipe_with_k_equal_v_has_the_full_reverse_kl_gradient():
    logits, t_logits, mask, _, _ = topk_inputs(seed=11)
    V = logits.shape[-1]
    x = logits.clone().requires_grad_(True)
    s, t = select_topk(x, t_logits, V)
    topk_recipe_loss(s, t, mask)[0].backward()
    y = logits.clone().requires_grad_(True)
    ls, lt = torch.log_softmax(y, -1), torch.log_softmax(t_logits, -1)
    ((ls.exp() * (ls - lt)).sum(-1) * mask).sum().div(mask.sum()).backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)
