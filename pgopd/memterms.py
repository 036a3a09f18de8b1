"""The terms of the memory plan: per phase of one training step, what one GPU holds, in bytes.

Pure arithmetic (no torch).  Each term names its source in a comment; ``pgopd.memplan`` turns
a config into :class:`PlanInputs` and the phases into a :class:`~pgopd.memplan.Plan`; the phase
list and the checks against measurement are described there and in docs/memory.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .memshapes import GIB, Shape

#: DeepSpeed's zero_optimization.reduce_bucket_size default (deepspeed/runtime/zero/config.py: 5e8)
DS_REDUCE_BUCKET = 500_000_000
#: DeepSpeed's stage3_max_live_parameters default (1e9): with max_reuse_distance also 1e9 by
#: default, parameters reused within the step (checkpointed recompute) stay gathered up to it
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
#: DeepSpeed's stage3_param_persistence_threshold default (deepspeed/runtime/zero/config.py: 1e5):
#: ZeRO-3 does not partition a parameter of at most this many elements
#: (partition_parameters.py ``_partition_param``: ``param.ds_persist``), every rank holds it whole
#: and it is never gathered or released (measured: the bench's attention matrices, 2026-12-05)
DS_PARAM_PERSISTENCE = 100_000
#: what a sleeping vLLM engine keeps (sleep frees weights and KV cache; its persistent
#: sampler/input buffers and, with CUDA graphs, the graph pool stay): the ~0.3-1 GiB seen on GPUs
#: (issue 21); an estimate until ``pgopd preflight`` measures it
VLLM_ASLEEP_GIB = {True: 1.0, False: 0.3}   # keyed by "CUDA graphs on"
#: vLLM's default gpu_memory_utilization
VLLM_DEFAULT_UTIL = 0.9


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PlanInputs:
    """Everything the arithmetic reads; :func:`inputs_from_config` fills it from a config."""
    student: Shape
    teacher: Shape
    rows: int                        # rollout rows of this rank per step (prompts x n_samples)
    prompt_tokens: int
    max_new_tokens: int
    budget_gib: float                # GiB one GPU exposes
    world: int = 1                   # data-parallel ranks (ZeRO shards over them)
    rollout_chunk: int = 256         # train.chunk_size: positions the teacher scores at once
    micro_tokens: int = 0            # train.max_tokens_per_micro_batch (0 = every row at once)
    logprob_chunk: int = 0           # train.logprob_chunk_tokens (0 = every position at once)
    live_rows: int = 0               # train.max_live_rows (0 = every row of the rank)
    zero_stage: int = 0
    dtype_bytes: int = 2             # student weights/activations: 2 (bf16) or 4 (fp32)
    teacher_dtype_bytes: int = 2
    gradient_checkpointing: bool = False
    teacher_offload: bool = False
    backend: str = "hf"              # rollout backend: hf | vllm
    vllm_mode: str = "separate"
    vllm_util: float | None = None   # None: vLLM's default, 0.9
    vllm_graphs: bool = True         # CUDA graphs (enforce_eager false / auto on GPU)
    reserve_gib: float = 0.0         # CUDA context, NCCL buffers, allocator fragmentation
    budget_name: str = "budget"      # where budget_gib came from, for messages
    reduce_bucket: int = DS_REDUCE_BUCKET  # DeepSpeed reduce_bucket_size (elements)
    # the rollout loop releases the sampler's and the scorer's KV caches when it ends
    # (pgopd/rollout/loop.py, 2026-12-05); before that the last row group's teacher KV stayed
    # through the update.  True models code that keeps it.
    teacher_kv_kept: bool = False

    @property
    def seq_len(self) -> int:
        return self.prompt_tokens + self.max_new_tokens

    @property
    def live(self) -> int:
        return min(self.live_rows or self.rows, self.rows)

    @property
    def micro_batch_tokens(self) -> int:
        """Tokens of the largest micro-batch: whole sequences (worst case all at full length)
        up to the budget, at least one sequence."""
        total = self.rows * self.seq_len
        if not self.micro_tokens:
            return total
        return min(total, max(1, self.micro_tokens // self.seq_len) * self.seq_len)

    @property
    def logits_chunk_tokens(self) -> int:
        return min(self.logprob_chunk or self.micro_batch_tokens, self.micro_batch_tokens)

    @property
    def util(self) -> float:
        return VLLM_DEFAULT_UTIL if self.vllm_util is None else self.vllm_util


# ----------------------------------------------------------------------------- phases
@dataclass
class Term:
    name: str
    bytes: float
    knobs: tuple = ()     # config keys that shrink this term
    note: str = ""
    #: the moments of its phase this term is alive in (() = the whole phase), or a dict
    #: {moment: share of ``bytes`` alive then} for a term whose size differs by moment (the
    #: head's gradient, ZeRO's gathered parameters and reduce buffers); see :class:`Phase`
    moments: tuple | dict = ()

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def _share(moments, m: str) -> float:
    if not moments:
        return 1.0
    if isinstance(moments, dict):
        return moments.get(m, 0.0)
    return 1.0 if m in moments else 0.0


def moment_bytes(items) -> dict:
    """``items``: (bytes, moments) pairs.  Bytes alive at each named moment: the terms of that
    moment (their share of ``bytes`` then, when ``moments`` is a dict) plus those alive
    throughout (empty ``moments``); {} when no term names a moment."""
    items = list(items)
    names = list(dict.fromkeys(m for _, ms in items for m in ms))
    return {m: sum(b * _share(ms, m) for b, ms in items) for m in names}


def peak_bytes(items) -> float:
    """The phase's peak: the largest moment, or the sum of everything when it has no moments."""
    items = list(items)
    by = moment_bytes(items)
    return max(by.values()) if by else sum(b for b, _ in items)


@dataclass
class Phase:
    """The terms one GPU holds in a phase.  A phase whose terms peak at different moments (the
    update: the start of backward vs ZeRO's reduces) holds the largest moment, not the sum:
    a term tagged with ``moments`` counts only in those, an untagged one in all."""
    name: str
    terms: list = field(default_factory=list)

    def moments(self) -> dict:
        return moment_bytes([(t.bytes, t.moments) for t in self.terms])

    @property
    def binding(self) -> str:
        """The moment that sets the phase's bytes ("" when the phase has no moments)."""
        by = self.moments()
        return max(by, key=by.get) if by else ""

    @property
    def bytes(self) -> float:
        return peak_bytes((t.bytes, t.moments) for t in self.terms)

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def grad_bytes(x: PlanInputs) -> int:
    """Bytes per gradient element DeepSpeed keeps: ``train.bf16_precision_keys`` sets
    ``data_types.grad_accum_dtype: fp32`` under ZeRO 1-3, so the gradient partitions are fp32
    (stage_1_and_2.py:1270 / stage3.py:791: ``dtype=self.gradient_accumulation_dtype``); at
    stage 0 (and in fp32) they have the weights' dtype."""
    return 4 if x.zero_stage >= 1 else x.dtype_bytes


#: ``communication_data_type: fp32`` (train.bf16_precision_keys): ZeRO-3's reduce bucket has the
#: communication dtype (stage3.py:475 ``comm_dtypes = {self.communication_data_type}``, :782)
COMM_BYTES = 4


def student_state_terms(x: PlanInputs, training: bool = True) -> list[Term]:
    """Weights, gradients and optimizer states (fp32 master + Adam m, v) under ZeRO stage s
    (ZeRO paper, Rajbhandari et al. 2020): stage >= 1 shards the optimizer states over the
    ranks, >= 2 the gradients, 3 the weights.  Gradients: :func:`grad_bytes` (fp32 under ZeRO
    1-3; ZeRO-1 keeps an fp32 ``grad_accum`` of every parameter, stage_1_and_2.py:1237, not
    measured here).  ZeRO-3 holds its gradient partition (stage3.py:791, ``torch.zeros``) and
    its fp32 reduce bucket (stage3.py:782, ``torch.empty(reduce_bucket_size)``) from init.
    ZeRO-2's gradient partition exists only from a backward to the step (stage_1_and_2.py:1268
    ``_build_compact_grad_partition_buffer``: made at the first reduce, released in step): it is
    a term of the update and step phases only (``training``)."""
    P, db, W, s = x.student.params, x.dtype_bytes, x.world, x.zero_stage
    gb = grad_bytes(x)
    opt_bytes = (4 if db < 4 else 0) + 8      # a master copy only under mixed precision
    zk = () if s == 3 else ("train.zero_stage",)
    # ZeRO-3: the persistent (small) parameters whole on every rank, the rest partitioned
    small = x.student.small_params(DS_PARAM_PERSISTENCE) if s >= 3 else 0
    wbytes = db * ((P - small) / W + small) if s >= 3 else db * P
    out = [Term("student weights", wbytes, zk, f"{P / 1e9:.2f}B params x {db} B" +
                (f" ({small:.3g} in tensors <= 1e5 elements, not partitioned)" if small else "")),
           Term("student gradients", gb * P / (W if s >= 2 else 1) if training or s != 2 else 0,
                zk if s < 2 else (), (f"{gb} B/param" if training or s != 2 else
                                      "ZeRO-2: only from backward to step")),
           Term("optimizer states", opt_bytes * P / (W if s >= 1 else 1), zk,
                f"{opt_bytes} B/param" + (f", sharded over {W}" if s >= 1 and W > 1 else ""))]
    if s == 3:
        out.append(Term("ZeRO-3 reduce bucket", COMM_BYTES * x.reduce_bucket, (),
                        f"reduce_bucket_size {x.reduce_bucket:.3g} elements x {COMM_BYTES} B, held from init"))
    return out


def teacher_kv_bytes(x: PlanInputs) -> float:
    """K and V of every teacher layer for the live rows at full length."""
    return x.live * x.seq_len * x.teacher.kv_bytes_per_token(x.teacher_dtype_bytes)


def _resident(x: PlanInputs, phase: str) -> list[Term]:
    """What every phase holds: student states, the teacher (unless offloaded after the rollout),
    its KV kept from the rollout, vLLM (awake or asleep) and the runtime reserve."""
    training = phase in ("update", "step", "sync")
    out = student_state_terms(x, phase in ("update", "step"))
    if not (training and x.teacher_offload):  # train.py moves the teacher to CPU after the rollout
        out.append(Term("teacher weights", x.teacher_dtype_bytes * x.teacher.params,
                        ("train.teacher_offload",) if training else (),
                        f"{x.teacher.params / 1e9:.2f}B params x {x.teacher_dtype_bytes} B"))
    if training and x.teacher_kv_kept:  # .to("cpu") moves parameters, not the scorer's cache
        out.append(Term("teacher KV kept after rollout", teacher_kv_bytes(x), ("train.max_live_rows",),
                        "the last row group's cache (TeacherScorer.kv)"))
    if x.backend == "vllm":
        asleep = phase in ("update", "step") and x.vllm_mode == "colocate"
        if asleep:
            out.append(Term("vLLM asleep (buffers, graphs)", VLLM_ASLEEP_GIB[x.vllm_graphs] * GIB, (),
                            "estimate; a sleeping engine keeps persistent buffers and CUDA graphs"))
        else:
            knobs = ("train.vllm.mode",) if phase in ("update", "step") else ("train.vllm.gpu_memory_utilization",)
            out.append(Term("vLLM reservation", x.util * x.budget_gib * GIB, knobs,
                            f"gpu_memory_utilization {x.util} x {x.budget_gib:.1f} GiB"))
    if x.reserve_gib:
        out.append(Term("runtime reserve", x.reserve_gib * GIB, (), "CUDA context, NCCL, fragmentation"))
    return out


def zero3_gathered_bytes(x: PlanInputs) -> float:
    """ZeRO-3 full parameters alive in forward/backward: DeepSpeed releases a module's
    parameters only when they are not reused within max_reuse_distance (1e9) or when more than
    stage3_max_live_parameters (1e9) are live, so with the defaults every parameter up to 1e9
    elements stays gathered (bench/memory.json, ZeRO-3 cases ``layer`` and ``kv``, measured
    with a complete parameter trace, 2026-12-05).  Persistent parameters (at most
    :data:`DS_PARAM_PERSISTENCE` elements) are resident whole (:func:`student_state_terms`) and
    not gathered."""
    s = x.student
    return x.dtype_bytes * min(s.params - s.small_params(DS_PARAM_PERSISTENCE), DS_MAX_LIVE_PARAMETERS)


def zero3_gathered_terms(x: PlanInputs) -> list[Term]:
    """The gathered parameters by moment of backward.  With a complete trace each module's
    parameters are released after its backward when no later use is within
    max_reuse_distance (partitioned_param_coordinator.py ``__params_to_release``): at the start
    of backward all are gathered (:func:`zero3_gathered_bytes`); at the layers' reduces the
    layers whose gradients filled the bucket before its first reduce are released
    (:func:`reduce_fills`); at the last reduce only the tied embedding, used last, is left
    (measured 2026-12-05, ZeRO-3 case ``kv``: 14.0, 11.0 and 2.0 MiB; case ``bucket``: one of
    its two layers released at the first reduce).  An untied head is reduced right after its
    chunks, while everything is still gathered."""
    s, db = x.student, x.dtype_bytes
    layer_np = sum(n for n in s.layer_tensor_sizes() if n > DS_PARAM_PERSISTENCE)
    done = min(s.layers, (x.reduce_bucket - s.hidden) // s.layer_params) if s.layer_params <= x.reduce_bucket else 0
    full = zero3_gathered_bytes(x)
    emb = db * s.embedding if s.embedding > DS_PARAM_PERSISTENCE else 0
    # what is left to use, up to the live-parameter cap the prefetch keeps to
    left = db * min(s.params - s.small_params(DS_PARAM_PERSISTENCE) - done * layer_np, DS_MAX_LIVE_PARAMETERS)
    by = {START: full, HEAD: full, LAYERS: max(emb, left), LAST: min(full, emb) if s.tied else full}
    return [_by_moment("ZeRO-3 gathered parameters", by, f"every parameter up to stage3_max_live_parameters (1e9); "
                       f"at the layers' reduces less the {done} layers released before the first, at the last reduce "
                       + ("the embedding" if s.tied else "all (the untied head's reduce)"))]


def _by_moment(name: str, by: dict, note: str) -> Term:
    """A term whose size differs by moment: its bytes are the largest, each moment its share."""
    top = max(by.values())
    return Term(name, top, (), note, {m: (b / top if top else 0.0) for m, b in by.items()})


def _rollout_terms(x: PlanInputs) -> list[Term]:
    s, V, L = x.student, x.student.vocab, x.live
    out = [Term("teacher KV (live rows)", teacher_kv_bytes(x), ("train.max_live_rows",),
                f"{L} rows x {x.seq_len} tokens")]
    if x.backend == "hf":  # vLLM's KV lives inside its reservation
        out.append(Term("student KV (live rows)", L * x.seq_len * s.kv_bytes_per_token(x.dtype_bytes),
                        ("train.max_live_rows",), f"{L} rows x {x.seq_len} tokens"))
        # the prefill's logits cover every prompt position, then one fp32 row per live row
        out.append(Term("sampler logits", L * V * max(x.prompt_tokens * x.dtype_bytes, x.dtype_bytes + 16),
                        ("train.max_live_rows",), f"{L} rows x {x.prompt_tokens} prompt positions"))
        if x.zero_stage == 3:
            out.append(Term("ZeRO-3 gathered parameters", zero3_gathered_bytes(x), (), "up to 1e9 parameters"))
    return out


#: the moments of the scoring phase
T_LAYER, T_HEAD = "teacher layer", "teacher LM head"


def _scoring_terms(x: PlanInputs) -> list[Term]:
    """The teacher's forward of one chunk of C positions for the live rows at full length."""
    t, L, db, C = x.teacher, x.live, x.teacher_dtype_bytes, x.rollout_chunk
    kv = teacher_kv_bytes(x)
    # two moments: a decoder layer runs (the KV's growth, GQA's expansion, the MLP), then the LM
    # head over the chunk (its logits); the KV is held in both (measured 2026-12-05, bench case
    # act: 33.8 MiB = KV 1.0 + logits 32.0, where the sum of both moments would be 42.0)
    out = [Term("teacher KV (live rows)", kv, ("train.max_live_rows",), f"{L} rows x {x.seq_len} tokens"),
           # transformers' DynamicLayer.update: keys = torch.cat([keys, new]): old + new of one layer
           Term("teacher KV growth (torch.cat)", kv / t.layers, ("train.max_live_rows",), "one layer's K and V",
                (T_LAYER,))]
    if t.heads != t.kv_heads:
        # transformers' sdpa_attention_forward calls repeat_kv (a copy of K and V at all heads)
        # unless SDPA's enable_gqa can be used, which it is not when an attention mask is given
        out.append(Term("teacher GQA K/V expanded", 2 * L * x.seq_len * t.q_dim * db, ("train.max_live_rows",),
                        f"{t.heads} heads (KV has {t.kv_heads}), one layer", (T_LAYER,)))
    # one layer's SwiGLU: gate, up and act(gate) * up alive together, over the chunk or, in the
    # prefill, over the prompt (conservatively counted with the full-length KV)
    n_mlp = max(C, x.prompt_tokens)
    out.append(Term("teacher layer transient", 3 * L * n_mlp * t.intermediate * db, ("train.chunk_size",),
                    f"{L} rows x {n_mlp} positions, MLP", (T_LAYER,)))
    # pgopd.logprobs.teacher_pieces, per chunk of at most logprob_chunk positions:
    # ``logits_CV = lm_head(h).float()``: the head's output (db) and its fp32 copy (4, mixed
    # precision only; the db output is freed once copied); then logsumexp's fp32 temporary
    # (at::logsumexp: ``(self - maxes).exp_()``, exponentiated in place): 8 B per logit.  The
    # loop frees each chunk's fp32 logits before the next chunk's are made (``del logits_CV``,
    # 2026-12-05; before, the previous chunk's were still alive then: 4 + db + 4 = 10 B in bf16)
    n = min(L * C, x.logprob_chunk or L * C)
    per = max(8, db + (4 if db < 4 else 0))
    out.append(Term("teacher logits", n * t.vocab * per,
                    ("train.logprob_chunk_tokens", "train.max_live_rows"), f"{n} positions at a time x {per} B",
                    (T_HEAD,)))
    return out


def activation_bytes(x: PlanInputs) -> float:
    """Activations one micro-batch keeps for backward once its forward is done."""
    s, db, T = x.student, x.dtype_bytes, x.micro_batch_tokens
    final_norm = (4 + 2 * db) * s.hidden  # the last RMSNorm, whose output feeds the LM head
    if x.gradient_checkpointing:  # only each layer's input
        return T * (s.layers * db * s.hidden + final_norm)
    return T * (s.layers * s.act_bytes_per_token_layer(db) + final_norm)


def logits_bytes_per_element(db: int) -> int:
    """One logit of the LM-head chunk in backward (pgopd.logprobs: the chunk is recomputed):
    the head's output (db), its fp32 copy (mixed precision only), logsumexp's backward
    softmax and the fp32 gradient of the logits (4 + 4), that gradient cast back to db."""
    return db + 8 + ((4 + db) if db < 4 else 0)


def logits_bytes(x: PlanInputs) -> float:
    return x.logits_chunk_tokens * x.student.vocab * logits_bytes_per_element(x.dtype_bytes)


def head_grad_bytes(x: PlanInputs) -> float:
    """The LM head's weight gradient at its largest: autograd's input buffer sums every LM-head
    chunk's (and, tied, the embedding's) contribution before AccumulateGrad runs once; a new
    contribution is added to the held sum out of place, so the sum, the contribution and their
    new sum are alive together: 3 x V x h (measured 2026-12-05 at the tied embedding's backward:
    192 MiB over the layers' end for V x h = 64 MiB, bench cases head and head4); otherwise
    the sum alone (V x h; :func:`_update_terms`)."""
    return 3 * x.dtype_bytes * x.student.embedding


#: the moments of the update (a phase's bytes are its largest moment, :class:`Phase`)
START, HEAD, LAYERS, LAST = "backward start", "head gradient", "layer reduces", "last reduce"


def largest_layer_tensor(s: Shape) -> int:
    """Elements of the largest parameter inside a decoder layer (an MLP or attention matrix)."""
    return max(s.layer_tensor_sizes())


def reduce_fills(s: Shape, bucket: int) -> tuple[int, int, int]:
    """DeepSpeed's reduce bucket through one backward, in elements: (the largest fill reduced
    while the layers run, the fill the epilogue reduces at the end of backward, the largest
    fill of all).  Gradients arrive in backward order (an untied head first, the final norm,
    each layer's tensors last layer first, the input / tied embedding last); a gradient that
    does not fit what is left of the bucket first has the bucket reduced (stage_1_and_2.py:1421
    ``bucket.elements + param.numel() > self.reduce_bucket_size``; stage3.py:1583 likewise), and
    one larger than the whole bucket is reduced on its own (stage_1_and_2.py
    ``extra_large_param_to_reduce``; stage3.py:1626 copies only what fits), not through it.  So a reduce covers at
    most the bucket, often less (the bench's 20M-element bucket is reduced at 17M)."""
    order = ([] if s.tied else [s.embedding]) + [s.hidden] + list(reversed(s.layer_tensor_sizes())) * s.layers \
        + [s.embedding]
    fill, fills = 0, []
    for n in order:
        if fill and fill + n > bucket:
            fills.append(fill)
            fill = 0
        if n <= bucket:
            fill += n
    return max(fills, default=0), fill, max(fills + [fill])


def reduce_at(x: PlanInputs, at: str) -> tuple[int, int]:
    """(the bucket's fill :func:`reduce_fills` gives for moment ``at``, the largest parameter
    reduced then): during the layers (LAYERS) a layer matrix, at the end of backward (LAST) the
    embedding."""
    s = x.student
    layers, last, _ = reduce_fills(s, x.reduce_bucket)
    return (layers, largest_layer_tensor(s)) if at == LAYERS else (last, s.embedding)


def zero2_reduce_elements(x: PlanInputs, at: str) -> float:
    """Elements ZeRO-2 reduces at once during the layers (``at`` = LAYERS) or at the end of
    backward (LAST): a bucket's fill (:func:`reduce_fills`), or a parameter larger than the
    bucket (reduced on its own; stage_1_and_2.py:1447 ``extra_large_param_to_reduce``, its
    slices reduced one destination partition at a time, so at most one partition's worth)."""
    fill, big = reduce_at(x, at)
    return max(fill, min(big, -(-x.student.params // x.world)) if big > x.reduce_bucket else 0)


def zero3_reduce_bytes(x: PlanInputs, at: str) -> float:
    """ZeRO-3's reduce-scatter of one bucket (stage3.py:1913 ``__avg_scatter_grads``) during
    the layers (``at`` = LAYERS) or at the end of backward (LAST): ``reduce_scatter_coalesced``
    flattens the gradients into one fp32 buffer (4 B x the bucket's fill, :func:`reduce_fills`);
    a parameter larger than the bucket is not copied into the fp32 bucket (stage3.py:1626), so
    its bf16 gradient is first cast to fp32 (stage3.py:1920): 4 B x that parameter."""
    fill, big = reduce_at(x, at)
    # a parameter larger than the bucket: its fp32 cast (bf16 only); reduce_scatter_coalesced
    # of one tensor divisible by the world reduces that cast in place (coalesced_collectives.py
    # ``tensors[0].view(-1)``: "avoid a memory allocation"), else it pads into a new buffer
    alone = ((COMM_BYTES if x.dtype_bytes < 4 else 0) + (COMM_BYTES if big % x.world else 0)) * big
    return max(COMM_BYTES * fill, alone if big > x.reduce_bucket else 0)


def _update_terms(x: PlanInputs) -> list[Term]:
    """Forward + backward of one micro-batch, as the largest of four moments of backward (the
    terms of different moments are not alive together; bench/memory.json measures the max):

    * backward start: every kept activation, the LM-head chunk recomputed (fwd+bwd) and the
      head's running gradient sum (of the chunks done before);
    * head gradient: a chunk's weight gradient (or the tied embedding's, at the end) added into
      that sum out of place (the sum, it and the new sum: :func:`head_grad_bytes`), the chunk's
      logits gradient in the weights' dtype;
    * layer reduces: the decoder layers' backward, last layer first; at its start nearly every
      activation is still alive, plus the head's summed gradient, one layer's recompute and MLP
      gradients, one layer's full gradient, and ZeRO's reduce of one bucket (or of a layer
      matrix larger than it);
    * last reduce: the tied embedding's gradient (the largest parameter, its hook fires after
      the embedding's backward, the very end of backward: every activation is freed by then)
      and ZeRO's reduce of it.  An untied head is reduced right after the head's chunks, while
      the activations are alive: they are counted in this moment then.
    """
    s, db, T = x.student, x.dtype_bytes, x.micro_batch_tokens
    mb_knob = ("train.max_tokens_per_micro_batch",)
    act_knobs = mb_knob + (() if x.gradient_checkpointing else ("train.gradient_checkpointing",))
    act_at = (START, HEAD, LAYERS) + (() if s.tied else (LAST,))
    many = -(-T // x.logits_chunk_tokens) > 1   # more than one LM-head chunk
    per_logit = logits_bytes_per_element(db)
    out = [Term("activations (one micro-batch)", activation_bytes(x), act_knobs,
                f"{T} tokens" + (", checkpointed" if x.gradient_checkpointing else ""), act_at),
           # autograd's input buffer of the head's weight sums the chunks' contributions (and,
           # tied, the embedding's): while a chunk's logits are worked on, the running sum of the
           # chunks done (none at the first); when a chunk's weight gradient, or the tied
           # embedding's, is added: the sum, it and the new sum (:func:`head_grad_bytes`);
           # afterwards the sum alone, up to the hook (tied: after the embedding's backward),
           # whose reduce reads it (measured 2026-12-05, case tiedhead: 208.9 MiB at the second
           # chunk = the sum 64 + its logits 144)
           Term("LM-head gradient", head_grad_bytes(x), (), "the running sum; 3x while a contribution is added",
                {START: 1 / 3 if many else 0.0, HEAD: 1.0 if many or s.tied else 1 / 3, LAYERS: 1 / 3, LAST: 1 / 3}),
           # a chunk recomputed (fwd+bwd) at the start; when its weight gradient is made only the
           # logits' gradient in the weights' dtype is left
           Term("log-prob logits (fwd+bwd)", logits_bytes(x), ("train.logprob_chunk_tokens",),
                f"{x.logits_chunk_tokens} positions x {s.vocab} vocab x {per_logit} B",
                {START: 1.0, HEAD: db / per_logit})]
    # backward through one layer: with checkpointing, the layer's recomputed activations, and the
    # SwiGLU's backward: after down_proj's backward its input act(gate) * up (saved for
    # down_proj's weight gradient) is freed while the gradient of that product and those of its
    # two factors are alive: 2 x T x i more at the peak (measured 2026-12-05, ZeRO-3 case
    # ``recompute``: 199.8 MiB over the layer's start against 135.8 MiB recompute + 64.0 MiB)
    recompute = T * s.act_bytes_per_token_layer(db) if x.gradient_checkpointing else 0
    out.append(Term("one layer's backward", recompute + 2 * T * s.intermediate * db, mb_knob,
                    f"{T} tokens: " + ("recomputed activations + " if recompute else "") + "MLP gradients",
                    (LAYERS,)))
    if x.zero_stage >= 2:
        # autograd makes a parameter's full gradient before ZeRO's hook copies it into the bucket
        out.append(Term("one layer's full gradient", db * s.layer_params, (), "before the reduce hook", (LAYERS,)))
    if x.zero_stage == 2:
        # stage_1_and_2.py:3266 setup_buckets: allocated at the first gradient hook of a
        # backward (process_gradients), in the weights' dtype (``_gradient_reduction_buffer_dtype``:
        # ZeRO-2 does not use the grad_accum attribute)
        out.append(Term("ZeRO-2 reduce bucket", x.dtype_bytes * x.reduce_bucket, (),
                        f"reduce_bucket_size {x.reduce_bucket:.3g} elements", (LAYERS, LAST)))
        # allreduce_bucket (stage_1_and_2.py:2367, :2377): ``self.flatten(bucket)`` copies the
        # bucket's slices and ``.to(fp32)`` casts that copy for communication_data_type fp32;
        # both are alive during the all-reduce (6 B in bf16).  A parameter larger than the bucket
        # is all-reduced one partition's slice at a time (allreduce_and_scatter: a slice longer
        # than the bucket goes alone), and ``flatten`` of one tensor is a view of it
        # (torch/csrc/utils/tensor_flatten.h ``flatten_dense_tensors``: ``if (tensors.size() == 1)
        # return flatten(tensors[0])``): only the fp32 cast is new (4 B; measured 2026-12-05)
        cast = 4 if x.dtype_bytes < 4 else 0
        by, notes = {}, []
        for at in (LAYERS, LAST):
            fill, big = reduce_at(x, at)
            n = zero2_reduce_elements(x, at)
            alone = big > x.reduce_bucket and n > fill
            per = (cast or x.dtype_bytes) if alone else x.dtype_bytes + cast
            by[at] = per * n
            notes.append(f"{at}: {n:.3g} elements x {per} B" + (" (one slice, a view)" if alone else ""))
        out.append(_by_moment("ZeRO-2 reduce copy + fp32 cast", by, "; ".join(notes)))
    if x.zero_stage == 3:
        out.append(_by_moment("ZeRO-3 reduce-scatter", {m: zero3_reduce_bytes(x, m) for m in (LAYERS, LAST)},
                              "fp32 flat buffer of a bucket's fill, or the fp32 cast of a larger parameter"))
        out += zero3_gathered_terms(x)
    return out


def _step_terms(x: PlanInputs) -> list[Term]:
    """DeepSpeed's step.  ZeRO-3 (and ZeRO-0 under mixed precision) makes an fp32 flat copy of
    the rank's gradient partition (stage3.py:2686 ``_prepare_fp32_grad_for_sub_group``:
    ``self.flatten(...)``), and torch's AdamW one fp32 temporary of the partition (foreach:
    ``_foreach_sqrt(exp_avg_sq)``; on CPU the single-tensor path makes the same ``denom``).
    ZeRO-1/2 with fp32 gradients step on the fp32 partition itself (stage_1_and_2.py step:
    ``flat_grad_partition.to(fp32)`` returns the same tensor, no copy); before that the
    gradient norm casts each parameter's gradient slice to fp64 (stage_1_and_2.py:2684,
    ``g.data.to(get_norm_dtype())``, zero/utils.py:59: double): 8 B x the largest slice, which
    is freed before the optimizer runs, so the phase holds the larger of the two.  (ZeRO-3's
    norm copy, 8 B x the largest parameter / world, is below its copy + AdamW.)"""
    shard = x.world if x.zero_stage >= 1 else 1
    P = x.student.params
    zk = ("train.zero_stage",) if x.zero_stage < 1 else ()
    adam = Term("AdamW temporary", 4 * P / shard, zk, "sqrt(v): one fp32 buffer of the partition")
    if x.zero_stage in (1, 2):
        n = min(x.student.largest_tensor, -(-P // shard))
        norm = Term("fp64 gradient-norm copy", 8 * n, (), f"{n:.3g} elements of one parameter x 8 B")
        return [max(adam, norm, key=lambda t: t.bytes)]
    out = []
    if x.dtype_bytes < 4:
        out.append(Term("fp32 gradient partition", 4 * P / shard, zk, "the partition flattened for the fp32 master"))
    out.append(adam)
    return out


def _sync_terms(x: PlanInputs) -> list[Term]:
    """train._full_named_params + VLLMEngine.update_weights: under ZeRO-3 every rank gathers
    all student weights and clones them, then wakes vLLM (weights, then KV) while the clones
    are held; under ZeRO 0-2 the tensors are views of the weights (nothing extra)."""
    if x.backend != "vllm" or x.zero_stage != 3:
        return []
    full = x.dtype_bytes * x.student.params
    return [Term("ZeRO-3 gathered weights (all)", full, ("train.zero_stage",), "GatheredParameters(all)"),
            Term("weight clones for vLLM", full, ("train.zero_stage",), "p.detach().clone()")]


PHASES = ("rollout", "scoring", "update", "step", "sync")


def phases(x: PlanInputs) -> list[Phase]:
    extra = {"rollout": _rollout_terms(x), "scoring": _scoring_terms(x), "update": _update_terms(x),
             "step": _step_terms(x), "sync": _sync_terms(x)}
    return [Phase(name, _resident(x, name) + extra[name]) for name in PHASES]
