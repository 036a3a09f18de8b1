"""Δ vs OPD per benchmark (pgopd.report.delta) and the teacher's solution lengths with the fixed
cut's truncated share (pgopd.report.lengths): hand-computed cases and the report's outputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pgopd.report import delta as D
from pgopd.report import lengths as L
from pgopd.report.build import report
from pgopd.report.table import compute_table, load_evals
from test_report import _write, _write_jsonl, fabricate_runs


def _evals(root: Path, runs: dict) -> list[Path]:
    """runs: (method, tag) -> bench -> per-problem fractions (pair ``p``)."""
    return fabricate_runs(root, per_problem=runs, cost={})[0]


RUNS = {("opd", "seed0"): {"easy": [1.0, 0.5, 0.5, 0.0], "hard": [0.5, 0.5, 0.0, 0.0]},
        ("opd", "seed1"): {"easy": [1.0, 1.0, 0.5, 0.0], "hard": [0.5, 0.0, 0.0, 0.5]},
        ("pgopd", "seed0"): {"easy": [1.0, 0.5, 0.5, 0.0], "hard": [0.5, 0.5, 0.0, 0.0]},   # = OPD seed 0
        ("pgopd", "seed1"): {"easy": [1.0, 1.0, 0.5, 0.0], "hard": [0.5, 0.0, 0.0, 0.5]},   # = OPD seed 1
        ("fixed_truncation-pgopd", "seed0"): {"easy": [1.0, 1.0, 1.0, 0.5], "hard": [0.0, 0.0, 0.0, 0.0]},
        ("fixed_truncation-pgopd", "seed1"): {"easy": [1.0, 1.0, 0.5, 0.5], "hard": [0.0, 0.0, 0.0, 0.5]}}


def test_delta_per_benchmark_hand_computed_and_zero_for_identical_runs(tmp_path):
    evals = load_evals(_evals(tmp_path, RUNS))
    t = compute_table(evals, {}, n_boot=300)
    rows = {r["method"]: r for r in D.delta_rows(t, evals, n_boot=300)}
    assert set(rows) == {"pgopd", "fixed_truncation-pgopd"}
    pg = rows["pgopd"]
    for b in ("easy", "hard", "avg"):
        assert (pg[f"{b}_diff"], pg[f"{b}_ci_low"], pg[f"{b}_ci_high"]) == (0.0, 0.0, 0.0)
    ft = rows["fixed_truncation-pgopd"]
    # easy: seed 0 diffs (0, .5, .5, .5), seed 1 (0, 0, 0, .5) -> mean 0.25; hard: seed 0
    # (-.5, -.5, 0, 0), seed 1 (-.5, 0, 0, 0) -> mean -0.1875; avg = mean of the two
    assert ft["easy_diff"] == pytest.approx(0.25)
    assert ft["hard_diff"] == pytest.approx(-0.1875)
    assert ft["avg_diff"] == pytest.approx((0.25 - 0.1875) / 2)
    assert ft["easy_ci_low"] < 0.25 < ft["easy_ci_high"] and ft["hard_ci_high"] <= 0.0 < ft["easy_ci_high"]
    assert ft["reference"] == "pgopd" and pg["reference"] is None
    assert D.cell(ft, "easy").startswith("+25.00 [") and D.cell(ft, "hard").startswith("−18.75 [")
    md = D.render_markdown(list(rows.values()), t.benches)
    assert "| Fixed truncation matched to PG-OPD (ctrl) | +25.00 [" in md


def test_method_minus_matched_control_is_the_negated_difference_here(tmp_path):
    """PG-OPD equals OPD in RUNS, so PG-OPD - its fixed cut is minus (fixed cut - OPD), per
    benchmark and on the average; the markdown has its own section."""
    evals = load_evals(_evals(tmp_path, RUNS))
    t = compute_table(evals, {}, n_boot=300)
    (row,) = D.versus_control_rows(t, evals, n_boot=300)
    assert (row["method"], row["baseline"], row["reference"]) == ("pgopd", "fixed_truncation-pgopd", "pgopd")
    assert row["easy_diff"] == pytest.approx(-0.25) and row["hard_diff"] == pytest.approx(0.1875)
    assert row["avg_diff"] == pytest.approx((-0.25 + 0.1875) / 2) and row["n_seeds"] == 2
    assert row["easy_ci_high"] <= 0.0 <= row["hard_ci_low"]
    md = D.render_markdown(D.delta_rows(t, evals, n_boot=300) + [row], t.benches)
    assert md.index("## Δ vs OPD per benchmark") < md.index("## Each method minus its matched controls")
    assert "| PG-OPD − Fixed truncation matched to PG-OPD (ctrl) | −25.00 [" in md
    # a control whose reference did not run has no row
    runs = {k: v for k, v in RUNS.items() if k[0] != "pgopd"}
    evals = load_evals(_evals(tmp_path / "b", runs))
    assert D.versus_control_rows(compute_table(evals, {}, n_boot=50), evals, n_boot=50) == []


def test_delta_uses_only_seeds_both_runs_have(tmp_path):
    runs = {k: v for k, v in RUNS.items() if k != ("fixed_truncation-pgopd", "seed1")}
    evals = load_evals(_evals(tmp_path, runs))
    t = compute_table(evals, {}, n_boot=100)
    ft = next(r for r in D.delta_rows(t, evals, n_boot=100) if r["method"] == "fixed_truncation-pgopd")
    assert ft["easy_diff"] == pytest.approx(0.375)  # seed 0 only: (0 + .5 + .5 + .5) / 4


def _samples(path: Path, rows) -> Path:
    return _write_jsonl(path, [{"id": i, "tokens": [7] * n, "correct": ok} for i, n, ok in rows])


def test_solution_lengths_per_level_and_the_truncated_share():
    samples = [("a", 10, True), ("b", 12, True), ("c", 30, True), ("d", 40, True), ("e", 41, True),
               ("f", 99, False)]  # a wrong sample does not count
    levels = {"a": "1", "b": "1", "c": "3", "d": "3", "e": "3", "f": "3"}
    by = L.correct_lengths([{"id": i, "tokens": [0] * n, "correct": ok} for i, n, ok in samples], levels)
    assert by == {"1": [10, 12], "3": [30, 40, 41]}
    assert L.share_longer([30, 40, 41], 40) == pytest.approx(1 / 3)  # ending exactly at the cut is complete
    assert L.share_longer([10, 12], 40) == 0.0
    assert L._quantile([10, 20, 30, 40], 0.5) == 25.0 and L._quantile([10, 20, 30, 40], 0.9) == pytest.approx(37.0)


def test_cut_lengths_prefer_the_controls_recorded_cut():
    trains = {("p", "pgopd", 0): {"mean_kept_tokens": 20.5}, ("p", "pgopd", 1): {"mean_kept_tokens": 30.4},
              ("p", "fixed_truncation-pgopd", 1): {"fixed_truncation_len": 33},
              ("p", "pruneopd", 0): {"mean_kept_tokens": 7.2}, ("q", "pgopd", 0): {"mean_kept_tokens": 99}}
    assert L.cut_lengths(trains, "p") == {"pgopd": {0: 21, 1: 33}, "pruneopd": {0: 7}}


def test_report_writes_lengths_and_delta(tmp_path):
    evals = _evals(tmp_path / "r", RUNS)
    trains = [_write(tmp_path / f"r/train/p/{m}/seed{s}/summary.json",
                     {"train_wall_s": 10.0, "gen_tokens": 100, "mean_kept_tokens": kept, **extra})
              for m, s, kept, extra in [("opd", 0, 40.0, {}), ("opd", 1, 40.0, {}),
                                        ("pgopd", 0, 20.0, {}), ("pgopd", 1, 24.0, {}),
                                        ("fixed_truncation-pgopd", 0, 20.0, {"fixed_truncation_len": 20}),
                                        ("fixed_truncation-pgopd", 1, 24.0, {"fixed_truncation_len": 24})]]
    samples = _samples(tmp_path / "teacher/samples.jsonl",
                       [(f"t{i}", n, True) for i, n in enumerate([10, 15, 18, 22, 30, 35])])
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"t{i}", "ops": 1 + i // 3}) + "\n" for i in range(6)))
    out = tmp_path / "tables"
    report(evals, trains, out, n_boot=100, hparams={"seeds": [0, 1]}, teacher_samples={"p": samples},
           train_data=train)
    with open(out / "solution_lengths.csv") as fh:
        rows = {r["level"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"1", "2", "all"}
    assert float(rows["1"]["mean_tokens"]) == pytest.approx(43 / 3) and rows["2"]["max_tokens"] == "35"
    # cuts 20 (seed 0) and 24 (seed 1): level 1 (10, 15, 18) never cut; level 2 (22, 30, 35): 3/3 and 2/3
    assert float(rows["1"]["cut_pgopd_share"]) == 0.0
    assert float(rows["2"]["cut_pgopd_share"]) == pytest.approx((1 + 2 / 3) / 2)
    assert float(rows["2"]["cut_pgopd_len"]) == 22.0
    md = (out / "main.md").read_text()
    assert "## Δ vs OPD per benchmark" in md and "Mean length, hardest level / easiest: 2.02x." in md
    assert md.index("# Main results") < md.index("## Δ vs OPD per benchmark") < md.index("## Hyperparameters")
    assert "|\n\n## The teacher's correct solutions" in md  # a blank line between the two tables
    with open(out / "delta.csv") as fh:
        d = {(r["method"], r["baseline"]): r for r in csv.DictReader(fh)}
    assert float(d[("pgopd", "opd")]["easy_diff"]) == 0.0
    assert float(d[("fixed_truncation-pgopd", "opd")]["easy_diff"]) == 0.25
    assert float(d[("pgopd", "fixed_truncation-pgopd")]["easy_diff"]) == -0.25
    assert "## Each method minus its matched controls" in md


def test_robustness_bench_reads_a_builds_tables(tmp_path):
    """bench/robustness.py's per-build summary, from tables the report wrote."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("robustness", Path(__file__).parents[1] / "bench/robustness.py")
    rb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rb)
    runs = {**RUNS, ("teacher", "base"): {"easy": [1.0] * 4, "hard": [1.0] * 4},
            ("student", "base"): {"easy": [0.0] * 4, "hard": [0.0] * 4}}
    evals = _evals(tmp_path / "r", runs)
    trains = [_write(tmp_path / f"r/train/p/{m}/seed{s}/summary.json",
                     {"train_wall_s": wall, "gen_tokens": 100, "mean_kept_tokens": 20.0,
                      **({"fixed_truncation_len": 20} if m.startswith("fixed") else {})})
              for m, wall in [("opd", 40.0), ("pgopd", 16.0), ("fixed_truncation-pgopd", 10.0)] for s in (0, 1)]
    samples = _samples(tmp_path / "teacher/samples.jsonl", [("t0", 10, True), ("t1", 30, True)])
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "t0", "ops": 1}) + "\n" + json.dumps({"id": "t1", "ops": 5}) + "\n")
    report(evals, trains, tmp_path / "tables", n_boot=100, teacher_samples={"p": samples}, train_data=train)
    got = rb.summarise(tmp_path / "tables")
    assert got["teacher"] == 100.0 and got["student"] == 0.0 and got["hard_bench"] == "hard"
    assert got["opd_gain"] == pytest.approx(got["opd"])
    assert got["rows"]["pgopd"]["wall_ratio"] == pytest.approx(0.4, abs=0.01) and got["rows"]["pgopd"]["diff"] == 0.0
    assert got["methods_hold"] == {"pgopd": True}
    assert got["rows"]["fixed_truncation-pgopd"]["diff_hard"] == pytest.approx(-18.75)
    assert got["fixed_cut_share"]["pgopd"] == 0.5 and got["fixed_cut_len"]["pgopd"] == 20.0
    r = rb.ranges({"a": got, "b": {**got, "teacher": 90.0}})
    assert r["teacher"] == [90.0, 100.0] and r["methods_hold_on_every_build"]["pgopd"] is True
