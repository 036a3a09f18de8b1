"""`snakemake --profile slurm` for real: a two-node Slurm started on this machine
(``scripts/slurm_local.sh``), the toy DAG through it with the real executor plugin, and the
faults a cluster run meets (scancel, time limit, a failing rule).

Not part of the main suite: marked ``slurm`` and deselected unless asked for,
    .venv/bin/pytest -m slurm tests/test_slurm.py          (~10 min on 2 cores; .ci/run runs it)
It needs root and the Debian Slurm packages (installed by the script when a registry answers);
otherwise it skips saying why.  Every rule is an sbatch job; the train job spans the nodes n1
and n2 (``resources.train.nodes: 2``: srun starts one torchrun agent per node, gloo on CPU).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wfcopy import copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# the first status check after 2 s, not 40 (the plugin adds 10 s per check until a job ends)
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]

# The toy DAG, smaller than config/test.yaml: one method, one benchmark (10 jobs).
TOY = {
    "pairs": {"toy": {"teacher": "toy", "student": "toy"}},
    "seeds": [0],
    "data": {"synthetic": {"n_train": 64},
             "benchmarks": {"easy": {"source": "synthetic", "ops": 1, "n": 16, "seed": 101}}},
    "toy_models": {"teacher": {"n_layers": 2, "d_model": 64, "n_heads": 2, "train_steps": 60, "batch_size": 32,
                               "seed": 0},
                   "student": {"n_layers": 1, "d_model": 64, "n_heads": 2, "train_steps": 20, "batch_size": 32,
                               "seed": 1, "loop_len": 64}},
    "teacher_cache": {"batch_size": 64},
    "train": {"methods": ["opd"], "steps": 4, "max_new_tokens": 32, "prompts_per_step": 4, "n_samples": 2,
              "save_every": 1, "controls": {"enabled": False}},
    "eval": {"k": 2, "batch_size": 64},
}
TWO_NODES = {"resources": {"train": {"nodes": 2}}}
TIME_COLUMNS = {"train_wall_s", "train_wall_s_std", "speedup_vs_opd"}  # wall clock: differs run to run
FINAL = "results/tables/main.csv"
MEASURED: dict = {}  # steps per second of the two-node train job, for the time-limit test


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _write_config(wd: Path, name: str, *overlays: dict) -> str:
    cfg = TOY
    for o in overlays:
        cfg = _merge(cfg, o)
    (wd / name).write_text(yaml.safe_dump(cfg))
    return name


def _env() -> dict:
    # LOGLEVEL=INFO: torchrun's agents log the rendezvous (the jobs inherit this environment)
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "LOGLEVEL": "INFO", "PYTHONDONTWRITEBYTECODE": "1"}


def _smk(wd: Path, *args: str, timeout: int = 600) -> tuple[int, str]:
    p = subprocess.run([str(SNAKEMAKE), *args], cwd=wd, env=_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return p.returncode, p.stdout


def _table(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(fh)]


def _steps(metrics: Path) -> list[int]:
    return [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _squeue() -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %N"], capture_output=True, text=True).stdout
    return [tuple((line.split() + ["", ""])[:3]) for line in out.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the cluster
class Cluster:
    """One local cluster at a time (ports, /etc/slurm/slurm.conf); each stop checks by pid that
    every daemon it started is gone."""

    def __init__(self, base: Path):
        self.base, self.dir, self.accounting, self.n, self.cannot = base, None, None, 0, None

    def ensure(self, accounting: bool) -> None:
        if self.cannot:  # once is enough: each try may run apt-get
            pytest.skip(self.cannot)
        if self.dir is not None and self.accounting == accounting:
            return
        self.stop()
        self.n += 1
        self.dir = self.base / f"cluster{self.n}"
        t = time.monotonic()
        p = subprocess.run(["bash", str(SCRIPT), "start", str(self.dir)] + (["--accounting"] if accounting else []),
                           capture_output=True, text=True, timeout=600)
        if p.returncode == 3:
            self.dir, self.cannot = None, f"no local slurm cluster: {p.stderr.strip()}"
            pytest.skip(self.cannot)
        if p.returncode:
            logs = "\n".join(f"--- {f}\n{f.read_text()[-2000:]}" for f in (self.dir / "log").glob("*"))
            self.dir = None
            pytest.fail(f"slurm_local.sh start failed ({p.returncode}):\n{p.stderr}\n{logs}")
        self.accounting = accounting
        print(f"cluster up in {time.monotonic() - t:.1f} s (accounting: {accounting}): {p.stderr.strip()}")

    def pids(self) -> dict[str, int]:
        lines = (self.dir / "pids").read_text().split("\n")
        return {name: int(pid) for name, pid in (x.split() for x in lines if x.strip())}

    def stop(self) -> None:
        if self.dir is None:
            return
        pids = self.pids()
        p = subprocess.run(["bash", str(SCRIPT), "stop", str(self.dir)], capture_output=True, text=True, timeout=300)
        self.dir = None
        left = {name: pid for name, pid in pids.items() if _alive(pid)}
        assert p.returncode == 0 and not left, (p.stderr, left)
        assert {"slurmctld", "slurmd-n1", "slurmd-n2"} <= set(pids)


@pytest.fixture(scope="module")
def cluster(request):
    if os.geteuid() != 0:
        pytest.skip("the local slurm cluster needs root (slurmd starts jobs as their user)")
    # the script's directory: MariaDB (user mysql) must reach it, pytest's tmp dirs are 0700
    base = Path(subprocess.run(["mktemp", "-d", "/tmp/pgopd-slurm.XXXXXX"], capture_output=True, text=True,
                               check=True).stdout.strip())
    base.chmod(0o755)
    c = Cluster(base)
    yield c
    c.stop()
    if not request.session.testsfailed:  # the daemons' logs stay for a failed run
        shutil.rmtree(base, ignore_errors=True)


def _profile(wd: Path, name: str, account: str | None) -> str:
    """The project's slurm profile with this cluster's partition (and account) filled in; no
    account: the line goes (the plugin then submits without -A)."""
    text = (ROOT / "slurm" / "config.yaml").read_text()
    text = text.replace("CHANGE_ME_cpu_partition", "debug").replace("CHANGE_ME_gpu_partition", "debug")
    if account:
        text = text.replace("CHANGE_ME_account", account)
    else:
        text = "\n".join(x for x in text.splitlines() if "CHANGE_ME_account" not in x)
    assert "CHANGE_ME" not in json.dumps(yaml.safe_load(text))
    (wd / "profiles" / name).mkdir(parents=True)
    (wd / "profiles" / name / "config.yaml").write_text(text)
    return f"profiles/{name}"


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    d = copy_workflow(tmp_path_factory.mktemp("slurm_wd"))
    _write_config(d, "toy.yaml", TWO_NODES)
    _profile(d, "noacct", None)
    _profile(d, "acct", "root")
    return d


class LocalRun:
    """The same DAG run locally (one training process), started at once and waited for when
    its table is needed: it runs while the slurm run mostly waits for status checks."""

    def __init__(self, d: Path):
        self.d, self.t, self._table = d, time.monotonic(), None
        with open(d / "local.out", "w") as out:  # a file, not a pipe: nobody reads it while it runs
            self.p = subprocess.Popen([str(SNAKEMAKE), "--cores", "2", "--configfile", _write_config(d, "toy.yaml")],
                                      cwd=d, env=_env(), stdout=out, stderr=subprocess.STDOUT)

    def table(self) -> list[dict]:
        if self._table is None:
            self.p.wait(timeout=900)
            assert self.p.returncode == 0, (self.d / "local.out").read_text()[-4000:]
            print(f"local DAG: {time.monotonic() - self.t:.0f} s")
            self._table = _table(self.d / FINAL)
        return self._table


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    run = LocalRun(copy_workflow(tmp_path_factory.mktemp("local")))
    yield run
    if run.p.poll() is None:
        run.p.kill()
        run.p.wait()


# ----------------------------------------------------------------------------- tests
def test_toy_dag_through_slurm_on_two_nodes(cluster, wd, local_run):
    cluster.ensure(accounting=False)
    t = time.monotonic()
    rc, out = _smk(wd, "--profile", "profiles/noacct", "--configfile", "toy.yaml", *FAST, "--verbose")
    wall = time.monotonic() - t
    (wd / "dag_noacct.out").write_text(out)
    assert rc == 0, out[-6000:]
    print(f"DAG through slurm (no accounting): {wall:.0f} s")
    # every job (all but the local target rule `all`) was an sbatch job with its own slurm log
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", out)
    rules = sorted(re.search(r"slurm_logs/rule_(\w+)/", log).group(1) for _, log in submitted)
    assert rules == sorted(["prepare_data", "build_toy_models", "build_toy_models", "cache_teacher", "train",
                            "evaluate", "evaluate", "evaluate", "report"]), rules
    assert all(Path(log).is_file() for _, log in submitted)
    sbatch = [x for x in out.splitlines() if "sbatch call:" in x]
    train_call = next(x for x in sbatch if "rule_train" in x)
    print("sbatch of the train job:", train_call)
    assert "--nodes=2" in train_call and "--ntasks=2" in train_call, train_call
    # the two torchrun agents, one per node, met at the rendezvous on n1
    log = (wd / "results/logs/train/toy/opd/seed0.log").read_text()
    # (which agent gets rank 0 is the rendezvous' choice, not the node order)
    placed = sorted(re.findall(r"process (\d) of 2 on (n\d)", log), key=lambda x: x[1])
    assert [node for _, node in placed] == ["n1", "n2"] and {r for r, _ in placed} == {"0", "1"}, log[-3000:]
    assert log.count("rdzv_endpoint            : n1:") == 2, log[-3000:]
    assert log.count("Rendezvous complete for workers") == 2 and log.count("group_world_size=2") == 2
    assert "'world_size': 2" in log
    # two processes on two nodes give the one-process local table (timing columns aside)
    assert _table(wd / FINAL) == local_run.table()


def test_scancel_then_rerun_resumes_from_the_checkpoint(cluster, wd):
    cluster.ensure(accounting=False)
    steps = 300
    cfg = _write_config(wd, "scancel.yaml", TWO_NODES, {"train": {"steps": steps, "save_every": 5}})
    target = "results/train/toy/opd/seed1/summary.json"
    run_dir, log = wd / "results/train/toy/opd/seed1", wd / "results/logs/train/toy/opd/seed1.log"
    args = [str(SNAKEMAKE), "--profile", "profiles/noacct", "--configfile", cfg, *FAST, target]
    # --retries 0: the cancelled job fails the workflow; the rerun below is by hand
    p = subprocess.Popen(args + ["--retries", "0"], cwd=wd, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any((run_dir / "resume").glob("step-*/manifest.json")):  # a complete checkpoint
            assert p.poll() is None and time.monotonic() < deadline, "the train job never wrote a checkpoint"
            time.sleep(0.5)
        running = [j for j, state, _ in _squeue() if state == "RUNNING"]
        assert len(running) == 1, _squeue()
        subprocess.run(["scancel", running[0]], check=True)
        out = p.communicate(timeout=300)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and "CANCELLED" in out, out[-4000:]
    m = re.search(r"SIGTERM: checkpoint written at step (\d+)", log.read_text())
    assert m, log.read_text()[-3000:]
    cut = int(m.group(1))
    assert 0 < cut < steps
    t = time.monotonic()
    rc, out = _smk(wd, "--profile", "profiles/noacct", "--configfile", cfg, *FAST, target)
    assert rc == 0, out[-4000:]
    text = log.read_text()
    assert f"resuming from step {cut}" in text, text[-3000:]
    assert _steps(run_dir / "metrics.jsonl") == list(range(steps))  # each step once
    summary = json.loads((run_dir / "summary.json").read_text())
    MEASURED["steps_per_s"] = steps / summary["train_wall_s"]
    print(f"scancel at step {cut}, rerun resumed and finished in {time.monotonic() - t:.0f} s "
          f"({MEASURED['steps_per_s']:.1f} steps/s)")


def test_time_limit_is_retried_and_resumes(cluster, wd):
    """`runtime: 1` on a train job of ~2 min: slurm ends it (TIMEOUT, SIGTERM: a checkpoint),
    the profile's `retries` resubmits it and it goes on from the checkpoint."""
    cluster.ensure(accounting=False)
    rate = MEASURED.get("steps_per_s", 10.0)
    # ~120 s of training at the rate measured above: more than one 1-minute attempt does
    # (slurm ends a job 60-90 s in, ~10 s of it start-up) unless the machine gets 1.5x faster,
    # less than the three attempts of `retries: 2` (45-80 s of training each)
    steps = int(rate * 120) // 10 * 10
    cfg = _write_config(wd, "timelimit.yaml", TWO_NODES,
                        {"train": {"steps": steps, "save_every": 10}, "resources": {"train": {"runtime": 1}}})
    profile = (wd / "profiles/noacct/config.yaml").read_text()
    assert re.search(r"^retries: 2\b", profile, re.M)
    target = "results/train/toy/opd/seed2/summary.json"
    rc, out = _smk(wd, "--profile", "profiles/noacct", "--configfile", cfg, *FAST, target, timeout=900)
    (wd / "timelimit.out").write_text(out)
    timeouts = len(set(re.findall(r"SLURM-job '(\d+)' failed, SLURM status is: 'TIMEOUT'", out)))
    submitted = len(re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S+rule_train", out))
    assert timeouts >= 1 and submitted == timeouts + (rc == 0), out[-6000:]
    text = (wd / "results/logs/train/toy/opd/seed2.log").read_text()
    assert re.search(r"resuming from step [1-9]", text), text[-3000:]  # the last attempt's log
    if rc == 0:
        assert _steps(wd / "results/train/toy/opd/seed2/metrics.jsonl") == list(range(steps))
    else:
        # other load slowed the machine so much that three 1-minute attempts did not reach the
        # end: the retries were spent and each attempt resumed; not a fault of the workflow
        assert timeouts == 3, out[-6000:]
        print(f"time limit: {steps} steps not reached in three attempts (machine slower than measured)")


def test_failing_rule_fails_the_workflow_naming_its_logs(cluster, tmp_path):
    cluster.ensure(accounting=False)
    d = copy_workflow(tmp_path)
    _profile(d, "noacct", None)
    (d / "bad.jsonl").write_text('{"question": "no prompt or answer here"}\n')
    cfg = _write_config(d, "bad.yaml", {"data": {"train": {"source": "file", "path": "bad.jsonl"}}})
    rc, out = _smk(d, "--profile", "profiles/noacct", "--configfile", cfg, *FAST, "results/data/stats.json")
    assert rc != 0, out[-4000:]
    assert "Error in rule prepare_data" in out and "FAILED" in out, out[-4000:]
    rule_log = "results/logs/prepare_data/prepare_data.log"
    assert rule_log in out and "bad.jsonl" in (d / rule_log).read_text()
    slurm_log = re.search(r"\S+/\.snakemake/slurm_logs/rule_prepare_data/\d+\.log", out)
    assert slurm_log and Path(slurm_log.group(0)).is_file(), out[-4000:]


def test_with_accounting_and_no_daemon_left(cluster, wd, local_run):
    """The same profile on a cluster with slurmdbd (sacct works): the two-node train job and
    what follows it again; then every daemon is stopped (checked by pid)."""
    cluster.ensure(accounting=True)
    t = time.monotonic()
    rc, out = _smk(wd, "--profile", "profiles/acct", "--configfile", "toy.yaml", *FAST, "--forcerun", "train")
    assert rc == 0, out[-6000:]
    print(f"train + evaluate + report through slurm with accounting: {time.monotonic() - t:.0f} s")
    assert _table(wd / FINAL) == local_run.table()
    acct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList,Account"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert "COMPLETED|n[1-2]|root" in {x.split("|", 1)[1] for x in acct}, acct
    pids = cluster.pids()
    assert {"mariadbd", "slurmdbd"} <= set(pids)
    cluster.stop()
    assert not [name for name, pid in pids.items() if _alive(pid)]
