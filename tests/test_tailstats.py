"""Long-tail statistics of student rollouts (pgopd.tailstats)."""
import pytest

from pgopd.tailstats import histogram, is_tail, tail_stats


def test_is_tail():
    assert not is_tail(20, True, "1+2=3. \\boxed{3}", 64)
    assert is_tail(64, False, "1+2=3. 3+3", 64)           # hit the limit
    assert is_tail(10, True, "1+2=3.", 64)                # finished without a boxed answer
    assert is_tail(64, False, "\\boxed{3} 3 3 3", 64)     # boxed, but ran on to the limit
    assert not is_tail(30, False, "\\boxed{3}", 64)       # cut early by a policy, not the limit


def test_histogram_bins_and_edges():
    assert histogram([0, 0.5, 1, 1.99, 2, 4, 5], [0, 1, 2, 4]) == [2, 2, 2]   # 4 in the closed last bin
    with pytest.raises(ValueError, match="increasing"):
        histogram([1], [0, 0])


def test_tail_stats_hand_computed():
    rolls = [
        {"n_tokens": 10, "finished": True, "text": "\\boxed{1}", "correct": True, "overlap": [1.0] * 10,
         "teacher_logp": [-0.5] * 10},
        {"n_tokens": 30, "finished": False, "text": "1+1=2; 2+", "correct": False,
         "overlap": [1.0] * 8 + [0.25] * 22},
    ]
    s = tail_stats(rolls, 30, length_bins=3, overlap_window=8)
    assert s["n_rollouts"] == 2 and s["tokens"] == 40 and s["mean_length"] == 20
    assert s["tail_rate"] == 0.5 and s["hit_limit_rate"] == 0.5 and s["boxed_rate"] == 0.5
    assert s["tail_token_share"] == pytest.approx(30 / 40)
    assert s["correct_rate"] == 0.5
    assert s["length_hist"]["counts"] == [0, 1, 1]
    assert s["overlap_hist"]["rest"][-1] == 10 and s["overlap_hist"]["tail"][2] == 22
    assert s["mean_overlap"]["rest"] == 1.0
    assert s["mean_teacher_logp"] == {"tail": None, "rest": -0.5}
    assert s["mean_overlap"]["tail"] == pytest.approx((8 + 0.25 * 22) / 30)
    assert s["overlap_by_window"]["tail"]["0-8"] == 1.0 and s["overlap_by_window"]["tail"]["8-16"] == 0.25
    with pytest.raises(ValueError, match="at least one"):
        tail_stats([], 30)
