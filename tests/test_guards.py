"""Nothing silently wrong (issue 20): every case of the issue, one table row or test each.

Cheap by design: checkpoints are made by a fake engine (files of the layout DeepSpeed
writes), configs are parsed in-process, the two dry runs use the slurm plugin, and the only
subprocesses are a lock holder and ``pgopd`` CLI calls that stop before any training.
The full train / Snakemake flows are in test_train.py (cut-short checkpoint) and
test_e2e.py (config change after a stopped job).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pgopd import config as C
from pgopd import cluster, inputcheck, runguard
from pgopd import workflow as W
from pgopd.checkpoint import CheckpointError, RunState, checkpoint_dirs, load_resume, save_resume
from pgopd.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
PGOPD = [sys.executable, "-m", "pgopd.cli"]


# ----------------------------------------------------------------------------- fakes
class OneRank:
    rank, world = 0, 1

    def barrier(self):
        pass


class FakeEngine:
    """Saves / loads one tensor where DeepSpeed puts its model states."""

    def __init__(self, value=0.0):
        self.w = torch.tensor([value])

    def save_checkpoint(self, d, tag):
        (Path(d) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"w": self.w, "pad": torch.zeros(2000)}, Path(d) / tag / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, d, tag, **_):
        self.w = torch.load(Path(d) / tag / "mp_rank_00_model_states.pt")["w"]


def fp(**changes):
    base = {"method": "pgopd", "seed": 0, "train.lr": 3e-5, "train.pgopd.top_fraction": 0.5}
    return {**base, **changes}


def save_steps(out, steps, fingerprint, keep=2):
    eng = FakeEngine()
    for s in steps:
        eng.w = torch.tensor([float(s)])
        save_resume(eng, RunState(step=s), out, OneRank(), fingerprint, keep)


def model_file(d: Path) -> Path:
    return checkpoint_dirs(d)[-1] / "state/mp_rank_00_model_states.pt"


# ----------------------------------------------------------------------------- item 1: identity
def test_fingerprint_names_what_determines_the_run(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": 1}\n')
    cfg = C.parse_dataclass(C.TrainConfig, {}, "train")
    a = runguard.fingerprint(cfg, method="pgopd", seed=0, teacher="t", student="s", train_data=data)
    assert a["train.lr"] == cfg.lr and a["method"] == "pgopd" and "train.save_every" not in a
    b = runguard.fingerprint(C.parse_dataclass(C.TrainConfig, {"lr": 0.1, "save_every": 3}, "train"),
                             method="pgopd", seed=0, teacher="t", student="s", train_data=data)
    assert runguard.differing_keys(a, b) == ["train.lr"]  # save_every is operational
    data.write_text('{"id": 2}\n')
    c = runguard.fingerprint(cfg, method="pgopd", seed=0, teacher="t", student="s", train_data=data)
    assert runguard.differing_keys(a, c) == ["train_data"]


@pytest.mark.parametrize("mode,old,expect", [
    ("auto", fp(), "resume"),
    ("auto", fp(**{"train.lr": 0.1, "seed": 1}), "fresh"),
    ("auto", None, "fresh"),                 # checkpoints of an older pgopd: no fingerprint
    ("never", fp(), "fresh"),
    ("must", fp(), "resume"),
    ("must", fp(**{"train.lr": 0.1}), "refused"),
])
def test_resume_only_on_a_matching_fingerprint(tmp_path, caplog, mode, old, expect):
    out = tmp_path / "run"
    save_steps(out, [1, 2], old)
    (out / "metrics.jsonl.tmp").write_text("{}\n{}\n")
    if expect == "refused":
        with pytest.raises(runguard.ResumeRefused, match="train.lr"):
            runguard.prepare_run_dir(out, fp(), mode)
        return
    with caplog.at_level(logging.WARNING):
        go = runguard.prepare_run_dir(out, fp(), mode)
    assert go == (expect == "resume")
    if expect == "fresh":
        (stale,) = out.glob("stale-*")
        assert [d.name for d in checkpoint_dirs(stale)] == ["step-000001", "step-000002"]  # kept
        assert (stale / "metrics.jsonl.tmp").exists() and not (out / "resume").exists()
        assert str(stale) in caplog.text
        if old is not None and mode == "auto":
            assert "keys that differ: seed, train.lr" in caplog.text
    else:
        assert not list(out.glob("stale-*")) and load_resume(FakeEngine(), out).step == 2


def test_finished_run_dir_is_moved_aside_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"steps": 300}')
    assert runguard.prepare_run_dir(out, fp(), "auto") is False
    (stale,) = out.glob("stale-*")
    assert json.loads((stale / "summary.json").read_text()) == {"steps": 300}
    with pytest.raises(runguard.ResumeRefused, match="no complete checkpoint"):
        runguard.prepare_run_dir(out, fp(), "must")


# ----------------------------------------------------------------------------- item 2: one writer
def test_second_writer_exits_naming_dir_and_holder_and_stale_lock_is_taken(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pgopd.runguard import lock_run_dir; lock_run_dir(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runguard.RunDirBusy, match=rf"{out} is in use .*pid {holder.pid} on "):
            runguard.lock_run_dir(out)
        # `pgopd train` by hand into the same directory: refused at once, before any training
        r = subprocess.run([*PGOPD, "train", "--method", "opd", "--teacher", "t", "--student", "s",
                            "--train-data", "x", "--teacher-cache", "c", "--out-dir", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and f"pid {holder.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, the lock goes
        holder.wait()
    assert (out / ".lock").exists()
    with runguard.lock_run_dir(out):
        assert f"pid {os.getpid()}" in (out / ".lock").read_text()


# ----------------------------------------------------------------------------- item 3: checkpoints
def test_previous_checkpoints_kept_and_pruned_after_the_next_is_complete(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4], fp(), keep=2)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-000003", "step-000004"]
    save_steps(tmp_path / "k3", [1, 2, 3, 4], fp(), keep=3)
    assert len(checkpoint_dirs(tmp_path / "k3")) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_manifest"])
def test_unusable_newest_checkpoint_falls_back_saying_so(tmp_path, caplog, damage):
    save_steps(tmp_path, [1, 2], fp())
    f = model_file(tmp_path)
    if damage == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    elif damage == "garbage":  # same size, not a torch file: only loading finds it
        f.write_bytes(b"\0" * f.stat().st_size)
    else:
        (checkpoint_dirs(tmp_path)[-1] / "manifest.json").unlink()
    eng = FakeEngine()
    with caplog.at_level(logging.WARNING):
        state = load_resume(eng, tmp_path)
    assert state.step == 1 and float(eng.w) == 1.0
    assert "step-000002" in caplog.text and "previous checkpoint" in caplog.text


def test_no_loadable_checkpoint_names_the_file_and_what_to_do(tmp_path):
    save_steps(tmp_path, [1], fp())
    f = model_file(tmp_path)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{f}: 100 bytes.*truncated.*Delete that directory"):
        load_resume(FakeEngine(), tmp_path)


def test_corrupt_model_file_is_named(tmp_path):
    from tiny import save_tiny_model

    from pgopd.models.loading import load_model
    from pgopd.models.tokenizer import build_char_tokenizer

    d = save_tiny_model(build_char_tokenizer(), 1, 0, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=rf"{f}: \d+ bytes, its header says \d+ \(truncated\).*delete the directory"):
        load_model(str(d))


# ----------------------------------------------------------------------------- item 4: partitions
PROFILE_CASES = [  # (default-resources, set-resources, GPU rules refused)
    ({"slurm_partition": "cpu"}, {r: {"slurm_partition": "gpu"} for r in ("cache_teacher", "train", "evaluate")}, []),
    ({"slurm_partition": "cpu"}, {"train": {"runtime": 2880}}, ["cache_teacher", "train", "evaluate"]),
    ({"slurm_partition": "cpu"}, {"train": {"runtime": 2880, "slurm_partition": "gpu"},
                                  "cache_teacher": {"slurm_partition": "gpu"},
                                  "evaluate": {"slurm_partition": "cpu"}}, ["evaluate"]),
    ({"slurm_partition": "gpu"}, {r: {"slurm_partition": "gpu"} for r in ("cache_teacher", "train", "evaluate")},
     ["cache_teacher", "train", "evaluate"]),   # --default-resources slurm_partition=gpu
    ({"slurm_partition": "gpu", "gpu_on_default_partition": "true"}, {}, []),  # said to be intended
    ({}, {}, []),                               # local run: no partitions at all
]


@pytest.mark.parametrize("default,set_res,refused", PROFILE_CASES)
def test_gpu_rules_never_land_on_the_default_partition_unannounced(default, set_res, refused):
    paper = W.load_config(PAPER)
    assert cluster.gpu_rules_on_default_partition(paper, default, set_res) == refused
    assert cluster.gpu_rules_on_default_partition(W.load_config({}), default, set_res) == []  # toy: no GPUs
    if refused:
        with pytest.raises(ConfigError, match=f"{refused[0]}.*slurm_partition=<gpu partition>"):
            W.check_gpu_rules_partition(paper, default, set_res)


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed")
def test_readme_runtime_flag_dry_run(tmp_path):
    """Filled profile + config/paper.yaml + the README's old `--set-resources train:runtime=2880`:
    refused naming the rules; with the partition repeated in it: every GPU job on gpu."""
    from test_cluster_checks import SNAKEMAKE, _env, _profile
    from wfcopy import copy_workflow

    wd = copy_workflow(tmp_path)
    _profile(wd, "filled")
    base = [str(SNAKEMAKE), "-n", "--profile", "slurm", "--configfile", "config/paper.yaml", "--set-resources"]
    r = subprocess.run([*base, "train:runtime=2880"], cwd=wd, env=_env(wd), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "cache_teacher, train, evaluate use GPUs" in r.stdout + r.stderr
    r = subprocess.run([*base, "train:runtime=2880", "train:slurm_partition=gpu", "cache_teacher:slurm_partition=gpu",
                        "evaluate:slurm_partition=gpu"], cwd=wd, env=_env(wd), capture_output=True, text=True,
                       timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    parts = re.findall(r"rule (\w+):.*?resources: [^\n]*slurm_partition=(\w+)", out, re.S)
    assert {p for rule, p in parts if rule in ("train", "evaluate", "cache_teacher")} == {"gpu"}


# ----------------------------------------------------------------------------- item 5: quoting
def test_pgopd_command_quotes_a_path_with_a_space(tmp_path, monkeypatch):
    import shlex

    bin_dir = tmp_path / "my checkout/.venv/bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "pgopd"):
        (bin_dir / name).write_text("")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setattr(W.shutil, "which", lambda name: None)
    assert shlex.split(W.pgopd_command()) == [str(bin_dir / "pgopd")]
    cmd = W.train_command(W.load_config({"resources": {"train": {"gpu": 2}}}))
    assert str(bin_dir / "pgopd") in shlex.split(cmd)


# ----------------------------------------------------------------------------- item 6: lengths
def test_prompt_plus_max_new_tokens_within_positions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    inputcheck.check_lengths([10, 64], ["a", "b"], 64, "train.max_new_tokens", {"student": str(tmp_path)})
    with pytest.raises(ValueError, match=r"^train.max_new_tokens: the longest prompt \(id b, 65 tokens\).*"
                                         r"129 positions.*student's max_position_embeddings \(128"):
        inputcheck.check_lengths([10, 65], ["a", "b"], 64, "train.max_new_tokens", {"student": str(tmp_path)})


# ----------------------------------------------------------------------------- item 7: configs
def _with(raw, dotted, value):
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    d = raw
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value
    return raw


REFUSED = [  # (config, dotted key, value, what the one-line error starts with)
    ({}, "train.overlap_k", 200, "invalid config: train.overlap_k: 200 is not below the vocabulary"),
    ({}, "train.loss_top_k", 102, "invalid config: train.loss_top_k: 102 is not below the vocabulary"),
    ({}, "train.pruneopd.drift_threshold", 0.5, "invalid config: train.pruneopd.drift_threshold: 0.5 must not "
                                                 "exceed expand_threshold"),
    ({}, "train.pruneopd.truncate_threshold", 0.4, "invalid config: train.pruneopd.truncate_threshold"),
    ({}, "train.pruneopd.window", 500, "invalid config: train.pruneopd.window: 500 exceeds max_new_tokens"),
    ({}, "train.controls.fixed_truncation_len", 500, "invalid config: train.controls.fixed_truncation_len: 500 "
                                                      "exceeds max_new_tokens"),
    ({}, "data.benchmarks", {"method": {"ops": 1}}, "invalid config: data.benchmarks.method: the name is a column"),
    ({}, "data.benchmarks", {"easy": {"ops": 1}, "easy_std": {"ops": 2}},
     "invalid config: data.benchmarks.easy_std: the name is a column"),
    ({}, "data.synthetic.n_train", 10, "invalid config: train.prompts_per_step: 16 is more than the 10 training"),
    ({}, "seeds", [99999999999999], "invalid config: seeds[0]: 99999999999999 is above the maximum"),
    (PAPER, "train.overlap_k", 151936, "invalid config: train.overlap_k: 151936 is not below the vocabulary"),
]


@pytest.mark.parametrize("raw,key,value,msg", REFUSED, ids=[f"{k}={v}" for _, k, v, _ in REFUSED])
def test_config_refused_at_load_naming_the_key(raw, key, value, msg):
    with pytest.raises(ConfigError) as e:
        W.load_config(_with(raw, key, value))
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_numeric_strings_are_numbers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-6\n  temperature: '0.5'\n")
    cfg = W.load_config(C.load_yaml(f))
    assert cfg.train.lr == 1e-6 and cfg.train.temperature == 0.5
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'fast'"):
        W.load_config({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        W.load_config({"train": {"steps": "1e3"}})  # integers stay integers


def test_duplicate_yaml_key_refused_by_check_config(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.1\n  steps: 4\n  lr: 0.2\n")
    r = subprocess.run([*PGOPD, "check-config", str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"pgopd check-config: {f}: line 4, column 3:") and "'lr' given twice" in r.stderr


def test_matched_control_refuses_another_methods_run(tmp_path):
    s = tmp_path / "summary.json"
    s.write_text(json.dumps({"method": "opd"}))
    with pytest.raises(ValueError, match="a opd run, but random_prune-pruneopd is matched to pruneopd"):
        inputcheck.check_reference("random_prune-pruneopd", s)
    s.write_text(json.dumps({"method": "pruneopd"}))
    inputcheck.check_reference("random_prune-pruneopd", s)
    inputcheck.check_reference("opd", None)


def test_fewer_prompts_than_a_step_refused_at_train_start():
    cfg = C.parse_dataclass(C.TrainConfig, {"prompts_per_step": 4}, "train")
    with pytest.raises(ValueError, match="train.prompts_per_step: 4 is more than the 3 training prompts"):
        inputcheck.check_train_inputs(cfg, [{"id": i} for i in range(3)], [[1]] * 3, {}, vocab=100)
    with pytest.raises(ConfigError, match="train.overlap_k: 2 is not below the vocabulary of the models \\(2\\)"):
        inputcheck.check_train_inputs(cfg, [{"id": i} for i in range(4)], [[1]] * 4, {}, vocab=2)
