"""Chunked log-probs (pgopd.logprobs) equal the naive full-vocabulary computation: values
and gradients (hidden states and a tied LM head), teacher pieces included."""
import pytest
import torch

from pgopd.logprobs import logp_at_ids, n_chunks_for, naive_logp_at_ids, teacher_pieces

pytestmark = pytest.mark.usefixtures("one_thread")
N, H, V, J = 23, 16, 301, 5


def case(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.Embedding(V, H)
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(V, H, generator=g))
    head.weight = emb.weight  # tied, as Qwen3-1.7B
    h = torch.randn(N, H, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (N, J), generator=g)
    return head, h, ids


@pytest.mark.parametrize("chunk", [1, 4, 7, 23, 100])
def test_chunked_logp_equals_naive_values_and_gradients(chunk):
    head, h, ids = case()
    coef = torch.randn(N, J, generator=torch.Generator().manual_seed(9))  # a generic downstream loss

    got = logp_at_ids(h, head, ids, chunk)
    (got * coef).sum().backward()
    g_h, g_w = h.grad.clone(), head.weight.grad.clone()
    h.grad, head.weight.grad = None, None

    ref = naive_logp_at_ids(head(h), ids)
    (ref * coef).sum().backward()
    assert got.shape == (N, J) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(g_h, h.grad, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_w, head.weight.grad, atol=1e-5, rtol=1e-5)
    # the gradient reaches rows of the head whose token is never asked for (the normaliser)
    unused = torch.ones(V, dtype=torch.bool)
    unused[ids.unique()] = False
    assert g_w[unused].abs().sum() > 0


def test_extra_chunks_are_empty_calls_and_too_few_is_an_error():
    head, h, ids = case(1)
    calls = []
    hook = head.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    out = logp_at_ids(h, head, ids, chunk=10, n_chunks=5)
    hook.remove()
    assert calls == [10, 10, 3, 0, 0] and n_chunks_for(N, 10) == 3
    assert torch.allclose(out, naive_logp_at_ids(head(h), ids), atol=1e-5)
    with pytest.raises(ValueError, match="need 3 chunks"):
        logp_at_ids(h, head, ids, chunk=10, n_chunks=2)
    # no position at all (a padding micro-batch): one empty call, an empty result
    assert logp_at_ids(h[:0], head, ids[:0], chunk=10).shape == (0, J)
    assert n_chunks_for(0, 10) == 1


def test_backward_recomputes_chunks_instead_of_keeping_logits():
    # what autograd keeps for backward: with the checkpointed chunks no (chunk, V) tensor
    head, h, ids = case(2)
    kept = []

    def pack(t):
        kept.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = logp_at_ids(h, head, ids, chunk=4)
    assert not any(V in s for s in kept), kept
    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive_logp_at_ids(head(h), ids)
    assert any(V in s for s in kept)  # the naive path keeps (N, V) tensors
    out.sum().backward()  # and the checkpointed one still differentiates


@pytest.mark.parametrize("chunk", [3, 50])
def test_teacher_pieces_equal_naive(chunk):
    head, h, ids = case(3)
    h = h.detach()
    tokens = ids[:, 0]
    logp_ref = torch.log_softmax(head(h).float(), -1)
    logp, top, at = teacher_pieces(h, head, tokens, k=6, chunk=chunk, at_ids_NK=ids[:, 1:])
    assert torch.allclose(logp, logp_ref.gather(-1, tokens[:, None])[:, 0], atol=1e-5)
    assert torch.equal(top, logp_ref.topk(6, dim=-1).indices)
    assert torch.allclose(at, logp_ref.gather(-1, ids[:, 1:]), atol=1e-5)
    _, _, none = teacher_pieces(h, head, tokens, k=6, chunk=chunk)
    assert none is None
