"""What would break on a GPU, caught on CPU (issue 19): collectives on the backend's device,
KV caches and engines released, prefill logits of one position, tied-embedding names.

Each test fails on the code before the fix (1b3f84c) and needs no GPU."""
import gc
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from pgopd.config import TrainConfig, parse_dataclass
from pgopd.policies import make_policy
from pgopd.rollout.hf import HFSampler
from pgopd.rollout.kv import KVBatch
from pgopd.rollout.loop import rollout
from pgopd.rollout.scorer import TeacherScorer
from tiny import torchrun_script

V, PAD, EOS = 40, 0, 1


def _tiny(seed, layers=1):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS)
    return Qwen2ForCausalLM(cfg).eval()


def _reachable(root, kinds, stop=(torch.nn.Module,)):
    """Objects of ``kinds`` reachable from ``root`` through references, not entering
    ``stop`` objects (the models hold their weights legitimately)."""
    seen, todo, found = set(), [root], []
    while todo:
        obj = todo.pop()
        if id(obj) in seen or (obj is not root and isinstance(obj, stop)):
            continue
        seen.add(id(obj))
        if isinstance(obj, kinds):
            found.append(obj)
        if isinstance(obj, (type, type(sys))):  # classes and modules: not per-rollout state
            continue
        todo.extend(gc.get_referents(obj))
    return found


# ----------------------------------------------------------------------------- item 1
_DIST_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as td
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    from torch.distributed import ProcessGroupGloo
    # a backend that serves CUDA tensors only, as NCCL does (gloo underneath)
    td.Backend.register_backend("cudaonly", lambda store, r, w, t: ProcessGroupGloo(store, r, w, t),
                                devices=["cuda"])
    td.init_process_group(sys.argv[1], rank=0, world_size=1)
    if sys.argv[1] == "cudaonly":
        try:
            td.all_reduce(torch.zeros(1, dtype=torch.float64))
        except RuntimeError as e:
            assert "device type cpu" in str(e), e   # the failure a GPU run met at step 1
        else:
            raise SystemExit("the cuda-only backend took a CPU tensor")
    from pgopd.update import Dist
    d = Dist()
    print("DEVICE", d.device.type)
    if d.device.type == "cpu":
        print("SUM", d.sum(1.5, 2.0))
""")


@pytest.mark.parametrize("backend, device", [("cudaonly", "cuda"), ("gloo", "cpu")])
def test_dist_collectives_use_the_backends_device(backend, device):
    """``Dist.sum`` puts its tensor where the process group's backend can reduce it: CUDA
    under NCCL (which rejects CPU tensors), CPU under gloo."""
    import socket

    with socket.socket() as sock:  # a free port: other test processes may run beside this one
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    r = subprocess.run([sys.executable, "-c", _DIST_SCRIPT, backend, port], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"DEVICE {device}" in r.stdout
    if device == "cpu":
        assert "SUM [1.5, 2.0]" in r.stdout


# ----------------------------------------------------------------------------- item 3
def test_rollout_releases_the_kv_caches():
    """After the rollout neither the teacher scorer nor the sampler holds a KV cache or the
    last rows' states: the update and the optimizer step get that memory."""
    student, teacher = _tiny(0), _tiny(1, layers=2)
    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": 24, "chunk_size": 4}, "train")
    sampler = HFSampler(student, EOS, PAD, temperature=1.0, top_p=1.0, topk=4, seed=1)
    scorer = TeacherScorer(teacher, PAD, topk=4)
    res = rollout(sampler, scorer, make_policy("opd", cfg, seed=0), [[5, 6, 7], [8, 9]], n_samples=2,
                  max_new_tokens=24, chunk_size=4, overlap_k=4)
    assert res.tokens_generated > 0 and res.positions_teacher > 0  # counts survive the release
    for backend in (scorer, sampler):
        assert not _reachable(backend, (DynamicCache,)), type(backend).__name__
        # storage, not numel: a [:0] view would still hold its whole buffer
        big = [t for t in _reachable(backend, (torch.Tensor,)) if t.untyped_storage().nbytes() >= V * 4]
        assert not big, [tuple(t.shape) for t in big]


# ----------------------------------------------------------------------------- item 5
def test_prefill_runs_the_lm_head_on_the_last_position_only():
    model = _tiny(0)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, a, _o: seen.append(tuple(a[0].shape)))
    kv = KVBatch(model, [[5, 6, 7, 8, 9], [10, 11]], PAD)
    logits_BV = kv.prefill()
    assert logits_BV.shape == (2, V)
    assert seen == [(2, 1, 32)]      # (rows, 1 position, hidden): no (rows, prompt, vocab) logits
    # the same distribution as a full forward's last position
    ref = model(input_ids=kv.prompt_ids_BL, attention_mask=kv.mask_BL,
                position_ids=(kv.mask_BL.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    assert torch.allclose(logits_BV, ref.float(), atol=1e-5)


# ----------------------------------------------------------------------------- item 7
def test_bf16_deepspeed_config_accumulates_and_reduces_in_fp32():
    from pgopd.train import ds_config

    for stage in (0, 1, 2, 3):
        c = ds_config(parse_dataclass(TrainConfig, {"zero_stage": stage, "bf16": True}, "train"))
        assert c["communication_data_type"] == "fp32" and c["bf16"]["check_grad_overflow"] is True
        # DeepSpeed 0.19.8 refuses bf16 weights with fp32 accumulation without ZeRO
        assert c.get("data_types", {}).get("grad_accum_dtype") == (None if stage == 0 else "fp32")
    plain = ds_config(parse_dataclass(TrainConfig, {"zero_stage": 2, "bf16": False}, "train"))
    assert "data_types" not in plain and "communication_data_type" not in plain


@pytest.mark.slow
def test_zero2_two_processes_skip_a_step_with_a_nan_gradient(tmp_path):
    """A NaN in one rank's gradient (finite loss) under ZeRO-2: both ranks report the step
    skipped and keep their weights; the next clean step trains.  DeepSpeed reads the fp32
    accumulation / communication keys (~20 s on 2 cores)."""
    import json

    torchrun_script("nan_grad_step.py", tmp_path)
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert rec["first_finite"] is False and rec["first_unchanged"], (rank, rec)
        assert rec["second_finite"] is True and rec["second_moved"] and rec["weights_finite"], (rank, rec)
        assert rec["data_types"] == ["torch.bfloat16", "torch.float32"], rec
        assert rec["communication_data_type"] == "torch.float32", rec


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_step_skipped_for_a_non_finite_loss_leaves_no_trace(tmp_path, stage):
    """One rank's loss is inf: the step is skipped on both ranks, and the next clean step
    gives exactly the weights a clean step alone gives (ZeRO-2 kept the skipped gradient in
    its fp32 partition and lost the next step too, before ``discard_gradients``)."""
    import json

    torchrun_script("skipped_step_leaves_no_trace.py", tmp_path, stage)
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert rec["skipped_finite"] is False, (rank, rec)
        assert rec["after_skip_finite"] is True and rec["alone_finite"] is True, (rank, rec)
        assert rec["moved"] and rec["same_loss"] and rec["max_abs_diff"] == 0.0, (rank, rec)


# ----------------------------------------------------------------------------- item 2
_RELEASE_SCRIPT = textwrap.dedent("""
    import gc, json, sys
    from pathlib import Path
    import torch
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import train
    d, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = parse_dataclass(TrainConfig, {"steps": 1, "prompts_per_step": 2, "n_samples": 2, "max_new_tokens": 8,
                                        "chunk_size": 4, "zero_stage": 2, "loss": "sampled",
                                        "pgopd": {"prefix_len": 4, "probe_end": 4}}, "train")
    train(cfg, method="opd", seed=3, teacher=str(d / "teacher"), student=str(d / "student"),
          train_data=d / "data/train.jsonl", teacher_cache=d / "cache", out_dir=out)
    gc.collect()
    from deepspeed import DeepSpeedEngine
    from transformers import DynamicCache, PreTrainedModel
    live = {"engines": DeepSpeedEngine, "optimizers": torch.optim.Optimizer, "models": PreTrainedModel,
            "kv_caches": DynamicCache}
    print("LIVE " + json.dumps({k: sum(isinstance(o, t) for o in gc.get_objects()) for k, t in live.items()}))
""")


@pytest.mark.slow
def test_train_leaves_no_engine_optimizer_model_or_cache_alive(tmp_path):
    """After ``train()`` (ZeRO-2, in-process) no DeepSpeed engine, optimizer, model or KV cache
    is reachable: without ``engine.destroy()`` ZeRO's gradient hooks keep all of them."""
    import json
    import os

    from tiny import make_train_dir

    d = make_train_dir(tmp_path / "d")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29000 + os.getpid() % 500 + 7)}
    r = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT, str(d), str(tmp_path / "out")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    live = json.loads(r.stdout.split("LIVE ", 1)[1].splitlines()[0])
    assert live == {"engines": 0, "optimizers": 0, "models": 0, "kv_caches": 0}


# ----------------------------------------------------------------------------- item 6
def test_tied_checkpoint_with_a_stored_lm_head_matches_the_trainers_names(tmp_path):
    """Qwen3-1.7B (tied) stores a copy of the embedding as ``lm_head.weight``; the trainer's
    ``named_parameters()`` has no such name: the strict name check must accept it."""
    import json

    from safetensors.torch import save_file
    from test_vllm_backend import _FakeLLM

    from pgopd.rollout.vllm_backend import VLLMEngine

    emb = torch.randn(V, 32)
    save_file({"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(), "model.norm.weight": torch.ones(32)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    llm = _FakeLLM()
    eng = VLLMEngine(str(tmp_path), llm=llm)
    assert eng.update_weights([("model.embed_tokens.weight", emb), ("model.norm.weight", torch.ones(32))]) == 2
    # a state_dict (which lists the tied head) loads the same two tensors
    assert eng.update_weights({"model.embed_tokens.weight": emb, "lm_head.weight": emb,
                               "model.norm.weight": torch.ones(32)}) == 2
    with pytest.raises(ValueError, match="missing \\['model.norm.weight'\\]"):
        eng.update_weights([("model.embed_tokens.weight", emb)])


def test_colocated_engine_sleeps_at_level_2_empties_the_cache_and_starts_from_dummy_weights(monkeypatch):
    import pgopd.rollout.vllm_backend as vb
    from test_vllm_backend import _FakeLLM

    llm = _FakeLLM()
    monkeypatch.setattr(vb, "_empty_cuda_cache", lambda: llm.calls.append(("empty_cache",)))
    eng = vb.VLLMEngine("unused", mode="colocate", llm=llm, sleep_available=True)
    eng.sleep()
    eng.update_weights({"x": torch.ones(2)})
    assert llm.calls[:3] == [("sleep", 2), ("empty_cache",), ("wake_up", ["weights"])]
    eng.sleep()
    with pytest.raises(ValueError, match="level 2"):  # a subset would leave discarded weights
        eng.update_weights({"x": torch.ones(2)}, strict=False)
    assert vb.VLLMEngine("unused", mode="separate", llm=_FakeLLM()).sleep_level == 1
    assert vb.colocated_load_options("colocate", True) == {"load_format": "dummy"}
    assert vb.colocated_load_options("colocate", False) == {} == vb.colocated_load_options("separate", True)
