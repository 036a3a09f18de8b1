"""The report: statistics, the main table over seeds, the falsification analysis, figures, CLI.

Everything runs on files fabricated in tmp_path (no training, no Snakemake).
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from pgopd import cli
from pgopd.report import falsification as F
from pgopd.report import figures as FIG
from pgopd.report import stats as S
from pgopd.report.build import report
from pgopd.report.table import build_table, compute_table, load_evals, load_train

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stats
def test_mean_std_over_seeds():
    assert S.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert S.mean_std([0.5]) == (0.5, None, 1)
    assert S.mean_std([]) == (None, None, 0)
    assert S.mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)


def test_wilcoxon_matches_scipy_on_a_hand_case():
    x = [0.61, 0.55, 0.70, 0.48, 0.66, 0.59, 0.72]
    y = [0.52, 0.57, 0.60, 0.41, 0.55, 0.50, 0.61]
    # differences: 0.09 -0.02 0.10 0.07 0.11 0.09 0.11 -> W- = rank(0.02) = 1, n = 7:
    # exact two-sided p = 2 * P(W <= 1) = 2 * 2/128 = 0.03125
    p = S.wilcoxon_paired(x, y)
    assert p == pytest.approx(sps.wilcoxon(np.subtract(x, y)).pvalue)
    assert p == pytest.approx(2 * 2 / 2 ** 7)
    assert S.wilcoxon_paired(x[:5], y[:5]) is None  # fewer than MIN_WILCOXON_PAIRS
    assert S.wilcoxon_paired(x[:5], y[:5], min_pairs=5) == pytest.approx(sps.wilcoxon(np.subtract(x[:5], y[:5])).pvalue)
    assert S.wilcoxon_paired([0.5] * 6, [0.5] * 6) == 1.0
    with pytest.raises(ValueError):
        S.wilcoxon_paired([1, 2], [1])


def test_spearman_of_monotone_relation_is_one():
    x = np.linspace(0, 1, 40)
    r = S.spearman_ci(x, np.exp(5 * x), n_boot=300)
    assert r["rho"] == pytest.approx(1.0)
    assert r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)
    assert S.spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert S.spearman([1, 2, 3, 4], [3, 1, 4, 2]) == pytest.approx(sps.spearmanr([1, 2, 3, 4], [3, 1, 4, 2])[0])
    assert S.spearman_ci([1, 1, 1, 1], [1, 2, 3, 4])["rho"] is None
    # independent samples: the CI brackets rho and covers the true 0 in most replications
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(40):
        a, b = rng.random(100), rng.random(100)
        r = S.spearman_ci(a, b, n_boot=300, seed=i)
        assert r["ci_low"] <= r["rho"] <= r["ci_high"]
        covered += r["ci_low"] < 0 < r["ci_high"]
    assert covered >= 34
    assert r == S.spearman_ci(a, b, n_boot=300, seed=i)  # seeded


def test_paired_bootstrap_ci_contains_the_true_effect_and_excludes_zero():
    rng = np.random.default_rng(0)
    true = 0.08
    # 3 seeds x (60, 40) problems: problem effects + seed effects + noise around `true`
    diffs = [true + rng.normal(0, 0.05, (3, 1)) * 0 + rng.normal(0, 0.25, (3, n)) for n in (60, 40)]
    shift = true - S.paired_stat(diffs)
    diffs = [d + shift for d in diffs]  # make the sample statistic exactly the true effect
    r = S.paired_bootstrap(diffs, n_boot=2000, seed=0)
    assert r["diff"] == pytest.approx(true)
    assert r["ci_low"] < true < r["ci_high"]
    assert r["ci_low"] > 0  # large effect: 0 is excluded
    assert (r["n_seeds"], r["n_problems"]) == (3, 100)
    assert S.sign_flip_test(diffs, n_perm=2000) < 0.01
    # no effect: the CI includes 0 and the test does not reject
    null = [d - true for d in diffs]
    r0 = S.paired_bootstrap(null, seed=0)
    assert r0["ci_low"] < 0 < r0["ci_high"]
    assert S.sign_flip_test(null) > 0.5


def test_paired_bootstrap_coverage_on_simulated_data():
    rng = np.random.default_rng(7)
    true, hits, reps = 0.05, 0, 60
    for i in range(reps):
        diffs = [true + rng.normal(0, 0.3, (2, 50)), true + rng.normal(0, 0.3, (2, 30))]
        r = S.paired_bootstrap(diffs, n_boot=400, seed=i)
        hits += r["ci_low"] <= true <= r["ci_high"]
    assert hits / reps >= 0.85


def test_paired_stat_weights_benchmarks_equally():
    d = [np.array([[1.0, 1.0, 1.0, 1.0]]), np.array([[0.0]])]
    assert S.paired_stat(d) == 0.5  # not 0.8 (pooled problems)
    with pytest.raises(ValueError):
        S.paired_stat([np.zeros((2, 3)), np.zeros((3, 3))])


def test_quantile_bins():
    x = np.arange(10.0)
    bins = S.quantile_bins(x, 2 * x, n_bins=5)
    assert [b["n"] for b in bins] == [2, 2, 2, 2, 2]
    assert [b["y_mean"] for b in bins] == [1.0, 5.0, 9.0, 13.0, 17.0]
    assert bins[0]["x_low"] == 0.0 and bins[-1]["x_high"] == 9.0
    # ties merge bins; bin_members agrees with the bins
    x2 = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    b2 = S.quantile_bins(x2, list(range(10)), n_bins=5)
    assert [b["n"] for b in b2] == [6, 2, 2]
    assert list(S.bin_members(x2, 5)) == [0] * 6 + [1, 1, 2, 2]
    assert S.quantile_bins([], []) == []


def test_bootstrap_mean_diff():
    r = S.bootstrap_mean_diff([1.0] * 20 + [0.9] * 20, [0.1] * 40, n_boot=500)
    assert r["diff"] == pytest.approx(0.85)
    assert 0.8 < r["ci_low"] <= r["ci_high"] < 0.9
    assert S.bootstrap_mean_diff([], [1.0])["diff"] is None


# ----------------------------------------------------------------------------- fabrication
def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _write_jsonl(path: Path, recs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


# per_problem fractions: (method, tag) -> bench -> list over problems.  b1 has 4 problems, b2 2.
PER_PROBLEM = {
    ("teacher", "base"): {"b1": [1, 1, 1, 0.5], "b2": [1, 0.5]},
    ("student", "base"): {"b1": [0, 0.5, 0, 0], "b2": [0, 0]},
    ("opd", "seed0"): {"b1": [1, 0, 0.5, 0.5], "b2": [0, 1]},        # 0.5,   0.5  -> 0.5
    ("opd", "seed1"): {"b1": [1, 1, 0.5, 0.5], "b2": [0, 0]},        # 0.75,  0    -> 0.375
    ("pgopd", "seed0"): {"b1": [1, 1, 0.5, 0.5], "b2": [1, 1]},      # 0.75,  1    -> 0.875
    ("pgopd", "seed1"): {"b1": [1, 1, 1, 0.5], "b2": [0, 1]},        # 0.875, 0.5  -> 0.6875
}
COST = {("opd", 0): (100.0, 1000), ("opd", 1): (110.0, 1200),
        ("pgopd", 0): (40.0, 500), ("pgopd", 1): (44.0, 600)}


def fabricate_runs(root: Path, per_problem=PER_PROBLEM, cost=COST):
    evals, trains = [], []
    for (method, tag), by_bench in per_problem.items():
        for bench, fr in by_bench.items():
            pp = {f"{bench}-{i}": v for i, v in enumerate(fr)}
            evals.append(_write(root / f"eval/p/{method}/{tag}/{bench}.json",
                                {"accuracy": sum(fr) / len(fr), "k": 2, "n_problems": len(fr), "bench": bench,
                                 "per_problem": pp}))
    for (method, seed), (wall, tok) in cost.items():
        trains.append(_write(root / f"train/p/{method}/seed{seed}/summary.json",
                             {"train_wall_s": wall, "gen_tokens": tok, "teacher": "T", "student": "S"}))
    return evals, trains


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- main table
def test_main_table_over_two_seeds(tmp_path):
    evals, trains = fabricate_runs(tmp_path / "results")
    out = tmp_path / "tables"
    report(evals, trains, out, hparams={"seeds": [0, 1], "pairs": {"p": {"teacher": "T", "student": "S"}},
                                        "train": {"steps": 7, "pgopd": {"top_fraction": 0.5},
                                                  "controls": {"enabled": False}}})
    with open(out / "main.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:7] == ["pair", "method", "b1", "b2", "avg", "train_wall_s", "gen_tokens"]
    for col in ("b1_std", "b2_std", "avg_std", "n_seeds", "avg_diff_vs_opd", "avg_diff_ci_low",
                "avg_diff_ci_high", "p_vs_opd"):
        assert col in header
    rows = _read_csv(out / "main.csv")
    assert [r["method"] for r in rows] == ["teacher", "student", "opd", "pgopd"]
    by = {r["method"]: r for r in rows}
    assert by["teacher"]["b1"] == "87.50" and by["teacher"]["avg"] == "81.25"
    assert by["teacher"]["n_seeds"] == by["teacher"]["b1_std"] == by["teacher"]["avg_diff_vs_opd"] == ""
    f = {m: {k: float(v) for k, v in r.items() if k not in ("pair", "method") and v != ""} for m, r in by.items()}
    # opd: b1 (50, 75) -> 62.5 ± 17.68; b2 (50, 0) -> 25 ± 35.36; avg (50, 37.5) -> 43.75 ± 8.84
    assert (f["opd"]["b1"], f["opd"]["b2"], f["opd"]["avg"]) == (62.5, 25.0, 43.75)
    assert f["opd"]["b1_std"] == pytest.approx(17.68, abs=0.006)
    assert f["opd"]["b2_std"] == pytest.approx(35.36, abs=0.006)
    assert f["opd"]["avg_std"] == pytest.approx(8.84, abs=0.006)
    # pgopd: b1 (75, 87.5) -> 81.25 ± 8.84; b2 (100, 50) -> 75 ± 35.36; avg (87.5, 68.75) -> 78.125 ± 13.26
    assert (f["pgopd"]["b1"], f["pgopd"]["b2"]) == (81.25, 75.0)
    assert f["pgopd"]["avg"] == pytest.approx(78.125, abs=0.006)
    assert f["pgopd"]["avg_std"] == pytest.approx(13.26, abs=0.006)
    assert f["pgopd"]["n_seeds"] == 2 and f["opd"]["n_seeds"] == 2
    # cost: means over seeds, speed-up = 105 / 42 = 2.5
    assert (by["pgopd"]["train_wall_s"], by["pgopd"]["gen_tokens"]) == ("42.0", "550")
    assert by["pgopd"]["speedup_vs_opd"] == "2.50" and by["opd"]["speedup_vs_opd"] == "1.00"
    # paired difference = avg(pgopd) - avg(opd) = 34.375 points, inside its CI; 2 seeds: no Wilcoxon p
    assert f["pgopd"]["avg_diff_vs_opd"] == pytest.approx(34.375, abs=0.006)
    assert f["pgopd"]["avg_diff_ci_low"] <= f["pgopd"]["avg_diff_vs_opd"] <= f["pgopd"]["avg_diff_ci_high"]
    assert by["pgopd"]["p_vs_opd"] == "" and 0 < f["pgopd"]["p_problems_vs_opd"] <= 1
    assert by["opd"]["avg_diff_vs_opd"] == "" and by["opd"]["p_vs_opd"] == ""
    # markdown: paper layout with mean ± std, the pair block, hyperparameters under it
    md = (out / "main.md").read_text()
    assert "## p: teacher T → student S" in md
    assert "| PG-OPD | 81.25 ± 8.84 | 75.00 ± 35.36 | 78.12 ± 13.26 | 42.0 ± 2.8 | 2.50× | 550 | +34.38 [" in md \
        or "| PG-OPD | 81.25 ± 8.84 | 75.00 ± 35.36 | 78.13 ± 13.26 | 42.0 ± 2.8 | 2.50× | 550 | +34.38 [" in md
    assert "## Hyperparameters" in md and "steps=7" in md and "top_fraction=0.5" in md
    assert "**Controls**: not run" in md
    tex = (out / "main.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"$\pm$" in tex and "top\\_fraction=0.5" in tex
    assert tex.count(r"\\") >= 6
    assert "PG-OPD" in (out / "main.html").read_text()


def test_paired_diff_and_wilcoxon_with_six_seeds(tmp_path):
    rng = random.Random(1)
    per_problem, cost = {}, {}
    seed_avgs = {"opd": [], "pgopd": []}
    for s in range(6):
        for m, skill in (("opd", 0.4), ("pgopd", 0.55)):
            fr = {"b1": [rng.choice([0, 0.5, 1]) if rng.random() > skill else 1 for _ in range(10)],
                  "b2": [rng.choice([0, 0.5, 1]) if rng.random() > skill else 1 for _ in range(5)]}
            per_problem[(m, f"seed{s}")] = fr
            seed_avgs[m].append((sum(fr["b1"]) / 10 + sum(fr["b2"]) / 5) / 2)
            cost[(m, s)] = (10.0, 100)
    evals, trains = fabricate_runs(tmp_path, per_problem, cost)
    t = compute_table(load_evals(evals), load_train(trains), n_boot=500)
    r = next(r for r in t.rows if r.method == "pgopd")
    want = float(np.mean(seed_avgs["pgopd"]) - np.mean(seed_avgs["opd"]))
    assert r.avg_diff_vs_opd == pytest.approx(want)
    assert r.avg - next(x for x in t.rows if x.method == "opd").avg == pytest.approx(want)
    assert r.p_vs_opd == pytest.approx(sps.wilcoxon(np.subtract(seed_avgs["pgopd"], seed_avgs["opd"])).pvalue)
    assert r.n_paired_seeds == 6 and r.n_paired_problems == 15


def test_build_table_without_per_problem_falls_back_to_seed_pairs(tmp_path):
    evals, trains = fabricate_runs(tmp_path)
    for p in evals:
        d = json.loads(p.read_text())
        del d["per_problem"]
        p.write_text(json.dumps(d))
    cols, rows = build_table(evals, trains)
    by = {r["method"]: r for r in rows}
    assert float(by["pgopd"]["avg_diff_vs_opd"]) == pytest.approx(34.375, abs=0.006)
    assert by["pgopd"]["avg_diff_ci_low"] == "" and by["pgopd"]["p_problems_vs_opd"] == ""


# ----------------------------------------------------------------------------- falsification
def _candidates(rng, related: bool, n_steps=6, groups=4, n_samples=4, method="continue_all"):
    recs = []
    for step in range(n_steps):
        for g in range(groups):
            probes = [rng.random() for _ in range(n_samples)]
            order = sorted(range(n_samples), key=lambda i: -probes[i])
            for i, po in enumerate(probes):
                value = (po if related else rng.random()) + rng.gauss(0, 0.15)
                selected = i in order[: n_samples // 2]
                continued = True if method == "continue_all" else selected
                rec = {"step": step, "group": g, "cid": g * n_samples + i, "probe_overlap": po,
                       "decision_step": 12, "selected": selected, "continued": continued,
                       "finished": True, "length": 40 if continued else 12,
                       "reward_suffix": value if continued else None,
                       "correct": (rng.random() < (po if related else 0.5)) if continued else None}
                recs.append(rec)
        # an EOS within the prefix: not ranked, left out
        recs.append({"step": step, "group": 0, "cid": 99, "probe_overlap": 0.0, "decision_step": None,
                     "selected": None, "continued": False, "reward_suffix": None, "correct": True})
    return recs


def _fals_files(root: Path, related: bool, method="continue_all", seeds=(0, 1)):
    rng = random.Random(5)
    return [_write_jsonl(root / f"train/p/{method}/seed{s}/candidates.jsonl", _candidates(rng, related, method=method))
            for s in seeds]


def test_falsification_sentence_flips_with_the_relation(tmp_path):
    with_rel = F.analyse(F.load_candidates(_fals_files(tmp_path / "a", related=True)), n_boot=500)
    without = F.analyse(F.load_candidates(_fals_files(tmp_path / "b", related=False)), n_boot=500)
    e1, e0 = with_rel["pairs"]["p"], without["pairs"]["p"]
    assert e1["source"] == e0["source"] == "continue_all"
    assert e1["n_ranked"] == 2 * 6 * 4 * 4  # the EOS-within-prefix candidates are left out
    r1, r0 = e1["results"]["reward_suffix"], e0["results"]["reward_suffix"]
    assert r1["verdict"] == "supported" and r1["rho_ci_low"] > 0
    assert r0["verdict"] == "not_supported" and r0["rho_ci_low"] < 0 < r0["rho_ci_high"]
    assert r1["kept_minus_stopped"] > 0 and r1["kms_ci_low"] > 0 and r1["n_groups"] == 2 * 6 * 4
    text1, text0 = " ".join(e1["text"]), " ".join(e0["text"])
    assert "Probe overlap predicts the mean teacher reward on the suffix" in text1
    assert "Low-overlap suffixes turned out as valuable as high-overlap ones" not in text1
    assert "Low-overlap suffixes turned out as valuable as high-overlap ones by the mean teacher reward" in text0
    assert "includes 0" in text0
    # the numbers behind the curve: bins hold the mean outcome of their members
    recs = [r for p in _fals_files(tmp_path / "c", related=True) for r in map(json.loads, p.read_text().splitlines())
            if r["decision_step"] is not None]
    bins = S.quantile_bins([r["probe_overlap"] for r in recs], [r["reward_suffix"] for r in recs], F.N_BINS)
    assert [b["y_mean"] for b in r1["bins"]] == pytest.approx([b["y_mean"] for b in bins])
    assert r1["bins"][-1]["y_mean"] > r1["bins"][0]["y_mean"] + 0.3


def test_falsification_inverse_relation_is_called_contradicted():
    rng = np.random.default_rng(0)
    recs = [{"probe_overlap": float(x), "decision_step": 12, "reward_suffix": float(1 - x + rng.normal(0, 0.1)),
             "correct": None, "selected": None, "_run": 0} for x in rng.random(200)]
    res = F.analyse_outcome(recs, "reward_suffix", n_boot=300)
    assert res["verdict"] == "contradicted"
    assert "MORE valuable" in F.sentence(res)
    assert F.analyse_outcome(recs[:5], "reward_suffix", n_boot=100)["verdict"] == "insufficient"


def test_falsification_non_monotone_relation_is_mixed_not_contradicted():
    """A negative rank correlation with the top overlap bin above the bottom one (the lowest
    overlaps worst, a peak just above them, a decline after) must not read as "low-overlap
    suffixes were MORE valuable": the bottom bin is the least valuable of all."""
    rng = np.random.default_rng(0)

    def outcome(x):
        return 0.0 if x < 0.1 else (0.3 if x < 0.2 else (0.9 if x < 0.3 else 0.6 - 0.55 * (x - 0.3)))

    recs = [{"probe_overlap": float(x), "decision_step": 12, "correct": float(outcome(x) + rng.normal(0, 0.05)),
             "reward_suffix": None, "selected": None, "_run": 0} for x in rng.random(3000)]
    res = F.analyse_outcome(recs, "correct", n_boot=300)
    assert res["rho_ci_high"] < 0 < res["tmb_ci_low"]  # the data has both signs, significantly
    assert res["verdict"] == "mixed"
    text = F.sentence(res)
    assert "MORE valuable" not in text and "not monotonically related" in text
    means = [b["y_mean"] for b in res["bins"]]
    assert means[0] == min(means) and "/".join(f" {m:.3f} " for m in means).strip() in text
    # the same numbers with the bin difference not significant stay "contradicted"
    assert F.verdict({**res, "tmb_ci_low": -0.01}) == "contradicted"


def test_falsification_mixed_evidence_is_said_plainly():
    res = {"outcome": "correct", "n": 500, "spearman_rho": 0.12, "rho_ci_low": 0.03, "rho_ci_high": 0.2,
           "top_minus_bottom": 0.04, "tmb_ci_low": -0.02, "tmb_ci_high": 0.1, "kept_minus_stopped": None}
    res["verdict"] = F.verdict(res)
    assert res["verdict"] == "not_supported"
    text = F.sentence(res)
    assert text.startswith("Low-overlap suffixes turned out as valuable as high-overlap ones by the final correctness")
    assert "the top-vs-bottom bin difference is not significant although the correlation's CI excludes 0" in text
    assert "+0.12 [+0.03, +0.20]" in text


def test_falsification_falls_back_to_pgopd_and_says_so(tmp_path):
    fals = F.analyse(F.load_candidates(_fals_files(tmp_path, related=True, method="pgopd")), n_boot=300)
    e = fals["pairs"]["p"]
    assert e["source"] == "pgopd"
    assert e["results"]["reward_suffix"]["n"] == e["n_continued"] == 2 * 6 * 4 * 2  # continued only
    assert e["results"]["reward_suffix"]["kept_minus_stopped"] is None
    assert "neither continue_all nor opd was run" in e["text"][0] and "Only continued" in e["text"][0]
    F.write(fals, tmp_path / "t")
    rows = _read_csv(tmp_path / "t/falsification.csv")
    assert [(r["pair"], r["source"], r["outcome"]) for r in rows] == [("p", "pgopd", "reward_suffix"),
                                                                      ("p", "pgopd", "correct")]
    assert "neither continue_all nor opd was run" in (tmp_path / "t/falsification.md").read_text()


# ----------------------------------------------------------------------------- figures
def _fabricate_train_logs(root: Path):
    """metrics.jsonl for opd / pgopd / pruneopd over 2 seeds; candidates for pgopd, pruneopd, continue_all."""
    rng = random.Random(11)
    metrics, cands = [], []
    for m in ("opd", "pgopd", "pruneopd"):
        for s in (0, 1):
            metrics.append(_write_jsonl(root / f"train/p/{m}/seed{s}/metrics.jsonl",
                                        [{"step": k, "tokens_generated": 100 * (k + 1) + 10 * s + len(m), "loss": 0.1}
                                         for k in range(3)]))
    for s in (0, 1):
        recs = []
        for k in range(3):
            for c in range(6):
                recs.append({"step": k, "group": c // 3, "cid": c, "probe_overlap": round(rng.random(), 3),
                             "decision_step": 12, "selected": c % 3 == 0, "continued": c % 3 == 0})
        recs.append({"step": 0, "group": 0, "cid": 7, "probe_overlap": 0.5, "decision_step": None, "continued": False})
        cands.append(_write_jsonl(root / f"train/p/pgopd/seed{s}/candidates.jsonl", recs))
        recs = []
        for k in range(3):
            for c in range(4):
                trunc = [None, 3, 7, 3][c]
                recs.append({"step": k, "group": 0, "cid": c, "truncated_at": trunc, "drift_events": c,
                             "weight_mean": 1.0 - 0.1 * c - 0.01 * k, "weight_min": 0.5 ** c if trunc is None else 0.0})
        cands.append(_write_jsonl(root / f"train/p/pruneopd/seed{s}/candidates.jsonl", recs))
    cands += _fals_files(root, related=True)
    return metrics, cands


def test_figures_and_their_data_files(tmp_path):
    evals, trains = fabricate_runs(tmp_path / "results")
    metrics, cands = _fabricate_train_logs(tmp_path / "results")
    figs = tmp_path / "figures"
    report(evals, trains, tmp_path / "tables", metrics=metrics, candidates=cands, fig_dir=figs, n_boot=300)
    for name in FIG.FIGURES:
        png = figs / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        with open(figs / f"{name}.csv") as fh:
            assert tuple(next(csv.reader(fh))) == FIG.COLUMNS[name]

    # accuracy vs wall: the table's means
    rows = {r["method"]: r for r in _read_csv(figs / "accuracy_vs_wall.csv")}
    assert (float(rows["pgopd"]["train_wall_s"]), float(rows["pgopd"]["avg"])) == (42.0, pytest.approx(78.125))
    assert float(rows["opd"]["train_wall_s_std"]) == pytest.approx(np.std([100, 110], ddof=1))
    assert rows["teacher"]["kind"] == "hline" and rows["teacher"]["train_wall_s"] == ""

    # tokens per step: mean over the seeds' metrics.jsonl
    tok = _read_csv(figs / "tokens_per_step.csv")
    assert len(tok) == 3 * 3
    for r in tok:
        step, m = int(r["step"]), r["method"]
        want = np.mean([json.loads(p.read_text().splitlines()[step])["tokens_generated"]
                        for p in metrics if f"/{m}/" in str(p)])
        assert float(r["tokens_generated"]) == pytest.approx(want)
        assert r["n_seeds"] == "2"

    # probe-overlap histogram: counts of the ranked pgopd candidates, split by continued
    hist = _read_csv(figs / "probe_overlap_hist.csv")
    recs = [json.loads(line) for p in cands if "/pgopd/" in str(p) for line in p.read_text().splitlines()]
    recs = [r for r in recs if r["decision_step"] is not None]
    assert sum(int(h["continued"]) for h in hist) == sum(r["continued"] for r in recs) == 12
    assert sum(int(h["stopped"]) for h in hist) == 24
    for h in hist:
        lo, hi = float(h["bin_low"]), float(h["bin_high"])
        inside = [r for r in recs if lo <= r["probe_overlap"] < hi or (hi == 1.0 and r["probe_overlap"] == 1.0)]
        assert int(h["continued"]) == sum(r["continued"] for r in inside)

    # Prune-OPD truncation points: per seed and step, one candidate at 7 and two at 3
    trunc = {r["truncated_at"]: r for r in _read_csv(figs / "pruneopd_truncation.csv")}
    assert (trunc["3"]["count"], trunc["7"]["count"], trunc["3"]["n_candidates"]) == ("12", "6", "24")
    # weight curves: per step means over candidates of both seeds
    w = _read_csv(figs / "pruneopd_weights.csv")
    assert [int(r["step"]) for r in w] == [0, 1, 2]
    for r in w:
        k = int(r["step"])
        assert float(r["weight_mean"]) == pytest.approx(np.mean([1.0 - 0.1 * c - 0.01 * k for c in range(4)]))
        assert float(r["weight_min"]) == pytest.approx(np.mean([1.0, 0.0, 0.0, 0.0]))
        assert float(r["drift_events"]) == 1.5 and float(r["truncated_frac"]) == 0.75
        assert r["n_candidates"] == "8"

    # falsification curves: the bins of the analysis
    fb = _read_csv(figs / "falsification.csv")
    fals = F.analyse(F.load_candidates(cands), n_boot=300)
    want = [b["y_mean"] for b in fals["pairs"]["p"]["results"]["reward_suffix"]["bins"]]
    assert [float(r["y_mean"]) for r in fb if r["outcome"] == "reward_suffix"] == pytest.approx(want)
    assert {r["source"] for r in fb} == {"continue_all"}
    assert "Probe overlap predicts" in (tmp_path / "tables/falsification.md").read_text()


def test_figures_without_data_still_written(tmp_path):
    evals, trains = fabricate_runs(tmp_path / "results")
    report(evals, trains, tmp_path / "tables", fig_dir=tmp_path / "figs", n_boot=100)
    for name in FIG.FIGURES:
        assert (tmp_path / f"figs/{name}.png").exists()
    assert len(_read_csv(tmp_path / "figs/pruneopd_truncation.csv")) == 0
    assert "No candidates.jsonl" in (tmp_path / "tables/falsification.md").read_text()


# ----------------------------------------------------------------------------- CLI
def test_cli_report_with_config_file(tmp_path):
    evals, trains = fabricate_runs(tmp_path / "results")
    metrics, cands = _fabricate_train_logs(tmp_path / "results")
    out = tmp_path / "tables"
    rc = cli.main(["report", "--eval", *map(str, evals), "--train", *map(str, trains), "--metrics", *map(str, metrics),
                   "--candidates", *map(str, cands), "--config", str(ROOT / "config/test.yaml"),
                   "--n-boot", "200", "--out-dir", str(out)])
    assert rc == 0
    md = (out / "main.md").read_text()
    assert "n_train=200" in md and "**Evaluation**: k=2" in md and "resources" not in md
    assert sorted(p.name for p in out.iterdir()) == ["controls.csv", "costs.csv", "delta.csv", "falsification.csv",
                                                     "falsification.md", "main.csv", "main.html", "main.md",
                                                     "main.tex", "reward_noise.csv", "solution_lengths.csv",
                                                     "stop_reasons.csv", "tail.csv"]
    # --hparams: JSON or @file
    (tmp_path / "h.json").write_text(json.dumps({"seeds": [3, 4]}))
    rc = cli.main(["report", "--eval", *map(str, evals), "--hparams", f"@{tmp_path / 'h.json'}", "--n-boot", "50",
                   "--out-dir", str(out)])
    assert rc == 0 and "**Seeds**: [3, 4]" in (out / "main.md").read_text()
    assert cli.main(["report", "--eval", *map(str, evals), "--hparams", "{bad", "--out-dir", str(out)]) == 2
