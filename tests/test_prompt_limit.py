"""data.max_prompt_tokens: a prompt longer than the limit (counted with data.tokenizer, chat
template included) stops prepare_data naming it, or is dropped and counted (on_bad_row: skip)."""
from __future__ import annotations

import json

import pytest

from pgopd import config as C
from pgopd.data.loaders import write_jsonl
from pgopd.data.prepare import prepare_data
from pgopd.models.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def char_tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_char_tokenizer().save_pretrained(d)
    return d


def _cfg(tmp_path, tok_dir, on_bad_row: str, limit: int, long_len: int) -> C.DataConfig:
    rows = [{"id": f"p{i}", "prompt": f"{i}+{i}", "answer": str(2 * i)} for i in range(5)]
    rows.insert(2, {"id": "huge", "prompt": "1+" * (long_len // 2) + "1", "answer": "1"})
    write_jsonl(tmp_path / "train.jsonl", rows)
    return C.parse_dataclass(C.DataConfig, {
        "train": {"source": "file", "path": str(tmp_path / "train.jsonl"), "id_field": "id"},
        "benchmarks": {"easy": {"source": "synthetic", "ops": 1, "n": 5, "seed": 1}},
        "on_bad_row": on_bad_row, "max_prompt_tokens": limit, "tokenizer": str(tok_dir)})


def test_a_prompt_over_the_limit_stops_prepare_data_naming_it(tmp_path, char_tok_dir):
    cfg = _cfg(tmp_path, char_tok_dir, "error", 200, 5000)
    with pytest.raises(ValueError) as e:
        prepare_data(cfg, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith("data.max_prompt_tokens: train: 1 of 6 prompts") and "'huge'" in msg
    n = int(msg.split("has ")[-1].split(";")[0])
    assert 5001 <= n < 5200  # one token per character plus the chat template's few
    assert not (tmp_path / "out" / "train.jsonl").exists()  # nothing half-written


def test_skip_drops_and_counts_the_long_prompts(tmp_path, char_tok_dir):
    stats = prepare_data(_cfg(tmp_path, char_tok_dir, "skip", 200, 5000), tmp_path / "out")
    kept = [json.loads(x)["id"] for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert kept == ["p0", "p1", "p2", "p3", "p4"]
    assert stats["train"]["skipped"]["prompt_too_long"] == 1 and stats["train"]["kept"] == 5
    assert stats["train"]["longest_dropped"]["id"] == "huge"
    assert stats["bench"]["easy"]["skipped"]["prompt_too_long"] == 0


def test_a_limit_above_every_prompt_keeps_them_all(tmp_path, char_tok_dir):
    stats = prepare_data(_cfg(tmp_path, char_tok_dir, "error", 6000, 5000), tmp_path / "out")
    assert stats["train"]["kept"] == 6


def test_a_limit_needs_a_tokenizer():
    with pytest.raises(C.ConfigError, match=r"^data\.tokenizer: max_prompt_tokens \(100\)"):
        C.parse({"data": {"max_prompt_tokens": 100}})
