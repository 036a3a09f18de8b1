"""GPU smoke run: 2 steps of opd / pgopd / pruneopd through the real ``pgopd.train.train`` at
the paper's shapes and lengths, with dummy (random) weights and the hf rollout backend.

    python scripts/gpu_smoke.py --out DIR                 # paper shapes (Qwen3-8B -> Qwen3-1.7B), bf16
    python scripts/gpu_smoke.py --out DIR --tiny          # CPU-sized variant (the test suite)

Models are built with ``from_config`` (vocabulary 151,936; no download, no weights on disk):
the model directories hold a config.json, the toy character tokenizer and a marker file, and
``pgopd.models.loading.load_model`` is wrapped to build such a directory's model on the
device instead of reading weights.  Everything else is the code a paper run executes:
config/paper.yaml's train block (only steps, prompts per step and the backend changed),
DeepSpeed, row groups, chunked log-probs, teacher offload, micro-batches.

Per phase the peak of ``torch.cuda.max_memory_allocated`` (reset when the phase starts) is
recorded by wrapping the functions train.py calls: student sampling (``HFSampler.start`` /
``extend``), teacher scoring (``TeacherScorer.start`` / ``score``), the update
(``apply_update``, forward/backward) and the optimizer step (``engine.step``).  Peaks include
everything resident at the time (weights, optimizer states, the teacher unless offloaded).
Writes ``DIR/gpu_smoke.json`` after every method (a timeout keeps what finished), with the
memory plan's prediction for the same run next to each measured phase.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "smoke_dummy_weights"
GIB = 1024 ** 3
TINY = dict(model_type="qwen3", vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
            max_position_embeddings=512)
PAPER_PAIR = ("Qwen/Qwen3-8B", "Qwen/Qwen3-1.7B")


# ----------------------------------------------------------------------------- models
def write_model_dir(path: Path, config: dict, seed: int) -> Path:
    """config.json (the given shape, the char tokenizer's pad/eos), the tokenizer, a marker."""
    from transformers import AutoConfig

    from pgopd.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    path.mkdir(parents=True, exist_ok=True)
    conf = {k: v for k, v in config.items() if k != "model_type"}
    cfg = AutoConfig.for_model(config.get("model_type", "qwen3"), **conf, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=None)
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    (path / MARKER).write_text(json.dumps({"seed": seed}))
    return path


def patch_load_model(device_for_student):
    """``load_model`` builds a marked directory's model with random weights on the device
    (the real loader reads weights from disk; here there are none)."""
    import torch

    from pgopd.models import loading

    original = loading.load_model

    def load_model(ref, dtype=torch.float32, device="cpu"):
        marker = Path(ref) / MARKER
        if not marker.exists():
            return original(ref, dtype=dtype, device=device)
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(json.loads(marker.read_text())["seed"])
        # the student is loaded on CPU and moved by DeepSpeed; building it on the GPU directly
        # skips a slow CPU init of 1.7B random weights and ends in the same place
        dev = device_for_student if str(device) == "cpu" else device
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(dev):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ref))
        finally:
            torch.set_default_dtype(prev)
        return model.eval()

    loading.load_model = load_model


# ----------------------------------------------------------------------------- phase peaks
class Phases:
    """Peak allocated memory and time per phase; every wrapped call resets the peak first."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda
        self.peak: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        t = self.torch
        if self.cuda:
            t.cuda.synchronize()
            t.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                t.cuda.synchronize()
                self.peak[name] = max(self.peak.get(name, 0), t.cuda.max_memory_allocated())
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def wrap(self, owner, attr: str, name: str):
        fn = getattr(owner, attr)

        def wrapped(*a, **kw):
            with self.phase(name):
                return fn(*a, **kw)

        setattr(owner, attr, wrapped)
        return fn

    def install(self):
        """Wrap sampling, scoring, the update and the optimizer step as train.py calls them."""
        import pgopd.train as T
        from pgopd.rollout.hf import HFSampler
        from pgopd.rollout.scorer import TeacherScorer

        for attr in ("start", "extend"):
            self.wrap(HFSampler, attr, "sampling")
        for attr in ("start", "score"):
            self.wrap(TeacherScorer, attr, "scoring")
        apply_update = T.apply_update

        def update(engine, *a, **kw):
            step = engine.step

            def timed_step(*sa, **skw):
                with self.phase("step"):
                    return step(*sa, **skw)

            engine.step = timed_step
            try:
                with self.phase("update"):
                    return apply_update(engine, *a, **kw)
            finally:
                engine.step = step

        T.apply_update = update

    def take(self) -> dict:
        out = {"peak_gib": {k: round(v / GIB, 3) for k, v in self.peak.items()},
               "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}
        self.peak, self.seconds = {}, {}
        return out


# ----------------------------------------------------------------------------- the run
def smoke_config(a) -> "TrainConfig":  # noqa: F821
    """config/paper.yaml's train block with this run's steps, prompts and backend."""
    from pgopd import config as C

    t = C.load(ROOT / "config" / "paper.yaml").train
    over = dict(steps=a.steps, prompts_per_step=a.prompts, backend="hf", save_every=0)
    if a.tiny:
        over.update(bf16=False, max_new_tokens=a.max_new_tokens or 24, chunk_size=8, overlap_k=4, loss_top_k=4,
                    logprob_chunk_tokens=16, max_tokens_per_micro_batch=64, max_live_rows=4,
                    pgopd=dataclasses.replace(t.pgopd, prefix_len=8, probe_end=8),
                    pruneopd=dataclasses.replace(t.pruneopd, window=4, initial_window=8, expand_by=4))
    elif a.max_new_tokens:
        over["max_new_tokens"] = a.max_new_tokens
    return C.parse_dataclass(C.TrainConfig, C.to_dict(dataclasses.replace(t, **over)), "train")


def write_data(d: Path, n: int, prompt_chars: int) -> Path:
    """n arithmetic prompts padded with a worked example to ~prompt_chars characters (tokens)."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        pad = " ".join(f"{rng.randint(1, 99)}+{rng.randint(1, 99)}" for _ in range(prompt_chars // 6))
        rows.append({"id": f"s{i}", "prompt": (pad + f" {a}+{b}")[-prompt_chars:], "answer": str(a + b)})
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl"


def planned(cfg, teacher_cfg: dict, student_cfg: dict, prompt_tokens: int) -> dict:
    """The memory plan's GiB per phase for this run (one rank, no reserve)."""
    from pgopd import memplan as M

    x = M.PlanInputs(student=M.Shape.from_config(student_cfg), teacher=M.Shape.from_config(teacher_cfg),
                     rows=cfg.prompts_per_step * cfg.n_samples, prompt_tokens=prompt_tokens,
                     max_new_tokens=cfg.max_new_tokens, budget_gib=1e6, rollout_chunk=cfg.chunk_size,
                     micro_tokens=cfg.max_tokens_per_micro_batch, logprob_chunk=cfg.logprob_chunk_tokens,
                     live_rows=cfg.max_live_rows, zero_stage=cfg.zero_stage, dtype_bytes=2 if cfg.bf16 else 4,
                     teacher_dtype_bytes=2 if cfg.bf16 else 4, gradient_checkpointing=cfg.gradient_checkpointing,
                     teacher_offload=cfg.teacher_offload, backend="hf")
    names = {"rollout": "sampling", "scoring": "scoring", "update": "update", "step": "step"}
    return {names[p.name]: round(p.gib, 3) for p in M.phases(x) if p.name in names}  # (no vLLM: no sync)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_smoke_out")))
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, fp32 (CPU or GPU): the test-suite variant")
    ap.add_argument("--methods", default="opd,pgopd,pruneopd")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step (x n_samples rows; default 4 = 16 "
                    "rows = one group of paper.yaml's max_live_rows)")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="0: the recipe's (paper.yaml, 7168)")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="prompt length (default 512; tiny 12)")
    a = ap.parse_args(argv)

    import torch

    from pgopd import memplan as M
    from pgopd.train import train

    cuda = torch.cuda.is_available()
    if not a.tiny and not cuda:
        raise SystemExit("gpu_smoke: no CUDA device; use --tiny for the CPU variant")
    work = a.out / "work"
    teacher_cfg, student_cfg = (TINY, {**TINY, "num_hidden_layers": 1}) if a.tiny else (
        M.KNOWN_CONFIGS[PAPER_PAIR[0]], M.KNOWN_CONFIGS[PAPER_PAIR[1]])
    teacher = write_model_dir(work / "teacher", teacher_cfg, 1)
    student = write_model_dir(work / "student", student_cfg, 0)
    prompt_tokens = a.prompt_tokens or (12 if a.tiny else 512)
    data = write_data(work / "data", 4 * a.prompts, prompt_tokens)
    (work / "cache").mkdir(exist_ok=True)
    patch_load_model(torch.device("cuda:0") if cuda else torch.device("cpu"))
    phases = Phases(cuda)
    phases.install()
    cfg = smoke_config(a)
    report = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
              "gpu_mem_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
              "torch": torch.__version__, "python": platform.python_version(),
              "transformers": __import__("transformers").__version__, "tiny": a.tiny,
              "teacher": teacher_cfg, "student": student_cfg, "prompt_tokens_approx": prompt_tokens,
              "train": {k: v for k, v in dataclasses.asdict(cfg).items() if not isinstance(v, dict)},
              "plan_gib": planned(cfg, teacher_cfg, student_cfg, prompt_tokens + 8), "methods": {}}
    out_json = a.out / "gpu_smoke.json"
    for method in a.methods.split(","):
        t0 = time.perf_counter()
        summary = train(cfg, method=method, seed=0, teacher=str(teacher), student=str(student), train_data=data,
                        teacher_cache=work / "cache", out_dir=work / "runs" / method)
        metrics = [json.loads(x) for x in (work / "runs" / method / "metrics.jsonl").read_text().splitlines()]
        report["methods"][method] = {
            **phases.take(), "wall_s": round(time.perf_counter() - t0, 1),
            "steps": [{k: m.get(k) for k in ("step", "t_rollout_s", "t_teacher_s", "t_update_s", "tokens_generated",
                                               "tokens_trained", "n_micro_batches", "loss")} for m in metrics],
            "tokens_generated": summary["gen_tokens"]}
        if cuda:
            torch.cuda.empty_cache()
        out_json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"gpu_smoke {method}: {json.dumps(report['methods'][method]['peak_gib'])} GiB, "
              f"{report['methods'][method]['wall_s']} s", flush=True)
    print(f"gpu_smoke: wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
