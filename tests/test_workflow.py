"""The Snakemake layer: committed schema and configs, per-rule params, dry runs, the report table.

Dry runs work on a copy of the workflow files in a temp dir (no results/ or .snakemake/ in
the repo) and never run a job.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgopd import config as C
from pgopd import workflow as W
from pgopd.report.build import report
from wfcopy import copy_workflow, job_counts

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


# ----------------------------------------------------------------------------- committed files
def test_committed_schema_equals_generated():
    committed = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())
    assert committed == C.json_schema(), "regenerate: pgopd schema > workflow/schemas/config.schema.json"


def _missing_keys(cls, raw, prefix=""):
    """Dataclass fields not written out in ``raw`` (mappings of named items are not descended)."""
    out = []
    types = C._field_types(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            out.append(key)
        elif dataclasses.is_dataclass(types[f.name]):
            out += _missing_keys(types[f.name], raw[f.name], key + ".")
    return out


def test_default_config_yaml_is_the_defaults_written_out():
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert _missing_keys(C.Config, raw) == []
    got = C.to_dict(C.parse(raw))
    # parse(to_dict(...)) normalises sub-configs that parse({}) leaves as raw default dicts
    want = C.to_dict(C.parse(C.to_dict(C.parse({}))))
    assert got == want
    assert W.params_json(C.parse(raw)) == W.params_json(C.parse(C.to_dict(C.parse({}))))


def test_test_config_is_tiny():
    cfg = C.load(ROOT / "config/test.yaml")
    assert cfg.train.methods == ["opd", "pgopd", "pruneopd"]
    assert cfg.train.steps <= 4 and cfg.eval.k <= 2
    assert all(b.n <= 16 for b in cfg.data.benchmarks.values())
    assert cfg.toy_models.teacher.train_steps <= 300 and cfg.toy_models.student.n_layers == 1


# ----------------------------------------------------------------------------- helpers
def test_model_path_and_teacher_slug():
    assert W.model_path("toy", "teacher") == "results/models/toy/teacher"
    assert W.model_path("toy", "student") == "results/models/toy/student"
    assert W.model_path("Qwen/Qwen3-8B", "teacher") == "Qwen/Qwen3-8B"
    assert W.model_path("/models/q", "student") == "/models/q"
    assert W.model_inputs("Qwen/Qwen3-8B", "teacher") == []
    assert W.model_inputs("/models/q", "teacher") == ["/models/q"]
    assert W.teacher_slug("toy") == "toy"
    assert W.teacher_slug("Qwen/Qwen3-8B") == "Qwen--Qwen3-8B"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", W.teacher_slug("/data/my models/Qwen 2.5/"))


def test_load_config_errors_name_the_key():
    with pytest.raises(C.ConfigError, match=r"train\.controls\.references"):
        W.load_config({"train": {"methods": ["opd", "pgopd"],
                                 "controls": {"enabled": True, "references": ["pgopd", "pruneopd"]}}})
    with pytest.raises(C.ConfigError, match=r"train\.pgopd\.prefix_len"):
        W.load_config({"train": {"pgopd": {"prefix_len": "x"}}})


def test_train_methods_and_targets():
    cfg = W.load_config({"train": {"controls": {"enabled": False}}})
    assert W.train_methods(cfg) == ["opd", "pgopd", "pruneopd"]
    cfg = W.load_config({"seeds": [0, 1], "train": {"controls": {"enabled": True, "ablations": True,
                                                                  "references": ["pgopd"]}}})
    assert W.train_methods(cfg) == list(C.METHODS) + ["continue_all", "reweight_only", "fixed_truncation-pgopd",
                                                      "random_prune-pgopd"]
    targets = W.eval_targets(cfg)
    # the 4 added methods run on the first seed only (controls.first_seed_only)
    assert len(targets) == len(set(targets)) == (2 + 3 * 2 + 4) * 3
    assert "results/eval/toy/random_prune-pgopd/seed0/hard.json" in targets
    assert "results/eval/toy/random_prune-pgopd/seed1/hard.json" not in targets
    assert W.run_seeds(cfg, "opd") == [0, 1] and W.run_seeds(cfg, "continue_all") == [0]
    every = W.load_config({"seeds": [0, 1], "train": {"controls": {"enabled": True, "ablations": True,
                                                                    "references": ["pgopd"], "first_seed_only": False}}})
    targets = W.eval_targets(every)
    assert len(targets) == len(set(targets)) == (2 + 7 * 2) * 3
    assert "results/eval/toy/teacher/base/easy.json" in targets
    assert "results/eval/toy/random_prune-pgopd/seed1/hard.json" in targets
    assert len(W.train_summaries(every)) == 14 and len(W.train_summaries(cfg)) == 10
    assert W.targets(cfg) == ["results/tables/main.csv", "results/tables/main.md"]
    assert W.eval_model(cfg, "toy", "student", "base") == "results/models/toy/student"
    assert W.eval_model(cfg, "toy", "opd", "seed1") == "results/train/toy/opd/seed1/checkpoint"
    assert W.reference_method(cfg, "fixed_truncation") == "pgopd"
    matched = W.load_config({})  # the default: both references' matched controls, no ablations
    assert W.train_methods(matched) == list(C.METHODS) + [
        "fixed_truncation-pgopd", "random_prune-pgopd", "fixed_truncation-pruneopd", "random_prune-pruneopd"]
    assert W.reference_method(cfg, "continue_all") is None
    assert W.train_inputs(cfg, "toy", "random_prune-pgopd", 1)["reference"] == \
        "results/train/toy/pgopd/seed1/summary.json"
    ins = W.train_inputs(cfg, "toy", "opd", 0)
    assert "reference" not in ins and ins["teacher_cache"] == "results/teacher/toy/summary.json"
    assert W.evaluate_inputs(cfg, "toy", "teacher", "base") == {
        "bench": [f"results/data/bench/{b}.jsonl" for b in ("easy", "medium", "hard")],
        "model": ["results/models/toy/teacher"]}
    with pytest.raises(ValueError):
        W.eval_model(cfg, "toy", "opd", "base")
    hf = W.load_config({"pairs": {"a": {"teacher": "Qwen/Qwen3-8B", "student": "Qwen/Qwen3-1.7B"},
                                  "b": {"teacher": "Qwen/Qwen3-8B", "student": "toy"}}})
    assert not W.uses_toy(W.load_config({"pairs": {"a": {"teacher": "x/y", "student": "x/z"}}}))
    assert W.teachers(hf) == {"Qwen--Qwen3-8B": "Qwen/Qwen3-8B"}
    assert W.students_of(hf, "Qwen--Qwen3-8B") == ["Qwen/Qwen3-1.7B", "results/models/toy/student"]
    assert W.cache_teacher_inputs(hf, "Qwen--Qwen3-8B")["students"] == ["results/models/toy/student"]


def test_train_params_are_per_method_slices():
    ctl = {"enabled": True, "references": ["pgopd"]}
    base = W.load_config({"train": {"controls": ctl}})
    knob = W.load_config({"train": {"controls": ctl, "pgopd": {"top_fraction": 0.25}}})
    more = W.load_config({"train": {"controls": ctl,
                                    "pruneopd": {"window": 4}, "methods": ["pgopd", "opd"]}})
    p = {m: W.train_params(base, m) for m in C.ALL_METHODS}
    assert all("methods" not in v for v in p.values())
    assert "controls" not in p["opd"]  # opd logs the probe / window overlap, acts on nothing else
    pg = C.PGOPDConfig()
    assert p["opd"]["pgopd"] == {"prefix_len": pg.prefix_len, "probe_start": pg.probe_start, "probe_end": pg.probe_end}
    assert p["opd"]["pruneopd"] == {"window": C.PruneOPDConfig().window}
    assert "pgopd" in p["pgopd"] and "pruneopd" not in p["pgopd"] and "controls" not in p["pgopd"]
    assert "pruneopd" in p["pruneopd"] and "pgopd" not in p["pruneopd"]
    assert {"pgopd", "controls"} <= set(p["random_prune"]) and "pruneopd" not in p["random_prune"]
    assert "controls" in p["fixed_truncation"] and "pgopd" not in p["fixed_truncation"]
    # a PG-OPD knob changes the params of exactly the jobs that read the pgopd block
    changed = {m for m in C.ALL_METHODS
               if W.params_json(W.train_params(knob, m)) != W.params_json(p[m])}
    assert changed == {"pgopd", "continue_all", "reweight_only", "random_prune",
                       "random_prune-pgopd"}  # not opd (top_fraction), not random_prune-pruneopd
    # the Prune-OPD window (and reordering methods) changes pruneopd's params and opd's (it logs
    # the window overlap) only
    changed = {m for m in C.ALL_METHODS
               if W.params_json(W.train_params(more, m)) != W.params_json(p[m])}
    assert changed == {"pruneopd", "opd", "pruneopd_drift_only", "pruneopd_window_only", "pruneopd_reweight_only"}
    # params are stable JSON and a valid --params for the train stage
    s = W.params_json(p["pgopd"])
    assert s == W.params_json(json.loads(s)) and json.loads(s) == p["pgopd"]
    C.parse_dataclass(C.TrainConfig, json.loads(s), "train")
    for fn, cls in [(W.data_params, C.DataConfig), (W.eval_params, C.EvalConfig),
                    (W.teacher_cache_params, C.TeacherCacheConfig), (W.toy_params, C.ToyModelsConfig)]:
        C.parse_dataclass(cls, json.loads(W.params_json(fn(base))))


# ----------------------------------------------------------------------------- dry runs
@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    """A copy of the workflow files (the package comes from the installed pgopd)."""
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def _snakemake(wd: Path, *args):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(SNAKEMAKE), "-n", "--cores", "1", *args], cwd=wd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_default_lists_the_expected_jobs(wf):
    r = _snakemake(wf, "-p")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # 3 methods x 2 seeds + 4 matched controls (fixed_truncation / random_prune per reference) on seed 0
    assert job_counts(out) == {"prepare_data": 1, "build_toy_models": 2, "cache_teacher": 1,
                                "train": 10, "evaluate": 12, "report": 1, "all": 1, "total": 28}
    assert "pgopd train --params '{" in out and "--method pgopd --seed 0" in out
    assert "--teacher-cache results/teacher/toy" in out
    assert "> results/logs/evaluate/toy/opd/seed0.log 2>&1" in out
    assert not (wf / "results").exists()


def test_dry_run_configfile_replaces_default_and_controls(wf, tmp_path):
    cf = tmp_path / "c.yaml"
    cf.write_text(yaml.safe_dump({"pairs": {"qwen": {"teacher": "Qwen/Qwen3-8B", "student": "toy"}},
                                  "seeds": [0, 1], "train": {"controls": {"enabled": True, "first_seed_only": False}}}))
    r = _snakemake(wf, "-p", "--configfile", str(cf))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # the default `toy` pair is not merged in: 1 pair x 7 methods x 2 seeds; only the toy
    # student is built (the teacher is a hub model)
    assert job_counts(out) == {"prepare_data": 1, "build_toy_models": 1, "cache_teacher": 1,
                                "train": 14, "evaluate": 2 + 14, "report": 1, "all": 1,
                                "total": 35}
    assert "results/eval/toy/" not in out
    assert "--out-dir results/teacher/Qwen--Qwen3-8B" in out
    assert "--reference results/train/qwen/pgopd/seed1/summary.json" in out


BAD = {
    "unknown key": ({"train": {"stepz": 3}}, "train.stepz"),
    "wrong type": ({"eval": {"k": "four"}}, "eval.k"),
    "negative length": ({"train": {"max_new_tokens": -8}}, "train.max_new_tokens"),
    "unknown method": ({"train": {"methods": ["opd", "grpo"]}}, "train.methods[1]"),
    "file benchmark without path": ({"data": {"benchmarks": {"aime": {"source": "file"}}}},
                                    "data.benchmarks.aime.path"),
}


@pytest.fixture(scope="module")
def bad_runs(wf, tmp_path_factory):
    """`snakemake -n` on every bad config, started together (each is mostly start-up time)."""
    d = tmp_path_factory.mktemp("bad")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = {}
    for i, (case, (raw, _key)) in enumerate(BAD.items()):
        cf = d / f"bad{i}.yaml"
        cf.write_text(yaml.safe_dump(raw))
        procs[case] = subprocess.Popen([str(SNAKEMAKE), "-n", "--cores", "1", "--configfile", str(cf)],
                                       cwd=wf, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    out = {case: p.communicate(timeout=120)[0] for case, p in procs.items()}
    return {case: (p.returncode, out[case]) for case, p in procs.items()}


@pytest.mark.parametrize("case", list(BAD))
def test_dry_run_rejects_bad_config(bad_runs, case):
    rc, out = bad_runs[case]
    assert rc != 0, out
    assert BAD[case][1] in out, out
    assert "Job stats" not in out and "Building DAG" not in out


# ----------------------------------------------------------------------------- report
def _write(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_report_table(tmp_path):
    res = tmp_path / "results"
    evals, trains = [], []
    acc = {  # (method, tag) -> accuracies on (b1, b2)
        ("teacher", "base"): (0.9, 0.7),
        ("student", "base"): (0.2, 0.1),
        ("pgopd", "seed0"): (0.5, 0.25),
        ("pgopd", "seed1"): (0.6, 0.35),
        ("opd", "seed0"): (0.4, 0.2),
        ("opd", "seed1"): (0.45, 0.3),
    }
    for (method, tag), values in acc.items():
        for bench, a in zip(("b1", "b2"), values):
            evals.append(_write(res / f"eval/p/{method}/{tag}/{bench}.json",
                                {"accuracy": a, "k": 4, "n_problems": 50, "bench": bench}))
    cost = {("opd", 0): (100.0, 1000), ("opd", 1): (110.0, 1200),
            ("pgopd", 0): (60.0, 500), ("pgopd", 1): (70.0, 600)}
    for (method, seed), (wall, tok) in cost.items():
        trains.append(_write(res / f"train/p/{method}/seed{seed}/summary.json",
                             {"train_wall_s": wall, "gen_tokens": tok}))
    out = tmp_path / "tables"
    report(evals, trains, out)
    with open(out / "main.csv") as fh:
        header = next(csv.reader(fh))
        fh.seek(0)
        rows = list(csv.DictReader(fh))
    assert header[:7] == ["pair", "method", "b1", "b2", "avg", "train_wall_s", "gen_tokens"]
    assert [r["method"] for r in rows] == ["teacher", "student", "opd", "pgopd"]
    by = {r["method"]: r for r in rows}
    assert {k: by["teacher"][k] for k in header[:7]} == {
        "pair": "p", "method": "teacher", "b1": "90.00", "b2": "70.00", "avg": "80.00",
        "train_wall_s": "", "gen_tokens": ""}
    # pgopd: b1 (50 + 60) / 2 = 55, b2 (25 + 35) / 2 = 30, avg 42.5; cost means over seeds
    assert (by["pgopd"]["b1"], by["pgopd"]["b2"], by["pgopd"]["avg"]) == ("55.00", "30.00", "42.50")
    assert (by["pgopd"]["train_wall_s"], by["pgopd"]["gen_tokens"]) == ("65.0", "550")
    # opd: b1 42.5, b2 25, avg 33.75; wall 105, tokens 1100
    assert (by["opd"]["b1"], by["opd"]["b2"], by["opd"]["avg"]) == ("42.50", "25.00", "33.75")
    assert (by["opd"]["train_wall_s"], by["opd"]["gen_tokens"]) == ("105.0", "1100")
    md = (out / "main.md").read_text()
    assert "| Student | 20.00 | 10.00 | 15.00 |" in md and "| PG-OPD | 55.00 ± 7.07 |" in md


def test_controls_per_reference_fan_out_with_named_methods():
    cfg = W.load_config({"train": {"controls": {"enabled": True, "ablations": True,
                                                "references": ["pgopd", "pruneopd"]}}})
    ms = W.train_methods(cfg)
    assert ms == ["opd", "pgopd", "pruneopd", "continue_all", "reweight_only", "fixed_truncation-pgopd",
                  "random_prune-pgopd", "pruneopd_drift_only", "pruneopd_window_only", "pruneopd_reweight_only",
                  "fixed_truncation-pruneopd", "random_prune-pruneopd"]
    for m in ms:  # every method is a valid wildcard, CLI choice and has its params
        assert re.fullmatch(W.wildcard_patterns(cfg)["method"], m) and m in C.ALL_METHODS
        W.train_params(cfg, m)
    assert W.train_inputs(cfg, "toy", "fixed_truncation-pruneopd", 0)["reference"] == \
        "results/train/toy/pruneopd/seed0/summary.json"
    assert W.train_inputs(cfg, "toy", "random_prune-pgopd", 1)["reference"] == \
        "results/train/toy/pgopd/seed1/summary.json"
    assert "reference" not in W.train_inputs(cfg, "toy", "pruneopd_window_only", 0)
    # Prune-OPD's matched random cut reads no PG-OPD knob
    assert "pgopd" not in W.train_params(cfg, "random_prune-pruneopd")
