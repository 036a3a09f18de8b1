"""Run under ``torchrun --nproc_per_node 2`` (tests/test_vllm_backend.py starts it): each
rank builds its own in-process engine (external_launcher) on a tiny local Qwen2, generates
greedily, takes a weight update, generates again, and writes what it saw to
``<out>/rank<r>.json``.  Kept small: vLLM on two busy CPU cores starts in ~20 s."""
import json
import os
import sys

import torch
import torch.distributed as dist

MAX_LEN = 256


def tiny(seed, tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                      tie_word_embeddings=True, use_sliding_window=False, bos_token_id=None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # sharp distributions: no near-ties in greedy decoding
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(3.0)
    return m


def greedy(sampler, prompts, n):
    sampler.start(prompts)
    ch = sampler.extend(n)
    return [ch.tokens_BC[i][ch.valid_BC[i]].tolist() for i in range(len(prompts))]


def main(out_dir):
    from pgopd.models.tokenizer import build_char_tokenizer
    from pgopd.rollout.hf import generate
    from pgopd.rollout.vllm_backend import VLLMEngine, make_vllm_sampler

    dist.init_process_group("gloo")  # what DeepSpeed does on CPU before the engine is built
    rank = dist.get_rank()
    tok = build_char_tokenizer()
    m0, m1 = tiny(0, tok), tiny(1, tok)
    if rank == 0:
        m0.save_pretrained(f"{out_dir}/m0")
        tok.save_pretrained(f"{out_dir}/m0")
    dist.barrier()
    # each rank serves different prompts, as the training ranks do
    prompts = [tok("<|user|>" + s + "<|assistant|>")["input_ids"]
               for s in (["12+7", "5+3-2"] if rank == 0 else ["40-18", "9+9+9", "77-4"])]
    eng = VLLMEngine(f"{out_dir}/m0", dtype="float32", seed=0, max_model_len=MAX_LEN, block_size=32,
                     kv_cache_gib=0.25, distributed=True)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    sampler = make_vllm_sampler(eng, eos_id=eos, pad_id=pad, temperature=0, topk=4)
    hf = lambda m: [r["tokens"] for r in generate(m, prompts, eos_id=eos, pad_id=pad, temperature=0,  # noqa: E731
                                                   max_new_tokens=12)]
    before = greedy(sampler, prompts, 12)
    sent = list(m1.state_dict().items())
    seen = eng.llm.collective_rpc(lambda self, w: [t.data_ptr() for _, t in w], args=(sent,))[0]
    eng.update_weights(sent)
    after = greedy(sampler, prompts, 12)
    rec = {"rank": rank, "pid": os.getpid(), "inproc": eng.inproc,
           "backend": eng.engine_options.get("distributed_executor_backend"),
           "placement": eng.llm.collective_rpc("pgopd_placement")[0],
           "same_storage": seen == [t.data_ptr() for _, t in sent],
           "before": before, "after": after, "hf_m0": hf(m0), "hf_m1": hf(m1)}
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump(rec, fh)
    dist.barrier()
    eng.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
