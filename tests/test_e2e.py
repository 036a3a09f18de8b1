"""The whole DAG on config/test.yaml (tiny), run by Snakemake in a copy of the repo,
and every output checked for content."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wfcopy import copy_workflow

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.slow


def read_jsonl(p):
    return [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]


def spaced_python_env(d: Path) -> tuple[str, dict]:
    """This venv's python seen through ``d/"venv dir"`` (a link), and an env whose PATH does not
    hold the venv: rules then call pgopd by that path with a space in it (a checkout at such a
    path), which every rendered command must quote."""
    venv = Path(sys.executable).parent.parent
    if not (d / "venv dir").exists():
        (d / "venv dir").symlink_to(venv, target_is_directory=True)
    path = [p for p in os.environ["PATH"].split(":") if p and Path(p).resolve() != (venv / "bin").resolve()]
    return str(d / "venv dir/bin/python"), {**os.environ, "PATH": ":".join(path)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = copy_workflow(tmp_path_factory.mktemp("e2e with space"), link_package=False)
    python, env = spaced_python_env(d)
    p = subprocess.run([python, "-m", "snakemake", "--cores", "2", "--configfile", "config/test.yaml",
                        "--workflow-profile", "workflow/profiles/default"],
                       cwd=d, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode:
        logs = "\n".join(f"--- {f}\n{f.read_text()[-3000:]}" for f in (d / "results/logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}\n{logs}")
    return d / "results"


def test_data_outputs(run_dir):
    train = read_jsonl(run_dir / "data/train.jsonl")
    assert len(train) == 200
    for r in train[:50]:
        assert str(eval(r["prompt"])) == r["answer"]  # synthetic arithmetic: the gold is right
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
    for name, ops in (("easy", 1), ("medium", 2), ("hard", 3)):
        b = read_jsonl(run_dir / f"data/bench/{name}.jsonl")
        assert len(b) == 16 and all(r["prompt"].count("+") + r["prompt"].count("-") == ops for r in b)


def test_models_and_teacher_cache(run_dir):
    build = {role: json.loads((run_dir / f"models/toy/build_{role}.json").read_text())
             for role in ("teacher", "student")}
    for role in ("teacher", "student"):
        assert build[role]["role"] == role and build[role]["final_loss"] < build[role]["initial_loss"]
        assert (run_dir / f"models/toy/{role}/config.json").exists()
        assert (run_dir / f"models/toy/{role}/tokenizer.json").exists()
    assert build["teacher"]["params"] > build["student"]["params"]
    cache = json.loads((run_dir / "teacher/toy/summary.json").read_text())
    samples = read_jsonl(run_dir / "teacher/toy/samples.jsonl")
    assert cache["n_prompts"] == 200 and len(samples) == 200
    assert abs(cache["accuracy"] - sum(s["correct"] for s in samples) / 200) < 1e-9
    assert set(cache["solved_ids"]) == {s["id"] for s in samples if s["correct"]}


@pytest.mark.parametrize("method", ["opd", "pgopd", "pruneopd"])
def test_training_outputs(run_dir, method):
    d = run_dir / f"train/toy/{method}/seed0"
    metrics = read_jsonl(d / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for m in metrics:
        for k in ("loss", "reward_mean", "tokens_generated", "tokens_teacher_scored", "tokens_trained",
                  "t_rollout_s", "t_teacher_s", "t_update_s"):
            assert k in m
        assert m["tokens_teacher_scored"] == m["tokens_generated"] > 0
        assert 0 <= m["tokens_trained"] <= m["tokens_generated"]
        # cost where it is spent: every generated token went through both models, padding on top
        assert m["positions_teacher"] >= m["tokens_generated"] and m["positions_student"] > 0
    cands = read_jsonl(d / "candidates.jsonl")
    assert len(cands) == 4 * 4 * 2  # steps x prompts x samples
    assert sum(c["length"] for c in cands) == sum(m["tokens_generated"] for m in metrics)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["gen_tokens"] == sum(m["tokens_generated"] for m in metrics)
    assert (d / "checkpoint/config.json").exists() and (d / "checkpoint/tokenizer.json").exists()
    if method == "pgopd":
        assert all("probe_overlap" in c for c in cands)
        assert any(c["stopped"] for c in cands)
    if method == "opd":
        assert not any(c["stopped"] for c in cands)


def test_evaluation_and_table(run_dir):
    rows = list(csv.DictReader(open(run_dir / "tables/main.csv")))
    assert [r["method"] for r in rows] == ["teacher", "student", "opd", "pgopd", "pruneopd"]
    for r in rows:
        accs = []
        for bench in ("easy", "medium", "hard"):
            s = json.loads((run_dir / f"eval/toy/{r['method']}/"
                            f"{'base' if r['method'] in ('teacher', 'student') else 'seed0'}/{bench}.json").read_text())
            samples = read_jsonl(run_dir / f"eval/toy/{r['method']}/"
                                 f"{'base' if r['method'] in ('teacher', 'student') else 'seed0'}/{bench}.jsonl")
            assert len(samples) == 16 * 2
            assert abs(s["accuracy"] - sum(x["correct"] for x in samples) / len(samples)) < 1e-9
            assert abs(float(r[bench]) - 100 * s["accuracy"]) < 0.006
            accs.append(100 * s["accuracy"])
        assert abs(float(r["avg"]) - sum(accs) / 3) < 0.01
        if r["method"] in ("teacher", "student"):
            assert r["train_wall_s"] == "" and r["gen_tokens"] == ""
        else:
            summary = json.loads((run_dir / f"train/toy/{r['method']}/seed0/summary.json").read_text())
            assert abs(float(r["gen_tokens"]) - summary["gen_tokens"]) < 1
    md = (run_dir / "tables/main.md").read_text()
    assert "pgopd" in md and "teacher" in md
    assert "## Why rollouts stopped" in md and "| toy: Prune-OPD |" in md
    stops = list(csv.DictReader(open(run_dir / "tables/stop_reasons.csv")))
    for m in ("opd", "pgopd", "pruneopd"):  # every candidate has one stop reason
        assert sum(int(r["n"]) for r in stops if r["method"] == m) == 4 * 4 * 2
    costs = {r["method"]: r for r in csv.DictReader(open(run_dir / "tables/costs.csv"))}
    assert float(costs["opd"]["teacher_per_trained"]) >= 1.0
    # the teacher cache's correct solutions per difficulty (ops 1-3 of test.yaml's training set)
    cache = read_jsonl(run_dir / "teacher/toy/samples.jsonl")
    ops = {r["id"]: r["ops"] for r in read_jsonl(run_dir / "data/train.jsonl")}
    lens = {r["level"]: r for r in csv.DictReader(open(run_dir / "tables/solution_lengths.csv"))}
    for level in {str(ops[c["id"]]) for c in cache if c["correct"]}:
        mine = [len(c["tokens"]) for c in cache if c["correct"] and str(ops[c["id"]]) == level]
        assert int(lens[level]["n_correct"]) == len(mine) and int(lens[level]["max_tokens"]) == max(mine)
    assert float(lens["all"]["cut_pgopd_len"]) >= 1 and 0 <= float(lens["all"]["cut_pgopd_share"]) <= 1
    assert "## Δ vs OPD per benchmark" in md and "## The teacher's correct solutions" in md
    fals = (run_dir / "tables/falsification.md").read_text()
    assert "**Verdict (final correctness" and "reward variance vs window overlap" in fals


def test_config_change_after_a_stopped_train_job_starts_over(run_dir):
    """Issue 20's flow: a train job stopped mid-run (SIGTERM: checkpoint written), `train.lr`
    changed, the same target rerun: the job starts at step 0 with the new lr, the stopped
    run's checkpoints kept aside.  Runs last: it rewrites results/train/toy/opd/seed0."""
    d = run_dir.parent
    base = yaml.safe_load((d / "config/test.yaml").read_text())
    run = run_dir / "train/toy/opd/seed0"
    python, env = spaced_python_env(d)
    target = "results/train/toy/opd/seed0/summary.json"

    def snakemake(cfg: dict, wait=True):
        (d / "config/lr.yaml").write_text(yaml.safe_dump(cfg))
        args = [python, "-m", "snakemake", target, "--cores", "1", "--configfile", "config/lr.yaml"]
        if wait:
            return subprocess.run(args, cwd=d, env=env, capture_output=True, text=True, timeout=600)
        return subprocess.Popen(args, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    first = {**base, "train": {**base["train"], "steps": 40, "save_every": 1, "lr": 3e-5}}
    p = snakemake(first, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not list((run / "resume").glob("step-*/manifest.json")):
        time.sleep(0.2)
    assert p.poll() is None, "the train job ended before its first checkpoint"
    holder = re.search(r"pid (\d+)", (run / ".lock").read_text())
    os.kill(int(holder.group(1)), signal.SIGTERM)  # slurm's time-limit warning
    p.wait(timeout=120)
    assert p.returncode != 0 and list((run / "resume").glob("step-*"))
    stopped_at = max(int(x.name[5:]) for x in (run / "resume").glob("step-*"))

    r = snakemake({**first, "train": {**first["train"], "steps": 3, "lr": 0.1}})
    log = (run_dir / "logs/train/toy/opd/seed0.log").read_text()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + log[-3000:]
    assert "keys that differ: train.lr, train.steps" in log and "resuming" not in log
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2] and {m["lr"] for m in metrics} == {0.1}
    # the finished run's tb/ (not an output, so Snakemake left it) went aside on the first rerun
    (stale,) = [x for x in run.glob("stale-*") if (x / "resume").exists()]
    assert "keys that differ: train.lr, train.steps" in (stale / "REASON").read_text()
    assert max(int(x.name[5:]) for x in (stale / "resume").glob("step-*")) == stopped_at
