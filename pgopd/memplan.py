"""The memory plan: per rank and per phase of one training step, the bytes we expect on the GPU.

Pure arithmetic (no torch), so ``pgopd plan`` and the workflow's load-time check run anywhere.
Every term names its source in a comment (the ZeRO paper, a DeepSpeed default, the tensors a
layer saves, ...); ``bench/memory.py`` measures the phases on CPU (bf16, ZeRO-2 and ZeRO-3,
two processes) and ``tests/test_memplan_bench.py`` checks plan against measurement per phase.
Units: bytes inside, GiB (2^30) in every message; the budget is the table value of
``resources.train.gpu_model`` (``pgopd.memshapes.GPU_MODELS``) or ``resources.train.gpu_mem_gb`` (GiB).

Phases of one step (each rank), in this order (:data:`PHASES`; ``pgopd preflight`` reads them):
  * rollout:  the student samples a chunk (vLLM awake, or hf: student KV of the live rows and
              the prefill's logits) while the teacher's KV of the live rows is held;
  * scoring:  the teacher scores the chunk (its KV of the live rows at full length, the KV
              growth, GQA's expanded K/V, one layer's MLP, one chunk of logits), vLLM awake;
  * update:   forward/backward of one micro-batch, vLLM asleep (colocate) and the teacher
              offloaded if set; the largest of four moments of backward (its start: activations,
              the LM-head chunk and the head's gradient sum; a contribution added to that sum;
              the layers' reduces: activations, one layer's backward, ZeRO's reduce of a
              bucket's fill; the last reduce: the tied embedding's);
  * step:     the optimizer step (the fp32 gradient partition and AdamW's temporary);
  * sync:     the new weights pushed into vLLM (ZeRO-3: gathered + cloned; vLLM awake again).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .config import Config, ConfigError
from .memshapes import (GIB, GPU_MODELS, KNOWN_CONFIGS, Shape, find_config_json, gpu_budget_gib,  # noqa: F401
                        model_shape)
from .memterms import (DS_MAX_LIVE_PARAMETERS, DS_REDUCE_BUCKET, PHASES, VLLM_ASLEEP_GIB,  # noqa: F401
                       VLLM_DEFAULT_UTIL, Phase, PlanInputs, Term, _rollout_terms, _scoring_terms, _step_terms,
                       _sync_terms, _update_terms, activation_bytes, head_grad_bytes, logits_bytes,
                       phases, student_state_terms, teacher_kv_bytes, zero3_gathered_bytes)


def _world(cfg: Config) -> int:
    """Training processes in all (one per GPU under a launcher; see workflow.train_launcher)."""
    r = cfg.resources.train
    launched = r.launcher in ("torchrun", "deepspeed") or (r.launcher == "auto" and (r.gpu > 1 or r.nodes > 1))
    return (max(r.gpu, 1) if launched else 1) * r.nodes


def budget_of(cfg: Config) -> tuple[float, str]:
    """(GiB per GPU, the config key it came from)."""
    r = cfg.resources.train
    name = (f"resources.train.gpu_mem_gb = {r.gpu_mem_gb:g}" if r.gpu_mem_gb is not None
            else f"resources.train.gpu_model = {r.gpu_model}")
    return gpu_budget_gib(r.gpu_model, r.gpu_mem_gb), name


def inputs_from_config(cfg: Config, pair: str, reserve_gib: float = 3.0) -> PlanInputs:
    """The plan's inputs for one pair of ``cfg`` (shapes from config.json / the known table)."""
    t = cfg.train
    p = cfg.pairs[pair]
    world = _world(cfg)
    db = 2 if t.bf16 else 4
    budget, budget_name = budget_of(cfg)
    return PlanInputs(
        student=model_shape(p.student, f"pairs.{pair}.student", cfg),
        teacher=model_shape(p.teacher, f"pairs.{pair}.teacher", cfg),
        rows=math.ceil(t.prompts_per_step / world) * t.n_samples,
        prompt_tokens=cfg.resources.train.plan_prompt_tokens, max_new_tokens=t.max_new_tokens,
        budget_gib=budget, budget_name=budget_name, world=world, rollout_chunk=t.chunk_size,
        micro_tokens=t.max_tokens_per_micro_batch, logprob_chunk=t.logprob_chunk_tokens,
        live_rows=t.max_live_rows, zero_stage=t.zero_stage, dtype_bytes=db,
        teacher_dtype_bytes=db, gradient_checkpointing=t.gradient_checkpointing,
        teacher_offload=t.teacher_offload, backend=t.backend, vllm_mode=t.vllm.mode,
        vllm_util=t.vllm.gpu_memory_utilization, vllm_graphs=t.vllm.enforce_eager is not True,
        reserve_gib=reserve_gib)


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

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def problems(self) -> list[str]:
        """One line per phase over budget, with advice computed per knob (pgopd.memadvice)."""
        from .memadvice import advice, all_at_best, need_bytes

        over = [p for p in self.phases if p.bytes > self.budget_bytes]
        best = all_at_best(self.inputs)
        # a phase no knob can fit makes knob advice for the others moot: report only those
        hopeless = [p for p in over if need_bytes(best, p.name) > self.budget_bytes]
        rest = [p.name for p in over if p not in hopeless]
        return [f"pair {self.pair}: phase {p.name} needs {p.gib:.1f} GiB per GPU, over the budget of "
                f"{self.inputs.budget_gib:.1f} GiB ({self.inputs.budget_name}); " + advice(self.inputs, p.name)
                + (f" (also over: {', '.join(rest)})" if hopeless and rest and i == 0 else "")
                for i, p in enumerate(hopeless or over)]

    def warnings(self) -> list[str]:
        """Not fatal: vLLM preempts and recomputes (slowly) when the live rows' KV does not fit."""
        x = self.inputs
        if x.backend != "vllm":
            return []
        room = x.util * x.budget_gib * GIB - x.dtype_bytes * x.student.params - GIB  # ~1 GiB: graphs, buffers
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
                            "moments": {m: round(b / GIB, 3) for m, b in p.moments().items()},
                            "binding_moment": p.binding,
                            "terms": [{"term": t.name, "gib": round(t.gib, 3), "knobs": list(t.knobs),
                                       "note": t.note, "moments": (dict(t.moments) if isinstance(t.moments, dict)
                                                                   else list(t.moments))} for t in p.terms]}
                           for p in self.phases],
                "problems": self.problems(), "warnings": self.warnings()}

    def table(self) -> str:
        x = self.inputs
        lines = [f"pair {self.pair}: {x.world} rank(s), {x.rows} rows/rank x {x.seq_len} tokens, "
                 f"{x.live} live, micro-batch {x.micro_batch_tokens} tokens, log-prob chunk "
                 f"{x.logits_chunk_tokens}, ZeRO-{x.zero_stage}, {8 * x.dtype_bytes}-bit"]
        lines.append(f"  {'phase':<8} {'term':<42} {'GiB':>8}  note")
        for p in self.phases:
            for t in p.terms:
                at = (f" [{', '.join(f'{m} {t.gib * f:.2f}' for m, f in t.moments.items())}]"
                      if isinstance(t.moments, dict) else f" [{', '.join(t.moments)}]" if t.moments else "")
                lines.append(f"  {p.name:<8} {t.name:<42} {t.gib:8.2f}  {t.note}{at}")
            for m, b in p.moments().items():  # a phase whose terms peak apart: its largest moment
                lines.append(f"  {p.name:<8} {'= at ' + m:<42} {b / GIB:8.2f}"
                             + ("  <- binds" if m == p.binding else ""))
            verdict = "ok" if p.bytes <= self.budget_bytes else "OVER"
            lines.append(f"  {p.name:<8} {'= total':<42} {p.gib:8.2f}  of {x.budget_gib:.1f} GiB budget: {verdict}")
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
