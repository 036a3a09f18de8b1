"""Data and config errors name the file (and the benchmark or key), in one line without a
traceback: truncated / corrupt parquet, empty files, YAML syntax errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgopd import config as C
from pgopd.data.loaders import load_records
from pgopd.data.prepare import prepare_data

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"problem": f"What is {i} + {i}? " + "pad " * 40, "answer": str(2 * i)} for i in range(400)]


def _parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), path, compression="snappy")
    return path


def _bench_cfg(path: Path, name="aime"):
    return C.parse({"data": {"benchmarks": {name: {"source": "file", "path": str(path), "n": 0}}}}).data


def test_truncated_parquet_names_file_and_benchmark(tmp_path):
    good = _parquet(tmp_path / "good.parquet")
    bad = tmp_path / "aime24.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])   # an interrupted download
    with pytest.raises(ValueError) as e:
        prepare_data(_bench_cfg(bad), tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(f"data.benchmarks.aime: {bad}: cannot read this parquet file"), msg
    assert "truncated or corrupt" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_corrupt_parquet_page_names_the_file(tmp_path):
    good = _parquet(tmp_path / "good.parquet")
    data = bytearray(good.read_bytes())
    for i in range(200, len(data) // 2):   # scramble the first data pages, keep the footer
        data[i] = (data[i] * 31 + 7) % 256
    bad = tmp_path / "train.parquet"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"^{bad}: cannot read this parquet file \(.*truncated or corrupt"):
        load_records(bad)
    cfg = C.parse({"data": {"train": {"source": "file", "path": str(bad)}}}).data
    with pytest.raises(ValueError, match=rf"^data\.train: {bad}: cannot read"):
        prepare_data(cfg, tmp_path / "out")


@pytest.mark.parametrize("content, says", [
    ("", "the file is empty (0 bytes)"),
    ("\n\n  \n", "the file has no rows (only blank lines)"),
    ("not json\n{broken\n", "no valid JSON object on any line"),
])
def test_empty_or_unreadable_jsonl(tmp_path, content, says):
    f = tmp_path / "hmmt.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError) as e:
        prepare_data(_bench_cfg(f, "hmmt"), tmp_path / "out")
    assert str(e.value) == f"data.benchmarks.hmmt: {f}: {says}"


def test_parquet_without_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS).slice(0, 0), f)
    with pytest.raises(ValueError, match=rf"^{f}: the file has no rows$"):
        load_records(f)


def test_cli_prints_one_line_without_traceback(tmp_path):
    good = _parquet(tmp_path / "good.parquet")
    bad = tmp_path / "amc23.parquet"
    bad.write_bytes(good.read_bytes()[:-20])
    params = '{"benchmarks": {"amc": {"source": "file", "path": "%s"}}}' % bad
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "prepare-data", "--params", params, "--out-dir",
                        str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if "error" in x]
    assert lines == [f"pgopd prepare-data: error: data.benchmarks.amc: {bad}: cannot read this parquet file "
                     f"{lines[0].split('cannot read this parquet file ', 1)[1]}"] and "truncated" in lines[0]


# ----------------------------------------------------------------------------- YAML
BAD_YAML = "train:\n  steps: 10\n  methods: [opd, pgopd\n  lr: 1e-6\n"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(BAD_YAML)
    with pytest.raises(C.ConfigError, match=rf"^{f}: line \d+, column \d+: YAML syntax error: "):
        C.load(f)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "check-config", str(f)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"pgopd check-config: {f}: line "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a config that parses but fails a cross-check: the key
    f.write_text("train: {prompts_per_step: 60}\nresources: {train: {gpu: 8}}\n")
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "check-config", str(f)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "train.prompts_per_step: 60 is not divisible" in r.stderr, r.stderr
    # several files merge as Snakemake merges several --configfile
    paper, two = str(ROOT / "config/paper.yaml"), str(ROOT / "config/two_nodes.yaml")
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "check-config", paper, two], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"{paper} + {two}: ok", r.stderr
    f.write_text("train: {prompts_per_step: 8}\n")   # 8 prompts over 2 nodes x 8 GPUs
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "check-config", paper, two, str(f)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "the 16 training processes (resources.train.gpu 8 x nodes 2)" in r.stderr


def test_snakemake_names_file_and_line_of_a_broken_default_config(tmp_path):
    from wfcopy import copy_workflow

    wd = copy_workflow(tmp_path)
    (wd / "config/config.yaml").write_text(BAD_YAML)
    snakemake = Path(sys.executable).parent / "snakemake"
    r = subprocess.run([str(snakemake), "-n", "--cores", "1"], cwd=wd, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "config/config.yaml: line 4, column 5: YAML syntax error" in out, out
    assert not (wd / "results").exists()
