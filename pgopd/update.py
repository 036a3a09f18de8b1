"""The update of one training step, in bounded memory: rollout result -> gradients -> one
optimizer step.

    assemble      kept tokens, weights and the teacher's log-probs as padded tensors;
    micro-batches the rank's trained sequences sorted by length and packed so a micro-batch
                  holds at most ``train.max_tokens_per_micro_batch`` padded tokens (a longer
                  sequence goes alone; 0 = one micro-batch), as verl's dynamic batch size;
    loss          per micro-batch: the student's hidden states, log-probs at the few ids the
                  loss needs from the LM head a chunk of positions at a time
                  (``pgopd.logprobs``), the OPD loss (``pgopd.loss``);
    accumulate    gradients summed over micro-batches under DeepSpeed's accumulation
                  boundary (``set_gradient_accumulation_boundary``: ZeRO 0-1 all-reduce and
                  ZeRO-2/3 reduce into their partitions, the last micro-batch closes the
                  step), ONE ``engine.step()``;
    guard         a non-finite loss or gradient on any rank skips the step on all ranks
                  (ZeRO 0: ``p.grad`` checked here; ZeRO 1-3: DeepSpeed's global gradient
                  norm, which its optimizer checks before updating).

Normalisation is the global token mean of one big batch: each micro-batch's token-mean loss
is scaled by ``n_mb * world / n_global`` (its share of the trained tokens of all ranks; the
world factor undoes DeepSpeed's average over ranks), and ``gradient_accumulation_steps``
stays 1 in the DeepSpeed config so ``engine.backward`` does not rescale.  Every rank runs
the same number of forward/backward calls and LM-head calls (padding with empty
micro-batches / chunks), so the collectives of ZeRO-2/3 match.

:func:`apply_update` needs no Snakemake or run directory: a benchmark can call it on a
DeepSpeed engine and a :class:`~pgopd.rollout.loop.RolloutResult`.
"""
from __future__ import annotations

import math
import time

import torch

from .config import TrainConfig
from .logprobs import logp_at_ids, n_chunks_for
from .loss import opd_pg_loss, topk_recipe_loss, topk_renorm_loss
from .rollout.loop import RolloutResult


def collective_device(td) -> torch.device:
    """The device whose tensors the default process group's collectives accept.

    DeepSpeed initialises torch.distributed with NCCL alone on GPUs, which rejects CPU
    tensors ("No backend type associated with device type cpu"); gloo (CPU runs) takes
    CPU tensors.  Read from the group's registered device types, else from its backend name."""
    types = {d.type for d in getattr(td.group.WORLD, "_device_types", None) or []}
    if not types:
        types = {"cuda"} if "nccl" in str(td.get_backend()).lower() else {"cpu"}
    if "cpu" in types:
        return torch.device("cpu")
    kind = "cuda" if "cuda" in types else sorted(types)[0]
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


class Dist:
    """Rank / world size and the few collectives training needs (no-ops on one process)."""

    def __init__(self):
        import torch.distributed as td

        self.td = td if td.is_available() and td.is_initialized() else None
        self.rank = self.td.get_rank() if self.td else 0
        self.world = self.td.get_world_size() if self.td else 1
        self.device = collective_device(self.td) if self.td else torch.device("cpu")

    def sum(self, *xs: float) -> list[float]:
        if not self.td:
            return list(xs)
        t = torch.tensor(xs, dtype=torch.float64, device=self.device)
        self.td.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if not self.td:
            return [obj]
        out = [None] * self.world
        self.td.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.td:
            self.td.barrier()


# ----------------------------------------------------------------------------- batches
def trained_rows(res: RolloutResult) -> list[int]:
    """Candidates of ``res`` with at least one trained token."""
    return [i for i, c in enumerate(res.cands) if res.train_len(c) > 0]


def seq_len(res: RolloutResult, i: int) -> int:
    """Prompt + trained-response tokens of candidate ``i`` (what the update forwards)."""
    return len(res.prompts[i]) + res.train_len(res.cands[i])


def assemble(res: RolloutResult, pad_id: int, rows: list[int] | None = None) -> dict | None:
    """Padded tensors for the update (right padding); ``None`` when no token is trained.

    ``rows``: candidate indices to include (default: every candidate with trained tokens).
    Positions are those of the *targets*: response token t of row b sits at column
    ``P_b - 1 + t`` of the shifted sequence, where P_b is the prompt length.
    Returns input_ids_BS, attention_BS, mask_BT, weight_BT, teacher_logp_BT, and
    student_topk_ids_BTK / teacher_logp_topk_BTK when the rollout kept them.
    """
    rows = trained_rows(res) if rows is None else [i for i in rows if res.train_len(res.cands[i]) > 0]
    if not rows:
        return None
    seqs = [res.prompts[i] + res.cands[i].tokens[:res.train_len(res.cands[i])] for i in rows]
    S = max(len(s) for s in seqs)
    B, T = len(rows), S - 1
    out = {"input_ids_BS": torch.full((B, S), pad_id, dtype=torch.long),
           "attention_BS": torch.zeros((B, S), dtype=torch.long),
           "mask_BT": torch.zeros((B, T), dtype=torch.bool), "weight_BT": torch.zeros((B, T)),
           "teacher_logp_BT": torch.zeros((B, T))}
    topk = bool(res.student_topk_ids)
    if topk:
        K = res.student_topk_ids[0].shape[-1]
        out["student_topk_ids_BTK"] = torch.zeros((B, T, K), dtype=torch.long)
        out["teacher_logp_topk_BTK"] = torch.zeros((B, T, K))
    for b, (i, seq) in enumerate(zip(rows, seqs)):
        c, P = res.cands[i], len(res.prompts[i])
        L = res.train_len(c)
        out["input_ids_BS"][b, :len(seq)] = torch.tensor(seq)
        out["attention_BS"][b, :len(seq)] = 1
        sl = slice(P - 1, P - 1 + L)
        out["mask_BT"][b, sl] = True
        out["weight_BT"][b, sl] = torch.tensor(c.weights[:L], dtype=torch.float32)
        out["teacher_logp_BT"][b, sl] = torch.tensor(c.teacher_logp[:L], dtype=torch.float32)
        if topk:
            out["student_topk_ids_BTK"][b, sl] = res.student_topk_ids[i][:L]
            out["teacher_logp_topk_BTK"][b, sl] = res.teacher_logp_topk[i][:L]
    return out


def empty_batch(pad_id: int, k: int) -> dict:
    """A two-token micro-batch with nothing trained: a rank with fewer micro-batches runs it
    so that every rank makes the same forward/backward calls (its loss is an exact 0)."""
    return {"input_ids_BS": torch.full((1, 2), pad_id, dtype=torch.long),
            "attention_BS": torch.ones((1, 2), dtype=torch.long),
            "mask_BT": torch.zeros((1, 1), dtype=torch.bool), "weight_BT": torch.zeros((1, 1)),
            "teacher_logp_BT": torch.zeros((1, 1)),
            "student_topk_ids_BTK": torch.zeros((1, 1, k), dtype=torch.long),
            "teacher_logp_topk_BTK": torch.zeros((1, 1, k))}


def pack_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into micro-batches of at most ``max_tokens`` *padded*
    tokens (rows x longest row), longest first; a row longer than the budget goes alone.
    ``max_tokens == 0``: one micro-batch with everything.  Sorting by length keeps the
    padding small (verl packs by length the same way for ``ppo_max_token_len_per_gpu``)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if max_tokens <= 0:
        return [order] if order else []
    out: list[list[int]] = []
    for i in order:
        # descending order: the first row of a micro-batch is its longest
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# ----------------------------------------------------------------------------- loss
def student_hidden(model, module, ids_BS: torch.Tensor, att_BS: torch.Tensor) -> torch.Tensor:
    """(B, S, H) final hidden states (after the last norm) of the student.

    ``model`` is what is called (the DeepSpeed engine, so its ZeRO-3 hooks and bookkeeping
    run as in any forward), ``module`` the HF model inside it.  The base model's output is
    caught with a forward hook, and ``logits_to_keep=1`` makes the LM head of the forward
    itself cover one position only: no (B, S, V) logits are made."""
    box = {}

    def grab(_m, _a, out):
        box["h"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

    handle = module.get_decoder().register_forward_hook(grab)
    try:
        model(input_ids=ids_BS, attention_mask=att_BS, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return box["h"]


def batch_loss(model, module, batch: dict, loss: str, chunk: int, n_chunks: int | None = None):
    """The OPD loss of one micro-batch as a token mean over its own trained tokens.

    Only trained positions are sent through the LM head, with the ids the loss needs: the
    sampled token (all losses; its reward is what every run reports) and the student's
    top-k ids (``topk_renorm`` / ``topk_recipe``).  Returns ``(loss, stats)`` as the
    functions of :mod:`pgopd.loss`."""
    dev = next(module.parameters()).device
    ids_BS = batch["input_ids_BS"].to(dev)
    mask_BT = batch["mask_BT"].to(dev)
    h_NH = student_hidden(model, module, ids_BS, batch["attention_BS"].to(dev))[:, :-1][mask_BT]
    ids_NJ = ids_BS[:, 1:][mask_BT][:, None]
    if loss != "sampled":
        ids_NJ = torch.cat([ids_NJ, batch["student_topk_ids_BTK"].to(dev)[mask_BT]], dim=1)
    logp_NJ = logp_at_ids(h_NH, module.get_output_embeddings(), ids_NJ, chunk, n_chunks)
    # the losses take (B, T, ..) tensors: the N trained positions as one row
    ones_1N = torch.ones((1, logp_NJ.shape[0]), dtype=torch.bool, device=dev)
    w_1N = batch["weight_BT"].to(dev)[mask_BT][None]
    t_1N = batch["teacher_logp_BT"].to(dev)[mask_BT][None]
    if loss == "sampled":
        return opd_pg_loss(logp_NJ[None, :, 0], t_1N, ones_1N, w_1N)
    fn = topk_renorm_loss if loss == "topk_renorm" else topk_recipe_loss
    value, stats = fn(logp_NJ[None, :, 1:], batch["teacher_logp_topk_BTK"].to(dev)[mask_BT][None], ones_1N, w_1N)
    # the sampled-token reward is what every run reports, so losses compare on one scale
    r = t_1N - logp_NJ[None, :, 0].detach()
    stats["reward_mean"] = float(r.mean()) if r.numel() else 0.0
    return value, stats


def grads_finite(engine) -> bool:
    """The gradients this rank can see in ``p.grad`` are finite (ZeRO 0; under ZeRO 1-3 they
    live in DeepSpeed's partitions, ``p.grad`` is None, and :func:`step_applied` decides)."""
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in engine.module.parameters())


def step_applied(engine) -> bool:
    """After ``engine.step()``: False when DeepSpeed found the global gradient norm
    non-finite and skipped the step (its ZeRO 1-3 and bf16 optimizers check it before
    updating: ``was_step_applied`` / ``get_global_grad_norm`` = inf).  The norm is reduced
    over all ranks, so every rank answers the same."""
    if hasattr(engine, "was_step_applied") and not engine.was_step_applied():
        return False
    norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
    return norm is None or math.isfinite(float(norm))


def discard_gradients(engine) -> None:
    """Drop every gradient this step accumulated, wherever DeepSpeed keeps it, so that a
    skipped step leaves nothing for the next one; as DeepSpeed's own overflow path does
    (0.19.8: ``DeepSpeedZeroOptimizer.step`` and ``DeepSpeedZeroOptimizer_Stage3.
    _overflow_clean_up``).

    ``optimizer.zero_grad()`` alone is not enough under ZeRO-1/2: the reduced gradient
    partitions live in ``averaged_gradients`` (with fp32 accumulation, one fp32 buffer), and
    the next backward *adds* to them (``micro_step_id`` is only reset inside ``step()``), so
    a non-finite step would poison the next, clean one."""
    opt = engine.optimizer
    opt.zero_grad(set_to_none=True)
    release = getattr(opt, "_release_preflattened_grad_buffers", None)
    if callable(release):
        release()
    avg = getattr(opt, "averaged_gradients", None)
    if isinstance(avg, dict):
        if type(opt).__name__ == "DeepSpeedZeroOptimizer_Stage3":
            opt.averaged_gradients = {}
        else:
            for group in list(avg):
                avg[group] = None
                if isinstance(getattr(opt, "all_grad_tensors", None), dict):
                    opt.all_grad_tensors[group] = None
    if getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False):
        opt.reset_cpu_buffers()
    if hasattr(opt, "micro_step_id"):
        # ZeRO-1/2 start a step at -1 (their INITIAL_MICRO_STEP_ID), ZeRO-3 at 0 (its zero_grad)
        opt.micro_step_id = 0 if type(opt).__name__ == "DeepSpeedZeroOptimizer_Stage3" else -1


# ----------------------------------------------------------------------------- the update
def plan_micro_batches(res: RolloutResult, cfg: TrainConfig, dist: Dist) -> tuple[list[list[int]], list[int]]:
    """This rank's micro-batches (candidate indices, possibly empty lists as padding) and
    the LM-head chunk count of each, both agreed over all ranks."""
    rows = trained_rows(res)
    mbs = [[rows[j] for j in mb] for mb in pack_micro_batches([seq_len(res, i) for i in rows],
                                                              cfg.max_tokens_per_micro_batch)]
    chunks = [n_chunks_for(sum(res.train_len(res.cands[i]) for i in mb), cfg.logprob_chunk_tokens) for mb in mbs]
    return agree_micro_batches(mbs, chunks, dist)


def agree_micro_batches(mbs: list[list[int]], chunks: list[int], dist: Dist) -> tuple[list[list[int]], list[int]]:
    """Every rank the same number of micro-batches (empty lists appended) and, per
    micro-batch, the largest LM-head chunk count of any rank: the same forward / backward
    calls and ZeRO collectives everywhere."""
    every = dist.gather(chunks)
    n_mb = max(len(c) for c in every)
    agreed = [max(c[j] if j < len(c) else 1 for c in every) for j in range(n_mb)]
    return mbs + [[] for _ in range(n_mb - len(mbs))], agreed


def accumulate(engine, res: RolloutResult, cfg: TrainConfig, pad_id: int, dist: Dist) -> dict:
    """Forward/backward of every micro-batch; gradients accumulate, no optimizer step.

    Returns ``ok`` (loss and gradients finite on this rank), ``loss`` (this rank's share of
    the global token-mean loss), ``reward_sum`` (sum over its trained tokens), ``n_local``,
    ``n_global`` and ``n_micro_batches``."""
    n_local = float(res.tokens_trained)
    (n_global,) = dist.sum(n_local)
    out = {"ok": True, "loss": 0.0, "reward_sum": 0.0, "n_local": n_local, "n_global": n_global,
           "n_micro_batches": 0}
    if not n_global:
        return out
    mbs, chunks = plan_micro_batches(res, cfg, dist)
    k = cfg.loss_top_k
    for j, (mb, n_chunks) in enumerate(zip(mbs, chunks)):
        batch = assemble(res, pad_id, mb) if mb else None
        batch = batch if batch is not None else empty_batch(pad_id, k)
        n_mb = float(batch["mask_BT"].sum())
        engine.set_gradient_accumulation_boundary(j == len(mbs) - 1)
        loss, stats = batch_loss(engine, engine.module, batch, cfg.loss, cfg.logprob_chunk_tokens, n_chunks)
        loss = loss * (n_mb * dist.world / n_global)
        value = float(loss.detach())
        if not math.isfinite(value):
            out["ok"] = False
            # still run the backward (every rank must make the same collectives); the
            # gradients are thrown away below
            loss = torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
        engine.backward(loss)
        out["loss"] += value
        out["reward_sum"] += stats.get("reward_mean", 0.0) * n_mb
    out["n_micro_batches"] = len(mbs)
    out["ok"] = out["ok"] and grads_finite(engine)
    return out


def apply_update(engine, res: RolloutResult, cfg: TrainConfig, pad_id: int, dist: Dist | None = None) -> dict:
    """One training step's update: micro-batch gradients, the non-finite guard, one optimizer
    step.  Returns metrics: ``loss`` (global token mean), ``reward_mean`` / ``kl`` (sampled
    token), ``finite`` (False: step skipped on every rank), ``n_micro_batches``,
    ``t_update_s``, ``lr`` (the rate this step used)."""
    dist = dist or Dist()
    t0 = time.perf_counter()
    lr = engine.get_lr()[0]
    engine.module.train()
    acc = accumulate(engine, res, cfg, pad_id, dist)
    ok = bool(dist.sum(float(not acc["ok"]))[0] == 0)
    if not ok:
        discard_gradients(engine)
    elif acc["n_global"]:
        engine.step()
        ok = step_applied(engine)  # a non-finite gradient only DeepSpeed's partitions saw
    n_global = acc["n_global"]
    loss_sum, reward_sum = dist.sum(acc["loss"] / dist.world, acc["reward_sum"])
    return {"loss": loss_sum, "reward_mean": reward_sum / n_global if n_global else None,
            "kl": -reward_sum / n_global if n_global else None, "finite": ok,
            "n_micro_batches": acc["n_micro_batches"], "t_update_s": time.perf_counter() - t0, "lr": lr}
