"""Report pieces of issue 14: no import circle, stop-reason and cost tables, controls next to
their reference, and falsification outcomes that are not overlap in disguise."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from pgopd.report import costs as K
from pgopd.report import falsification as F
from pgopd.report import noise as N
from pgopd.report.common import label, reference_of
from pgopd.stepstats import window_pairs

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Report modules ``path`` imports (anywhere in the file, relative or absolute)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 or mod.startswith("pgopd.report"):
                base = mod.split(".")[-1] if mod else ""
                names = [base] if base else [a.name for a in node.names]
                out |= {n for n in names if (ROOT / "pgopd/report" / f"{n}.py").exists()}
    return out


def test_report_package_has_no_import_circle():
    mods = {p.stem: _imports(p) for p in (ROOT / "pgopd/report").glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(m, stack):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import circle: {' -> '.join(stack + [m])}"
        state[m] = "open"
        for n in mods[m]:
            visit(n, stack + [m])
        state[m] = "done"

    for m in mods:
        visit(m, [])
    assert "common" in mods["table"] and "common" in mods["falsification"] and not mods["common"]


def test_stop_reason_table_sums_per_method_with_tokens():
    cands = {("p", "pruneopd", 0): [
        {"stop_reason": "eos", "length": 10, "train_len": 10},
        {"stop_reason": "drift", "length": 16, "train_len": 13},
        {"stop_reason": "drift", "length": 8, "train_len": 5},
        {"stop_reason": "window", "length": 24, "train_len": 24}],
        ("p", "pruneopd", 1): [{"stop_reason": "length", "length": 48, "train_len": 48}],
        ("p", "opd", 0): [{"stop_reason": "eos", "length": 30, "train_len": 30}]}
    rows = K.stop_rows(cands, max_new_tokens=48)
    by = {(r["method"], r["stop_reason"]): r for r in rows}
    assert [(r["method"], r["stop_reason"]) for r in rows] == [("opd", "eos"), ("pruneopd", "eos"),
                                                              ("pruneopd", "length"), ("pruneopd", "drift"),
                                                              ("pruneopd", "window")]
    d = by[("pruneopd", "drift")]
    assert d["n"] == 2 and d["share"] == pytest.approx(2 / 5)
    assert d["generated_not_trained"] == 3 + 3 and d["not_generated_ub"] == (48 - 16) + (48 - 8)
    assert by[("pruneopd", "eos")]["not_generated_ub"] == 0 and by[("pruneopd", "window")]["not_generated_ub"] == 24
    md = K.render_markdown([], rows, [])
    assert "| p: Prune-OPD | drift | 2 | 40.0% |" in md


def test_cost_rows_sum_positions_and_give_the_ratios():
    metrics = {("p", "opd", 0): [{"tokens_generated": 100, "tokens_trained": 100, "positions_student": 110,
                                  "positions_teacher": 120}] * 2,
               ("p", "pgopd", 0): [{"tokens_generated": 50, "tokens_trained": 40, "positions_student": None,
                                    "positions_teacher": None}]}
    rows = {r["method"]: r for r in K.cost_rows(metrics)}
    assert rows["opd"]["teacher_per_trained"] == pytest.approx(240 / 200)
    assert rows["opd"]["student_per_generated"] == pytest.approx(220 / 200)
    assert rows["pgopd"]["positions_teacher"] is None and rows["pgopd"]["teacher_per_trained"] is None


def test_controls_are_labelled_by_their_reference():
    assert reference_of("fixed_truncation-pruneopd") == "pruneopd" and reference_of("random_prune") == "pgopd"
    assert reference_of("pruneopd_window_only") == "pruneopd" and reference_of("continue_all") == "pgopd"
    assert reference_of("opd") is None
    assert "Prune-OPD" in label("fixed_truncation-pruneopd")


def test_window_pairs_are_mean_overlap_and_reward_variance():
    ov, var = window_pairs([1, 1, 0, 0, 0.5], [0.0, 2.0, 1.0, 1.0, 5.0], window=2)
    assert ov == [1.0, 0.0] and var == [2.0, 0.0]  # the 1-token tail has no variance: left out
    ov, var = window_pairs([1.0] * 100, [0.0, 1.0] * 50, window=1, max_windows=10)
    assert len(ov) == 10  # widened to 10 tokens per window


def _noise_recs(rng, slope, n=60):
    recs = []
    for _ in range(n):
        x = rng.random(6)
        recs.append({"win_overlap": x.tolist(),
                     "win_reward_var": (1.0 + slope * x + rng.normal(0, 0.15, 6)).tolist()})
    return recs


@pytest.mark.parametrize("slope,expected", [(-1.0, "supported"), (0.0, "not_supported"), (1.0, "contradicted")])
def test_reward_noise_verdict_follows_the_data(slope, expected):
    res = N.analyse_windows(_noise_recs(np.random.default_rng(1), slope), n_boot=300)
    assert res["verdict"] == expected
    assert res["n_candidates"] == 60 and res["n_windows"] == 360
    if expected == "not_supported":
        assert res["rho_ci_low"] < 0 < res["rho_ci_high"]
    assert N.analyse_windows(_noise_recs(np.random.default_rng(1), -1.0, n=5))["verdict"] == "insufficient"


def test_reward_noise_opposite_signs_are_mixed():
    """rho and the bottom-minus-top difference significant in opposite directions: "mixed",
    never "contradicted" (the text must not claim the reward is LESS noisy at low overlap)."""
    res = {"spearman_rho": 0.2, "rho_ci_low": 0.1, "rho_ci_high": 0.3,
           "bottom_minus_top": 0.5, "bmt_ci_low": 0.2, "bmt_ci_high": 0.8}
    assert N.verdict(res) == "mixed"
    assert N.verdict({**res, "bmt_ci_low": -0.1}) == "contradicted"
    assert N.verdict({**res, "spearman_rho": -0.2, "rho_ci_low": -0.3, "rho_ci_high": -0.1}) == "supported"


def test_reward_noise_prefers_opd_runs():
    rng = np.random.default_rng(2)
    cands = {("p", "pruneopd", 0): _noise_recs(rng, 1.0), ("p", "opd", 0): _noise_recs(rng, -1.0)}
    out = N.analyse(cands, n_boot=200)["p"]
    assert out["source"] == "opd" and out["result"]["verdict"] == "supported"
    assert "noisier teacher reward" in out["text"]


def _opd_cands(path: Path, related: bool, rng) -> Path:
    recs = []
    for i in range(300):
        po = float(rng.random())
        p_correct = po if related else 0.5
        recs.append({"step": i // 8, "group": i // 4, "cid": i, "probe_window_overlap": po, "probe_window_complete": i % 10 != 0,
                     "finished": True, "correct": bool(rng.random() < p_correct),
                     "reward_suffix": po + float(rng.normal(0, 0.1)), "stop_reason": "eos"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("related,verdict", [(True, "supported"), (False, "not_supported")])
def test_falsification_on_opd_runs_gives_a_correctness_verdict(tmp_path, related, verdict):
    rng = np.random.default_rng(4)
    path = _opd_cands(tmp_path / "train/p/opd/seed0/candidates.jsonl", related, rng)
    fals = F.analyse(F.load_candidates([path]), n_boot=300)
    e = fals["pairs"]["p"]
    assert e["source"] == "opd" and e["n_ranked"] == 270  # probe window not complete: left out
    # within the same prompt, PG-OPD's top half by probe vs the rest (difficulty held fixed)
    kms = e["results"]["correct"]
    assert kms["n_groups"] > 0 and (kms["kms_ci_low"] > 0 if related else kms["kms_ci_low"] < 0 < kms["kms_ci_high"])
    assert e["verdict"] == e["results"]["correct"]["verdict"] == verdict
    # the agreement outcome is shown but flagged, and does not make the verdict
    assert e["results"]["reward_suffix"]["verdict"] == "supported"
    assert "not used for the verdict" in F.sentence(e["results"]["reward_suffix"])
    if related:  # the relation holds within prompts too: no caveat
        assert "Within the same prompt" not in F.sentence(e["results"]["correct"])
    assert f"**Verdict (final correctness (candidates that ended by EOS or at the length limit) vs probe overlap): {verdict.replace('_', ' ')}**" \
        in F.render_markdown(fals)


def test_a_between_prompt_relation_is_flagged_when_absent_within_prompts(tmp_path):
    # every prompt has its own overlap level that drives correctness (difficulty); within a
    # prompt the candidates' overlaps are noise: pooled "supported", within-prompt nothing
    rng = np.random.default_rng(6)
    recs = []
    for g in range(300):
        level = float(rng.random())
        for i in range(4):
            recs.append({"step": g // 4, "group": g, "cid": 4 * g + i, "probe_window_complete": True,
                         "probe_window_overlap": level + float(rng.normal(0, 0.02)), "finished": True,
                         "correct": bool(rng.random() < level), "reward_suffix": 0.0})
    path = tmp_path / "train/p/opd/seed0/candidates.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = F.analyse(F.load_candidates([path]), n_boot=300)["pairs"]["p"]["results"]["correct"]
    assert res["verdict"] == "supported" and res["kms_ci_low"] < 0 < res["kms_ci_high"]
    assert "Within the same prompt the difference is not significant" in F.sentence(res)


def test_tail_histograms_of_opd_first_steps_hand_counted():
    from pgopd.report import tail as TL

    def rec(step, length, tail, wins):
        return {"step": step, "length": length, "tail": tail, "win_overlap": wins}

    cands = {("p", "opd", 0): [rec(0, 10, False, [0.9, 0.6]), rec(1, 64, True, [0.1, 0.0, 0.05]),
                               rec(2, 30, False, [0.7]), rec(10, 64, True, [0.0])],      # step 10: not counted
             ("p", "pgopd", 0): [rec(0, 64, True, [0.0])]}                              # not OPD
    rows = TL.tail_rows(cands, 64)
    lens = [(r["bin_low"], r["tail"], r["rest"]) for r in rows if r["what"] == "length"]
    assert len(lens) == 8 and sum(t for _, t, _ in lens) == 1 and sum(x for *_, x in lens) == 2
    assert lens[-1] == (56.0, 1, 0) and lens[1] == (8.0, 0, 1) and lens[3] == (24.0, 0, 1)
    ovs = {r["bin_low"]: (r["tail"], r["rest"]) for r in rows if r["what"] == "window_overlap"}
    assert ovs[0.0] == (3, 0) and ovs[0.875] == (0, 1) and ovs[0.5] == (0, 1) and ovs[0.625] == (0, 1)
    s = TL.summary(cands)["p"]
    assert s["n"] == 3 and s["tail_rate"] == pytest.approx(1 / 3)
    assert s["tail_token_share"] == pytest.approx(64 / 104)
    assert s["overlap_tail"] == pytest.approx(0.05) and s["overlap_rest"] == pytest.approx(2.2 / 3)
    md = TL.render_markdown(rows, TL.summary(cands))
    assert "33.3% in the tail holding 61.5% of the tokens" in md
    assert TL.render_markdown([], {}) == ""
    old_run = {("q", "opd", 0): [{"step": 0, "length": 5, "win_overlap": [0.5]}]}   # logged before issue 15
    assert TL.tail_rows(old_run, 64) == [] and TL.summary(old_run) == {}
    zero = {("z", "opd", 0): [rec(0, 0, False, [])]}
    assert "0 in the tail" not in TL.render_markdown(TL.tail_rows(zero, 64), TL.summary(zero))
