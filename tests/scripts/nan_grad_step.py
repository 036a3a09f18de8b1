"""Run under ``torchrun --nproc_per_node 2`` (tests/test_gpu_paths.py starts it): two
training steps of ``pgopd.update.apply_update`` under ZeRO-2 in bf16 on DeepSpeed's CPU
accelerator (gloo).  In the first step rank 1 alone turns one parameter's gradient into NaN
(a hook on the parameter: the loss stays finite, ``p.grad`` is None under ZeRO-2); the step
must be reported skipped on both ranks and leave the weights as they were.  The second step
is clean and must move them.  Each rank writes ``<out>/rank<r>.json``."""
import copy
import json
import os
import sys

import torch

V, PAD, EOS = 40, 0, 1


def tiny(seed, layers):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS)
    return Qwen2ForCausalLM(cfg).eval()


def main(out_dir: str) -> None:
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed

    from pgopd.policies import make_policy
    from pgopd.rollout.hf import HFSampler
    from pgopd.rollout.loop import rollout
    from pgopd.rollout.scorer import TeacherScorer
    from pgopd.update import Dist, apply_update

    torch.set_num_threads(1)
    cfg = parse_dataclass(TrainConfig, {"zero_stage": 2, "bf16": True, "lr": 1e-2, "max_new_tokens": 8, "loss": "sampled",
                                        "chunk_size": 4, "n_samples": 2, "prompts_per_step": 2,
                                        "pgopd": {"prefix_len": 4, "probe_end": 4}}, "train")
    student, teacher = tiny(0, 1), tiny(1, 2)
    initial = copy.deepcopy(student)
    engine, *_ = deepspeed.initialize(model=student, config=ds_config(cfg),
                                      model_parameters=list(student.parameters()))
    dist = Dist()
    before = [t.detach().clone() for t in engine.module.parameters()]  # bf16 now
    prompts = [[[5, 6, 7]], [[8, 9, 10, 11]]][dist.rank]
    res = rollout(HFSampler(initial, EOS, PAD, seed=3), TeacherScorer(teacher, PAD, topk=4),
                  make_policy("opd", cfg, seed=0), prompts, n_samples=2, max_new_tokens=8, chunk_size=4,
                  overlap_k=4)
    p = engine.module.get_decoder().norm.weight
    handle = p.register_hook(lambda g: g * float("nan")) if dist.rank == 1 else None
    m1 = apply_update(engine, res, cfg, PAD, dist)
    same = all(torch.equal(a, b) for a, b in zip(engine.module.parameters(), before))
    if handle:
        handle.remove()
    m2 = apply_update(engine, res, cfg, PAD, dist)
    moved = any(not torch.equal(a, b) for a, b in zip(engine.module.parameters(), before))
    finite = all(bool(torch.isfinite(a).all()) for a in engine.module.parameters())
    rec = {"first_finite": m1["finite"], "first_unchanged": same, "second_finite": m2["finite"],
           "second_moved": moved, "weights_finite": finite,
           "data_types": [str(t) for t in engine.get_data_types()],
           "communication_data_type": str(engine.communication_data_type)}
    with open(os.path.join(out_dir, f"rank{dist.rank}.json"), "w") as fh:
        json.dump(rec, fh)


if __name__ == "__main__":
    from pgopd.teardown import end_process_group

    main(sys.argv[1])
    end_process_group()  # else a rank may abort at exit ("terminate called ...")
