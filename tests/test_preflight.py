"""``pgopd preflight`` (through scripts/gpu_smoke.sh, as on the GPU machine): the tiny CPU
variant end to end, the refusal of paper shapes without CUDA, the dry budget, the budget
check.  The paper-shape run itself needs a GPU (marked gpu, skipped here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgopd import config as C

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper.yaml"


def _run(tmp: Path, *args, timeout=300):
    env = {**os.environ, "GPU_WHEELS": str(tmp / "no_wheels"), "PYTHON": sys.executable, "TMPDIR": str(tmp / "tmp"),
           "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29000 + os.getpid() % 500 + 11)}
    (tmp / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(ROOT / "scripts/gpu_smoke.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_tiny_preflight_runs_each_step_in_its_own_process_and_writes_small_json(tmp_path):
    from pgopd.memplan import PHASES

    out = tmp_path / "out"
    r = _run(tmp_path, "--configfile", str(PAPER), "--tiny", "--methods", "opd", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["preflight.json"]
    assert (out / "preflight.json").stat().st_size < 64_000
    assert not list((tmp_path / "tmp").glob("pgopd-preflight-*"))  # work files removed
    rep = json.loads((out / "preflight.json").read_text())
    assert [x["name"] for x in rep["runs"]] == ["opd_short", "opd_full"]
    short, full = rep["runs"]
    assert full["max_new_tokens"] > short["max_new_tokens"]
    for rec in rep["runs"]:
        assert set(PHASES) <= set(rec["plan_gib"])            # the plan's phases, by name
        assert all(rec["seconds"][p] > 0 for p in ("rollout", "scoring", "update", "step"))
        assert 0 < rec["tokens_generated"] <= rec["rows"] * rec["max_new_tokens"]
        assert rec["tokens_trained"] > 0 and rec["decode_tok_s"] > 0 and rec["update_tok_s"] > 0
    assert rep["gpu_hours_full_run"] > 0
    assert "plan GiB" in r.stdout and "GPU-hours" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_paper_shapes_refuse_without_cuda(tmp_path):
    r = _run(tmp_path, "--configfile", str(PAPER), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no CUDA device" in r.stderr
    assert not (tmp_path / "out" / "preflight.json").exists()


def test_dry_prints_the_budget(tmp_path):
    t = C.load(PAPER).train
    r = _run(tmp_path, "--configfile", str(PAPER), "--dry", "--short-tokens", "32")
    assert r.returncode == 0, r.stderr
    rows = t.max_live_rows  # one row group
    tokens = rows * (32 * len(t.methods) + t.max_new_tokens)
    assert f"{len(t.methods) + 1} steps, {tokens} tokens, est." in r.stdout
    assert "opd_full" in r.stdout and str(t.max_new_tokens) in r.stdout


def test_budget_over_the_limit_refuses_before_starting(tmp_path):
    r = _run(tmp_path, "--configfile", str(PAPER), "--budget-s", "60", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "over --budget-s 60" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_paper_shape_preflight_on_gpu(tmp_path):
    out = tmp_path / "out"
    r = _run(tmp_path, "--configfile", str(PAPER), "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "preflight.json").read_text())
    for rec in rep["runs"]:
        assert max(rec["peak_reserved_gib"].values()) < rep["gpu_mem_gib"]


def test_gpu_hours_scale_the_full_length_step_to_the_configs_run():
    from pgopd.memplan import _world
    from pgopd.preflight import full_run_gpu_hours

    cfg = C.load(PAPER)
    t, world = cfg.train, _world(cfg)
    rec = {"rows": 16, "seconds": {"rollout": 10.0, "scoring": 2.0, "update": 4.0, "step": 0.5}}
    rows_rank = t.prompts_per_step // world * t.n_samples
    step_s = rows_rank / 16 * (10.0 + 2.0) + 4.0 * rows_rank / 16  # row groups of 16; the update by rows
    jobs = len(t.methods) * len(cfg.seeds) * len(cfg.pairs)
    assert full_run_gpu_hours(cfg, rec) == pytest.approx(t.steps * step_s * world * jobs / 3600, abs=0.05)


def test_phase_peaks_nest_as_the_plan_separates_them():
    """``step`` runs inside ``update``: the update keeps its own peak (before and after the
    step), the step gets its own, though the CUDA peak counter is reset in between."""
    from types import SimpleNamespace

    from pgopd.preflight_worker import Meter

    mem = {"now": 0, "peak": 0}

    def alloc(n):
        mem["now"] = n
        mem["peak"] = max(mem["peak"], n)

    cuda = SimpleNamespace(synchronize=lambda: None, max_memory_allocated=lambda: mem["peak"],
                           max_memory_reserved=lambda: mem["peak"] + 1,
                           reset_peak_memory_stats=lambda: mem.update(peak=mem["now"]))
    m = Meter(cuda=False)
    m.torch, m.cuda = SimpleNamespace(cuda=cuda), True
    with m.phase("update"):
        alloc(10)   # forward/backward
        alloc(2)
        with m.phase("step"):
            alloc(5)
            alloc(3)
        alloc(4)
    with m.phase("rollout"):
        alloc(1)
    assert m.alloc == {"update": 10, "step": 5, "rollout": 4}  # rollout starts with 4 resident
    assert m.reserved["update"] == 11 and set(m.seconds) == {"update", "step", "rollout"}
