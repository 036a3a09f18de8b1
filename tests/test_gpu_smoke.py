"""scripts/gpu_smoke.sh: its CPU-sized variant (tiny shapes, fp32) through the real train code;
the paper-shape run itself needs a GPU (marked gpu, skipped here)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *args, timeout=900):
    env = {**os.environ, "GPU_WHEELS": str(out / "no_wheels"), "PYTHON": os.environ.get("PYTHON", "python")}
    env["PATH"] = str(Path(__import__("sys").executable).parent) + os.pathsep + env["PATH"]
    return subprocess.run(["bash", str(ROOT / "scripts/gpu_smoke.sh"), "--out", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_tiny_smoke_runs_every_method_and_writes_the_report(tmp_path):
    r = _run(tmp_path, "--tiny", "--steps", "1", "--prompts", "1", "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert set(rep["methods"]) == {"opd", "pgopd", "pruneopd"}
    assert set(rep["plan_gib"]) == {"sampling", "scoring", "update", "step"}
    for m in rep["methods"].values():
        assert len(m["steps"]) == 1 and m["tokens_generated"] > 0
        assert m["seconds"]["sampling"] > 0 and m["seconds"]["scoring"] > 0
    assert rep["methods"]["opd"]["steps"][0]["tokens_trained"] > 0  # opd trains every token
    assert rep["methods"]["opd"]["seconds"]["update"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_paper_shape_smoke_on_gpu(tmp_path):
    r = _run(tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_smoke.json").read_text())
    for m in rep["methods"].values():
        assert max(m["peak_gib"].values()) < rep["gpu_mem_gib"]
