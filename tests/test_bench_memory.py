"""bench/memory_sweep.py, quick grid: peak RSS of the update (fresh process per point) against the
memory plan for the same Qwen3 shapes (fp32 on CPU)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_update_memory_is_flat_in_sequences_grows_with_budget_and_matches_the_plan(tmp_path):
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench/memory_sweep.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    seqs, budget = got["sequences"], got["budget"]
    assert seqs[1]["n"] == 2 * seqs[0]["n"] and got["sequences_max_over_min"] <= 1.15
    assert budget[1]["budget"] == 4 * budget[0]["budget"]
    assert budget[1]["measured"] - budget[0]["measured"] > 0.5 * (budget[1]["predicted"] - budget[0]["predicted"])
    for row in seqs + budget:
        assert 0.75 <= row["ratio"] <= 1.25, row
