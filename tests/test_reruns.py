"""Reruns on config change, and `snakemake --report`, on the state of a finished run.

A copy of the workflow (tmp dir) gets every output of ``config/test.yaml`` as a file or
directory: fabricated eval / train summaries, metrics and candidates, the real report
outputs made from them by :func:`pgopd.report.build.report`, empty files for the rest.
``snakemake --touch --forceall`` then marks every job as run, which records each job's
metadata (params, code, input) in ``.snakemake/metadata`` exactly as a real run would.
From that state a dry run after one config change lists exactly the jobs whose own config
slice (``params``) changed plus what depends on their outputs (and so nothing else: the
state is up to date otherwise).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgopd import workflow as W
from pgopd.report.figures import FIGURES
from pgopd.report.build import report
from wfcopy import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _run(wd: Path, *args, timeout=180):
    r = subprocess.run([str(SNAKEMAKE), *args], cwd=wd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _fabricate(wd: Path, cfg) -> None:
    """Fake but well-formed eval / train outputs of every job, then the real report outputs."""
    rng = random.Random(0)
    benches = {b: c.n for b, c in cfg.data.benchmarks.items()}
    for path in W.eval_targets(cfg):
        p = wd / path
        p.parent.mkdir(parents=True, exist_ok=True)
        pp = {f"{p.stem}-{i}": rng.choice([0.0, 0.5, 1.0]) for i in range(benches[p.stem])}
        p.write_text(json.dumps({"bench": p.stem, "k": cfg.eval.k, "n_problems": len(pp),
                                 "accuracy": sum(pp.values()) / len(pp), "per_problem": pp}))
        p.with_suffix(".jsonl").write_text("")
    for summary in W.train_summaries(cfg):
        d = (wd / summary).parent
        (d / "checkpoint").mkdir(parents=True, exist_ok=True)
        method = d.parent.name
        (d / "summary.json").write_text(json.dumps({"train_wall_s": 10 + rng.random(), "gen_tokens": 500}))
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"step": k, "tokens_generated": rng.randrange(50, 100)}) + "\n" for k in range(cfg.train.steps)))
        recs = []
        for k in range(cfg.train.steps):
            for c in range(8):
                po = rng.random()
                recs.append({"step": k, "group": c // 2, "cid": c, "probe_overlap": po, "decision_step": 12,
                             "selected": c % 2 == 0, "continued": method != "pgopd" or c % 2 == 0,
                             "reward_suffix": po + rng.gauss(0, 0.2), "correct": rng.random() < po,
                             "truncated_at": rng.choice([None, 4, 9]) if method == "pruneopd" else None,
                             "weight_mean": 0.8, "weight_min": 0.5, "drift_events": 1})
        (d / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    report(W.eval_targets(cfg), W.train_summaries(cfg), wd / "results/tables",
           metrics=W.train_run_files(cfg, "metrics.jsonl"), candidates=W.train_run_files(cfg, "candidates.jsonl"),
           fig_dir=wd / "results/figures", hparams=W.report_hparams(cfg), n_boot=200)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workflow copy in which every job of config/test.yaml has run (see module doc)."""
    wd = copy_workflow(tmp_path_factory.mktemp("finished"))
    cfg = W.load_config(yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    # every output of the DAG as Snakemake lists it (runs while the fabrication below does)
    listing = subprocess.Popen([str(SNAKEMAKE), "--configfile", "config/test.yaml", "--cores", "1", "--summary"],
                               cwd=wd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cwd = os.getcwd()
    os.chdir(wd)  # the report reads and writes the workflow's relative paths
    try:
        _fabricate(wd, cfg)
    finally:
        os.chdir(cwd)
    summary = listing.communicate(timeout=180)[0]
    assert listing.returncode == 0, summary
    for line in summary.splitlines():
        cols = line.split("\t")
        if len(cols) < 3 or not cols[0].startswith("results/"):
            continue
        p = wd / cols[0]
        if p.exists():
            continue
        if cols[2] == "build_toy_models" and not p.suffix or p.name == "checkpoint":
            p.mkdir(parents=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
    out = _run(wd, "--configfile", "config/test.yaml", "--cores", "1", "--touch", "--forceall")
    assert re.search(r"(\d+) of \1 steps \(100%\) done", out), out
    return wd, cfg


def _jobs(out: str) -> list[tuple[str, dict]]:
    """Jobs of a dry run: (rule, wildcards)."""
    jobs, rule, wildcards = [], None, {}

    def flush():
        if rule:
            jobs.append((rule, wildcards))

    for line in out.splitlines():
        m = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if m and not line.startswith(" "):
            flush()
            rule, wildcards = m.group(1), {}
        elif rule and line.strip().startswith("wildcards:"):
            wildcards = dict(x.strip().split("=", 1) for x in line.split(":", 1)[1].split(","))
    flush()
    return jobs


def _summary(out: str) -> dict:
    """What a dry run would run: the rules without wildcards, trained (method, seed) and
    evaluated (method, tag) -- whether evaluation is one job per benchmark or per model."""
    jobs = _jobs(out)
    return {"rules": {r for r, _ in jobs},
            "train": {(w["method"], w["seed"]) for r, w in jobs if r == "train"},
            "evaluate": {(w["method"], w["tag"]) for r, w in jobs if r == "evaluate"}}


def _variant(tmp_path: Path, name: str, change) -> Path:
    raw = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    change(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(path: str, value):
    def change(raw):
        d = raw
        keys = path.split(".")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return change


def _both(*changes):
    def change(raw):
        for c in changes:
            c(raw)
    return change


# The exact job sets asserted below also show that the fabricated state is otherwise up to
# date (an unchanged config would list nothing).  Resources are in no job's params: the
# eval change also raises the training jobs' memory, and no training job may rerun.
CHANGES = {
    "pgopd_knob": _set("train.pgopd.top_fraction", 0.25),
    "eval_k": _both(_set("eval.k", 3), _set("resources.train.mem_mb", 12345)),
    "data_n_train": _set("data.synthetic.n_train", 150),
    "student_steps": _set("toy_models.student.train_steps", 31),
}


@pytest.fixture(scope="module")
def dry_runs(finished, tmp_path_factory):
    """One dry run per config change, started together, plus `snakemake --report`."""
    wd, _cfg = finished
    d = tmp_path_factory.mktemp("variants")
    procs = {}
    for name, change in CHANGES.items():
        cf = _variant(d, name, change)
        procs[name] = subprocess.Popen([str(SNAKEMAKE), "-n", "--nolock", "--cores", "1", "--configfile", str(cf)],
                                       cwd=wd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs["report"] = subprocess.Popen([str(SNAKEMAKE), "--nolock", "--configfile", "config/test.yaml",
                                        "--report", "results/report.html"],
                                       cwd=wd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {name: p.communicate(timeout=180)[0] for name, p in procs.items()}
    return {name: (p.returncode, out[name]) for name, p in procs.items()}


def _all_evals(cfg):
    return {("teacher", "base"), ("student", "base")} | {(m, "seed0") for m in W.train_methods(cfg)}


def test_pgopd_knob_reruns_only_pgopd_training_its_evaluations_and_the_report(dry_runs):
    rc, out = dry_runs["pgopd_knob"]
    assert rc == 0, out
    assert _summary(out) == {"rules": {"train", "evaluate", "report", "all"}, "train": {("pgopd", "0")},
                             "evaluate": {("pgopd", "seed0")}}, out
    assert "Params have changed" in out


def test_eval_setting_reruns_every_evaluation_and_no_training_nor_do_resources(dry_runs, finished):
    _wd, cfg = finished
    rc, out = dry_runs["eval_k"]
    assert rc == 0, out
    assert _summary(out) == {"rules": {"evaluate", "report", "all"}, "train": set(),
                             "evaluate": _all_evals(cfg)}, out


def test_data_setting_reruns_data_and_everything_downstream(dry_runs, finished):
    _wd, cfg = finished
    rc, out = dry_runs["data_n_train"]
    assert rc == 0, out
    assert _summary(out) == {
        "rules": {"prepare_data", "build_toy_models", "cache_teacher", "train", "evaluate", "report", "all"},
        "train": {(m, "0") for m in W.train_methods(cfg)}, "evaluate": _all_evals(cfg)}, out
    assert "cache_teacher" in out and "wildcards: teacher=toy" in out


def test_toy_student_change_rebuilds_only_the_student_and_what_it_feeds(dry_runs, finished):
    _wd, cfg = finished
    rc, out = dry_runs["student_steps"]
    assert rc == 0, out
    jobs = _jobs(out)
    assert [w for r, w in jobs if r == "build_toy_models"] == [{"role": "student"}], out
    # the teacher, its cache and its evaluation stay; every student model is redone
    assert _summary(out) == {"rules": {"build_toy_models", "train", "evaluate", "report", "all"},
                             "train": {(m, "0") for m in W.train_methods(cfg)},
                             "evaluate": _all_evals(cfg) - {("teacher", "base")}}, out


def test_snakemake_report_html_is_self_contained(dry_runs, finished):
    wd, _cfg = finished
    rc, out = dry_runs["report"]
    assert rc == 0, out
    html = (wd / "results/report.html").read_text()
    # captions (workflow/report/*.rst), categories and every marked output are in it
    for text in ("pgopd: on-policy distillation", "main results table in the papers", "Falsification of PG-OPD",
                 "Plotted numbers", "Tables", "Figures", "main.html", "main.csv", "main.tex", "falsification.csv",
                 *(f"{name}.png" for name in FIGURES)):
        assert text in html, text
    # self-contained: the files are embedded as data URIs, no script is loaded from elsewhere
    assert html.count("data:image/png") >= len(FIGURES)
    assert html.count("data:text/csv") >= len(FIGURES) + 2
    assert "<script src=" not in html

