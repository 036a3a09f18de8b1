"""Giving a training run's device memory back when ``train()`` ends (returns or raises).

A DeepSpeed ZeRO engine is not freed by dropping the last reference: its gradient hooks are
bound methods and closures of the engine, registered on the module's parameters, so engine,
module, optimizer state and gradient partitions form a cycle that stays reachable from the
hooks until ``engine.destroy()`` removes them (measured on DeepSpeed 0.19.8, CPU, ZeRO-2:
alive after ``del`` + ``gc.collect()``, gone after ``destroy()``).  A second run in the same
process (the preflight, a benchmark, tests) would start with the first one's ~26 GiB held.
"""
from __future__ import annotations

import gc
import logging

import torch

log = logging.getLogger("pgopd.teardown")

#: the fields of ``train._Run`` that hold models, engines or caches
HEAVY_FIELDS = ("vllm_engine", "engine", "scorer", "teacher_model", "tb")


def destroy_engine(engine) -> None:
    """``engine.destroy()`` where DeepSpeed has it (removes its hooks, frees the optimizer);
    errors are logged, not raised: this runs while another error may be propagating."""
    destroy = getattr(engine, "destroy", None)
    if callable(destroy):
        try:
            destroy()
        except Exception as e:  # noqa: BLE001 -- teardown must not mask the run's own error
            log.warning("DeepSpeed engine.destroy() failed: %s", e)


def release_run(run) -> None:
    """Shut the rollout engine down, destroy the DeepSpeed engine, drop every model and cache
    ``run`` holds, collect, and empty the CUDA allocator's cache.  Safe on a half-built run."""
    if run is None:
        return
    vllm_engine = getattr(run, "vllm_engine", None)
    if vllm_engine is not None:
        try:
            vllm_engine.shutdown()
        except Exception as e:  # noqa: BLE001
            log.warning("vLLM engine shutdown failed: %s", e)
    engine = getattr(run, "engine", None)
    if engine is not None:
        destroy_engine(engine)
    if getattr(run, "tb", None) is not None:
        run.tb.close()
    scorer = getattr(run, "scorer", None)
    if scorer is not None and hasattr(scorer, "release"):
        scorer.release()
    for name in HEAVY_FIELDS:
        if hasattr(run, name):
            setattr(run, name, None)
    del engine, scorer, vllm_engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def end_process_group() -> None:
    """Tear torch.distributed's default group down before the process exits.  Left to the
    interpreter's exit, its threads are destroyed while still joinable and the process aborts
    with "terminate called without an active exception" (seen on a rank of a two-node slurm
    job after its last step, and in a benchmark's child process, 2026-12-05): a finished job
    then fails.  Not in ``train()``: callers that train several times in one process keep
    DeepSpeed's groups."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
