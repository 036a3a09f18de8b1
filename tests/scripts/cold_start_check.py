"""Run under ``torchrun --nproc_per_node <1|2>`` (tests/test_coldstart.py starts it):
one cold-start step (:func:`pgopd.coldstart.cold_start_step`) on a tiny Qwen2, each rank on
its slice of 12 (prompt, response) rows, with ``max_tokens_per_micro_batch`` = argv[3] and
ZeRO stage argv[2].  Before the optimizer step the full gradient (``safe_get_full_grad``)
is compared with that of transformers' own loss, ``model(labels=...).loss`` (token mean
over every row's response), on one process; the step's loss with that loss's value; and
every LM-head call's row count is recorded.  Writes ``<argv[1]>/rank<r>.json``."""
import copy
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nan_grad_step import PAD, tiny  # noqa: E402


def rows(n=12, seed=0):
    rng = random.Random(seed)
    return [([rng.randrange(2, 40) for _ in range(rng.randrange(2, 7))],
             [rng.randrange(2, 40) for _ in range(rng.randrange(1, 12))]) for _ in range(n)]


def reference(model, all_rows):
    from pgopd.coldstart import sft_batch

    b = sft_batch([p for p, _ in all_rows], [r for _, r in all_rows], PAD)
    labels = torch.full_like(b["input_ids_BS"], -100)
    for i, (p, r) in enumerate(all_rows):
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    loss = model(input_ids=b["input_ids_BS"], attention_mask=b["attention_BS"], labels=labels).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


def main(out_dir: str, stage: int, budget: int) -> None:
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from pgopd.coldstart import cold_start_step
    from pgopd.update import Dist

    torch.set_num_threads(1)
    cfg = parse_dataclass(TrainConfig, {"zero_stage": stage, "lr": 1e-3, "max_tokens_per_micro_batch": budget,
                                        "logprob_chunk_tokens": 5, "grad_clip": 0.0}, "train")
    student = tiny(0, 1)
    all_rows = rows()
    ref_loss, ref_grad = reference(copy.deepcopy(student), all_rows)
    model = copy.deepcopy(student)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg), model_parameters=list(model.parameters()))
    dist = Dist()
    head_rows = []
    engine.module.get_output_embeddings().register_forward_pre_hook(
        lambda _m, a: head_rows.append(int(a[0].numel() // a[0].shape[-1])))
    seen = {}
    step = engine.step

    def capture():
        for n, p in engine.module.named_parameters():
            seen[n] = safe_get_full_grad(p).detach().float().clone()
        step()

    engine.step = capture
    loss = cold_start_step(engine, all_rows[dist.rank::dist.world], cfg, PAD, dist)
    diff = max(float((seen[n] - g).abs().max()) for n, g in ref_grad.items())
    scale = max(float(g.abs().max()) for g in ref_grad.values())
    rec = {"loss": loss, "ref_loss": ref_loss, "grad_max_abs_diff": diff, "grad_scale": scale,
           "head_rows_max": max(head_rows), "n_head_calls": len(head_rows)}
    with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as fh:
        json.dump(rec, fh)


if __name__ == "__main__":
    from pgopd.teardown import end_process_group

    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    end_process_group()
