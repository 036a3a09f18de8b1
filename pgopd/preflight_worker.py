"""One run of ``pgopd preflight`` in its own process: one training step of one method through
the real :func:`pgopd.train.train`, on models with dummy (random) weights of the config's
shapes, with per-phase peak memory and time.

    python -m pgopd.preflight_worker SPEC.json RESULT.json

``SPEC.json`` (written by :mod:`pgopd.preflight`): ``method``, ``train`` (the TrainConfig as a
dict), ``teacher`` / ``student`` (model directories), ``train_data``, ``work``.  A model
directory holding the file :data:`MARKER` is built from its config.json with random weights
on the device (``load_model`` is wrapped); any other directory is loaded as usual (real
weights where they are on disk).  The final HF checkpoint is not written (a preflight keeps
no weights).

Phases, named as the memory plan's (``pgopd.memplan.PHASES``), are measured by wrapping what
train.py calls: ``rollout`` (student sampling: ``HFSampler.start`` / ``extend``), ``scoring``
(``TeacherScorer.start`` / ``score``), ``update`` (``apply_update``: forward/backward and the
step) and ``step`` (``engine.step``).  Each wrapped call resets the CUDA peak statistics when it
starts, so a phase's peak is the most allocated / reserved memory during that phase, with
everything resident at the time (weights, optimizer state, the teacher unless offloaded).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

MARKER = "preflight_dummy_weights"
GIB = 1024 ** 3


def patch_load_model(target) -> None:
    """``pgopd.models.loading.load_model`` builds a marked directory's model with random
    weights directly on ``target`` (a CPU init of 8B random weights alone takes minutes)."""
    import torch

    from .models import loading

    original = loading.load_model

    def load_model(ref, dtype=torch.float32, device="cpu"):
        marker = Path(ref) / MARKER
        if not marker.exists():
            return original(ref, dtype=dtype, device=device)
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(json.loads(marker.read_text())["seed"])
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:  # the student too: DeepSpeed moves it to the device anyway
            with torch.device(target if str(device) == "cpu" else device):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ref))
        finally:
            torch.set_default_dtype(prev)
        return model.eval()

    loading.load_model = load_model


class Meter:
    """Peak allocated / reserved bytes and seconds per phase."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda
        self.alloc: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.open: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time and peaks of the ``with`` block.  Phases nest (``step`` inside ``update``),
        as the memory plan separates them: an inner phase's peak is its own, the enclosing
        phase keeps the peaks of its parts before and after it (folded in before each reset)."""
        t = self.torch
        if self.cuda:
            t.cuda.synchronize()
            self._fold(self.open)
            t.cuda.reset_peak_memory_stats()
        self.open.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.open.pop()
            if self.cuda:
                t.cuda.synchronize()
                self._fold([name])
                if self.open:  # the enclosing phase goes on from here
                    t.cuda.reset_peak_memory_stats()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def _fold(self, names: list) -> None:
        a, r = self.torch.cuda.max_memory_allocated(), self.torch.cuda.max_memory_reserved()
        for n in names:
            self.alloc[n] = max(self.alloc.get(n, 0), a)
            self.reserved[n] = max(self.reserved.get(n, 0), r)

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def wrapped(*a, **kw):
            with self.phase(name):
                return fn(*a, **kw)

        setattr(owner, attr, wrapped)

    def install(self) -> None:
        import pgopd.train as T
        from .rollout.hf import HFSampler
        from .rollout.scorer import TeacherScorer

        for attr in ("start", "extend"):
            self.wrap(HFSampler, attr, "rollout")
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
        T._save_hf = lambda *a, **kw: None  # a preflight keeps no weights

    def to_json(self) -> dict:
        return {"peak_allocated_gib": {k: round(v / GIB, 3) for k, v in self.alloc.items()},
                "peak_reserved_gib": {k: round(v / GIB, 3) for k, v in self.reserved.items()},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def run(spec: dict) -> dict:
    """The step of ``spec`` (see the module docstring); returns the measured record."""
    import torch

    from .config import TrainConfig, parse_dataclass
    from .train import train

    cuda = torch.cuda.is_available()
    patch_load_model(torch.device("cuda:0") if cuda else torch.device("cpu"))
    meter = Meter(cuda)
    meter.install()
    cfg = parse_dataclass(TrainConfig, spec["train"], "train")
    work = Path(spec["work"])
    out_dir = work / "runs" / spec["name"]
    t0 = time.perf_counter()
    summary = train(cfg, method=spec["method"], seed=0, teacher=spec["teacher"], student=spec["student"],
                    train_data=Path(spec["train_data"]), teacher_cache=work / "cache", out_dir=out_dir)
    metrics = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"name": spec["name"], "method": spec["method"], "max_new_tokens": cfg.max_new_tokens,
            "rows": cfg.prompts_per_step * cfg.n_samples, **meter.to_json(),
            "wall_s": round(time.perf_counter() - t0, 2), "tokens_generated": int(summary["gen_tokens"]),
            "tokens_trained": int(summary["tokens_trained"]), "n_micro_batches": metrics.get("n_micro_batches"),
            "loss_finite": metrics.get("loss") is not None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(spec)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
