"""Tiny local models for tests (never downloaded), and a torchrun starter for test scripts."""
import subprocess
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def save_tiny_model(tok, layers, seed, path):
    """A random 1-head, d=32 Qwen2 with ``layers`` layers and ``tok``, saved to ``path``."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_train_dir(d):
    """``d`` laid out for a tiny ``pgopd train`` run: char-tokenizer teacher (2 layers) and
    student (1 layer), 40 synthetic training problems and a 4-problem benchmark under data/,
    and an empty cache/ (the runs need no teacher cache)."""
    from pgopd.config import DataConfig, parse_dataclass
    from pgopd.data.prepare import prepare_data
    from pgopd.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    save_tiny_model(tok, 2, 0, d / "teacher")
    save_tiny_model(tok, 1, 1, d / "student")
    prepare_data(parse_dataclass(DataConfig, {"synthetic": {"n_train": 40}, "benchmarks": {
        "easy": {"n": 4, "ops": 1}}}, "data"), d / "data")
    (d / "cache").mkdir()
    return d


def save_qwen3_model(tok, seed, path, tied, hidden=64, layers=2):
    """A random Qwen3 with the real model shapes where they cost memory -- vocabulary 151,936
    (far more ids than ``tok`` has, as Qwen's tokenizer), head_dim 128, GQA (4 heads / 2 KV
    heads) -- and a narrow hidden size / few layers; saved with ``tok`` to ``path``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=151_936, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                      max_position_embeddings=512, tie_word_embeddings=tied, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_qwen3_train_dir(d):
    """:func:`make_train_dir` with Qwen3-shaped models: an untied teacher, a tied student."""
    from pgopd.models.tokenizer import build_char_tokenizer

    make_train_dir(d)
    tok = build_char_tokenizer()
    save_qwen3_model(tok, 0, d / "teacher", tied=False)
    save_qwen3_model(tok, 1, d / "student", tied=True)
    return d


def torchrun_script(script: str, *args, nproc: int = 2) -> None:
    """``torchrun --nproc_per_node <nproc> tests/scripts/<script> <args>`` on DeepSpeed's CPU accelerator."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(root), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(root / "tests/scripts" / script), *map(str, args)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
