"""Allocation policies driven by a fake chunked rollout loop on scripted overlap streams."""
import dataclasses
import random

import pytest

from pgopd.config import ControlsConfig, PGOPDConfig, PruneOPDConfig, TrainConfig
from pgopd.policies import make_policy
from pgopd.policies.pgopd import PGOPDPolicy
from pgopd.policies.pruneopd import PruneOPDPolicy
from pgopd.rollout.types import Candidate


def drive(policy, streams, groups=None, eos=None, max_new=12, chunk=3):
    """Mimic the rollout loop: lock-step chunks, decide on the live, drop finished/stopped.

    streams: one overlap list per candidate (cid = index), at least ``max_new`` long.
    eos: cid -> position of the EOS token.  Returns (candidates, chunk boundaries).
    Also checks the interface contract after every ``decide``.
    """
    groups = groups or [0] * len(streams)
    eos = eos or {}
    cands = [Candidate(cid=i, group=g) for i, g in enumerate(groups)]
    live, generated, bounds = list(cands), 0, []
    while live and generated < max_new:
        n = policy.next_chunk(generated, max_new, chunk)
        assert 1 <= n <= min(chunk, max_new - generated)
        before = {c.cid: list(c.weights) for c in live}
        for c in live:
            for j in range(generated, generated + n):
                c.tokens.append(100 + j)
                c.student_logp.append(-1.0)
                c.teacher_logp.append(-1.5)
                c.overlap.append(streams[c.cid][j])
                if eos.get(c.cid) == j:
                    c.finished = True
                    break
        generated += n
        bounds.append(generated)
        policy.decide(live, generated)
        for c in live:
            assert len(c.weights) == len(c.tokens)
            old = before[c.cid]
            assert all(new <= o for new, o in zip(c.weights, old)), "a past weight was raised"
        live = [c for c in live if c.live]
    policy.finalize(cands)
    return cands, bounds


def const(v, n=12):
    return [v] * n


def by_cid(cands):
    return {c.cid: c for c in cands}


# ----------------------------------------------------------------------------- opd
def test_opd_runs_everyone_to_the_end_with_weight_one():
    cands, bounds = drive(make_policy("opd", TrainConfig()), [const(1.0), const(0.0), const(0.5)],
                          eos={2: 4})
    assert bounds == [3, 6, 9, 12]
    assert [c.length for c in cands] == [12, 12, 5]
    assert not any(c.stopped for c in cands)
    assert all(w == 1.0 for c in cands for w in c.weights)


# ----------------------------------------------------------------------------- pgopd
PG = PGOPDConfig(prefix_len=4, probe_start=0, probe_end=4, threshold=None, top_fraction=0.5)
PROBES = [0.25, 1.0, 0.5, 0.75]


def test_pgopd_top_fraction_continues_the_best_half_and_trains_the_rest_on_the_prefix():
    cands, bounds = drive(PGOPDPolicy(PG), [const(p) for p in PROBES])
    assert 4 in bounds  # chunk boundary lands on prefix_len (3, 4, 7, 10, 12)
    assert bounds == [3, 4, 7, 10, 12]
    c = by_cid(cands)
    assert {i for i in c if c[i].info["continued"]} == {1, 3}
    for i in (0, 2):
        assert c[i].stopped and c[i].keep and c[i].train_len == 4 and c[i].length == 4
    for i in (1, 3):
        assert not c[i].stopped and c[i].length == 12 and c[i].train_len is None
    assert [c[i].info["probe_overlap"] for i in range(4)] == pytest.approx(PROBES)
    assert all(c[i].info["decision_step"] == 4 for i in range(4))
    assert all(w == 1.0 for x in cands for w in x.weights)


def test_pgopd_ties_break_by_lower_cid_and_rounding_is_ceil():
    cands, _ = drive(PGOPDPolicy(PG), [const(0.5)] * 4)
    assert {x.cid for x in cands if x.info["continued"]} == {0, 1}
    # top_fraction 0.3 of 4 -> ceil(1.2) = 2 ; 0.2 of 4 -> ceil(0.8) = 1 ; 0 -> nobody
    for frac, expect in [(0.3, {1, 3}), (0.2, {1}), (0.0, set()), (1.0, {0, 1, 2, 3})]:
        cfg = dataclasses.replace(PG, top_fraction=frac)
        cands, _ = drive(PGOPDPolicy(cfg), [const(p) for p in PROBES])
        assert {x.cid for x in cands if x.info["continued"]} == expect, frac


def test_pgopd_top_fraction_rounding_is_not_fooled_by_float_error():
    # 0.7 * 10 = 7.000000000000001 in floats: still 7 continue, not 8
    cfg = dataclasses.replace(PG, top_fraction=0.7)
    cands, _ = drive(PGOPDPolicy(cfg), [const(i / 10) for i in range(10)])
    assert {x.cid for x in cands if x.info["continued"]} == set(range(3, 10))


def test_pgopd_threshold_mode_is_inclusive():
    cfg = dataclasses.replace(PG, threshold=0.75)
    cands, _ = drive(PGOPDPolicy(cfg), [const(p) for p in PROBES])
    assert {x.cid for x in cands if x.info["continued"]} == {1, 3}
    cfg = dataclasses.replace(PG, threshold=0.8)
    cands, _ = drive(PGOPDPolicy(cfg), [const(p) for p in PROBES])
    assert {x.cid for x in cands if x.info["continued"]} == {1}


def test_pgopd_drop_mode_removes_stopped_candidates():
    cfg = dataclasses.replace(PG, low_overlap="drop")
    c = by_cid(drive(PGOPDPolicy(cfg), [const(p) for p in PROBES])[0])
    assert [c[i].keep for i in range(4)] == [False, True, False, True]
    assert c[0].stopped and c[2].stopped


def test_pgopd_probe_uses_only_the_probe_window():
    cfg = dataclasses.replace(PG, probe_start=1, probe_end=3)
    # outside [1, 3) the streams say the opposite of inside
    s_hi = [0.0, 1.0, 1.0, 0.0] + const(0.0, 8)
    s_lo = [1.0, 0.0, 0.25, 1.0] + const(1.0, 8)
    cands, _ = drive(PGOPDPolicy(cfg), [s_lo, s_hi])
    c = by_cid(cands)
    assert c[0].info["probe_overlap"] == pytest.approx(0.125)
    assert c[1].info["probe_overlap"] == pytest.approx(1.0)
    assert c[1].info["continued"] and c[0].stopped


def test_pgopd_groups_are_ranked_separately_and_eos_in_prefix_just_finishes():
    streams = [const(p) for p in PROBES] + [const(0.9), const(0.1), const(0.2)]
    groups = [0, 0, 0, 0, 1, 1, 1]
    # cid 4 (best of group 1) ends at position 2: it finishes and is not ranked;
    # group 1 then has 2 live -> ceil(0.5 * 2) = 1 continues: cid 6 (0.2 > 0.1)
    cands, _ = drive(PGOPDPolicy(PG), streams, groups=groups, eos={4: 2})
    c = by_cid(cands)
    assert {i for i in c if c[i].info["continued"]} == {1, 3, 6}
    assert c[4].finished and not c[4].stopped and c[4].length == 3 and c[4].train_len is None
    assert c[4].info["probe_overlap"] == pytest.approx(0.9) and c[4].info["decision_step"] is None
    assert c[5].stopped and c[5].train_len == 4


# ----------------------------------------------------------------------------- pruneopd
def prune_cfg(**kw):
    base = dict(window=2, drift_threshold=0.5, decay=0.5, truncate_threshold=0.0, min_weight=0.0,
                initial_window=12, expand_threshold=0.7, expand_by=4)
    base.update(kw)
    return PruneOPDConfig(**base)


def test_prune_drift_events_count_crossings_not_tokens():
    # W=2 window means: 1, 1, .625, .25*, .25, .25, .625, 1, .625, .25*, .625, 1  (* = crossing)
    s = [1, 1, 0.25, 0.25, 0.25, 0.25, 1, 1, 0.25, 0.25, 1, 1]
    (c,), _ = drive(PruneOPDPolicy(prune_cfg(), 12), [s])
    assert c.info["drift_events"] == 2
    assert c.weights == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert not c.stopped and c.train_len is None and c.info["truncated_at"] is None
    assert c.info["weight_min"] == 0.25
    assert c.info["weight_mean"] == pytest.approx(sum(c.weights) / 12)


def test_prune_truncates_on_severe_window_overlap_before_the_trigger_token():
    # W=2: t3 .75, t4 .25 (drift event, not < .25), t5 0.0 < .25 -> truncated at 5
    s = [1, 1, 1, 0.5, 0, 0] + const(1.0, 6)
    (c,), bounds = drive(PruneOPDPolicy(prune_cfg(truncate_threshold=0.25), 12), [s], chunk=4)
    assert bounds == [4, 8]
    assert c.stopped and c.info["truncated_at"] == 5 and c.train_len == 5
    assert c.info["stop_reason"] == "drift"
    assert c.length == 8  # the rest of the chunk was generated, but is not trained
    assert c.weights == [1, 1, 1, 1, 0.5, 0, 0, 0]
    assert c.info["weight_min"] == 0.5


def test_prune_truncates_when_weight_falls_below_min_weight():
    # W=1: events at t1 and t3 -> weight .25 < .3 at t3 -> truncated at 3
    s = [1, 0.4, 1, 0.4] + const(1.0, 8)
    (c,), _ = drive(PruneOPDPolicy(prune_cfg(window=1, min_weight=0.3), 12), [s])
    assert c.info["drift_events"] == 2 and c.train_len == 3 and c.stopped
    assert c.weights[:3] == [1, 0.5, 0.5]


def test_prune_truncation_at_first_token_drops_the_candidate():
    (c,), _ = drive(PruneOPDPolicy(prune_cfg(truncate_threshold=0.25), 12), [const(0.0)])
    assert c.train_len == 0 and not c.keep and c.stopped and c.info["weight_min"] is None


def test_prune_window_expands_while_overlap_stays_high():
    cfg = prune_cfg(initial_window=4, expand_by=4)
    (c,), bounds = drive(PruneOPDPolicy(cfg, 12), [const(1.0)], chunk=3)
    assert bounds == [3, 4, 7, 8, 11, 12]  # boundaries land on the window ends 4 and 8
    assert c.info["window_end"] == 12 and c.info["expansions"] == 2
    assert c.length == 12 and not c.stopped


def test_prune_window_stops_at_its_end_when_overlap_falls():
    # window mean at t3 = 1 -> expand to 8; at t7 = .5 < .7 -> stop at 8 (.5 is no drift event)
    s = [1, 1, 1, 1, 1, 1, 0.5, 0.5] + const(1.0, 4)
    (c,), bounds = drive(PruneOPDPolicy(prune_cfg(initial_window=4, expand_by=4), 12), [s], chunk=3)
    assert bounds == [3, 4, 7, 8]
    assert c.stopped and c.length == 8 and c.train_len == 8
    assert c.info["window_end"] == 8 and c.info["stop_reason"] == "window"
    assert c.info["drift_events"] == 0 and all(w == 1.0 for w in c.weights)


def test_prune_weights_monotone_and_independent_of_chunking():
    rng = random.Random(0)
    cfg = PruneOPDConfig(window=3, drift_threshold=0.5, decay=0.7, truncate_threshold=0.1,
                         min_weight=0.2, initial_window=8, expand_threshold=0.4, expand_by=4)
    streams = [[rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]) for _ in range(24)] for _ in range(40)]
    a, _ = drive(PruneOPDPolicy(cfg, 24), streams, max_new=24, chunk=1)
    b, _ = drive(PruneOPDPolicy(cfg, 24), streams, max_new=24, chunk=5)
    n_events = 0
    for x, y in zip(a, b):
        n = x.length if x.train_len is None else x.train_len
        trained = x.weights[:n]
        assert all(w2 <= w1 for w1, w2 in zip(trained, trained[1:]))
        assert all(0.0 <= w <= 1.0 for w in x.weights)
        assert x.train_len == y.train_len and x.weights[:n] == y.weights[:n]
        assert x.info["drift_events"] == y.info["drift_events"]
        n_events += x.info["drift_events"]
    assert n_events > 0  # the random streams do exercise drift


# ----------------------------------------------------------------------------- controls
def train_cfg(**controls):
    return TrainConfig(max_new_tokens=12, pgopd=PG, controls=ControlsConfig(**controls))


def test_continue_all_logs_the_same_probe_as_pgopd_but_never_stops():
    streams = [const(p) for p in PROBES]
    pg, _ = drive(make_policy("pgopd", train_cfg()), streams)
    ca, _ = drive(make_policy("continue_all", train_cfg()), streams)
    for x, y in zip(pg, ca):
        assert y.info["probe_overlap"] == x.info["probe_overlap"]
        assert y.info["selected"] == x.info["continued"]
        assert y.info["continued"] and not y.stopped and y.length == 12
        assert all(w == 1.0 for w in y.weights)


def test_reweight_only_weights_every_token_by_the_probe():
    streams = [const(p) for p in PROBES]
    cands, _ = drive(make_policy("reweight_only", train_cfg()), streams)
    for c in cands:
        assert not c.stopped and c.length == 12
        assert c.weights == pytest.approx([PROBES[c.cid]] * 12)


def test_fixed_truncation_stops_everyone_at_L():
    pol = make_policy("fixed_truncation", train_cfg(fixed_truncation_len=5))
    cands, bounds = drive(pol, [const(1.0), const(0.0), const(0.5)], eos={2: 2})
    assert bounds[:2] == [3, 5]
    c = by_cid(cands)
    for i in (0, 1):
        assert c[i].stopped and c[i].length == 5 and c[i].train_len == 5
    assert c[2].finished and not c[2].stopped and c[2].length == 3


def test_fixed_truncation_length_from_reference_and_explicit_wins():
    ref = {"mean_generated_tokens": 6.5, "continue_rate": 0.5}
    assert make_policy("fixed_truncation", train_cfg(), reference=ref).length == 7  # half-up
    assert make_policy("fixed_truncation", train_cfg(fixed_truncation_len=3), reference=ref).length == 3
    assert make_policy("random_prune", train_cfg(random_continue_rate=0.2), reference=ref).continue_rate == 0.2
    assert make_policy("random_prune", train_cfg(), reference=ref).continue_rate == 0.5


@pytest.mark.parametrize("method,field", [("fixed_truncation", "fixed_truncation_len"),
                                          ("random_prune", "random_continue_rate")])
def test_control_without_length_or_reference_raises(method, field):
    with pytest.raises(ValueError, match=field):
        make_policy(method, train_cfg())
    with pytest.raises(ValueError, match=field):
        make_policy(method, train_cfg(), reference={"unrelated": 1})


def test_unknown_method_raises_and_all_methods_build():
    with pytest.raises(ValueError, match="unknown method"):
        make_policy("grpo", train_cfg())
    ref = {"mean_generated_tokens": 8.0, "continue_rate": 0.5}
    for m in ("opd", "pgopd", "pruneopd", "continue_all", "reweight_only", "fixed_truncation",
              "random_prune"):
        assert make_policy(m, train_cfg(), reference=ref).name == m


def random_prune_run(rate, seed, n_groups=150):
    streams = [const(0.5)] * (4 * n_groups)
    groups = [i // 4 for i in range(4 * n_groups)]
    pol = make_policy("random_prune", train_cfg(random_continue_rate=rate), seed=seed)
    cands, _ = drive(pol, streams, groups=groups)
    return cands


def test_random_prune_rate_and_seed_reproducibility():
    a = random_prune_run(0.3, seed=1)
    cont = [c.cid for c in a if c.info["continued"]]
    assert abs(len(cont) / len(a) - 0.3) < 0.025  # sd ~0.008; plain rounding gives 0.25
    for c in a:  # the rest are treated like PG-OPD's low_overlap (train_prefix)
        if not c.info["continued"]:
            assert c.stopped and c.train_len == 4 and c.keep
        assert c.info["probe_overlap"] == 0.5
    assert cont == [c.cid for c in random_prune_run(0.3, seed=1) if c.info["continued"]]
    assert cont != [c.cid for c in random_prune_run(0.3, seed=2) if c.info["continued"]]


def test_random_prune_split_over_processes_continues_the_same_candidates():
    """8 groups of 4 on one process == groups 0-3 on rank 0 and 4-7 on rank 1 (local group
    and cid numbering restart on each rank, as in the training loop)."""
    def continued(groups, group_offset, step=5):
        pol = make_policy("random_prune", train_cfg(random_continue_rate=0.4), seed=7)
        pol.begin_step(step, group_offset=group_offset)
        cands, _ = drive(pol, [const(0.5)] * (4 * groups), groups=[i // 4 for i in range(4 * groups)])
        return [c.info["continued"] for c in cands]

    one = continued(8, 0)
    assert continued(4, 0) + continued(4, 4) == one
    assert 0 < sum(one) < len(one)
    assert continued(4, 4) != continued(4, 0), "a rank's groups must not repeat another rank's draws"
    assert continued(8, 0, step=6) != one, "each step draws anew"


def test_random_prune_integral_rate_gives_exact_counts_per_group():
    a = random_prune_run(0.5, seed=3, n_groups=20)
    per_group = {}
    for c in a:
        per_group[c.group] = per_group.get(c.group, 0) + c.info["continued"]
    assert set(per_group.values()) == {2}


# ----------------------------------------------------------------------------- Prune-OPD's parts alone
def test_pruneopd_ablations_each_run_one_part():
    # drift at t4 (W=2 mean .25 < .5: one event) and severe at t5 (0 < .25); window end 4 with a
    # mean of .5 < .7 at t3 would stop the full method there
    s = [1, 1, 0.5, 0.5, 0, 0] + const(1.0, 6)
    cfg = TrainConfig(max_new_tokens=12, pruneopd=prune_cfg(truncate_threshold=0.25, initial_window=4))
    got = {}
    for m in ("pruneopd", "pruneopd_drift_only", "pruneopd_window_only", "pruneopd_reweight_only"):
        (c,), _ = drive(make_policy(m, cfg), [s])
        got[m] = c
    assert got["pruneopd"].info["stop_reason"] == "window" and got["pruneopd"].train_len == 4
    drift = got["pruneopd_drift_only"]
    assert drift.info["stop_reason"] == "drift" and drift.train_len == 5 and set(drift.weights[:5]) == {1.0}
    win = got["pruneopd_window_only"]
    assert win.info["stop_reason"] == "window" and win.train_len == 4 and set(win.weights) == {1.0}
    rew = got["pruneopd_reweight_only"]
    assert rew.train_len is None and rew.length == 12 and not rew.stopped
    assert rew.weights[3] == 1.0 and rew.weights[5] == 0.5  # the decay after the drift event, no cut


def test_random_prune_matched_to_pruneopd_cuts_at_its_mean_cut_length_and_rate():
    ref = {"cut_rate": 0.5, "mean_cut_len": 5.5}
    pol = make_policy("random_prune-pruneopd", TrainConfig(max_new_tokens=12, n_samples=4), seed=1, reference=ref)
    assert pol.cfg.prefix_len == 6 and pol.cuts_per_group == 2.0
    cands, bounds = drive(pol, [const(1.0)] * 40, groups=[i // 4 for i in range(40)])
    assert 6 in bounds
    cut = [c for c in cands if c.stopped]
    assert len(cut) == 20 and all(c.train_len == 6 and c.info["stop_reason"] == "random" for c in cut)
    assert all(sum(c.stopped for c in cands if c.group == g) == 2 for g in range(10))  # 0.5 * 4 per group
    # half of each group ended (EOS) before the cut point: the cuts fall on the live ones,
    # so the group still loses 2 of its 4 (the reference's rate over all candidates)
    eos = {i: 2 for i in range(40) if i % 4 < 2}
    cands, _ = drive(pol, [const(1.0)] * 40, groups=[i // 4 for i in range(40)], eos=eos)
    assert sum(c.stopped for c in cands) == 20 and not any(c.stopped for c in cands if c.cid in eos)
    # the reference cut nothing: nobody is cut; no Prune-OPD numbers: a clear error
    none = make_policy("random_prune-pruneopd", TrainConfig(max_new_tokens=12), reference={"cut_rate": 0.0})
    assert none.cuts_per_group == 0.0
    with pytest.raises(ValueError, match="cut_rate"):
        make_policy("random_prune-pruneopd", TrainConfig(), reference={"continue_rate": None})


def test_fixed_truncation_matched_to_the_mean_kept_length():
    ref = {"mean_generated_tokens": 9.0, "mean_kept_tokens": 6.4}
    assert make_policy("fixed_truncation-pruneopd", TrainConfig(), reference=ref).length == 6
    assert make_policy("fixed_truncation", TrainConfig(), reference={"mean_generated_tokens": 9.0}).length == 9
