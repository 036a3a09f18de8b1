import math

import pytest
import torch

from pgopd.overlap import sliding_window_mean, topk_overlap, window_mean


def ids(rows):
    """(B, T, K) long tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.long)


def test_identical_sets_overlap_one_even_when_reordered():
    s = ids([[[1, 2, 3, 4], [5, 6, 7, 8]]])
    t = ids([[[1, 2, 3, 4], [8, 7, 6, 5]]])
    assert topk_overlap(s, t).tolist() == [[1.0, 1.0]]


def test_disjoint_sets_overlap_zero():
    s = ids([[[1, 2, 3, 4]]])
    t = ids([[[5, 6, 7, 8]]])
    assert topk_overlap(s, t).tolist() == [[0.0]]


def test_partial_overlap_hand_counted():
    # {1,2,3,4} ∩ {4,3,9,8} = {3,4} -> 2/4;  {1,2,3,4} ∩ {0,1,9,8} = {1} -> 1/4
    s = ids([[[1, 2, 3, 4], [1, 2, 3, 4]]])
    t = ids([[[4, 3, 9, 8], [0, 1, 9, 8]]])
    assert topk_overlap(s, t).tolist() == [[0.5, 0.25]]


def test_k_equals_one():
    s = ids([[[7], [7], [3]]])
    t = ids([[[7], [2], [3]]])
    assert topk_overlap(s, t).tolist() == [[1.0, 0.0, 1.0]]


def test_matches_set_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    B, T, K, V = 3, 5, 4, 9
    s = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).view(B, T, K)
    t = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).view(B, T, K)
    got = topk_overlap(s, t)
    assert got.shape == (B, T)
    for b in range(B):
        for i in range(T):
            ref = len(set(s[b, i].tolist()) & set(t[b, i].tolist())) / K
            assert got[b, i].item() == pytest.approx(ref)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        topk_overlap(ids([[[1, 2]]]), ids([[[1, 2, 3]]]))


def test_window_mean_hand_case_with_mask_and_empty_row():
    x = torch.tensor([[1.0, 0.0, 0.5, 0.25], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    got = window_mean(x, m, 1, 3)  # positions 1, 2
    assert got[0].item() == pytest.approx((0.0 + 0.5) / 2)
    assert got[1].item() == pytest.approx(1.0)  # position 2 is masked
    assert math.isnan(got[2].item())  # no valid position in the window
    # bounds are clipped to the tensor
    assert window_mean(x, m, -3, 99)[0].item() == pytest.approx(1.75 / 4)


def test_sliding_window_mean_hand_case():
    assert sliding_window_mean([1.0, 0.0, 1.0, 1.0], 2) == [1.0, 0.5, 0.5, 1.0]
    assert sliding_window_mean([1.0, 0.0, 0.5], 1) == [1.0, 0.0, 0.5]
    # window longer than the stream: cumulative mean of the available prefix
    assert sliding_window_mean([1.0, 0.0, 0.5], 10) == pytest.approx([1.0, 0.5, 0.5])
    assert sliding_window_mean([], 3) == []
    with pytest.raises(ValueError):
        sliding_window_mean([1.0], 0)


def test_sliding_window_mean_matches_reference_on_random_values():
    g = torch.Generator().manual_seed(1)
    vals = torch.rand(30, generator=g).tolist()
    for w in (1, 3, 7):
        got = sliding_window_mean(vals, w)
        for t in range(len(vals)):
            win = vals[max(0, t - w + 1): t + 1]
            assert got[t] == pytest.approx(sum(win) / len(win))
