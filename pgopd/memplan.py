"""The memory plan: per rank and per phase of one training step, the bytes we expect on the GPU.

Pure arithmetic (no torch), so ``pgopd plan`` and the workflow's load-time check run anywhere.
The terms follow ``shared/notes/gpu-memory.md`` (ZeRO paper model states, per-token activation
and logit sizes, KV bytes per token) and are checked against measurements by
``bench/memory.py`` on CPU (fp32: every byte size is a parameter, ``dtype_bytes``).

Phases of one step (each rank):
  * rollout:  the student samples a chunk (vLLM reservation, or hf: student KV of the live rows
              and the logits of one chunk), while the teacher's KV of the live rows is held;
  * scoring:  the teacher scores the chunk (its KV of the live rows + the logits of one chunk),
              interleaved with the rollout, so the sampler's memory is still held;
  * update:   forward/backward of one micro-batch (activations + one log-prob chunk of logits);
  * step:     the optimizer step (one fp32 scratch buffer of the optimizer's partition).
Resident in every phase: the student's model states (ZeRO-sharded), the teacher's weights
(unless ``train.teacher_offload`` during update/step), the vLLM reservation (unless asleep).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ConfigError

GIB = 1024 ** 3

#: published config.json values of the models config/paper.yaml names: the offline fallback.
KNOWN_CONFIGS = {
    "Qwen/Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "Qwen/Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=True),
    "Qwen/Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False),
}
for _c in KNOWN_CONFIGS.values():
    _c.update(model_type="qwen3", vocab_size=151936, max_position_embeddings=40960,
              rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only transformer (Qwen2/Qwen3/Llama layout)."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = True
    qk_norm: bool = True   # Qwen3 normalises q and k per head

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        return cls(vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                   heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   intermediate=c["intermediate_size"], tied=bool(c.get("tie_word_embeddings", True)),
                   qk_norm=c.get("model_type", "qwen3") == "qwen3")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def act_bytes_per_token_layer(self, db: int) -> int:
        """Bytes one decoder layer keeps for backward per token (no checkpointing).

        Counted from the tensors autograd saves in the HF Qwen3 layer (torch's fused SDPA, no
        T^2 term; measured with ``saved_tensors_hooks`` in fp32 and bf16 to within 1%): each
        RMSNorm over h keeps its fp32 input, the normalised and the scaled output (4 + 2 db per
        element); the q/k norms their fp32 input and output (4 + db); the roped q and k, v and
        the attention output (db each); the SwiGLU MLP gate, up, silu(gate) and their product.
        """
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        norms = (4 + 2 * db) * 2 * h + ((4 + db) * (q + kv) if self.qk_norm else 0)
        attn = db * (2 * q + 2 * kv)
        mlp = 4 * db * i
        return norms + attn + mlp


# ----------------------------------------------------------------------------- model shapes
def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def find_config_json(ref: str) -> Path | None:
    """config.json of a local model dir, or of the HF cache's snapshot of hub id ``ref``."""
    local = Path(ref).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    if ref.count("/") != 1 or local.exists():
        return None
    repo = hf_hub_cache() / f"models--{ref.replace('/', '--')}"
    main = repo / "refs" / "main"
    if main.is_file() and (repo / "snapshots" / main.read_text().strip() / "config.json").is_file():
        return repo / "snapshots" / main.read_text().strip() / "config.json"
    found = sorted(glob.glob(str(repo / "snapshots" / "*" / "config.json")))
    return Path(found[-1]) if found else None


def model_shape(ref: str, where: str, cfg: Config | None = None) -> Shape:
    """Shape of model ``ref`` (``where`` names it in errors: ``pairs.<pair>.<role>``)."""
    if ref == "toy":
        if cfg is None:
            raise ConfigError(f"{where}: the toy model's shape needs the config")
        from .models.tokenizer import char_vocab

        t = getattr(cfg.toy_models, where.rsplit(".", 1)[-1])
        return Shape(vocab=len(char_vocab()), hidden=t.d_model, layers=t.n_layers, heads=t.n_heads,
                     kv_heads=t.n_heads, head_dim=t.d_model // t.n_heads,
                     intermediate=t.d_ff or 4 * t.d_model, tied=True, qk_norm=False)
    path = find_config_json(ref)
    if path is not None:
        try:
            return Shape.from_config(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {path} is not a decoder config.json the memory plan can "
                              f"read ({type(e).__name__}: {e})") from None
    if ref in KNOWN_CONFIGS:
        return Shape.from_config(KNOWN_CONFIGS[ref])
    raise ConfigError(f"{where}: model {ref!r} has no config.json (not a local model dir, not in the "
                      f"Hugging Face cache {hf_hub_cache()}) and is not one of the shapes the memory "
                      f"plan knows ({', '.join(KNOWN_CONFIGS)}); download its config.json first "
                      f"(`huggingface-cli download {ref} config.json`)")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PlanInputs:
    """Everything the arithmetic reads; :func:`inputs_from_config` fills it from a config."""
    student: Shape
    teacher: Shape
    rows: int                        # rollout rows of this rank per step (prompts x n_samples)
    prompt_tokens: int
    max_new_tokens: int
    budget_gib: float
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
    reserve_gib: float = 0.0         # CUDA context, NCCL buffers, allocator fragmentation

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


def _world(cfg: Config) -> int:
    """Training processes in all (one per GPU under a launcher; see workflow.train_launcher)."""
    r = cfg.resources.train
    launched = r.launcher in ("torchrun", "deepspeed") or (r.launcher == "auto" and (r.gpu > 1 or r.nodes > 1))
    return (max(r.gpu, 1) if launched else 1) * r.nodes


def inputs_from_config(cfg: Config, pair: str, reserve_gib: float = 3.0) -> PlanInputs:
    """The plan's inputs for one pair of ``cfg`` (shapes from config.json / the known table)."""
    t = cfg.train
    p = cfg.pairs[pair]
    world = _world(cfg)
    db = 2 if t.bf16 else 4
    return PlanInputs(
        student=model_shape(p.student, f"pairs.{pair}.student", cfg),
        teacher=model_shape(p.teacher, f"pairs.{pair}.teacher", cfg),
        rows=math.ceil(t.prompts_per_step / world) * t.n_samples,
        prompt_tokens=cfg.resources.train.plan_prompt_tokens, max_new_tokens=t.max_new_tokens,
        budget_gib=cfg.resources.train.gpu_mem_gb, world=world, rollout_chunk=t.chunk_size,
        micro_tokens=t.max_tokens_per_micro_batch, logprob_chunk=t.logprob_chunk_tokens,
        live_rows=t.max_live_rows, zero_stage=t.zero_stage, dtype_bytes=db,
        teacher_dtype_bytes=db, gradient_checkpointing=t.gradient_checkpointing,
        teacher_offload=t.teacher_offload, backend=t.backend,
        vllm_mode=t.vllm.mode, vllm_util=t.vllm.gpu_memory_utilization, reserve_gib=reserve_gib)


# ----------------------------------------------------------------------------- phases
@dataclass
class Term:
    name: str
    bytes: float
    knobs: tuple = ()     # config keys that shrink this term
    note: str = ""

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass
class Phase:
    name: str
    terms: list = field(default_factory=list)

    @property
    def bytes(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def student_state_terms(x: PlanInputs) -> list[Term]:
    """Weights, gradients and optimizer states (fp32 master + Adam m, v) under ZeRO stage s:
    stage >= 1 shards the optimizer states over the ranks, >= 2 the gradients, 3 the weights."""
    P, db, W, s = x.student.params, x.dtype_bytes, x.world, x.zero_stage
    opt_bytes = (4 if db < 4 else 0) + 8      # a master copy only under mixed precision
    zk = () if s == 3 else ("train.zero_stage",)
    out = [Term("student weights", db * P / (W if s >= 3 else 1), zk if s < 3 else (),
                f"{P / 1e9:.2f}B params x {db} B"),
           Term("student gradients", db * P / (W if s >= 2 else 1), zk if s < 2 else ()),
           Term("optimizer states", opt_bytes * P / (W if s >= 1 else 1), zk,
                f"{opt_bytes} B/param" + (f", sharded over {W}" if s >= 1 and W > 1 else ""))]
    if s == 3:  # the layers gathered around the one running (current + prefetch)
        layer_params = (P - x.student.vocab * x.student.hidden * (1 if x.student.tied else 2)) / x.student.layers
        out.append(Term("ZeRO-3 gathered layers", 2 * db * layer_params))
    return out


def _resident(x: PlanInputs, phase: str) -> list[Term]:
    updating = phase in ("update", "step")
    out = student_state_terms(x)
    if not (updating and x.teacher_offload):
        out.append(Term("teacher weights", x.teacher_dtype_bytes * x.teacher.params,
                        ("train.teacher_offload",) if updating else (),
                        f"{x.teacher.params / 1e9:.2f}B params x {x.teacher_dtype_bytes} B"))
    if x.backend == "vllm" and not (updating and x.vllm_mode == "colocate"):
        util = 0.9 if x.vllm_util is None else x.vllm_util
        knobs = ("train.vllm.mode",) if updating else ("train.vllm.gpu_memory_utilization",)
        out.append(Term("vLLM reservation", util * x.budget_gib * GIB, knobs,
                        f"gpu_memory_utilization {util} x {x.budget_gib:g} GiB"
                        + (" (awake: mode separate)" if updating else "")))
    if x.reserve_gib:
        out.append(Term("runtime reserve", x.reserve_gib * GIB, (), "CUDA context, NCCL, fragmentation"))
    return out


def _rollout_terms(x: PlanInputs, scoring: bool) -> list[Term]:
    s, t, V, L = x.student, x.teacher, x.student.vocab, x.live
    out = [Term("teacher KV (live rows)", L * x.seq_len * t.kv_bytes_per_token(x.teacher_dtype_bytes),
                ("train.max_live_rows",), f"{L} rows x {x.seq_len} tokens")]
    if x.backend == "hf":  # vLLM's KV lives inside its reservation
        out.append(Term("student KV (live rows)", L * x.seq_len * s.kv_bytes_per_token(x.dtype_bytes),
                        ("train.max_live_rows",), f"{L} rows x {x.seq_len} tokens"))
        if not scoring:  # the prefill's logits cover every prompt position
            out.append(Term("sampler logits", L * V * max(x.prompt_tokens * x.dtype_bytes, x.dtype_bytes + 16),
                            ("train.max_live_rows",), f"{L} rows x {x.prompt_tokens} prompt positions"))
    if scoring:
        # the LM head runs over at most logprob_chunk of the chunk's live positions at a time
        n = min(L * x.rollout_chunk, x.logprob_chunk or L * x.rollout_chunk)
        out.append(Term("teacher logits", n * t.vocab * (x.teacher_dtype_bytes + 12),
                        ("train.logprob_chunk_tokens", "train.max_live_rows"), f"{n} positions at a time"))
    return out


def activation_bytes(x: PlanInputs) -> float:
    """Activations one micro-batch keeps for backward once its forward is done."""
    s, db, T = x.student, x.dtype_bytes, x.micro_batch_tokens
    final_norm = (4 + 2 * db) * s.hidden  # the last RMSNorm, whose output feeds the LM head
    if x.gradient_checkpointing:  # only each layer's input
        return T * (s.layers * db * s.hidden + final_norm)
    return T * (s.layers * s.act_bytes_per_token_layer(db) + final_norm)


def logits_bytes(x: PlanInputs) -> float:
    """Logits of one log-prob chunk in backward (the chunk is recomputed there): the LM-head
    output (db), its fp32 copy (mixed precision), the softmax and the logits' gradient (fp32)."""
    db = x.dtype_bytes
    return x.logits_chunk_tokens * x.student.vocab * (db + (4 if db < 4 else 0) + 8)


def grad_transient_bytes(x: PlanInputs) -> float:
    """A fresh gradient of the largest tensor (the embedding) while autograd adds it into the
    accumulated one: micro-batches, LM-head chunks and a tied head all accumulate."""
    return x.dtype_bytes * x.student.vocab * x.student.hidden


def _update_terms(x: PlanInputs) -> list[Term]:
    """Kept activations plus the larger transient of backward: the LM-head chunk (first, while
    every kept activation is alive) or, with checkpointing, one layer's recomputed activations."""
    T = x.micro_batch_tokens
    mb_knob = ("train.max_tokens_per_micro_batch",)
    act_knobs = mb_knob + (() if x.gradient_checkpointing else ("train.gradient_checkpointing",))
    out = [Term("activations (one micro-batch)", activation_bytes(x), act_knobs,
                f"{T} tokens" + (", checkpointed" if x.gradient_checkpointing else "")),
           Term("gradient accumulation transient", grad_transient_bytes(x), (),
                "a fresh embedding gradient being added")]
    logits = Term("log-prob logits (fwd+bwd)", logits_bytes(x), ("train.logprob_chunk_tokens",),
                  f"{x.logits_chunk_tokens} positions x {x.student.vocab} vocab")
    recompute = T * x.student.act_bytes_per_token_layer(x.dtype_bytes) if x.gradient_checkpointing else 0
    if recompute > logits.bytes:
        out.append(Term("one layer's recompute", recompute, mb_knob,
                        f"{T} tokens (larger than the log-prob chunk's {logits.gib:.2f} GiB)"))
    else:
        out.append(logits)
    return out


def _step_terms(x: PlanInputs) -> list[Term]:
    shard = x.world if x.zero_stage >= 1 else 1
    return [Term("optimizer step scratch", 4 * x.student.params / shard, ("train.zero_stage",) if x.zero_stage < 1 else (),
                 "one fp32 buffer of the optimizer's partition")]


PHASES = ("rollout", "scoring", "update", "step")


def phases(x: PlanInputs) -> list[Phase]:
    extra = {"rollout": _rollout_terms(x, False), "scoring": _rollout_terms(x, True),
             "update": _update_terms(x), "step": _step_terms(x)}
    return [Phase(name, _resident(x, name) + extra[name]) for name in PHASES]


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    pair: str
    inputs: PlanInputs
    phases: list

    @property
    def budget_bytes(self) -> float:
        return self.inputs.budget_gib * GIB

    @property
    def fits(self) -> bool:
        return all(p.bytes <= self.budget_bytes for p in self.phases)

    def problems(self) -> list[str]:
        """One line per phase over budget, naming the knobs of its largest reducible terms."""
        out = []
        for p in self.phases:
            if p.bytes <= self.budget_bytes:
                continue
            big = sorted((t for t in p.terms if t.knobs), key=lambda t: -t.bytes)
            knobs = list(dict.fromkeys(k for t in big for k in t.knobs))
            terms = ", ".join(f"{t.name} {t.gib:.1f}" for t in big[:3])
            out.append(f"pair {self.pair}: phase {p.name} needs {p.gib:.1f} GiB per GPU, over "
                       f"resources.train.gpu_mem_gb = {self.inputs.budget_gib:g} (largest: {terms} GiB); "
                       f"change {', '.join(knobs) or 'resources.train.gpu_mem_gb'}")
        return out

    def warnings(self) -> list[str]:
        """Not fatal: vLLM preempts and recomputes (slowly) when the live rows' KV does not fit."""
        x = self.inputs
        if x.backend != "vllm":
            return []
        util = 0.9 if x.vllm_util is None else x.vllm_util
        room = util * x.budget_gib * GIB - x.dtype_bytes * x.student.params - GIB  # ~1 GiB: graphs, buffers
        need = x.live * x.seq_len * x.student.kv_bytes_per_token(x.dtype_bytes)
        if room >= need:
            return []
        return [f"pair {self.pair}: the vLLM reservation leaves {max(room, 0) / GIB:.1f} GiB for KV, the "
                f"{x.live} live rows need {need / GIB:.1f} GiB (vLLM will preempt and recompute); raise "
                f"train.vllm.gpu_memory_utilization or lower train.max_live_rows"]

    def to_json(self) -> dict:
        return {"pair": self.pair, "fits": self.fits, "budget_gib": self.inputs.budget_gib,
                "inputs": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
                           for k, v in dataclasses.asdict(self.inputs).items()},
                "student_params": self.inputs.student.params, "teacher_params": self.inputs.teacher.params,
                "phases": [{"phase": p.name, "gib": round(p.gib, 3), "fits": p.bytes <= self.budget_bytes,
                            "terms": [{"term": t.name, "gib": round(t.gib, 3), "knobs": list(t.knobs),
                                       "note": t.note} for t in p.terms]} for p in self.phases],
                "problems": self.problems(), "warnings": self.warnings()}

    def table(self) -> str:
        x = self.inputs
        lines = [f"pair {self.pair}: {x.world} rank(s), {x.rows} rows/rank x {x.seq_len} tokens, "
                 f"{x.live} live, micro-batch {x.micro_batch_tokens} tokens, log-prob chunk "
                 f"{x.logits_chunk_tokens}, ZeRO-{x.zero_stage}, {8 * x.dtype_bytes}-bit"]
        lines.append(f"  {'phase':<8} {'term':<32} {'GiB':>8}  note")
        for p in self.phases:
            for t in p.terms:
                lines.append(f"  {p.name:<8} {t.name:<32} {t.gib:8.2f}  {t.note}")
            verdict = "ok" if p.bytes <= self.budget_bytes else "OVER"
            lines.append(f"  {p.name:<8} {'= total':<32} {p.gib:8.2f}  of {x.budget_gib:g} GiB budget: {verdict}")
        lines += [f"  warning: {w}" for w in self.warnings()]
        return "\n".join(lines)


def plan(x: PlanInputs, pair: str = "") -> Plan:
    return Plan(pair, x, phases(x))


def plan_config(cfg: Config, reserve_gib: float = 3.0) -> list[Plan]:
    """One plan per distinct (teacher, student) pair of ``cfg``."""
    out, seen = [], set()
    for name, p in cfg.pairs.items():
        if (p.teacher, p.student) not in seen:
            seen.add((p.teacher, p.student))
            out.append(plan(inputs_from_config(cfg, name, reserve_gib), name))
    return out


def check_config(cfg: Config) -> None:
    """Raise :class:`ConfigError` (first line names the knobs) when a GPU config cannot fit.

    Only configs with GPUs (``resources.train.gpu > 0``) are checked: on CPU there is no
    device budget to plan against.
    """
    if cfg.resources.train.gpu <= 0:
        return
    problems = [line for p in plan_config(cfg) for line in p.problems()]
    if problems:
        raise ConfigError("memory plan: " + problems[0] + (f" (and {len(problems) - 1} more; see "
                          "`pgopd plan --configfile <config>`)" if len(problems) > 1 else
                          " (`pgopd plan --configfile <config>` prints the table)"))
