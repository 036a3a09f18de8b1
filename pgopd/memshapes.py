"""Model shapes and GPU sizes the memory plan (``pgopd.memplan``) reads; pure Python, no torch.

* :data:`KNOWN_CONFIGS`: the published ``config.json`` values of Qwen3 0.6B-32B, the offline
  fallback when a model's own config.json is not at hand;
* :data:`GPU_MODELS`: the memory one GPU of each model exposes, in GiB (``resources.train.gpu_model``);
* :class:`Shape`: what the arithmetic needs of a decoder (sizes, parameter and KV counts).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError

GIB = 1024 ** 3

#: GiB of device memory per GPU model, as ``nvidia-smi --query-gpu=memory.total`` reports it
#: (MiB / 1024): the marketed "80 GB" of an H100 SXM is 81,559 MiB = 79.6 GiB.  The CUDA
#: context and the allocator's own overhead come out of this (the plan's "runtime reserve").
GPU_MODELS = {
    "A100-40": 40_960 / 1024,     # A100-SXM4-40GB
    "A100-80": 81_920 / 1024,     # A100-SXM4-80GB
    "H100-80": 81_559 / 1024,     # H100 80GB HBM3 (SXM)
    "H200-141": 143_771 / 1024,   # H200 141GB HBM3e
    "B200-180": 183_359 / 1024,   # B200 180GB HBM3e
}

#: published config.json values of Qwen3 (huggingface.co/Qwen/Qwen3-*/config.json)
KNOWN_CONFIGS = {
    "Qwen/Qwen3-0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "Qwen/Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            tie_word_embeddings=True),
    "Qwen/Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=True),
    "Qwen/Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False),
    "Qwen/Qwen3-14B": dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
                           num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                           tie_word_embeddings=False),
    "Qwen/Qwen3-32B": dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                           num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                           tie_word_embeddings=False),
}
for _c in KNOWN_CONFIGS.values():
    _c.update(model_type="qwen3", vocab_size=151936, max_position_embeddings=40960,
              rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only transformer (Qwen2/Qwen3/Llama layout)."""
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool = True
    qk_norm: bool = True   # Qwen3 normalises q and k per head

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        return cls(vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                   heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   intermediate=c["intermediate_size"], tied=bool(c.get("tie_word_embeddings", True)),
                   qk_norm=c.get("model_type", "qwen3") == "qwen3")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def embedding(self) -> int:
        """Parameters of the input embedding (= the LM head's when tied)."""
        return self.vocab * self.hidden

    @property
    def largest_tensor(self) -> int:
        """Elements of the largest single parameter (the embedding, an MLP or attention matrix):
        DeepSpeed reduces a parameter larger than its bucket on its own, and its norm of the
        gradient is taken one parameter at a time."""
        return max(self.embedding, self.hidden * self.intermediate, self.hidden * self.q_dim)

    @property
    def layer_params(self) -> int:
        return sum(self.layer_tensor_sizes())

    def layer_tensor_sizes(self) -> list[int]:
        """Elements of each parameter tensor of one decoder layer, in registration order (q, k,
        v, o, [q_norm, k_norm,] gate, up, down, input and post-attention norms)."""
        h, q, kv, i, d = self.hidden, self.q_dim, self.kv_dim, self.intermediate, self.head_dim
        return [h * q, h * kv, h * kv, q * h] + ([d, d] if self.qk_norm else []) + [h * i, h * i, h * i, h, h]

    def tensor_sizes(self) -> list[int]:
        """Elements of every parameter tensor (one entry per tensor, the tied head counted once)."""
        return [self.embedding] * (1 if self.tied else 2) + self.layer_tensor_sizes() * self.layers + [self.hidden]

    def small_params(self, threshold: int) -> int:
        """Parameters in tensors of at most ``threshold`` elements (ZeRO-3 keeps those whole)."""
        return sum(n for n in self.tensor_sizes() if n <= threshold)

    @property
    def params(self) -> int:
        return sum(self.tensor_sizes())

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def act_bytes_per_token_layer(self, db: int) -> int:
        """Bytes one decoder layer keeps for backward per token (no checkpointing).

        Counted from the tensors autograd saves in the HF Qwen3 layer (torch's fused SDPA, no
        T^2 term; measured with ``saved_tensors_hooks`` in fp32 and bf16 to within 1%): each
        RMSNorm over h keeps its fp32 input, the normalised and the scaled output (4 + 2 db per
        element); the q/k norms their fp32 input and output (4 + db); the roped q and k, v and
        the attention output (db each); the SwiGLU MLP gate, up, silu(gate) and their product.
        """
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        norms = (4 + 2 * db) * 2 * h + ((4 + db) * (q + kv) if self.qk_norm else 0)
        attn = db * (2 * q + 2 * kv)
        mlp = 4 * db * i
        return norms + attn + mlp


def gpu_budget_gib(model: str, mem_gb: float | None, where: str = "resources.train") -> float:
    """The plan's budget per GPU: ``gpu_mem_gb`` (GiB) when given, else the table's ``gpu_model``."""
    if mem_gb is not None:
        return float(mem_gb)
    if model not in GPU_MODELS:
        raise ConfigError(f"{where}.gpu_model: {model!r} is not one of {', '.join(GPU_MODELS)}; "
                          f"name one of them or give {where}.gpu_mem_gb (GiB the GPU exposes)")
    return GPU_MODELS[model]


# ----------------------------------------------------------------------------- model shapes
def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def find_config_json(ref: str) -> Path | None:
    """config.json of a local model dir, or of the HF cache's snapshot of hub id ``ref``."""
    local = Path(ref).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    if ref.count("/") != 1 or local.exists():
        return None
    repo = hf_hub_cache() / f"models--{ref.replace('/', '--')}"
    main = repo / "refs" / "main"
    if main.is_file() and (repo / "snapshots" / main.read_text().strip() / "config.json").is_file():
        return repo / "snapshots" / main.read_text().strip() / "config.json"
    found = sorted(glob.glob(str(repo / "snapshots" / "*" / "config.json")))
    return Path(found[-1]) if found else None


def model_shape(ref: str, where: str, cfg: Config | None = None) -> Shape:
    """Shape of model ``ref`` (``where`` names it in errors: ``pairs.<pair>.<role>``)."""
    if ref == "toy":
        if cfg is None:
            raise ConfigError(f"{where}: the toy model's shape needs the config")
        from .models.tokenizer import char_vocab

        t = getattr(cfg.toy_models, where.rsplit(".", 1)[-1])
        return Shape(vocab=len(char_vocab()), hidden=t.d_model, layers=t.n_layers, heads=t.n_heads,
                     kv_heads=t.n_heads, head_dim=t.d_model // t.n_heads,
                     intermediate=t.d_ff or 4 * t.d_model, tied=True, qk_norm=False)
    path = find_config_json(ref)
    if path is not None:
        try:
            return Shape.from_config(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {path} is not a decoder config.json the memory plan can "
                              f"read ({type(e).__name__}: {e})") from None
    if ref in KNOWN_CONFIGS:
        return Shape.from_config(KNOWN_CONFIGS[ref])
    raise ConfigError(f"{where}: model {ref!r} has no config.json (not a local model dir, not in the "
                      f"Hugging Face cache {hf_hub_cache()}) and is not one of the shapes the memory "
                      f"plan knows ({', '.join(KNOWN_CONFIGS)}); download its config.json first "
                      f"(`huggingface-cli download {ref} config.json`)")
