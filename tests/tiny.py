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
