"""What `snakemake -n` catches before a cluster run (issue: the cluster launch works as
written): config cross-checks that would otherwise fail on the GPU node, the slurm
profile's placeholders / GPU flags / partitions, local data files as inputs of prepare_data,
and the multi-node rendezvous inside a job step that has no SLURM_JOB_NODELIST.

Dry runs work on a copy of the workflow files in a temp dir and never run a job.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pgopd import workflow as W
from pgopd.config import ConfigError
from wfcopy import copy_workflow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def _paper(**changes) -> dict:
    """config/paper.yaml with ``changes`` deep-merged in (dotted paths; None deletes)."""
    import copy

    raw = copy.deepcopy(PAPER)
    for path, value in changes.items():
        *parents, last = path.split("__")
        d = raw
        for p in parents:
            d = d.setdefault(p, {})
        if value is None:
            d.pop(last, None)
        else:
            d[last] = value
    return raw


GPU8 = {"resources": {"train": {"gpu": 8, "cpus_per_task": 8}}}

# name -> (config written with --configfile, key the one-line error names, use the slurm profile)
MUTATED = {
    "prompts_per_step not divisible by 8 GPUs": (_paper(train__prompts_per_step=60), "train.prompts_per_step", False),
    "prompts_per_step vs 2 nodes x 4 GPUs": (
        {"train": {"prompts_per_step": 12}, "resources": {"train": {"gpu": 4, "nodes": 2}}},
        "train.prompts_per_step", False),
    "prompts_per_step 6 on 4 GPUs": ({"train": {"prompts_per_step": 6}, "resources": {"train": {"gpu": 4}}},
                                     "train.prompts_per_step", False),
    "pair without student": (_paper(pairs={"big": {"teacher": "Qwen/Qwen3-8B"}}), "pairs.big.student", False),
    "pair without teacher": ({"pairs": {"p": {"student": "Qwen/Qwen3-1.7B"}}}, "pairs.p.teacher", False),
    "pair student misspelt": ({"pairs": {"p": {"teacher": "toy", "studnet": "toy"}}}, "pairs.p.student", False),
    "pair student empty": ({"pairs": {"p": {"teacher": "Qwen/Qwen3-8B", "student": " "}}}, "pairs.p.student",
                           False),
    "pair student null": ({"pairs": {"p": {"teacher": "Qwen/Qwen3-8B", "student": None}}}, "pairs.p.student",
                          False),
    "missing local train file": (_paper(data__train={"source": "file", "path": "data/dapo.parquet"}),
                                 "data.train.path", False),
    "missing local benchmark file": (
        {"data": {"benchmarks": {"aime": {"source": "file", "path": "/nonexistent/aime24.parquet"}}}},
        "data.benchmarks.aime.path", False),
    "train path is a directory": ({"data": {"train": {"source": "file", "path": "config.parquet"}}},
                                  "data.train.path", False),
    "train file of an unreadable type": ({"data": {"train": {"source": "file", "path": "config/config.yaml"}}},
                                         "data.train.path", False),
    "tensor parallel engines with 8 processes": (
        {**GPU8, "train": {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}},
        "train.vllm.tensor_parallel_size", False),
    "enforce_eager not a boolean": ({"train": {"vllm": {"enforce_eager": "yes"}}}, "train.vllm.enforce_eager",
                                    False),
    "eval enforce_eager not a boolean": ({"eval": {"vllm_enforce_eager": 1}}, "eval.vllm_enforce_eager", False),
    "unknown teacher cache backend": ({"teacher_cache": {"backend": "sglang"}}, "teacher_cache.backend", False),
    "deepspeed launcher on 2 nodes": ({"resources": {"train": {"gpu": 8, "nodes": 2, "launcher": "deepspeed"}}},
                                      "resources.train.launcher", False),
    "zero nodes": ({"resources": {"train": {"nodes": 0}}}, "resources.train.nodes", False),
    "hf benchmark without a name": ({"data": {"benchmarks": {"hmmt": {"source": "hf"}}}},
                                    "data.benchmarks.hmmt.hf_name", False),
    "controls reference not trained": ({"train": {"methods": ["opd"], "controls": {"enabled": True}}},
                                       "train.controls.references", False),
    "slurm profile left at CHANGE_ME": (PAPER, "default-resources: slurm_account", "placeholder"),
    "profile gres next to resources.train.gpu": (PAPER, "set-resources: train: gres", "gres"),
}


def _profile(wd: Path, kind) -> None:
    """./slurm/config.yaml of the copy: as committed (placeholder), or filled in (+ a gres)."""
    text = (ROOT / "slurm/config.yaml").read_text()
    if kind != "placeholder":
        text = (text.replace("CHANGE_ME_account", "acct").replace("CHANGE_ME_cpu_partition", "cpu")
                .replace("CHANGE_ME_gpu_partition", "gpu"))
    prof = yaml.safe_load(text)
    if kind == "gres":
        prof["set-resources"]["train"]["gres"] = "gpu:h100:8"
    (wd / "slurm").mkdir(exist_ok=True)
    (wd / "slurm/config.yaml").write_text(yaml.safe_dump(prof))


def _env(wd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=str(wd))  # no user profile in ~/.config
    return env


def _has_slurm_plugin() -> bool:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def mutated_runs(tmp_path_factory):
    """`snakemake -n` on every mutated config, four at a time (each is mostly start-up)."""
    runs, out = {}, {}
    items = list(MUTATED.items())
    for start in range(0, len(items), 4):
        procs = {}
        for name, (raw, _key, profile) in items[start:start + 4]:
            wd = copy_workflow(tmp_path_factory.mktemp("mut"))
            (wd / "config.parquet").mkdir()
            cf = wd / "mutated.yaml"
            cf.write_text(yaml.safe_dump(raw))
            args = [str(SNAKEMAKE), "-n", "--configfile", str(cf)]
            if profile:
                if not _has_slurm_plugin():
                    continue
                _profile(wd, profile)
                args += ["--profile", "slurm"]
            else:
                args += ["--cores", "1"]
            procs[name] = (wd, subprocess.Popen(args, cwd=wd, env=_env(wd), stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True))
        for name, (wd, p) in procs.items():
            out[name] = p.communicate(timeout=180)[0]
            runs[name] = (p.returncode, out[name], wd)
    return runs


def test_twenty_mutated_configs_are_listed():
    assert len(MUTATED) >= 20


@pytest.mark.parametrize("name", list(MUTATED))
def test_mutated_config_fails_the_dry_run_naming_the_key(mutated_runs, name):
    if name not in mutated_runs:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    rc, out, wd = mutated_runs[name]
    key = MUTATED[name][1]
    assert rc != 0, out[-3000:]
    lines = [x for x in out.splitlines() if key + ":" in x or key + " " in x]
    assert len(lines) == 1, out[-3000:]   # one line names the key (and says what to do)
    assert "Traceback" not in out and "Job stats" not in out, out[-3000:]
    assert not (wd / "results").exists()


# ----------------------------------------------------------------------------- unit checks
def test_cross_checks_at_load():
    with pytest.raises(ConfigError, match=r"^invalid config: train\.prompts_per_step: 60 is not divisible by "
                                          r"the 8 training processes \(resources\.train\.gpu 8 x nodes 1\)"):
        W.load_config(_paper(train__prompts_per_step=60))
    # launcher none: one process whatever the GPUs
    W.load_config({"train": {"prompts_per_step": 6}, "resources": {"train": {"gpu": 4, "launcher": "none"}}})
    assert W.train_processes(W.load_config({"resources": {"train": {"gpu": 8, "nodes": 2}}})) == 16
    with pytest.raises(ConfigError, match=r"pairs\.a\.student: missing"):
        W.load_config({"pairs": {"a": {"teacher": "Qwen/Qwen3-8B"}}})


def test_local_data_files_are_prepare_data_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for f in ("d/train.jsonl", "d/aime.parquet"):
        (tmp_path / f).write_text("x")
    cfg = W.load_config({"data": {"train": {"source": "file", "path": "d/train.jsonl"},
                                  "benchmarks": {"aime": {"source": "file", "path": "d/aime.parquet"},
                                                 "easy": {"source": "synthetic"}}}})
    assert W.data_inputs(cfg) == ["d/aime.parquet", "d/train.jsonl"]
    assert W.data_inputs(W.load_config({})) == []


def test_editing_a_local_data_file_reruns_prepare_data(tmp_path):
    wd = copy_workflow(tmp_path)
    (wd / "data").mkdir()
    (wd / "data/train.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    cf = wd / "c.yaml"
    cf.write_text(yaml.safe_dump({"data": {"train": {"source": "file", "path": "data/train.jsonl"}}}))
    outs = ["results/data/train.jsonl", "results/data/stats.json"] + [
        f"results/data/bench/{b}.jsonl" for b in ("easy", "medium", "hard")]
    time.sleep(0.05)
    for o in outs:  # outputs newer than the data file: nothing to do
        (wd / o).parent.mkdir(parents=True, exist_ok=True)
        (wd / o).write_text("{}\n")
    cmd = [str(SNAKEMAKE), "results/data/stats.json", "-n", "--cores", "1", "--configfile", str(cf)]
    r = subprocess.run(cmd, cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr
    later = time.time() + 5
    os.utime(wd / "data/train.jsonl", (later, later))   # the user edits the file
    r = subprocess.run(cmd, cwd=wd, env=_env(wd), capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "rule prepare_data:" in out, out
    assert re.search(r"reason: Updated input files: data/train\.jsonl", out), out


def test_profile_checks_unit():
    W.check_profile_placeholders({"slurm_account": "a", "slurm_partition": "p"}, {"train": {"slurm_partition": "g"}})
    with pytest.raises(ConfigError, match=r"set-resources: train: slurm_partition is still CHANGE_ME_gpu.*sinfo -s"):
        W.check_profile_placeholders({"slurm_account": "a"}, {"train": {"slurm_partition": "CHANGE_ME_gpu"}})
    toy, paper = W.load_config({}), W.load_config(PAPER)
    prof = {"cache_teacher": {"slurm_partition": "gpu"}, "train": {"slurm_partition": "gpu"},
            "evaluate": {"slurm_partition": "gpu"}, "report": {"qos": "x"}}
    assert W.cpu_rules_sent_to_other_partition(toy, {"slurm_partition": "cpu"}, prof) == [
        "cache_teacher", "train", "evaluate"]
    assert W.cpu_rules_sent_to_other_partition(paper, {"slurm_partition": "cpu"}, prof) == []
    W.check_profile_gpu_flags(toy, {"train": {"gres": "gpu:h100:8"}})   # no GPUs asked: nothing doubled
    with pytest.raises(ConfigError, match=r"set-resources: train: gres duplicates resources\.train\.gpu \(8\)"):
        W.check_profile_gpu_flags(paper, {"train": {"gres": "gpu:h100:8"}})
    two = W.load_config(_paper(resources__train={**PAPER["resources"]["train"], "nodes": 2}))
    with pytest.raises(ConfigError, match=r"gpu_model with resources\.train\.nodes > 1"):
        W.check_profile_gpu_flags(two, {"train": {"gpu_model": "h100"}})


@pytest.mark.skipif(not _has_slurm_plugin(), reason="snakemake-executor-plugin-slurm is not installed")
def test_toy_default_with_filled_profile_keeps_cpu_jobs_off_the_gpu_partition(tmp_path):
    wd = copy_workflow(tmp_path)
    _profile(wd, "filled")
    r = subprocess.run([str(SNAKEMAKE), "-n", "--profile", "slurm"], cwd=wd, env=_env(wd), capture_output=True,
                       text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    parts = re.findall(r"rule (\w+):.*?resources: [^\n]*slurm_partition=(\w+)", out, re.S)
    assert parts and {p for _, p in parts} == {"cpu"}, parts
    assert "pgopd: train uses no GPU (resources.train.gpu: 0)" in out
    assert not (wd / "results").exists()


@pytest.mark.skipif(not _has_slurm_plugin(), reason="snakemake-executor-plugin-slurm is not installed")
def test_profile_example_gpu_model_gives_one_gpu_flag():
    """The profile's example (`train: {gpu_model: h100}`) with the paper's 8 GPUs: one --gpus."""
    from test_paper_config import _sbatch

    res = {**W.train_resources(W.load_config(PAPER)), "gpu_model": "h100"}
    call = _sbatch(res, 64)
    assert call.count("--gpus") == 1 and "--gpus=h100:8" in call and "--gres" not in call, call


# ----------------------------------------------------------------------------- multi-node launch
FAKE_SCONTROL = """#!/bin/sh
# `scontrol show job <id>` / `scontrol show hostnames <list>` as slurm prints them
if [ "$1 $2" = "show job" ]; then
  [ -n "$FAKE_NODELIST" ] || exit 0
  echo "JobId=$3 JobName=snakejob.train"
  echo "   ReqNodeList=(null) ExcNodeList=(null)"
  echo "   NodeList=$FAKE_NODELIST"
  echo "   BatchHost=gpu07"
elif [ "$1 $2" = "show hostnames" ]; then
  case "$3" in "gpu[07-08]") printf 'gpu07\\ngpu08\\n' ;; "") exit 1 ;; *) echo "$3" ;; esac
fi
"""


def _render(tmp_path, env_extra: dict):
    """Run the rendered multi-node train command with fake scontrol / srun (srun prints its
    arguments) in an environment like the job step's: no SLURM_JOB_NODELIST."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "scontrol").write_text(FAKE_SCONTROL)
    (bin_ / "srun").write_text('#!/bin/sh\necho "srun $*"\n')
    for f in ("scontrol", "srun"):
        (bin_ / f).chmod(0o755)
    cfg = W.load_config({"resources": {"train": {"gpu": 8, "nodes": 2, "cpus_per_task": 64}}})
    cmd = W.train_command(cfg, str(ROOT)) + " train --params '{}'"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_}{os.pathsep}{env['PATH']}", **env_extra)
    return cmd, subprocess.run(["bash", "-c", f"set -euo pipefail; {cmd}"], env=env, capture_output=True,
                               text=True, timeout=60)


def test_multinode_command_resolves_the_host_without_nodelist(tmp_path):
    cmd, r = _render(tmp_path, {"SLURM_JOB_ID": "4242", "FAKE_NODELIST": "gpu[07-08]"})
    assert r.returncode == 0, r.stderr
    assert "--rdzv_endpoint gpu07:29742 " in r.stdout, r.stdout
    assert "--rdzv_id 4242 " in r.stdout and "--nnodes 2 --nproc_per_node 8" in r.stdout
    # SLURM_JOB_NODELIST wins when the step has it
    _, r = _render(tmp_path, {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert "--rdzv_endpoint gpu07:29742 " in r.stdout, r.stdout + r.stderr


def test_multinode_command_says_what_is_missing(tmp_path):
    _, r = _render(tmp_path, {"SLURM_JOB_ID": "4242", "FAKE_NODELIST": ""})
    assert r.returncode != 0 and "srun" not in r.stdout
    assert "no rendezvous host for the train job: SLURM_JOB_NODELIST is empty and 'scontrol show job " \
           "4242' gave no NodeList" in r.stderr, r.stderr
    _, r = _render(tmp_path, {})
    assert r.returncode != 0 and "srun" not in r.stdout
    assert "resources.train.nodes > 1 needs a slurm allocation" in r.stderr and "SLURM_JOB_ID is not set" in r.stderr


def test_jobstep_plugin_is_pinned_to_the_tested_version():
    from importlib import metadata

    text = (ROOT / "pyproject.toml").read_text()
    pins = re.findall(r'"snakemake-executor-plugin-slurm-jobstep==([0-9.]+)"', text)
    assert pins and set(pins) == {"0.6.1"}
    try:
        assert metadata.version("snakemake-executor-plugin-slurm-jobstep") == pins[0]
    except metadata.PackageNotFoundError:
        pass


def test_no_reference_to_a_missing_file():
    for f in ("config/paper.yaml", "slurm/config.yaml", "README.md", "config/config.yaml", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))):
        for ref in re.findall(r"(?<![:\w/])((?:docs|config|slurm|scripts)/[\w./-]+\.(?:md|yaml|sh))", (ROOT / f).read_text()):
            assert (ROOT / ref).exists(), (f, ref)


def _readme_train_line() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return next(x for x in text.splitlines() if x.startswith(': "${SLURM_JOB_ID:?') and " srun " in x)


def _launch_part(line: str) -> tuple[str, str]:
    """(before the interpreter, torchrun's arguments up to the program), interpreter path left out."""
    m = re.match(r"(.*) \S+ -m torch\.distributed\.run (.*?)(?: --no-python | -m pgopd\.cli)", line)
    assert m, line
    return m.groups()


@pytest.mark.skipif(not _has_slurm_plugin(), reason="snakemake-executor-plugin-slurm is not installed")
def test_readme_multinode_dry_run_renders_its_torchrun_line(tmp_path):
    """The README's `snakemake --profile slurm --configfile config/paper.yaml config/two_nodes.yaml
    -n -p` (profile filled in): 18 two-node train jobs, each with the README's launch line."""
    wd = copy_workflow(tmp_path)
    _profile(wd, "filled")
    r = subprocess.run([str(SNAKEMAKE), "--profile", "slurm", "--configfile", "config/paper.yaml",
                        "config/two_nodes.yaml", "-n", "-p"], cwd=wd, env=_env(wd), capture_output=True,
                       text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    trains = [x for x in out.splitlines() if " train --params " in x]
    assert len(trains) == 18
    want = _launch_part(_readme_train_line())
    for line in trains:
        got = _launch_part(line.removeprefix("Shell command: "))
        assert got == want, (got, want)
    assert "nodes=2, gres=gpu:8, mpi=srun, tasks=2" in out
    assert not (wd / "results").exists()
