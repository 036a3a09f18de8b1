"""The memory plan (pgopd/memplan.py): shapes, the per-phase arithmetic, the refusal of a config
that cannot fit (at `pgopd plan` and at workflow load), and paper.yaml fitting 8 x 80 GB."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgopd import config as C
from pgopd import memplan as M
from pgopd import workflow as W
from wfcopy import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config/paper.yaml"
GIB = M.GIB


def paper_raw() -> dict:
    return yaml.safe_load(PAPER.read_text())


def _tiny_shape(**kw) -> M.Shape:
    return M.Shape(**{**dict(vocab=10, hidden=4, layers=1, heads=1, kv_heads=1, head_dim=4,
                             intermediate=8, tied=True, qk_norm=False), **kw})


# ----------------------------------------------------------------------------- shapes
def test_params_and_kv_of_the_published_qwen3_shapes():
    s = M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-1.7B"])
    t = M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-8B"])
    assert abs(s.params - 1.72e9) < 0.01e9 and abs(t.params - 8.19e9) < 0.01e9  # published sizes
    assert s.kv_bytes_per_token(2) == 114_688 and t.kv_bytes_per_token(2) == 147_456  # gpu-memory.md


def test_params_hand_count():
    # embedding 10x4 (tied) + q,k,v 4x12 + o 4x4 + mlp 3x4x8 + 2 layer norms + final norm
    assert _tiny_shape().params == 40 + 48 + 16 + 96 + 8 + 4
    assert _tiny_shape(tied=False).params == 40 + 40 + 48 + 16 + 96 + 8 + 4


def test_shape_from_local_dir_and_hf_cache(tmp_path, monkeypatch):
    conf = {**M.KNOWN_CONFIGS["Qwen/Qwen3-4B"], "num_hidden_layers": 3}
    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(conf))
    assert M.model_shape(str(local), "pairs.p.student").layers == 3
    # the HF cache snapshot wins over the built-in table (HF_HUB_CACHE, then HF_HOME/hub)
    for var, hub in (("HF_HUB_CACHE", tmp_path / "hub1"), ("HF_HOME", tmp_path / "home")):
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.setenv(var, str(hub))
        root = hub if var == "HF_HUB_CACHE" else hub / "hub"
        snap = root / "models--Qwen--Qwen3-4B" / "snapshots" / "abc123"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps(conf))
        assert M.model_shape("Qwen/Qwen3-4B", "pairs.p.teacher").layers == 3
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert M.model_shape("Qwen/Qwen3-4B", "pairs.p.teacher").layers == 36  # offline fallback


def test_unknown_model_names_pair_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    raw = {"pairs": {"mine": {"teacher": "Org/Unknown-9B", "student": "Qwen/Qwen3-1.7B"}},
           "resources": {"train": {"gpu": 8}}}
    with pytest.raises(C.ConfigError, match=r"pairs\.mine\.teacher: model 'Org/Unknown-9B' has no config\.json"):
        W.load_config(raw)


# ----------------------------------------------------------------------------- arithmetic
def _inputs(**kw) -> M.PlanInputs:
    s = M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-1.7B"])
    t = M.Shape.from_config(M.KNOWN_CONFIGS["Qwen/Qwen3-8B"])
    base = dict(student=s, teacher=t, rows=32, prompt_tokens=1024, max_new_tokens=7168, budget_gib=80.0,
                world=8, zero_stage=2, dtype_bytes=2)
    return M.PlanInputs(**{**base, **kw})


def _term(x: M.PlanInputs, phase: str, name: str) -> float:
    (p,) = [p for p in M.phases(x) if p.name == phase]
    return sum(t.bytes for t in p.terms if t.name == name)


def _state(x, phase="update"):
    return sum(_term(x, phase, n) for n in ("student weights", "student gradients", "optimizer states"))


def test_zero_sharding_follows_the_zero_paper():
    x = _inputs()
    P = x.student.params
    # ZeRO 1-3 keep fp32 gradients (data_types.grad_accum_dtype fp32, train.bf16_precision_keys)
    assert _state(x) == pytest.approx(2 * P + (4 + 12) * P / 8)                # stage 2
    assert _state(dataclasses.replace(x, zero_stage=0)) == pytest.approx(16 * P)
    assert _state(dataclasses.replace(x, zero_stage=1)) == pytest.approx((2 + 4) * P + 12 * P / 8)
    # ZeRO-3 keeps tensors of <= 1e5 elements whole on every rank (stage3_param_persistence_threshold)
    small = x.student.small_params(100_000)
    assert 0 < small < 1e-3 * P                                                 # the norms only
    assert _state(dataclasses.replace(x, zero_stage=3)) == pytest.approx((2 + 4 + 12) * P / 8 + 2 * small * 7 / 8)
    # fp32 training: 4 B weights + 4 B grads + 8 B Adam, no master copy
    assert _state(dataclasses.replace(x, zero_stage=0, dtype_bytes=4)) == pytest.approx(16 * P)


def test_terms_scale_with_their_knobs():
    x = _inputs()
    kv = _term(x, "scoring", "teacher KV (live rows)")
    assert kv == 32 * 8192 * 147_456
    assert _term(dataclasses.replace(x, live_rows=8), "scoring", "teacher KV (live rows)") == kv / 4
    x = dataclasses.replace(x, micro_tokens=8192, gradient_checkpointing=True)  # the LM-head chunk binds
    lg = _term(dataclasses.replace(x, logprob_chunk=1024), "update", "log-prob logits (fwd+bwd)")
    assert lg == 1024 * 151_936 * (2 + 4 + 4 + 4 + 2)  # head out, fp32, softmax, fp32 grad, bf16 grad
    assert _term(dataclasses.replace(x, logprob_chunk=2048), "update", "log-prob logits (fwd+bwd)") == 2 * lg
    x = dataclasses.replace(x, gradient_checkpointing=False)
    a1 = _term(dataclasses.replace(x, micro_tokens=8192), "update", "activations (one micro-batch)")
    a4 = _term(dataclasses.replace(x, micro_tokens=4 * 8192), "update", "activations (one micro-batch)")
    assert a4 == pytest.approx(4 * a1)
    gc = _term(dataclasses.replace(x, micro_tokens=8192, gradient_checkpointing=True), "update",
               "activations (one micro-batch)")
    assert gc < a1 / 5
    # a budget below one sequence still holds one whole sequence
    assert dataclasses.replace(x, micro_tokens=100).micro_batch_tokens == 8192
    # offload: no teacher in the update, still there while scoring
    off = dataclasses.replace(x, teacher_offload=True)
    assert _term(off, "update", "teacher weights") == 0 < _term(off, "scoring", "teacher weights")
    # ... and its KV cache is released by the rollout (counted only for code that keeps it)
    assert _term(off, "update", "teacher KV kept after rollout") == 0
    assert _term(dataclasses.replace(off, teacher_kv_kept=True), "update", "teacher KV kept after rollout") == kv
    # colocated vLLM sleeps during the update; a separate engine keeps its reservation
    v = dataclasses.replace(x, backend="vllm", vllm_util=0.5, vllm_mode="colocate")
    assert _term(v, "update", "vLLM reservation") == 0 and _term(v, "rollout", "vLLM reservation") == 40 * GIB
    assert _term(v, "update", "vLLM asleep (buffers, graphs)") > 0 and _term(v, "sync", "vLLM reservation") == 40 * GIB
    assert _term(dataclasses.replace(v, vllm_mode="separate"), "update", "vLLM reservation") == 40 * GIB


# ----------------------------------------------------------------------------- refusal
def test_paper_config_fits_80gb_and_refuses_without_the_memory_knobs():
    cfg = C.parse(paper_raw())
    plans = M.plan_config(cfg)
    assert len(plans) == 2 and all(p.fits for p in plans), [p.problems() for p in plans]
    M.check_config(cfg)
    raw = paper_raw()
    raw["train"]["max_live_rows"] = 0  # every row's teacher KV at once: 36 GiB
    with pytest.raises(C.ConfigError, match=r"phase (rollout|scoring) needs .* fits: .*train\.max_live_rows: \d+ \(now 32"):
        M.check_config(C.parse(raw))
    raw = paper_raw()
    raw["train"].update(max_tokens_per_micro_batch=0, gradient_checkpointing=False)
    with pytest.raises(C.ConfigError, match=r"phase update needs .*train\.max_tokens_per_micro_batch: \d+ \(now 0") as e:
        M.check_config(C.parse(raw))
    # checkpointing alone leaves 64k tokens' layer inputs and logits: it cannot fit, so it is not named
    assert "gradient_checkpointing" not in str(e.value)
    raw = paper_raw()
    raw["resources"]["train"]["gpu_mem_gb"] = 40
    with pytest.raises(C.ConfigError, match="resources.train.gpu_mem_gb = 40"):
        W.load_config(raw)
    raw["resources"]["train"]["gpu"] = 0  # no GPU: nothing to plan against
    W.load_config(raw)


def test_plan_cli_table_json_and_exit_code(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    cmd = [sys.executable, "-m", "pgopd.cli", "plan", "--configfile"]
    r = subprocess.run(cmd + [str(PAPER)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for word in ("rollout", "scoring", "update", "step", "sync", "teacher KV (live rows)", "of 79.6 GiB budget: ok"):
        assert word in r.stdout
    r = subprocess.run(cmd + [str(PAPER), "--json"], capture_output=True, text=True, env=env, timeout=60)
    got = json.loads(r.stdout)
    assert [p["phase"] for p in got[0]["phases"]] == list(M.PHASES) and got[0]["fits"]
    raw = paper_raw()
    raw["train"].update(logprob_chunk_tokens=65536, max_tokens_per_micro_batch=65536)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "OVER" in r.stdout
    assert "phase update needs" in r.stderr and "train.logprob_chunk_tokens: " in r.stderr


def test_snakemake_dry_run_refuses_a_gpu_config_that_cannot_fit(tmp_path):
    (tmp_path / "wf").mkdir()
    wf = copy_workflow(tmp_path / "wf")
    raw = paper_raw()
    raw["train"]["max_live_rows"] = 0
    cf = tmp_path / "unfit.yaml"
    cf.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    snakemake = Path(sys.executable).parent / "snakemake"
    r = subprocess.run([str(snakemake), "-n", "--cores", "1", "--configfile", str(cf)], cwd=wf, env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    line = next(x for x in out.splitlines() if "memory plan:" in x)
    assert "train.max_live_rows" in line and "pair qwen3_" in line
    assert "Job stats" not in out and "Building DAG" not in out
