"""Rollout backends (``hf``: transformers + KV cache; ``vllm``: a vLLM engine) and the chunked loop."""
from __future__ import annotations


def generate_with(backend: str, model_ref: str, model, prompts: list[list[int]], *, eos_id: int, pad_id: int,
                  n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                  batch_size: int = 256, logprobs_k: int = 0, desc: str = "generate",
                  vllm_options: dict | None = None) -> list[dict]:
    """One generation call for evaluation and teacher caching, on the configured backend.
    ``model`` is the loaded HF model (``hf``) or unused (``vllm`` builds an engine on ``model_ref``
    with ``vllm_options``, e.g. ``enforce_eager``)."""
    if backend == "vllm":
        from .vllm_backend import generate_vllm

        return generate_vllm(model_ref, prompts, n=n, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, seed=seed, logprobs_k=logprobs_k, eos_id=eos_id,
                             batch_size=batch_size, **(vllm_options or {}))
    from .hf import generate

    return generate(model, prompts, eos_id=eos_id, pad_id=pad_id, n=n, temperature=temperature, top_p=top_p,
                    max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, logprobs_k=logprobs_k,
                    progress=True, desc=desc)
