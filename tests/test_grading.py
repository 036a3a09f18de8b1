"""Grading: boxed extraction, math-verify equivalence, the fast path and the hard time limit."""
from __future__ import annotations

import threading
import time

import pytest

from pgopd import grading
from pgopd.grading import extract_boxed, grade, grade_many

# 100k+ characters of nested LaTeX: math-verify would spend minutes on it.
PATHOLOGICAL = "\\boxed{" + "\\frac{1}{" * 20000 + "1" + "}" * 20000 + "}"


@pytest.fixture(scope="module")
def warm_pool():
    """Start the grading worker once (math-verify warm-up is not part of any time limit)."""
    assert grade("\\boxed{x^2+1}", "1+x^2")
    yield


@pytest.fixture
def no_math_verify(monkeypatch):
    """Make any use of the math-verify workers fail loudly."""
    def boom(*a, **k):
        raise AssertionError("math-verify was called for an answer the fast path should settle")
    monkeypatch.setattr(grading._POOL, "run", boom)


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{2}}{2^{3}}} done", "\\frac{\\sqrt{2}}{2^{3}}"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\fbox{7}", "7"),
    ("\\boxed {5}", "5"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\boxed{204}}", "204"),
    ("\\boxed{a} and \\boxed{\\text{b}}", "\\text{b}"),
])
def test_extract_boxed_finds_last_box_with_nested_braces(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text", [
    "no box here: 42",
    "\\boxed{\\frac{1}{2}",            # never closed (truncated generation)
    "\\boxed{1} and then \\boxed{2",   # the last box is unfinished
    "\\boxedx{3}",                      # another command
    "",
])
def test_extract_boxed_none_when_absent_or_unbalanced(text):
    assert extract_boxed(text) is None


def test_extract_boxed_is_linear_on_long_input():
    t0 = time.monotonic()
    content = extract_boxed(PATHOLOGICAL)
    assert content is not None and len(content) == len(PATHOLOGICAL) - len("\\boxed{}")
    assert time.monotonic() - t0 < 1.0


# ----------------------------------------------------------------------------- grading
@pytest.mark.parametrize("response,gold", [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("The answer is \\boxed{142}", "142.0"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{-3}", "-3"),
    ("\\boxed{ 17 }", "17"),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{204}", "\\boxed{204}"),  # AIME24 gold answers carry their own \boxed{}
])
def test_equivalent_forms_are_correct(warm_pool, response, gold):
    assert grade(response, gold) is True


@pytest.mark.parametrize("response,gold", [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{143}", "142.0"),
    ("\\boxed{3}", "-3"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{8}"),
    ("\\boxed{}", "0"),
])
def test_wrong_answers_are_wrong(warm_pool, response, gold):
    assert grade(response, gold) is False


def test_missing_or_unfinished_box_is_wrong():
    assert grade("The answer is 142.", "142") is False
    assert grade("\\boxed{142", "142") is False


def test_last_box_wins():
    response = "Maybe \\boxed{12}? No: recomputing gives \\boxed{13}."
    assert grade(response, "13") is True
    assert grade(response, "12") is False


def test_fast_path_settles_trivial_answers_without_math_verify(no_math_verify):
    golds = [str(n) for n in range(-50, 50)] * 20
    responses = [f"{g}+0=\\boxed{{{g}}}" if i % 3 else f"\\boxed{{{int(g) + 1}}}"
                 for i, g in enumerate(golds)]
    got = grade_many(responses, golds)
    assert got == [bool(i % 3) for i in range(len(golds))]
    assert grade("\\boxed{142}", "142.0") and grade("\\boxed{ 1 2 }", "12")


def test_fast_compare_leaves_non_trivial_cases_to_math_verify():
    assert grading.fast_compare("\\frac{1}{2}", "0.5") is None
    assert grading.fast_compare("0.50", "0.5") is True
    assert grading.fast_compare("7", "8") is False
    assert grading.fast_compare("0.3333", "0.3333333") is None  # tolerance: math-verify decides


def test_pathological_output_costs_about_the_timeout_and_counts_wrong(warm_pool):
    assert len(PATHOLOGICAL) > 100_000
    restarts = grading.worker_restarts()
    t0 = time.monotonic()
    assert grade(PATHOLOGICAL, "\\frac{1}{2}", timeout_s=1.0) is False
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0 + 3.0, f"grading took {elapsed:.1f} s with a 1 s limit"
    assert grading.worker_restarts() == restarts + 1  # the hung worker was replaced
    assert grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", timeout_s=1.0) is True  # pool still works


@pytest.mark.parametrize("workers", [1, 2])
def test_grade_many_keeps_order_with_mixed_inputs(warm_pool, workers):
    cases = [
        ("\\boxed{5}", "5", True),                          # fast path
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),         # math-verify
        (PATHOLOGICAL, "1", False),                         # time limit
        ("\\boxed{6}", "5", False),                         # fast path, wrong
        ("\\boxed{\\frac{1}{3}}", "0.5", False),            # math-verify, wrong
        ("5", "5", False),                                  # no box
        ("\\boxed{\\frac{1}{2}}", "0.5", True),             # math-verify
        ("\\boxed{-3}", "-3.0", True),                      # fast path
    ]
    t0 = time.monotonic()
    got = grade_many([c[0] for c in cases], [c[1] for c in cases], timeout_s=2.0, workers=workers)
    assert got == [c[2] for c in cases]
    assert time.monotonic() - t0 < 2.0 + 4.0


def test_grading_from_a_non_main_thread(warm_pool):
    out: dict = {}

    def run():
        try:
            out["res"] = grade_many(["\\boxed{2\\sqrt{2}}", "\\boxed{\\frac{1}{3}}", PATHOLOGICAL],
                                    ["\\sqrt{8}", "0.5", "2"], timeout_s=1.0)
        except BaseException as e:  # noqa: BLE001 - reported below
            out["err"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert "err" not in out, out.get("err")
    assert out["res"] == [True, False, False]


def test_concurrent_callers_get_their_own_results(warm_pool):
    results: dict[int, list[bool]] = {}

    def run(k):
        results[k] = grade_many(["\\boxed{\\frac{1}{2}}", f"\\boxed{{{k}}}"], ["0.5", str(k + k % 2)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [True, k % 2 == 0] for k in range(4)}


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        grade_many(["\\boxed{1}", "\\boxed{2}"], ["1"])
    with pytest.raises(ValueError, match="timeout_s"):
        grade("\\boxed{1}", "1", timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        grade_many(["\\boxed{1}"], ["1"], workers=0)


def test_gold_parseable_many():
    assert grading.gold_parseable_many(["142.0", "\\frac{1}{2}", "\\text{}", "", "\\left( 3, \\pi \\right)"]) \
        == [True, True, False, False, True]
