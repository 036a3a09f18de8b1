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


def test_tail_flags_and_step_metrics_count_tail_tokens():
    from types import SimpleNamespace

    from pgopd import stepstats

    def cand(length, finished, reason):
        return SimpleNamespace(length=length, finished=finished, info={"stop_reason": reason})

    cands = [cand(20, True, "eos"), cand(64, False, "length"), cand(12, True, "eos"), cand(16, False, "prefix")]
    texts = ["1+2=3. \\boxed{3}", "wait wait wait", "1+2=3.", "wait, let"]
    flags = stepstats.tail_flags(cands, texts, 64)
    assert flags == [False, True, True, False]            # a policy cut is not counted as tail
    res = SimpleNamespace(cands=cands, tokens_generated=112, tokens_teacher_scored=112, tokens_trained=112,
                          positions_student=None, positions_teacher=None, prefill_positions_student=None,
                          prefill_positions_teacher=None, train_len=lambda c: c.length)
    for c in cands:
        c.keep, c.overlap = True, []
    m = stepstats.step_metrics(stepstats.local_sums(res, flags))
    assert (m["n_tail"], m["tokens_tail"]) == (2, 76)
    assert m["tail_token_share"] == pytest.approx(76 / 112)
    with pytest.raises(ValueError, match="flags"):
        stepstats.local_sums(res, [True])


def test_candidate_log_grades_rollouts_that_ran_to_their_end_only():
    """A rollout at the length limit is graded (no answer within the budget is wrong, as in
    the evaluation); one a policy cut is not: the falsification analysis must not drop the
    never-answering tail from its outcome."""
    from pgopd.models.tokenizer import build_char_tokenizer
    from pgopd.rollout.loop import RolloutResult
    from pgopd.rollout.types import Candidate
    from pgopd.train import _candidate_log

    tok = build_char_tokenizer()
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    cands = [Candidate(0, 0, tokens=enc("1+2=3. \\boxed{3}") + [tok.eos_token_id], finished=True,
                       info={"stop_reason": "eos"}),
             Candidate(1, 0, tokens=enc("wait, let me check again."), info={"stop_reason": "length"}),
             Candidate(2, 0, tokens=enc("1+2=3. \\boxed{3}"), info={"stop_reason": "length"}),
             Candidate(3, 0, tokens=enc("wait, let"), stopped=True, info={"stop_reason": "prefix"})]
    for c in cands:
        c.student_logp = c.teacher_logp = [0.0] * c.length
        c.overlap, c.weights = [1.0] * c.length, [1.0] * c.length
    recs = _candidate_log(0, RolloutResult(cands=cands, prompts=[[1]] * 4), 4, ["3"], tok)
    assert [r["correct"] for r in recs] == [True, False, True, None]
