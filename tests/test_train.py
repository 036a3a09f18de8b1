"""The train stage as a real subprocess: kill-and-resume equality, SIGTERM checkpoint,
non-finite guard, tokenizer mismatch, and the top-k loss path."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny import make_train_dir, save_tiny_model
import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from pgopd.checkpoint import checkpoint_dirs
from pgopd.models.tokenizer import build_char_tokenizer

PGOPD = [sys.executable, "-m", "pgopd.cli"]
TIMING = {"t_rollout_s", "t_teacher_s", "t_update_s"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_dir(tmp_path_factory.mktemp("train"))


def cmd(d, out, method="opd", **params):
    p = {"steps": 6, "prompts_per_step": 2, "n_samples": 2, "max_new_tokens": 12, "chunk_size": 4,
         "lr": 0.01, "pgopd": {"prefix_len": 4, "probe_end": 4}, **params}
    return [*PGOPD, "train", "--params", json.dumps(p), "--method", method, "--seed", "3",
            "--teacher", str(d / "teacher"), "--student", str(d / "student"),
            "--train-data", str(d / "data/train.jsonl"), "--teacher-cache", str(d / "cache"),
            "--out-dir", str(out)]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29000 + os.getpid() % 500)}


def metrics(out):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ref(setup):
    """An uninterrupted pgopd run (checkpoints every step) the resumed runs must equal."""
    ref = setup / "ref"
    r = subprocess.run(cmd(setup, ref, method="pgopd", save_every=1), env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return ref


def assert_same_run(ref, out):
    a, b = load_file(ref / "checkpoint/model.safetensors"), load_file(out / "checkpoint/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics(ref) == metrics(out)
    assert (ref / "candidates.jsonl").read_text() == (out / "candidates.jsonl").read_text()
    s_ref, s_out = (json.loads((x / "summary.json").read_text()) for x in (ref, out))
    assert s_ref["gen_tokens"] == s_out["gen_tokens"] and s_ref["continue_rate"] == s_out["continue_rate"]


def test_kill_and_resume_equals_uninterrupted(setup, ref):
    d = setup
    out = d / "killed"
    p = subprocess.Popen(cmd(d, out, method="pgopd", save_every=1), env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    partial = out / "metrics.jsonl.tmp"
    deadline = time.time() + 240
    while time.time() < deadline:
        if partial.exists() and len(partial.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0, "a SIGTERM-ed run must not look finished"
    assert "checkpoint" in err and checkpoint_dirs(out)
    assert not (out / "summary.json").exists() and not (out / "checkpoint").exists()
    done_before = len(partial.read_text().splitlines())
    assert 2 <= done_before < 6

    r = subprocess.run(cmd(d, out, method="pgopd", save_every=1), env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {done_before}" in r.stderr
    assert_same_run(ref, out)
    assert not (out / "resume").exists()


def test_checkpoint_cut_short_falls_back_to_previous(setup, ref, tmp_path):
    """kill -9 while the newest checkpoint was being written (its model file cut short): the
    rerun says so, resumes from the previous complete checkpoint, and ends as the
    uninterrupted run."""
    out = tmp_path / "cut"
    p = subprocess.Popen(cmd(setup, out, method="pgopd", save_every=1), env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint_dirs(out)) < 2:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    dirs = checkpoint_dirs(out)
    assert len(dirs) == 2, "the previous complete checkpoint is kept"
    (newest,) = [f for f in (dirs[-1] / "state").glob("*model_states.pt")]
    with open(newest, "r+b") as fh:  # what a node that died mid-write leaves
        fh.truncate(newest.stat().st_size // 2)
    r = subprocess.run(cmd(setup, out, method="pgopd", save_every=1), env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(newest) in r.stderr and "truncated" in r.stderr
    assert f"resuming from step {int(dirs[0].name[5:])}" in r.stderr
    assert_same_run(ref, out)


def test_non_finite_steps_stop_with_checkpoint(setup, tmp_path):
    d = setup
    bad = tmp_path / "nan_teacher"
    m = Qwen2ForCausalLM.from_pretrained(d / "teacher")
    with torch.no_grad():
        m.model.norm.weight.fill_(float("nan"))
    m.save_pretrained(bad)
    build_char_tokenizer().save_pretrained(bad)
    c = cmd(d, tmp_path / "out", max_bad_steps=1)
    c[c.index("--teacher") + 1] = str(bad)
    r = subprocess.run(c, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "max_bad_steps" in r.stderr and "Traceback" not in r.stderr
    assert checkpoint_dirs(tmp_path / "out")
    lines = (tmp_path / "out/metrics.jsonl.tmp").read_text().splitlines()
    assert [json.loads(x)["bad_steps"] for x in lines] == [1]  # step 0 counted, step 1 stopped the run


def test_tokenizer_mismatch_stops_before_training(setup, tmp_path):
    d = setup
    other = tmp_path / "other"
    tok = build_char_tokenizer(extra_chars="§¶")
    save_tiny_model(tok, 1, 2, other)
    c = cmd(d, tmp_path / "out")
    c[c.index("--student") + 1] = str(other)
    r = subprocess.run(c, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(len(build_char_tokenizer())) in r.stderr and str(len(tok)) in r.stderr
    assert not (tmp_path / "out/metrics.jsonl.tmp").exists()


def test_topk_loss_trains(setup, tmp_path):
    r = subprocess.run(cmd(setup, tmp_path / "o", steps=2, loss_top_k=4), env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ms = metrics(tmp_path / "o")
    assert len(ms) == 2 and all(m["loss"] >= 0 for m in ms)  # a KL, not a PG surrogate


@pytest.mark.slow
def test_real_shape_models_train_with_micro_batches_row_groups_and_offload(tmp_path):
    """Qwen3 shapes (vocabulary 151,936 > the tokenizer's 102 ids, head_dim 128, GQA, tied
    student head) through the whole stage: rollout in row groups, chunked teacher scoring,
    several micro-batches with chunked log-probs, the recipe loss, the teacher offloaded
    during the update; sampled ids outside the tokenizer decode without error."""
    from tiny import make_qwen3_train_dir

    d = make_qwen3_train_dir(tmp_path / "q3")
    out = tmp_path / "o"
    r = subprocess.run(cmd(d, out, method="pgopd", steps=2, max_new_tokens=8, loss="topk_recipe", loss_top_k=4,
                           max_tokens_per_micro_batch=40, max_live_rows=2, logprob_chunk_tokens=8,
                           teacher_offload=True),
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ms = metrics(out)
    assert len(ms) == 2 and all(m["n_micro_batches"] > 1 and math.isfinite(m["loss"]) for m in ms)
    cands = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 2 * 2 * 2 and sorted({c["cid"] for c in cands}) == [0, 1, 2, 3]
    assert any(c["stopped"] for c in cands)  # PG-OPD decided in each row group
    w0 = load_file(d / "student/model.safetensors")
    w1 = load_file(out / "checkpoint/model.safetensors")
    assert w1["model.embed_tokens.weight"].shape == (151_936, 64) and "lm_head.weight" not in w1
    assert not torch.equal(w0["model.embed_tokens.weight"], w1["model.embed_tokens.weight"])


def test_over_long_prompt_is_refused_naming_it(setup, tmp_path):
    """A 1 MB prompt used to reach the KV-cache allocation (a 1 TB traceback): refused at start
    with its id, its length and the key, before any step."""
    rows = [json.loads(x) for x in (setup / "data/train.jsonl").read_text().splitlines()]
    rows[3]["prompt"] = "1+" * 500_000 + "1"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cmd(setup, tmp_path / "out")
    c[c.index("--train-data") + 1] = str(data)
    r = subprocess.run(c, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"train.max_new_tokens: the longest prompt (id {rows[3]['id']}, " in r.stderr
    assert "max_position_embeddings (128" in r.stderr
    assert not (tmp_path / "out/metrics.jsonl.tmp").exists()
