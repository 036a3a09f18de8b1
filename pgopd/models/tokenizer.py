"""A character-level tokenizer for the toy models, usable as an ordinary HF tokenizer.

Every character of the synthetic task (``17+38=55. 55-9=46. \\boxed{46}``) is one token, so
the toy teacher and student share a small, fixed vocabulary.  Chat turns are marked by
special tokens: ``<|user|>17+38<|assistant|>`` is the generation prompt of ``17+38``.
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<|pad|>", "<|eos|>", "<|unk|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = (PAD, EOS, UNK, USER, ASSISTANT, SYSTEM)

#: digits, the task's symbols (``+-=*/(). \boxed{}``), letters, punctuation, whitespace.
BASE_CHARS = (string.digits + "+-=*/(). \\{}" + string.ascii_letters + string.punctuation + "\n")

#: ``<|role|>content`` per message; a finished assistant turn ends with EOS (as in training).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '" + EOS + "' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)


def char_vocab(extra_chars: str = "") -> dict[str, int]:
    """Token -> id: the special tokens first (``<|pad|>`` = 0), then each character once."""
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for ch in BASE_CHARS + extra_chars:
        if ch not in vocab:
            vocab[ch] = len(vocab)
    return vocab


def build_char_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """The toy models' tokenizer: one token per character, unknown characters -> ``<|unk|>``.

    ``extra_chars`` adds characters to the vocabulary (after the base set, in order).
    """
    if not isinstance(extra_chars, str):
        raise TypeError(f"extra_chars must be a string, got {type(extra_chars).__name__}")
    core = Tokenizer(models.WordLevel(vocab=char_vocab(extra_chars), unk_token=UNK))
    # every character (newlines included) is its own pre-token; special tokens are matched first
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # join characters without spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD, eos_token=EOS, unk_token=UNK,
        extra_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok
