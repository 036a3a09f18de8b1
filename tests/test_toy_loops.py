"""Looping warm-start traces (toy_models.<role>.loop_fraction): a student with a long tail."""
import random

import pytest

from pgopd.data.synthetic import make_split
from pgopd.models import toy
from pgopd.models.tokenizer import build_char_tokenizer

SOL = "17+38=55; 55-9+4. 55-9=46; 46+4. 46+4=50. \\boxed{50}"


def test_looping_solution_repeats_one_step_to_length_without_an_answer():
    seen_cuts = set()
    for seed in range(30):
        out = toy.looping_solution(SOL, random.Random(seed), 120)
        assert len(out) == 120 and "boxed" not in out
        steps = SOL.rsplit(" \\boxed{", 1)[0].split(". ")
        # a clean prefix of the solution, then one of its steps over and over
        cut = next(i for i in range(len(steps)) if out.startswith(". ".join(steps[:i + 1]).rstrip(".") + ". "
                                                                  + steps[i].rstrip(".") + "."))
        seen_cuts.add(cut)
        rep = " " + steps[cut].rstrip(".") + "."
        head = ". ".join(steps[:cut + 1]).rstrip(".") + "."
        assert (head + rep * 20)[:120] == out
    assert seen_cuts == {0, 1, 2}      # every step can start the loop


def test_with_loops_fraction_and_determinism():
    recs = make_split(400, 2, 4, 30, 0, "t", task="long")
    assert toy.with_loops(recs, 0.0, 100, 1) is recs
    a, b = toy.with_loops(recs, 0.25, 100, 1), toy.with_loops(recs, 0.25, 100, 1)
    assert a == b
    looped = [r for r in a if r.get("loop")]
    assert 0.18 < len(looped) / len(recs) < 0.32
    assert all(len(r["solution"]) == 100 and "boxed" not in r["solution"] for r in looped)
    assert [r for r in a if not r.get("loop")] == [r for r, x in zip(recs, a) if not x.get("loop")]


def test_encode_examples_gives_loops_no_eos():
    tok = build_char_tokenizer()
    recs = toy.with_loops(make_split(20, 2, 3, 30, 0, "t", task="long"), 0.5, 80, 2)
    ids, labels, lengths = toy.encode_examples(tok, recs)
    for i, r in enumerate(recs):
        last = int(labels[i, lengths[i] - 1])
        assert (last == tok.eos_token_id) != bool(r.get("loop"))


def test_loop_fraction_is_a_checked_option():
    from pgopd.config import ConfigError, ToyModelsConfig, parse_dataclass
    cfg = parse_dataclass(ToyModelsConfig, {"student": {"loop_fraction": 0.3}}, "toy_models")
    assert cfg.student.loop_fraction == 0.3 and cfg.teacher.loop_fraction == 0.0
    with pytest.raises(ConfigError, match="loop_fraction"):
        parse_dataclass(ToyModelsConfig, {"student": {"loop_fraction": 1.5}}, "toy_models")


ARITH = "17+38=55. 55-9=46. 46+4=50. \\boxed{50}"
PHRASE = "wait, let me check again."


def test_ramble_keeps_at_most_max_start_clean_steps_then_repeats_the_phrase():
    seen = set()
    for seed in range(40):
        out = toy.looping_solution(ARITH, random.Random(seed), 96, phrase=PHRASE, max_start=1)
        assert len(out) == 96 and "boxed" not in out
        if out.startswith(PHRASE):
            n_clean, rest = 0, out
        else:
            assert out.startswith("17+38=55. ")
            n_clean, rest = 1, out[len("17+38=55. "):]
        seen.add(n_clean)
        assert rest == ((PHRASE + " ") * 10)[:len(rest)]      # nothing but the phrase after the clean steps
    assert seen == {0, 1}


def test_ramble_with_any_start_can_keep_every_step():
    starts = {toy.looping_solution(ARITH, random.Random(s), 120, phrase=PHRASE).index(PHRASE) for s in range(60)}
    assert starts == {0, len("17+38=55. "), len("17+38=55. 55-9=46. "), len("17+38=55. 55-9=46. 46+4=50. ")}


def test_ramble_options_are_checked():
    from pgopd.config import ConfigError, ToyModelsConfig, parse_dataclass
    cfg = parse_dataclass(ToyModelsConfig, {"student": {"loop_phrase": "hm.", "loop_max_start": 2}}, "toy_models")
    assert (cfg.student.loop_phrase, cfg.student.loop_max_start) == ("hm.", 2)
    with pytest.raises(ConfigError, match="loop_max_start"):
        parse_dataclass(ToyModelsConfig, {"student": {"loop_max_start": -2}}, "toy_models")


def test_ramble_on_a_reduce_solution_splits_steps_at_the_equals_sign():
    sol = "55-9+4 = 46+4 = 50. \\boxed{50}"
    seen = set()
    for seed in range(40):
        out = toy.looping_solution(sol, random.Random(seed), 80, phrase=PHRASE, max_start=1)
        assert len(out) == 80 and "boxed" not in out and "46+4" not in out  # at most one clean step
        seen.add(out.startswith("55-9+4 " + PHRASE))
    assert seen == {True, False}
    for seed in range(20):  # repeat mode: clean steps, then one of them repeated
        out = toy.looping_solution(sol, random.Random(seed), 40)
        assert len(out) == 40 and "boxed" not in out
        assert all(p in {"55-9+4", "46+4", "50."} for p in out.replace(" = ", " ").split(" ")[:-1]), out
