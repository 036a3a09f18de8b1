"""Char tokenizer, model loading helpers and the toy teacher/student builder."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from pgopd.config import ToyModelConfig, ToyModelsConfig
from pgopd.data.synthetic import make_split
from pgopd.models import toy
from pgopd.models.loading import (check_tokenizers_compatible, encode_prompts, load_model, load_tokenizer,
                                  resolve_model_ref, response_text)
from pgopd.models.tokenizer import build_char_tokenizer

SOLUTION = r"17+38=55. 55-9=46. \boxed{46}"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def ids_of(tok, *pieces):
    """Ids of special tokens (``<|...|>``) and plain characters, in order."""
    out = []
    for p in pieces:
        out += [tok.convert_tokens_to_ids(p)] if p.startswith("<|") else [tok.convert_tokens_to_ids(c) for c in p]
    return out


# ----------------------------------------------------------------------------- tokenizer
def test_solution_is_one_token_per_char_and_round_trips(tok):
    ids = tok.encode(SOLUTION, add_special_tokens=False)
    assert len(ids) == len(SOLUTION)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == SOLUTION


def test_special_tokens_are_set(tok):
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|eos|>"
    assert tok.pad_token_id != tok.eos_token_id
    for t in ("<|user|>", "<|assistant|>", "<|system|>", "<|unk|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == "<|unk|>"
        assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)]


def test_unknown_character_maps_to_unk(tok):
    ids = tok.encode("1é2", add_special_tokens=False)
    assert ids == [tok.convert_tokens_to_ids("1"), tok.unk_token_id, tok.convert_tokens_to_ids("2")]
    assert "é" in build_char_tokenizer(extra_chars="é").get_vocab()


def test_chat_template_gives_user_assistant_ids(tok):
    got = encode_prompts(tok, ["17+38"])
    assert got == [ids_of(tok, "<|user|>", "17+38", "<|assistant|>")]
    raw = tok.apply_chat_template([{"role": "user", "content": "17+38"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert list(raw) == got[0]
    with_system = encode_prompts(tok, ["1+2"], system_prompt="be brief")
    assert with_system == [ids_of(tok, "<|system|>", "be brief", "<|user|>", "1+2", "<|assistant|>")]


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(SOLUTION, add_special_tokens=False) == tok.encode(SOLUTION, add_special_tokens=False)
    assert loaded.decode(loaded.encode(SOLUTION, add_special_tokens=False)) == SOLUTION
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert encode_prompts(loaded, ["17+38"], "sys") == encode_prompts(tok, ["17+38"], "sys")
    assert load_tokenizer(str(tmp_path)).get_vocab() == tok.get_vocab()


def test_load_tokenizer_beside_a_qwen2_config_keeps_every_character(tok, tmp_path):
    """transformers 5 maps model_type qwen2 to Qwen2Tokenizer, which drops spaces; a toy model
    directory (tokenizer + Qwen2 config.json) must load the char tokenizer as saved."""
    from transformers import Qwen2Config

    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.encode(SOLUTION, add_special_tokens=False) == tok.encode(SOLUTION, add_special_tokens=False)
    assert loaded.decode(loaded.encode(SOLUTION, add_special_tokens=False)) == SOLUTION
    assert encode_prompts(loaded, ["17 + 38"], "be brief") == encode_prompts(tok, ["17 + 38"], "be brief")


# ----------------------------------------------------------------------------- loading helpers
def test_compatible_tokenizers_pass(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    check_tokenizers_compatible(tok, AutoTokenizer.from_pretrained(tmp_path))


def test_tokenizers_of_different_size_raise_with_both_sizes(tok):
    bigger = build_char_tokenizer(extra_chars="éü")
    with pytest.raises(ValueError) as e:
        check_tokenizers_compatible(tok, bigger, teacher_name="T", student_name="S")
    msg = str(e.value)
    assert str(len(tok)) in msg and str(len(bigger)) in msg and "T" in msg and "S" in msg


def test_same_size_different_vocab_names_first_differing_token():
    a, b = build_char_tokenizer(extra_chars="é"), build_char_tokenizer(extra_chars="ü")
    assert len(a) == len(b)
    with pytest.raises(ValueError, match=r"id \d+ is 'é' in teacher and 'ü' in student"):
        check_tokenizers_compatible(a, b)


def test_response_text_stops_at_eos_and_drops_specials(tok):
    ids = ids_of(tok, "<|assistant|>", "1+2=3. ", "<|eos|>", "junk")
    assert response_text(tok, ids) == "1+2=3. "
    assert response_text(tok, torch.tensor(ids_of(tok, "12"))) == "12"


def test_resolve_model_ref(tmp_path):
    assert resolve_model_ref("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    assert resolve_model_ref(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_model_ref(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError):
        resolve_model_ref("")


def test_boxed_answer():
    assert toy.boxed_answer(SOLUTION) == "46"
    assert toy.boxed_answer(r"\boxed{1} then \boxed{-7}") == "-7"
    assert toy.boxed_answer("no box") is None


def test_heldout_problems_are_unseen_and_drawn_like_training():
    train = make_split(200, 1, 3, 12, 0, "train")
    train = [{**r, "prompt": f"Compute {r['prompt']} now"} for r in train]
    seen = {r["prompt"] for r in train}
    problems = toy.heldout_problems(train, 10, seed=5)
    assert sorted(problems) == [1, 2, 3]
    for ops, probs in problems.items():
        assert len(probs) == 10 and all(p["ops"] == ops for p in probs)
        for p in probs:
            assert p["prompt"] not in seen
            assert p["prompt"].startswith("Compute ") and p["prompt"].endswith(" now")
            expr = p["prompt"][len("Compute "):-len(" now")]
            assert max(int(x) for x in expr.replace("-", "+").split("+")) <= 12
    assert toy.heldout_problems([{"prompt": "What is x?", "solution": "1"}], 10, seed=5) == {}


def test_train_records_need_solutions(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "x-0", "prompt": "1+2", "answer": "3"}) + "\n")
    with pytest.raises(ValueError, match="x-0.*'solution'"):
        toy.read_train_records(path)


# ----------------------------------------------------------------------------- toy build
TINY = ToyModelsConfig(
    teacher=ToyModelConfig(n_layers=2, d_model=32, n_heads=1, train_steps=60, batch_size=32, lr=1e-2, seed=0),
    student=ToyModelConfig(n_layers=1, d_model=32, n_heads=1, train_steps=10, batch_size=32, lr=1e-2,
                           final_lr_fraction=0.5, seed=1),
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("toy")
    train = root / "train.jsonl"
    with open(train, "w") as fh:
        for rec in make_split(300, 1, 1, 20, 0, "train"):
            fh.write(json.dumps(rec) + "\n")
    out = root / "models"
    report = toy.build_toy_models(TINY, train, out, n_eval=16)
    return out, report


def test_build_writes_loadable_models_and_report(built):
    out, report = built
    # no temp dirs left
    assert sorted(p.name for p in out.iterdir()) == ["build_student.json", "build_teacher.json", "student", "teacher"]
    on_disk = {name: json.loads((out / f"build_{name}.json").read_text()) for name in ("teacher", "student")}
    assert on_disk == report
    for name in ("teacher", "student"):
        stats = on_disk[name]
        assert stats["final_loss"] < stats["initial_loss"]
        assert stats["params"] > 0 and stats["train_seconds"] > 0
        assert set(stats["accuracy"]) == {"ops1", "ops2", "ops3"}
        # the last step ran at the schedule's end point: annealed teacher, un-annealed student
        mcfg = getattr(TINY, name)
        end = toy.one_cycle(mcfg.train_steps, final=mcfg.final_lr_fraction)(mcfg.train_steps - 1)
        assert stats["last_lr"] == pytest.approx(mcfg.lr * end)
        model = load_model(str(out / name))
        assert not model.training and model.config.tie_word_embeddings
        assert sum(p.numel() for p in model.parameters()) == stats["params"]
        check_tokenizers_compatible(load_tokenizer(str(out / name)), build_char_tokenizer())
    assert on_disk["teacher"]["final_loss"] < on_disk["student"]["final_loss"]
    assert on_disk["student"]["last_lr"] > 0.4 * TINY.student.lr > 10 * on_disk["teacher"]["last_lr"]


def test_build_one_role_leaves_the_other_alone(built, tmp_path):
    out, report = built
    train = tmp_path / "train.jsonl"
    with open(train, "w") as fh:
        for rec in make_split(300, 1, 1, 20, 0, "train"):
            fh.write(json.dumps(rec) + "\n")
    only = toy.build_toy_models(TINY, train, tmp_path / "m", roles=("student",), n_eval=16)
    assert set(only) == {"student"} and not (tmp_path / "m/teacher").exists()
    # same config, same seed: the job-per-role build equals the both-at-once build
    assert only["student"]["final_loss"] == report["student"]["final_loss"]
    with pytest.raises(ValueError, match="roles"):
        toy.build_toy_models(TINY, train, tmp_path / "m", roles=("tutor",))


def test_teacher_generates_eos_terminated_boxed_answers(built):
    out, _ = built
    tok, model = load_tokenizer(str(out / "teacher")), load_model(str(out / "teacher"))
    prompts = encode_prompts(tok, ["3+4", "12-5", "20+20", "7-19"])
    gens = toy.greedy_generate(model, prompts, tok.eos_token_id, max_new_tokens=32)
    for g in gens:
        assert g[-1] == tok.eos_token_id
        assert toy.boxed_answer(response_text(tok, g)) is not None


def test_greedy_generate_matches_hf_generate(built):
    out, _ = built
    tok, model = load_tokenizer(str(out / "teacher")), load_model(str(out / "teacher"))
    prompts = encode_prompts(tok, ["3+4", "11-15"])
    ours = toy.greedy_generate(model, prompts, tok.eos_token_id, max_new_tokens=20)
    for p, g in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=20, do_sample=False)[0, len(p):].tolist()
        assert ref[:len(g)] == g


def test_one_cycle_schedule_warms_up_then_anneals():
    f = toy.one_cycle(100, warmup_fraction=0.1, final=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert all(f(s) >= f(s + 1) for s in range(9, 99))
    assert f(99) == pytest.approx(0.01, abs=1e-3)
    assert toy.one_cycle(1)(0) == 1.0 and toy.one_cycle(3)(2) > 0  # very short runs work
