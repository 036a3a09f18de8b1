"""One OPD training step on Qwen3-shaped models, run by tests/test_update.py as a script
(one process, or several under torchrun): rollout -> teacher scoring -> update, through
the code ``pgopd train`` runs (``rollout_in_groups``, ``TeacherScorer``, ``apply_update``).

For every method and every ``--mbs`` value (``train.max_tokens_per_micro_batch``) the step
starts from the same student, and the full gradient of every parameter is read just before
the optimizer step (``deepspeed.utils.safe_get_full_grad``: ZeRO 0-3).  Rank 0 writes a JSON
with, per method and micro-batch budget: the metrics of ``apply_update``, each gradient's
norm and its relative difference to the first budget's gradient, and whether the step
changed the weights.

The models have the real vocabulary (151,936), head_dim 128 and GQA (4 heads / 2 KV heads)
with 2 narrow layers; the student's embeddings are tied (as Qwen3-1.7B's); the tokenizer is
the toy character tokenizer (102 tokens, far fewer than the model's vocabulary, as Qwen's).
"""
import argparse
import copy
import dataclasses
import json
import os
import sys

import torch

V, PAD, EOS = 151_936, 0, 1


def qwen3(seed: int, tied: bool, hidden: int = 64):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=256,
                      tie_word_embeddings=tied, pad_token_id=PAD, eos_token_id=EOS)
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # a larger scale than the 0.02 init: peaked distributions, varied overlap
        m.get_output_embeddings().weight.mul_(25.0)
    return m


# four prompts (char-tokenizer ids), 2 samples each; with 2 processes rank 0 gets the two
# long ones and rank 1 the short ones, so the ranks pack different numbers of micro-batches
# and LM-head chunks (the padding to equal collectives is exercised)
PROMPTS = [[3, *range(20, 38), 4], [3, *range(40, 56), 4], [3, 60, 61, 4], [3, 70, 4]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--zero", type=int, default=0)
    ap.add_argument("--mbs", default="0,48")
    ap.add_argument("--methods", default="opd,pgopd,pruneopd")
    ap.add_argument("--loss", default="topk_recipe")
    ap.add_argument("--chunk", type=int, default=7)
    ap.add_argument("--live-rows", type=int, default=0)
    a = ap.parse_args()

    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import ds_config, init_distributed_env

    init_distributed_env()
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from pgopd.policies import make_policy
    from pgopd.rollout.hf import HFSampler
    from pgopd.rollout.loop import rollout_in_groups
    from pgopd.rollout.scorer import TeacherScorer
    from pgopd.logprobs import n_chunks_for
    from pgopd.update import Dist, apply_update, plan_micro_batches

    torch.set_num_threads(1)
    base = parse_dataclass(TrainConfig, {
        "prompts_per_step": len(PROMPTS), "n_samples": 2, "max_new_tokens": 8, "chunk_size": 4,
        "loss": a.loss, "loss_top_k": 4, "overlap_k": 4, "logprob_chunk_tokens": a.chunk, "lr": 1e-3,
        "zero_stage": a.zero, "max_live_rows": a.live_rows,
        "pgopd": {"prefix_len": 4, "probe_end": 4},
        "pruneopd": {"window": 2, "initial_window": 4, "expand_by": 2, "truncate_threshold": 0.0,
                     "min_weight": 0.0}}, "train")
    student0, teacher = qwen3(0, tied=True), qwen3(1, tied=False)
    out = {}
    for method in a.methods.split(","):
        ref = None
        for mb in [int(x) for x in a.mbs.split(",")]:
            cfg = dataclasses.replace(base, max_tokens_per_micro_batch=mb)
            model = copy.deepcopy(student0)
            engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg),
                                              model_parameters=[p for p in model.parameters()])
            dist = Dist()
            per = len(PROMPTS) // dist.world
            rows0 = dist.rank * per * cfg.n_samples
            # sampling from the initial student (= the engine's weights before the step); a
            # plain copy, so ZeRO-3's per-forward gathers do not depend on sampled lengths
            res = rollout_in_groups(
                lambda r0: HFSampler(student0, EOS, PAD, topk=4, seed=5, row_offset=rows0 + r0,
                                     n_global=len(PROMPTS) * cfg.n_samples),
                TeacherScorer(teacher, PAD, topk=4, chunk_tokens=cfg.logprob_chunk_tokens),
                make_policy(method, cfg, seed=0), PROMPTS[dist.rank * per:(dist.rank + 1) * per],
                n_samples=cfg.n_samples, max_live_rows=cfg.max_live_rows, step=0, group_offset=dist.rank * per,
                max_new_tokens=cfg.max_new_tokens, chunk_size=cfg.chunk_size, overlap_k=cfg.overlap_k,
                loss_top_k=cfg.loss_top_k)
            grads, before = {}, {}
            step = engine.step

            def record_then_step():
                for n, p in engine.module.named_parameters():
                    g = safe_get_full_grad(p)
                    grads[n] = None if g is None else g.detach().float().clone()
                step()

            engine.step = record_then_step
            m = apply_update(engine, res, cfg, PAD, dist)
            changed = _changed(engine, student0, a.zero)
            if ref is None:
                ref = grads
            mbs, chunks = plan_micro_batches(res, cfg, dist)
            local = (sum(1 for x in mbs if x), [n_chunks_for(sum(res.train_len(res.cands[i]) for i in x),
                                                            cfg.logprob_chunk_tokens) for x in mbs if x])
            rec = {"metrics": m, "per_rank": dist.gather(local), "agreed_chunks": chunks, "changed": changed,
                   "tokens_trained": dist.sum(res.tokens_trained)[0],
                   "grad_norm": {n: float(g.norm()) for n, g in grads.items() if g is not None},
                   "rel_diff": {n: float((g - ref[n]).norm() / ref[n].norm().clamp(min=1e-30))
                                for n, g in grads.items() if g is not None}}
            out[f"{method}/{mb}"] = rec
            del engine, model
    if int(os.environ.get("RANK", "0")) == 0:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)


def _changed(engine, initial, zero: int) -> bool:
    """Did the step move the weights (and keep them finite)?"""
    import deepspeed

    params = list(engine.module.parameters())
    ctx = deepspeed.zero.GatheredParameters(params) if zero == 3 else _Null()
    with ctx:
        now = dict(engine.module.named_parameters())
        finite = all(bool(torch.isfinite(p).all()) for p in now.values())
        moved = any(not torch.equal(now[n].float(), p.float()) for n, p in initial.named_parameters())
    return finite and moved


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    from pgopd.teardown import end_process_group

    rc = main()
    end_process_group()  # else a rank may abort at exit ("terminate called ...")
    sys.exit(rc)
