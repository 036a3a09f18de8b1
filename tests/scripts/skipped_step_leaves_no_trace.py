"""Run under ``torchrun --nproc_per_node 2`` (tests/test_gpu_paths.py starts it), with the
ZeRO stage as argv[2].  A step skipped because one rank's loss is non-finite must leave
nothing behind: engine A runs [skipped step, clean step], engine B (same initial weights)
runs [clean step] alone; A's weights must then equal B's.  Before ``discard_gradients``,
ZeRO-2's fp32 gradient partition kept the skipped step's (NaN) gradient and the clean step
was rejected too.  bf16 with fp32 accumulation, as config/paper.yaml.  Writes
``<out>/rank<r>.json``."""
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nan_grad_step import EOS, PAD, tiny  # noqa: E402


def full_weights(engine) -> list[torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
        return [p.detach().float().clone() for p in params]


def main(out_dir: str, stage: int) -> None:
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed

    import pgopd.update as U
    from pgopd.policies import make_policy
    from pgopd.rollout.hf import HFSampler
    from pgopd.rollout.loop import rollout
    from pgopd.rollout.scorer import TeacherScorer

    torch.set_num_threads(1)
    cfg = parse_dataclass(TrainConfig, {"zero_stage": stage, "bf16": True, "lr": 1e-2, "max_new_tokens": 8,
                                        "loss": "sampled", "chunk_size": 4, "n_samples": 2, "prompts_per_step": 2,
                                        "pgopd": {"prefix_len": 4, "probe_end": 4}}, "train")
    student, teacher = tiny(0, 1), tiny(1, 2)
    a = copy.deepcopy(student)
    engine, *_ = deepspeed.initialize(model=a, config=ds_config(cfg), model_parameters=list(a.parameters()))
    dist = U.Dist()  # after deepspeed.initialize: it starts the process group
    assert dist.world == 2
    prompts = [[[5, 6, 7]], [[8, 9, 10, 11]]][dist.rank]
    res = rollout(HFSampler(copy.deepcopy(student), EOS, PAD, seed=3), TeacherScorer(teacher, PAD, topk=4),
                  make_policy("opd", cfg, seed=0), prompts, n_samples=2, max_new_tokens=8, chunk_size=4, overlap_k=4)
    clean_loss = U.batch_loss

    def rank1_inf(*a, **k):
        loss, stats = clean_loss(*a, **k)
        return (loss * float("inf") if dist.rank == 1 else loss), stats

    U.batch_loss = rank1_inf
    skipped = U.apply_update(engine, res, cfg, PAD, dist)
    U.batch_loss = clean_loss
    after_skip = U.apply_update(engine, res, cfg, PAD, dist)
    weights_a = full_weights(engine)
    engine.destroy()

    b = copy.deepcopy(student)
    engine_b, *_ = deepspeed.initialize(model=b, config=ds_config(cfg), model_parameters=list(b.parameters()))
    alone = U.apply_update(engine_b, res, cfg, PAD, dist)
    weights_b = full_weights(engine_b)
    rec = {"skipped_finite": skipped["finite"], "after_skip_finite": after_skip["finite"],
           "alone_finite": alone["finite"], "same_loss": after_skip["loss"] == alone["loss"],
           "max_abs_diff": max(float((x - y).abs().max()) for x, y in zip(weights_a, weights_b)),
           "moved": any(not torch.equal(x, p.detach().to(torch.bfloat16).float())
                        for x, p in zip(weights_b, student.parameters())),
           "optimizer": type(engine_b.optimizer).__name__}
    engine_b.destroy()
    with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as fh:
        json.dump(rec, fh)


if __name__ == "__main__":
    from pgopd.teardown import end_process_group

    main(sys.argv[1], int(sys.argv[2]))
    end_process_group()
