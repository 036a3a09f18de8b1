"""Loading teacher / student models and tokenizers, checking they share a vocabulary,
and converting between prompts, token ids and response text.

Everything runs offline: a reference that exists on disk is loaded with
``local_files_only=True``; anything else is treated as a Hugging Face model id (which then
has to be in the local HF cache when ``HF_HUB_OFFLINE=1``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

_PATH_PREFIXES = ("/", "./", "../", "~")


def resolve_model_ref(ref: str) -> str:
    """A model reference as given: a local directory or an HF id (returned unchanged).

    A reference that is clearly a path (starts with ``/``, ``./``, ``../`` or ``~``) but
    does not exist raises ``FileNotFoundError`` instead of becoming a failed hub lookup.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"model reference must be a non-empty string (local path or HF id), got {ref!r}")
    if ref.startswith(_PATH_PREFIXES) and not Path(ref).expanduser().exists():
        raise FileNotFoundError(f"model path {ref!r} does not exist")
    if ref.startswith("~"):
        return str(Path(ref).expanduser())
    return ref


def _is_local(ref: str) -> bool:
    return Path(ref).exists()


def load_tokenizer(ref: str):
    """The tokenizer of a model directory or HF id (``AutoTokenizer``)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    ref = resolve_model_ref(ref)
    if _saved_as_generic_fast(ref):
        # transformers 5 picks the tokenizer class from the *model* type when config.json sits
        # beside it (qwen2 -> Qwen2Tokenizer, which rebuilds its own pre-tokenizer and drops
        # the toy tokenizer's spaces); a tokenizer saved as the generic fast class must be
        # loaded as exactly what tokenizer.json describes
        return PreTrainedTokenizerFast.from_pretrained(ref, local_files_only=True)
    return AutoTokenizer.from_pretrained(ref, local_files_only=_is_local(ref))


def _saved_as_generic_fast(ref: str) -> bool:
    """A local directory whose tokenizer_config.json names the generic fast tokenizer class."""
    import json

    cfg = Path(ref) / "tokenizer_config.json"
    if not (cfg.is_file() and (Path(ref) / "tokenizer.json").is_file()):
        return False
    try:
        cls = json.loads(cfg.read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return False
    return cls in ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_model(ref: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A causal LM (``AutoModelForCausalLM``) in eval mode on ``device`` with ``dtype``."""
    from transformers import AutoModelForCausalLM

    ref = resolve_model_ref(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, local_files_only=_is_local(ref))
    except Exception as e:  # safetensors / torch / json errors name no file: name it here
        if not _is_local(ref):
            raise
        why = model_file_problem(ref) or f"{type(e).__name__}: {e}"
        raise ValueError(f"model {ref}: cannot be loaded ({why}); the files are incomplete or corrupt: "
                         "delete the directory and rerun the job that writes it (snakemake reruns it "
                         "once it is gone)") from None
    return model.to(device).eval()


def model_file_problem(ref: str) -> str | None:
    """The first weight file of local model ``ref`` whose size disagrees with its own header
    (a safetensors file cut short), or None: one line naming the file."""
    import json
    import struct
    from pathlib import Path

    for f in sorted(Path(ref).glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n)) if 8 + n <= size else None
        except (OSError, ValueError, struct.error):
            header = None
        if header is None:
            return f"{f}: unreadable header ({size} bytes)"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            return f"{f}: {size} bytes, its header says {8 + n + end} (truncated)"
    return None


def _vocab_by_id(tok) -> list[str]:
    """Token strings ordered by id (added tokens included)."""
    vocab = tok.get_vocab()
    by_id = [""] * (max(vocab.values()) + 1 if vocab else 0)
    for token, i in vocab.items():
        by_id[i] = token
    return by_id


def check_tokenizers_compatible(teacher_tok, student_tok, teacher_name: str = "teacher",
                                student_name: str = "student") -> None:
    """Raise ``ValueError`` unless both tokenizers map the same tokens to the same ids.

    OPD compares teacher and student distributions token by token, so they must share one
    vocabulary.  The message gives both vocabulary sizes and, when the sizes agree, the
    first id whose token differs.
    """
    t_vocab, s_vocab = _vocab_by_id(teacher_tok), _vocab_by_id(student_tok)
    if len(t_vocab) != len(s_vocab):
        raise ValueError(
            f"tokenizers differ: {teacher_name} has a vocabulary of {len(t_vocab)} tokens, "
            f"{student_name} has {len(s_vocab)}; OPD needs one shared vocabulary")
    for i, (a, b) in enumerate(zip(t_vocab, s_vocab)):
        if a != b:
            raise ValueError(
                f"tokenizers differ: both have {len(t_vocab)} tokens but id {i} is {a!r} in "
                f"{teacher_name} and {b!r} in {student_name}; OPD needs one shared vocabulary")


def _as_id_list(out) -> list[int]:
    """``apply_chat_template(tokenize=True)`` output (list or BatchEncoding) as a list of ids."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    return [int(i) for i in out]


def chat_messages(prompt: str | list, system_prompt: str = "") -> list[dict]:
    """Chat messages of one prompt: a user string, or an existing ``[{role, content}]`` list."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m
                                           for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise TypeError(f"prompt must be a string or a list of {{role, content}} messages, got {prompt!r}")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


def encode_prompts(tokenizer, prompts: Sequence[str | list], system_prompt: str = "") -> list[list[int]]:
    """Token ids of each prompt as a chat turn followed by the assistant generation prompt.

    A prompt is a user message string (or a ready ``[{role, content}]`` list);
    ``system_prompt`` (if non-empty) is put before it as a system message.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template")
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(chat_messages(prompt, system_prompt),
                                            add_generation_prompt=True, tokenize=True)
        out.append(_as_id_list(ids))
    return out


def response_text(tokenizer, ids) -> str:
    """Decoded response: everything before the first EOS, without special tokens."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[:ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True)
