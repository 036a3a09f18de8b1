"""Paper scale: config/paper.yaml, the slurm profile (./slurm) and its job graph, the sbatch
flags the slurm executor builds from our resources, and Hugging Face datasets by name
(normalised like files; tested on in-memory fake datasets, no network).

The dry runs work on a copy of the workflow files in a temp dir and never submit a job.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from pgopd import config as C
from pgopd import workflow as W
from pgopd.data import loaders
from pgopd.data.loaders import HFUnavailable, records_from_dataset
from pgopd.data.prepare import prepare_data
from wfcopy import copy_workflow, job_counts

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PAPER = ROOT / "config/paper.yaml"
PAIRS, METHODS, SEEDS = 2, 3, 3
BENCHES = ["AMC23", "AIME24", "AIME25", "HMMT_Feb25"]
PAPER_JOBS = {"prepare_data": 1, "cache_teacher": 2, "train": PAIRS * METHODS * SEEDS,
              "evaluate": PAIRS * (2 + METHODS * SEEDS), "report": 1, "all": 1}
PAPER_JOBS["total"] = sum(PAPER_JOBS.values())
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def _has_slurm_plugin() -> bool:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False
    return True


needs_slurm_plugin = pytest.mark.skipif(
    not _has_slurm_plugin(), reason="snakemake-executor-plugin-slurm is not installed (pip install 'pgopd[slurm]')")


# ----------------------------------------------------------------------------- config/paper.yaml
def test_paper_config_parses():
    cfg = C.load(PAPER)
    W.load_config(yaml.safe_load(PAPER.read_text()))  # the workflow-level checks too
    assert {p.student for p in cfg.pairs.values()} == {"Qwen/Qwen3-1.7B"}
    assert {p.teacher for p in cfg.pairs.values()} == {"Qwen/Qwen3-8B", "Qwen/Qwen3-4B"}
    assert len(cfg.seeds) == SEEDS and cfg.train.methods == ["opd", "pgopd", "pruneopd"]
    t = cfg.train
    assert (t.n_samples, t.max_new_tokens, t.lr, t.bf16, t.backend) == (4, 7168, 1e-6, True, "vllm")
    assert (t.loss, t.loss_top_k) == ("topk_recipe", 16) and t.temperature == 1.0
    e = cfg.eval
    assert (e.k, e.temperature, e.top_p, e.backend) == (16, 0.7, 0.95, "vllm")
    assert cfg.data.train.source == "hf" and "DAPO-Math-17k" in cfg.data.train.hf_name
    assert list(cfg.data.benchmarks) == BENCHES
    assert all(b.source == "hf" and b.hf_name and b.n == 0 for b in cfg.data.benchmarks.values())
    assert cfg.data.prompt_suffix == SUFFIX
    r = cfg.resources
    assert (r.train.gpu, r.train.nodes) == (8, 1) and r.evaluate.gpu == 1 and r.cache_teacher.gpu == 1
    assert r.prepare_data.gpu == 0 and r.report.gpu == 0
    assert t.prompts_per_step % (r.train.gpu * r.train.nodes) == 0  # the batch splits over the ranks
    assert not W.uses_toy(cfg)
    assert W.train_launcher(cfg) == "torchrun" and W.train_procs_per_node(cfg) == 8


def test_paper_config_marks_open_hyperparameters_as_our_choice():
    """Every knob the papers leave open says so: on its line, on the comment line above it,
    or on its block's line."""
    lines = PAPER.read_text().splitlines()

    def comment_for(block: str, key: str) -> str:
        """``block``: a regex of the block's line (``^train:`` top level, ``^  pgopd:`` nested)."""
        start = next(i for i, x in enumerate(lines) if re.match(block, x))
        indent = len(lines[start]) - len(lines[start].lstrip())
        for i in range(start + 1, len(lines)):
            x = lines[i]
            if x.strip() and not x.lstrip().startswith("#") and len(x) - len(x.lstrip()) <= indent:
                break
            if re.match(rf"\s*{key}:", x):
                above = lines[i - 1] if lines[i - 1].lstrip().startswith("#") else ""
                return lines[start] + above + x
        raise AssertionError(f"{block} {key} is not written out in {PAPER.name}")

    open_knobs = {"^  pgopd:": ["prefix_len", "probe_start", "probe_end", "threshold", "top_fraction",
                                "low_overlap"],
                  "^  pruneopd:": ["window", "drift_threshold", "decay", "truncate_threshold", "min_weight",
                                   "initial_window", "expand_threshold", "expand_by"],
                  "^train:": ["steps", "prompts_per_step", "chunk_size", "overlap_k", "zero_stage"],
                  "^eval:": ["max_new_tokens"]}
    for block, keys in open_knobs.items():
        for key in keys:
            assert "our choice" in comment_for(block, key), (block, key)
    for block, key in [("^train:", "n_samples"), ("^train:", "max_new_tokens"), ("^train:", "lr"),
                       ("^train:", "backend"), ("^eval:", "k"), ("^eval:", "temperature")]:
        assert "[recipe]" in comment_for(block, key), (block, key)
    # thunlp/OPD's script runs top-16 student-top-k with student-p weights (= loss: topk_recipe,
    # LOG_PROB_TOP_K=16) and fp32 FSDP weights: bf16 here is our choice, never tagged [recipe]
    for key in ("loss", "loss_top_k"):
        assert "[recipe]" in comment_for("^train:", key), key
    assert "[recipe]" not in comment_for("^train:", "bf16") and "our choice" in comment_for("^train:", "bf16")
    # every dataset has a commented local-file alternative
    text = PAPER.read_text()
    for name in BENCHES:
        block = text.split(f"    {name}:", 1)[1].split("\n    ", 5)
        assert any("local: {source: file" in x for x in block), name
    assert "Local alternative" in text and "source: file, path:" in text


# ----------------------------------------------------------------------------- dry runs
@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    """A copy of the workflow files and the slurm profile (the package comes from the
    installed pgopd), its CHANGE_ME values filled in as a user would (the workflow refuses
    them: tests/test_cluster_checks.py)."""
    wd = copy_workflow(tmp_path_factory.mktemp("paperwf"), extra=("slurm",))
    prof = wd / "slurm/config.yaml"
    prof.write_text(prof.read_text().replace("CHANGE_ME_account", "acct")
                    .replace("CHANGE_ME_cpu_partition", "cpu").replace("CHANGE_ME_gpu_partition", "gpu"))
    return wd


def _snakemake(wd: Path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=str(wd))  # no user profile in ~/.config
    r = subprocess.run([str(SNAKEMAKE), "-n", *args], cwd=wd, env=env, capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout + r.stderr


def _check_paper_graph(out: str):
    assert job_counts(out) == PAPER_JOBS, out[-3000:]
    assert "build_toy_models" not in out and "results/models/toy" not in out
    for t in ("Qwen--Qwen3-8B", "Qwen--Qwen3-4B"):
        assert f"--out-dir results/teacher/{t} " in out
    trains = [x for x in out.splitlines() if " train --params " in x]
    assert len(trains) == PAPER_JOBS["train"]
    assert all("-m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 8 " in x for x in trains)
    runs = {re.search(r"--out-dir results/train/(\S+)/seed(\d+) ", x).groups() for x in trains}
    assert runs == {(f"{p}/{m}", str(s)) for p in ("qwen3_8b_to_1_7b", "qwen3_4b_to_1_7b")
                    for m in ("opd", "pgopd", "pruneopd") for s in range(SEEDS)}
    evals = re.findall(r"--out-dir (results/eval/\S+) ", out)
    assert len(set(evals)) == PAPER_JOBS["evaluate"]
    assert "results/eval/qwen3_8b_to_1_7b/teacher/base" in evals
    assert "results/eval/qwen3_4b_to_1_7b/pruneopd/seed2" in evals


@needs_slurm_plugin
def test_dry_run_slurm_profile_paper_graph(wf):
    """The literal command of the README's Paper scale section: `--profile slurm` is found in the
    working directory (./slurm/config.yaml)."""
    rc, out = _snakemake(wf, "--profile", "slurm", "--configfile", "config/paper.yaml", "-p")
    assert rc == 0, out[-5000:]
    assert "Using profile slurm for setting default command line arguments." in out
    _check_paper_graph(out)
    # the profile's cluster settings and the config's per-rule resources reach the jobs
    train_res = re.search(r"rule train:.*?resources: ([^\n]*)", out, re.S).group(1)
    for item in ("slurm_account=acct", "slurm_partition=gpu", "gpu=8",
                 "cpus_per_task=64", "mem_mb=480000", "runtime=1440", "nodes=1"):
        assert item in train_res, (item, train_res)
    prep_res = re.search(r"rule prepare_data:.*?resources: ([^\n]*)", out, re.S).group(1)
    assert "slurm_partition=cpu" in prep_res and "gpu=0" in prep_res
    assert not (wf / "results").exists()


def test_dry_run_paper_graph_local_executor(wf):
    """The same graph without the profile (no slurm plugin needed)."""
    rc, out = _snakemake(wf, "--cores", "1", "--configfile", "config/paper.yaml", "-p")
    assert rc == 0, out[-5000:]
    _check_paper_graph(out)


def test_slurm_profile_file():
    prof = yaml.safe_load((ROOT / "slurm/config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert {"slurm_account", "slurm_partition"} <= set(prof["default-resources"])
    assert set(prof["set-resources"]) <= set(W.RULES)
    # cluster-specific values only: the resources the rules declare come from the config
    for rule, res in prof["set-resources"].items():
        assert not set(res) & {"gpu", "cpus_per_task", "mem_mb", "runtime", "nodes"}, rule
    from snakemake.cli import get_profile_dir

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        assert get_profile_dir("slurm")[1].resolve() == (ROOT / "slurm/config.yaml").resolve()
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- sbatch flags
class _Res(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


def _sbatch(resources: dict, threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = types.SimpleNamespace(resources=_Res(resources), threads=threads, name="train")
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "-A acct",
              "partition": "-p gpu", "workdir": "/w"}
    return get_submit_command(job, params) + set_gres_string(job)


@needs_slurm_plugin
def test_sbatch_flags_of_train_jobs():
    one = W.load_config({"resources": {"train": {"gpu": 8, "cpus_per_task": 64, "mem_mb": 480000,
                                                 "runtime": 1440}}})
    call = _sbatch(W.train_resources(one), 64)
    for flag in ("--gpus=8", "--cpus-per-task=64", "--mem 480000", "-t 1440", "--nodes=1"):
        assert flag in call, (flag, call)
    assert "--ntasks-per-gpu" not in call
    two = W.load_config({"resources": {"train": {"gpu": 8, "nodes": 2, "cpus_per_task": 64}}})
    call = _sbatch(W.train_resources(two), 64)
    for flag in ("--gres=gpu:8", "--nodes=2", "--ntasks=2", "--cpus-per-task=64"):
        assert flag in call, (flag, call)
    assert "--gpus=" not in call and "--ntasks-per-gpu" not in call
    # the job step executor does not wrap an `mpi` job in its own one-task srun
    assert "mpi" in W.train_resources(two) and "mpi" not in W.train_resources(one)


# ----------------------------------------------------------------------------- Hugging Face data
class FakeDataset:
    """What `datasets.load_dataset(..., split=...)` returns, as far as the loader uses it."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0]) if rows else []

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)


VERL_ROWS = [  # DAPO / verl layout: chat prompt, nested answer and id
    {"data_source": "math", "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
     "reward_model": {"ground_truth": str(2 * i), "style": "rule"}, "extra_info": {"index": f"dapo-{i}"}}
    for i in range(1, 6)
]
PLAIN_ROWS = [  # MathArena / math-ai layout: problem (or question) and a numeric answer
    {"problem_idx": i, "problem": f"Compute {i} * 3.", "answer": 3 * i} for i in range(1, 5)
]


def test_hf_rows_are_normalised_like_files():
    recs, stats = records_from_dataset(FakeDataset(VERL_ROWS), prompt_suffix=SUFFIX, source_name="train",
                                       where="hf:fake/dapo [train]")
    assert [r["id"] for r in recs] == [f"dapo-{i}" for i in range(1, 6)]
    assert recs[0] == {"id": "dapo-1", "prompt": "What is 1 + 1?\n\n" + SUFFIX, "answer": "2"}
    assert stats["fields"] == {"prompt": "prompt", "answer": "reward_model.ground_truth", "id": "extra_info.index"}
    assert stats["kept"] == 5 and stats["suffix_added"] == 5 and stats["path"] == "hf:fake/dapo [train]"

    recs, stats = records_from_dataset(FakeDataset(PLAIN_ROWS), limit=3, source_name="hmmt")
    assert recs == [{"id": f"hmmt-{i}", "prompt": f"Compute {i + 1} * 3.", "answer": str(3 * (i + 1))}
                    for i in range(3)]
    assert stats["fields"] == {"prompt": "problem", "answer": "answer", "id": None}
    # explicit fields, a plain list of dicts works too
    recs, _ = records_from_dataset([{"q": "2+2?", "a": "4", "k": 7}], prompt_field="q", answer_field="a",
                                   id_field="k")
    assert recs == [{"id": "7", "prompt": "2+2?", "answer": "4"}]


def test_hf_bad_rows_and_fields():
    rows = PLAIN_ROWS + [{"problem_idx": 9, "problem": "", "answer": 1},
                         {"problem_idx": 10, "problem": "x?", "answer": None}]
    with pytest.raises(loaders.BadRow, match=r"hf:fake .*row 'b-4'.*problem"):
        records_from_dataset(FakeDataset(rows), source_name="b", where="hf:fake [test]")
    recs, stats = records_from_dataset(FakeDataset(rows), source_name="b", on_bad_row="skip")
    assert len(recs) == 4 and stats["skipped"]["empty_prompt"] == 1 and stats["skipped"]["missing_answer"] == 1
    with pytest.raises(ValueError, match=r"answer_field 'solution' is not a column; available: .*problem"):
        records_from_dataset(FakeDataset(PLAIN_ROWS), answer_field="solution", where="hf:fake [test]")


def _fake_datasets_module(calls: list, tables: dict | None = None, error: Exception | None = None):
    mod = types.ModuleType("datasets")

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if error is not None:
            raise error
        return FakeDataset(tables[name])

    mod.load_dataset = load_dataset
    return mod


def test_prepare_data_with_hf_sources(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets_module(
        calls, {"org/dapo": VERL_ROWS, "org/hmmt": PLAIN_ROWS}))
    cfg = C.parse_dataclass(C.DataConfig, {
        "train": {"source": "hf", "hf_name": "org/dapo", "hf_config": "all"},
        "benchmarks": {"HMMT": {"source": "hf", "hf_name": "org/hmmt", "hf_split": "train", "n": 2}},
        "prompt_suffix": SUFFIX}, "data")
    stats = prepare_data(cfg, tmp_path)
    assert calls == [("org/dapo", "all", "train"), ("org/hmmt", None, "train")]
    train = loaders.read_jsonl(tmp_path / "train.jsonl")
    bench = loaders.read_jsonl(tmp_path / "bench/HMMT.jsonl")
    assert len(train) == 5 and train[0]["prompt"].endswith(SUFFIX) and train[0]["id"] == "dapo-1"
    assert [b["id"] for b in bench] == ["HMMT-0", "HMMT-1"] and bench[1]["answer"] == "6"
    assert stats["train"]["source"] == "hf" and stats["train"]["hf_name"] == "org/dapo"
    assert stats["bench"]["HMMT"]["kept"] == 2


def test_hf_without_datasets_or_network_says_use_local_files(tmp_path, monkeypatch):
    cfg = C.parse_dataclass(C.DataConfig, {"train": {"source": "hf", "hf_name": "org/dapo"}}, "data")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(HFUnavailable, match=r"data\.train: source: hf needs the `datasets` package.*"
                                            r"pgopd\[hf\].*source: file, path:"):
        prepare_data(cfg, tmp_path)
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets_module(
        calls, error=ConnectionError("Couldn't reach 'org/dapo' on the Hub (LocalEntryNotFoundError)")))
    with pytest.raises(HFUnavailable, match=r"data\.train: cannot load the Hugging Face dataset 'org/dapo'"
                                            r".*ConnectionError: Couldn't reach.*offline.*source: file, path:"):
        prepare_data(cfg, tmp_path)
    assert not (tmp_path / "train.jsonl").exists()


def test_hf_error_reaches_the_cli_as_one_line(tmp_path):
    """`pgopd prepare-data` with source: hf and no `datasets` (or offline): a one-line error, exit 1."""
    import json

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    params = {"train": {"source": "hf", "hf_name": "org/not-here"}, "benchmarks": {"b": {"n": 2}}}
    r = subprocess.run([sys.executable, "-m", "pgopd.cli", "prepare-data", "--params", json.dumps(params),
                        "--out-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "pgopd prepare-data: error: data.train:" in r.stderr and "source: file, path:" in r.stderr
    assert "Traceback" not in r.stderr


def test_hf_config_errors_name_the_key():
    with pytest.raises(C.ConfigError, match=r"data\.train\.hf_name"):
        C.parse({"data": {"train": {"source": "hf"}}})
    with pytest.raises(C.ConfigError, match=r"data\.benchmarks\.aime\.hf_name"):
        C.parse({"data": {"benchmarks": {"aime": {"source": "hf"}}}})
