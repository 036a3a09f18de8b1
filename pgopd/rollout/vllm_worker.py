"""The worker side of the ``vllm`` backend and what each engine is built with: the weight
transport (tensors <-> msgpack-safe tuples, buckets), :class:`PGOPDWorkerExtension` (mixed
into vLLM's worker, ``worker_extension_cls``), the per-rank engine options
(``external_launcher`` on ``cuda:LOCAL_RANK``) and the ``enforce_eager`` default.  See
:mod:`pgopd.rollout.vllm_backend` for how they are used.  No vLLM import at module level."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

EXTENSION_QUALNAME = f"{__name__}.PGOPDWorkerExtension"


# ----------------------------------------------------------------------------- weight transport
def encode_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple]:
    """``(name, tensor)`` pairs -> ``(name, dtype, shape, raw bytes)`` tuples that survive
    vLLM's msgpack RPC (tensors inside nested args do not; any dtype, bf16 included)."""
    out = []
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), raw))
    return out


def decode_tensors(items: Iterable[tuple]) -> list[tuple[str, torch.Tensor]]:
    """Inverse of :func:`encode_tensors`."""
    out = []
    for name, dtype, shape, raw in items:
        dt = getattr(torch, dtype)
        if not raw:
            t = torch.empty(tuple(shape), dtype=dt)
        else:
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dt).reshape(tuple(shape))
        out.append((name, t))
    return out


def _named_tensors(named_params) -> list[tuple[str, torch.Tensor]]:
    """Accept an ``nn.Module`` (its ``state_dict``), a mapping or an iterable of pairs."""
    if isinstance(named_params, torch.nn.Module):
        return list(named_params.state_dict().items())
    if isinstance(named_params, Mapping):
        return list(named_params.items())
    return list(named_params)


def _buckets(named: list[tuple[str, torch.Tensor]], bucket_bytes: int):
    bucket, size = [], 0
    for name, t in named:
        n = t.numel() * t.element_size()
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket


def checkpoint_tensor_names(model_path: str | os.PathLike) -> set[str] | None:
    """Tensor names stored in a local checkpoint directory (``*.safetensors``), else None."""
    path = Path(model_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    return names


def tied_embeddings(model_path: str | os.PathLike) -> bool:
    """Whether a local checkpoint's config ties the LM head to the embeddings
    (``tie_word_embeddings``, top level or in ``text_config``); False when unknown."""
    import json

    cfg_path = Path(model_path) / "config.json"
    if not cfg_path.is_file():
        return False
    cfg = json.loads(cfg_path.read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def resolve_enforce_eager(value: bool | None, *, on_gpu: bool) -> bool:
    """``enforce_eager`` of an engine: an explicit value as given; None (auto) means eager on
    CPU (no CUDA graphs there) and CUDA graphs on GPU (decoding at batch 32 is launch-bound
    without them)."""
    return (not on_gpu) if value is None else bool(value)


def rank_engine_options(env: Mapping[str, str] | None = None, *, cuda: bool | None = None) -> dict:
    """What the engine of one training process (torchrun rank) is built with.

    ``distributed_executor_backend="external_launcher"``: vLLM runs its one worker inside this
    process, on ``cuda:LOCAL_RANK`` (GPU) and with this process's rank, reusing the trainer's
    ``torch.distributed`` group.  Returns ``{"engine": LLM kwargs, "rank", "local_rank",
    "world_size", "device"}``; raises naming the torchrun variable that is missing.
    """
    env = os.environ if env is None else env
    if cuda is None:
        cuda = torch.cuda.is_available()
    vals = {}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if not env.get(key):
            raise RuntimeError(f"vllm backend: {key} is not set; the per-rank engine "
                               "(external_launcher) needs the torchrun variables RANK, LOCAL_RANK, "
                               "WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
        vals[key] = env[key]
    rank, local_rank, world = int(vals["RANK"]), int(vals["LOCAL_RANK"]), int(vals["WORLD_SIZE"])
    if not 0 <= rank < world:
        raise RuntimeError(f"vllm backend: RANK {rank} is outside WORLD_SIZE {world}")
    return {"engine": {"distributed_executor_backend": "external_launcher"}, "rank": rank,
            "local_rank": local_rank, "world_size": world,
            "device": f"cuda:{local_rank}" if cuda else "cpu"}


def _load_into_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Load checkpoint-format tensors through the worker-level API (inside vLLM's config
    context), falling back to the model runner for workers without it."""
    if callable(getattr(type(worker), "reload_weights", None)):
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    elif hasattr(worker.model_runner, "reload_weights"):
        worker.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    else:  # older runners: the RLHF-example path
        worker.model_runner.model.load_weights(weights)
    _refresh_vocab_kernels(worker.model_runner.model)


class PGOPDWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); its methods are called on
    every worker through ``LLM.collective_rpc``.  ``self`` is the vLLM worker: it has
    ``model_runner`` (whose ``model`` is the vLLM model).  No vLLM import at module level:
    this module must import without vLLM."""

    def pgopd_stage_weights(self, items: list) -> int:
        """Receive one bucket of encoded tensors; returns how many are staged so far."""
        staged = self.__dict__.setdefault("_pgopd_staged", [])
        staged.extend(decode_tensors(items))
        return len(staged)

    def pgopd_discard_weights(self) -> None:
        self.__dict__.pop("_pgopd_staged", None)

    def pgopd_commit_weights(self) -> int:
        """Load every staged tensor into the model in one pass; returns their number."""
        weights = self.__dict__.pop("_pgopd_staged", [])
        if not weights:
            return 0
        _load_into_worker(self, weights)
        return len(weights)

    def pgopd_load_weights(self, weights: list) -> int:
        """In-process engines: ``(name, tensor)`` pairs as the trainer holds them (same device,
        no copy) loaded in one pass; returns their number."""
        weights = list(weights)
        if weights:
            _load_into_worker(self, weights)
        return len(weights)

    def pgopd_placement(self) -> dict:
        """Where this worker runs: its rank, local rank, device and process (tests, logs)."""
        dev = getattr(self, "device", None)
        return {"rank": getattr(self, "rank", None), "local_rank": getattr(self, "local_rank", None),
                "device": str(dev) if dev is not None else None, "pid": os.getpid()}

    def pgopd_param_summary(self) -> dict:
        """``name -> [shape, dtype]`` of the vLLM model's parameters (debugging aid)."""
        return {n: [list(p.shape), str(p.dtype)] for n, p in self.model_runner.model.named_parameters()}


def _refresh_vocab_kernels(model: torch.nn.Module) -> None:
    """Re-derive the packed CPU GEMM of embedding-like layers (a tied LM head is never
    reloaded by name, so its oneDNN handle would still hold the old weights).  Layers without
    a CPU kernel (``cpu_linear``) -- i.e. everything on GPU -- are left alone."""
    try:
        from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    except ImportError:  # not inside a vLLM worker (unit tests with a stand-in runner)
        return
    for mod in model.modules():
        if (isinstance(mod, VocabParallelEmbedding) and hasattr(mod, "cpu_linear")
                and getattr(mod, "weight", None) is not None and mod.weight.numel() > 0):
            mod.quant_method.process_weights_after_loading(mod)
