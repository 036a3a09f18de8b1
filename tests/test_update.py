"""The bounded-memory update (pgopd.update): micro-batch packing, and one real training step
on Qwen3-shaped models (vocabulary 151,936, head_dim 128, GQA, tied student head) whose
gradients with one micro-batch equal those with several -- with 1 process, and with 2
processes under ZeRO-2 and ZeRO-3 (torchrun, CPU, gloo).  The step itself runs in
``tests/step_check.py`` (rollout -> teacher scoring -> update, the code ``pgopd train``
runs); the three runs start together, ~25 s on 2 cores."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgopd.config import TrainConfig, parse_dataclass
from pgopd.rollout.loop import RolloutResult
from pgopd.rollout.types import Candidate
from pgopd.update import assemble, pack_micro_batches, plan_micro_batches, seq_len, trained_rows

HERE = Path(__file__).resolve().parent
METHODS = ("opd", "pgopd", "pruneopd")
BUDGET = 48  # tokens per micro-batch in step_check runs (rows of 11..28 tokens)


# ----------------------------------------------------------------------------- packing
@pytest.mark.parametrize("budget", [1, 10, 25, 60, 1000])
def test_pack_micro_batches_respects_the_budget(budget):
    lengths = [7, 30, 12, 12, 3, 25, 8, 8, 8, 1]
    mbs = pack_micro_batches(lengths, budget)
    assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))  # each row once
    for mb in mbs:
        padded = len(mb) * max(lengths[i] for i in mb)
        assert padded <= budget or len(mb) == 1  # a row over the budget goes alone
    # packed greedily by length: no two consecutive micro-batches could have been one
    for a, b in zip(mbs, mbs[1:]):
        assert (len(a) + 1) * lengths[a[0]] > budget
    if budget >= 1000:
        assert len(mbs) == 1


def test_pack_zero_budget_is_one_micro_batch():
    assert pack_micro_batches([5, 9, 2], 0) == [[1, 0, 2]]
    assert pack_micro_batches([], 0) == [] and pack_micro_batches([], 10) == []


def _result():
    prompts, cands = [], []
    for i, (P, L, keep) in enumerate([(3, 5, True), (6, 2, True), (2, 4, False), (4, 0, True), (1, 7, True)]):
        c = Candidate(cid=i, group=i)
        c.tokens = list(range(10, 10 + L))
        c.weights = [0.5] * L
        c.teacher_logp = [-1.0] * L
        c.keep = keep
        cands.append(c)
        prompts.append(list(range(100, 100 + P)))
    return RolloutResult(cands=cands, prompts=prompts)


def test_micro_batches_cover_every_trained_token_once():
    res = _result()
    assert trained_rows(res) == [0, 1, 4]  # dropped and empty candidates train nothing
    cfg = parse_dataclass(TrainConfig, {"max_tokens_per_micro_batch": 16, "loss": "sampled",
                                        "logprob_chunk_tokens": 4}, "train")

    class One:
        world, rank = 1, 0

        def gather(self, x):
            return [x]

    mbs, chunks = plan_micro_batches(res, cfg, One())
    assert [seq_len(res, i) for i in (0, 1, 4)] == [8, 8, 8]
    assert mbs == [[0, 1], [4]]  # 2 x 8 padded tokens fit 16, a third row does not
    assert chunks == [2, 2]  # 7 and 7 trained positions in chunks of 4
    whole = assemble(res, 0)
    parts = [assemble(res, 0, mb) for mb in mbs]
    assert sum(int(p["mask_BT"].sum()) for p in parts) == int(whole["mask_BT"].sum()) == res.tokens_trained
    assert sum(float(p["weight_BT"].sum()) for p in parts) == pytest.approx(float(whole["weight_BT"].sum()))


# ----------------------------------------------------------------------------- real steps
def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    d = tmp_path_factory.mktemp("steps")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {
        "one": [sys.executable, str(HERE / "step_check.py")],
        "zero2": [*torchrun, str(HERE / "step_check.py"), "--zero", "2"],
        "zero3": [*torchrun, str(HERE / "step_check.py"), "--zero", "3", "--methods", "pgopd",
                  "--loss", "topk_renorm"],
    }
    procs = {k: subprocess.Popen([*c, "--mbs", f"0,{BUDGET}", "--out", str(d / f"{k}.json")], env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, c in runs.items()}
    out = {}
    for k, p in procs.items():
        log = p.communicate(timeout=400)[0]
        assert p.returncode == 0, f"{k}:\n{log[-4000:]}"
        out[k] = json.loads((d / f"{k}.json").read_text())
    return out


def _check_micro_batch_equality(run: dict, method: str):
    one, many = run[f"{method}/0"], run[f"{method}/{BUDGET}"]
    assert one["metrics"]["n_micro_batches"] == 1 and many["metrics"]["n_micro_batches"] >= 2
    assert one["changed"] and many["changed"] and one["metrics"]["finite"]
    assert one["tokens_trained"] == many["tokens_trained"] > 0
    assert set(many["rel_diff"]) == set(one["grad_norm"])  # every parameter has a gradient ...
    assert one["grad_norm"]["model.embed_tokens.weight"] > 0  # ... the tied head's included
    for name, rel in many["rel_diff"].items():
        assert rel <= 1e-5, (method, name, rel)
    assert many["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], rel=1e-5)
    assert many["metrics"]["reward_mean"] == pytest.approx(one["metrics"]["reward_mean"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_micro_batches_give_the_same_gradients_one_process(steps, method):
    _check_micro_batch_equality(steps["one"], method)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_micro_batches_give_the_same_gradients_two_processes_zero2(steps, method):
    run = steps["zero2"]
    _check_micro_batch_equality(run, method)
    # ranks packed different numbers of micro-batches / LM-head chunks and were padded to
    # the same collectives ...
    many = run[f"{method}/{BUDGET}"]
    (n0, c0), (n1, c1) = many["per_rank"]
    assert n0 != n1 and many["metrics"]["n_micro_batches"] == max(n0, n1)
    # ... and 2 processes give the 1-process gradient (same tokens, global token mean)
    ref = steps["one"][f"{method}/0"]["grad_norm"]
    for name, g in run[f"{method}/0"]["grad_norm"].items():
        assert g == pytest.approx(ref[name], rel=1e-5), name


@pytest.mark.slow
def test_zero3_two_processes_chunked_tied_head(steps):
    """ZeRO-3 gathers the (tied) LM head in each chunk's module call, also when backward
    recomputes it; ranks with fewer chunks are padded with empty calls."""
    run = steps["zero3"]
    _check_micro_batch_equality(run, "pgopd")
    many = run[f"pgopd/{BUDGET}"]
    assert many["per_rank"][0][1] != many["per_rank"][1][1]
    assert max(many["agreed_chunks"]) > 1  # several chunks per micro-batch (chunk = 7 positions)
