"""Tiny local models for tests (never downloaded)."""
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
