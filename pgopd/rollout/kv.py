"""A batch of left-padded sequences that grows chunk by chunk over one KV cache.

Both the student sampler and the incremental teacher scorer are built on this: the
prompts are prefilled once, every later forward feeds only the new tokens, and rows
(candidates) that stop are removed from the batch and from the cache, so no token is
ever run through a model twice.
"""
from __future__ import annotations

import torch


class KVBatch:
    """Left-padded prompts + appended tokens, with the model's KV cache.

    ``forward_new(tokens_BC)`` appends ``C`` tokens to every live row and returns the
    logits at those positions ``(B, C, V)``; ``prefill()`` returns the logits at the last
    prompt position ``(B, V)`` (the distribution of the first response token).
    """

    def __init__(self, model, prompts: list[list[int]], pad_id: int):
        if not prompts:
            raise ValueError("KVBatch needs at least one prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("KVBatch: empty prompt (no tokens)")
        self.model = model
        self.device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        self.prompt_ids_BL = ids.to(self.device)
        self.mask_BL = mask.to(self.device)
        self.cache = None
        # positions the model's forward actually ran, padding included (cost where it is
        # spent, not tokens kept): the prompt prefill, and every later forward_new
        self.n_prefill_positions = 0
        self.n_positions = 0

    @property
    def batch_size(self) -> int:
        return self.mask_BL.shape[0]

    def _run(self, ids_BC: torch.Tensor, hidden: bool = False, last_only: bool = False) -> torch.Tensor:
        C = ids_BC.shape[1]
        # positions count only real tokens, so left padding does not shift them
        pos_BL = self.mask_BL.cumsum(-1) - 1
        pos_BC = pos_BL[:, -C:].clamp(min=0)
        # hidden: the base model only (final hidden states, (B, C, H)), no (B, C, V) logits
        model = self.model.get_decoder() if hidden else self.model
        # last_only: the LM head of the prefill covers the last prompt position only; the
        # others would be (rows x prompt x vocab) logits, ~5 GB in bf16 at paper scale
        extra = {"logits_to_keep": 1} if last_only and not hidden else {}
        out = model(input_ids=ids_BC, attention_mask=self.mask_BL, position_ids=pos_BC,
                    past_key_values=self.cache, use_cache=True, **extra)
        self.cache = out.past_key_values
        return out.last_hidden_state if hidden else out.logits

    @torch.no_grad()
    def prefill(self, hidden: bool = False) -> torch.Tensor:
        """Run the prompts; returns logits of the next token, ``(B, V)`` (``hidden``: the
        final hidden state there instead, ``(B, H)``)."""
        if self.cache is not None:
            raise RuntimeError("prefill called twice")
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.n_prefill_positions += self.prompt_ids_BL.numel()
        out = self._run(self.prompt_ids_BL, hidden, last_only=True)[:, -1]
        return out if hidden else out.float()

    @torch.no_grad()
    def forward_new(self, tokens_BC: torch.Tensor, hidden: bool = False) -> torch.Tensor:
        """Append ``tokens_BC`` and return logits at the new positions, ``(B, C, V)``
        (``hidden``: final hidden states, ``(B, C, H)``, in the model's dtype)."""
        if self.cache is None:
            raise RuntimeError("forward_new before prefill")
        tokens_BC = tokens_BC.to(self.device)
        ones = torch.ones((tokens_BC.shape[0], tokens_BC.shape[1]), dtype=self.mask_BL.dtype,
                          device=self.device)
        self.mask_BL = torch.cat([self.mask_BL, ones], dim=1)
        self.n_positions += tokens_BC.numel()
        out = self._run(tokens_BC, hidden)
        return out if hidden else out.float()

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch), cache included."""
        rows = rows.to(self.device)
        self.mask_BL = self.mask_BL.index_select(0, rows)
        self.prompt_ids_BL = self.prompt_ids_BL.index_select(0, rows)
        if self.cache is not None:
            self.cache.batch_select_indices(rows)

    def release(self) -> None:
        """Drop the KV cache and the batch tensors (the rollout is over); the position
        counts stay readable.  Without it the cache of the last live rows stays on the
        device through the update (up to 18 GiB for the teacher at paper scale)."""
        self.cache = None
        # new empty tensors, not [:0] views (a view would keep the whole storage)
        self.prompt_ids_BL = self.prompt_ids_BL.new_zeros((0, self.prompt_ids_BL.shape[1]))
        self.mask_BL = self.mask_BL.new_zeros((0, self.mask_BL.shape[1]))
