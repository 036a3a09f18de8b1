"""The one chunked rollout loop every method shares (design.md: "one rollout loop, many policies").

    start sampler and teacher on the prompts (each repeated n_samples times)
    while candidates are live:
        chunk  <- sampler.extend(policy.next_chunk(...))     student tokens, logp, top-k
        scores <- teacher.score(chunk)                       each token scored exactly once
        overlap_t = |TopK_s ∩ TopK_t| / k                   (thunlp/OPD, arXiv 2604.13016)
        policy.decide(live candidates)                       stop / keep / weights
        finished or stopped candidates leave both batches (their KV rows are dropped)

`opd`, `pgopd`, `pruneopd` and the controls differ only in the policy.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..overlap import topk_overlap
from .types import Candidate, Policy


@dataclass
class RolloutResult:
    cands: list[Candidate]
    prompts: list[list[int]]                  # prompt token ids of each candidate
    student_topk_ids: list = field(default_factory=list)   # per candidate (T, K_loss) long, or empty
    teacher_logp_topk: list = field(default_factory=list)  # per candidate (T, K_loss) float, or empty
    t_rollout_s: float = 0.0
    t_teacher_s: float = 0.0
    tokens_teacher_scored: int = 0
    n_chunks: int = 0
    # Positions each model's forward actually ran after the prompt prefill, padding after
    # EOS and tokens past a cut included (None: the backend does not count, e.g. vLLM);
    # prefill_* the prompt positions of the one prefill.  Cost is spent here, not per kept token.
    positions_student: int | None = None
    positions_teacher: int | None = None
    prefill_positions_student: int | None = None
    prefill_positions_teacher: int | None = None
    chunk_ends: list = field(default_factory=list)   # generated count after each chunk

    @property
    def tokens_generated(self) -> int:
        return sum(c.length for c in self.cands)

    def train_len(self, c: Candidate) -> int:
        if not c.keep:
            return 0
        return c.length if c.train_len is None else min(c.train_len, c.length)

    @property
    def tokens_trained(self) -> int:
        return sum(self.train_len(c) for c in self.cands)


#: why a candidate stopped generating / training (candidates.jsonl ``stop_reason``):
#: ``eos`` it ended by itself, ``length`` it reached max_new_tokens, or the policy's cut:
#: ``prefix`` (PG-OPD stop at the prefix), ``random`` (random_prune), ``fixed``
#: (fixed_truncation), ``drift`` / ``window`` (Prune-OPD truncation / window end).
STOP_REASONS = ("eos", "length", "prefix", "random", "fixed", "drift", "window", "policy")


def stop_reason(c: Candidate, max_new_tokens: int) -> str:
    """The reason a finished rollout ended; a policy's own ``info['stop_reason']`` wins."""
    if c.info.get("stop_reason"):
        return c.info["stop_reason"]
    if c.finished:
        return "eos"
    if c.length >= max_new_tokens:
        return "length"
    # Stopped or trained short without a reason from the policy: name the policy.
    return "policy"


def _positions(backend) -> tuple[int | None, int | None]:
    """(prefill, later) forward positions a sampler / scorer counted, or (None, None)."""
    pos = getattr(backend, "positions", None)
    if pos is None:
        return None, None
    return int(pos[0]), int(pos[1])


@contextmanager
def _clock(res: "RolloutResult", attr: str):
    """Add the seconds spent in the ``with`` block to ``res.<attr>`` (t_rollout_s / t_teacher_s)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        setattr(res, attr, getattr(res, attr) + time.perf_counter() - t0)


def rollout(sampler, scorer, policy: Policy, prompts: list[list[int]], *, n_samples: int,
            max_new_tokens: int, chunk_size: int, overlap_k: int, loss_top_k: int = 0) -> RolloutResult:
    """Generate ``n_samples`` responses per prompt under ``policy``; see the module docstring.

    ``sampler`` is a backend sampler (``start``, ``extend``, ``select``, ``rows_B``) whose
    top-k is at least ``max(overlap_k, loss_top_k)``; ``scorer`` a :class:`TeacherScorer`.
    """
    cand_prompts = [p for p in prompts for _ in range(n_samples)]
    cands = [Candidate(cid=i, group=i // n_samples) for i in range(len(cand_prompts))]
    s_topk = [[] for _ in cands]
    t_topk = [[] for _ in cands]
    res = RolloutResult(cands=cands, prompts=cand_prompts)

    with _clock(res, "t_rollout_s"):
        sampler.start(cand_prompts)
    with _clock(res, "t_teacher_s"):
        scorer.start(cand_prompts)
    live = list(range(len(cands)))            # candidate id of each live row
    generated = 0
    while live and generated < max_new_tokens:
        n = policy.next_chunk(generated, max_new_tokens, chunk_size)
        if n < 1:
            raise RuntimeError(f"policy {policy.name} asked for a chunk of {n} tokens")
        with _clock(res, "t_rollout_s"):
            ch = _trim_padding(sampler.extend(n))
        n = ch.tokens_BC.shape[1]  # a sampler may end a chunk early once every row has ended
        with _clock(res, "t_teacher_s"):
            sc = scorer.score(ch.tokens_BC, ch.valid_BC,
                              ch.topk_ids_BCK[..., :loss_top_k] if loss_top_k else None)
        generated += n
        res.n_chunks += 1
        res.chunk_ends.append(generated)
        overlap_BC = topk_overlap(ch.topk_ids_BCK[..., :overlap_k], sc.topk_ids_BCK)
        for row, cid in enumerate(live):
            c, m = cands[cid], ch.valid_BC[row]
            c.tokens += ch.tokens_BC[row][m].tolist()
            c.student_logp += ch.logp_BC[row][m].tolist()
            c.teacher_logp += sc.logp_BC[row][m].tolist()
            c.overlap += overlap_BC[row][m].tolist()
            c.finished = bool(ch.finished_B[row])
            if loss_top_k:
                s_topk[cid].append(ch.topk_ids_BCK[row][m][:, :loss_top_k])
                t_topk[cid].append(sc.logp_at_student_BCK[row][m])
        live_cands = [cands[cid] for cid in live]
        policy.decide(live_cands, generated)
        for c in live_cands:
            if len(c.weights) != c.length:
                raise RuntimeError(f"policy {policy.name} left {len(c.weights)} weights for "
                                   f"{c.length} tokens (candidate {c.cid})")
        keep = [row for row, cid in enumerate(live) if cands[cid].live]
        if generated >= max_new_tokens:
            keep = []
        if len(keep) < len(live) and keep:
            idx = torch.tensor(keep, dtype=torch.long)
            with _clock(res, "t_rollout_s"):
                sampler.select(idx)
            with _clock(res, "t_teacher_s"):
                scorer.select(idx)
        live = [live[row] for row in keep]
    policy.finalize(cands)
    for c in cands:
        c.info["stop_reason"] = stop_reason(c, max_new_tokens)
    res.tokens_teacher_scored = scorer.n_scored
    res.prefill_positions_student, res.positions_student = _positions(sampler)
    res.prefill_positions_teacher, res.positions_teacher = _positions(scorer)
    for backend in (sampler, scorer):  # KV caches of the last live rows: not needed any more
        if hasattr(backend, "release"):
            backend.release()
    if loss_top_k:
        k = loss_top_k
        res.student_topk_ids = [torch.cat(x) if x else torch.zeros((0, k), dtype=torch.long) for x in s_topk]
        res.teacher_logp_topk = [torch.cat(x) if x else torch.zeros((0, k)) for x in t_topk]
    return res


def rollout_in_groups(make_sampler, scorer, policy: Policy, prompts: list[list[int]], *, n_samples: int,
                      max_live_rows: int, step: int, group_offset: int = 0, **kw) -> RolloutResult:
    """:func:`rollout` over groups of at most ``max_live_rows`` rows, concatenated as one.

    Groups hold whole prompt groups (the ``n_samples`` candidates of a prompt stay together:
    the policies decide per prompt group), at least one prompt; ``max_live_rows <= 0`` = all
    rows at once.  Only one group is live at a time, so the student's and the teacher's KV
    caches hold at most that many rows.  ``make_sampler(row_start)`` builds the sampler of the
    rows starting at ``row_start`` (this process's row index: the ``hf`` sampler's noise is
    keyed on it, so grouping draws the same tokens).  ``policy.begin_step(step, group_offset
    + first prompt of the group)`` runs before each group, so per-group random draws match
    one big rollout; candidate ids and groups are renumbered to the whole batch's.
    ``kw``: the other arguments of :func:`rollout`.
    """
    import dataclasses

    per = len(prompts) if max_live_rows <= 0 else max(1, max_live_rows // n_samples)
    parts = []
    for g0 in range(0, len(prompts), max(per, 1)):
        policy.begin_step(step, group_offset=group_offset + g0)
        part = rollout(make_sampler(g0 * n_samples), scorer, policy, prompts[g0:g0 + per],
                       n_samples=n_samples, **kw)
        for c in part.cands:
            c.cid += g0 * n_samples
            c.group += g0
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for f in dataclasses.fields(RolloutResult):
        vals = [getattr(p, f.name) for p in parts]
        if isinstance(vals[0], list):
            merged[f.name] = [x for v in vals for x in v]
        else:  # counts add up; a position count a backend does not keep (None) stays None
            merged[f.name] = None if any(v is None for v in vals) else sum(vals)
    return RolloutResult(**merged)


def _trim_padding(ch):
    """Drop trailing columns that are padding in every row (all rows ended before them), so
    the teacher does not score them; a no-op for the hf sampler, which stops the chunk there."""
    any_valid_C = ch.valid_BC.any(0)
    if bool(any_valid_C.all()) or not bool(any_valid_C.any()):
        return ch
    C = int(any_valid_C.nonzero().max()) + 1
    for name in ("tokens_BC", "valid_BC", "logp_BC", "topk_ids_BCK", "topk_logp_BCK"):
        setattr(ch, name, getattr(ch, name)[:, :C])
    return ch
