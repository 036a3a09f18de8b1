"""The synthetic tasks (arith, long): deterministic, correct answers, well-formed solutions."""
import random
import re
import statistics
from pathlib import Path

import pytest
import yaml

from pgopd import workflow as W
from pgopd.config import DataConfig, parse_dataclass
from pgopd.data.prepare import prepare_data
from pgopd.data.loaders import read_jsonl
from pgopd.data.synthetic import make_problem, make_split, worked_solution

EXPR = re.compile(r"-?\d+(?:[+-]\d+)+")


def _replay_long(solution: str, prompt: str) -> None:
    """Check a long-task solution step by step: each step applies the next operation of what
    is left and rewrites the rest; the boxed value is the final result."""
    body, boxed = solution.rsplit(" \\boxed{", 1)
    steps = re.split(r"(?<=\.) ", body)
    left = prompt
    for i, step in enumerate(steps):
        m = re.fullmatch(r"(-?\d+)([+-])(\d+)=(-?\d+)(?:; (-?\d+(?:[+-]\d+)+))?\.", step)
        assert m, (step, solution)
        a, op, b, new, rest = m.groups()
        assert left.startswith(f"{a}{op}{b}"), (left, step)
        assert int(new) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        tail = left[len(f"{a}{op}{b}"):]
        if tail:
            assert rest == f"{new}{tail}", (rest, new, tail)  # the rest, rewritten exactly
            left = rest
        else:
            assert rest is None and i == len(steps) - 1
            assert boxed == f"{new}}}"


def _replay_reduce(solution: str, prompt: str) -> None:
    """Every step of a reduce solution is the previous expression with its first operation done."""
    body, boxed = solution.split(". \\boxed{")
    prev = prompt
    for step in body.split(" = "):
        a, op, b, rest = re.fullmatch(r"(-?\d+)([+-])(\d+)(.*)", prev).groups()
        assert step == f"{int(a) + int(b) if op == '+' else int(a) - int(b)}{rest}", (prev, step)
        prev = step
    assert re.fullmatch(r"-?\d+", prev) and boxed == f"{prev}}}"


@pytest.mark.parametrize("task", ["arith", "reduce", "long"])
def test_split_is_deterministic_distinct_and_correct(task):
    a = make_split(300, 1, 5, 30, 7, "t", task=task)
    assert a == make_split(300, 1, 5, 30, 7, "t", task=task)
    assert a != make_split(300, 1, 5, 30, 8, "t", task=task)
    assert len({r["prompt"] for r in a}) == 300
    for r in a:
        assert r["task"] == task and 1 <= r["ops"] <= 5
        assert len(re.findall(r"[+-]", r["prompt"])) == r["ops"]
        assert int(r["answer"]) == eval(r["prompt"])  # noqa: S307 - digits and +/- only
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
        if task == "reduce":
            _replay_reduce(r["solution"], r["prompt"])
            assert r["solution"].count(" = ") == r["ops"] - 1
        else:
            assert r["solution"].count("=") == r["ops"]
        if task == "long":
            _replay_long(r["solution"], r["prompt"])


def test_same_prompts_for_both_tasks_and_long_is_longer():
    arith, long_ = (make_split(200, 2, 5, 30, 3, "t", task=t) for t in ("arith", "long"))
    assert [r["prompt"] for r in arith] == [r["prompt"] for r in long_]
    for a, b in zip(arith, long_):
        assert a["answer"] == b["answer"]
        assert len(b["solution"]) > len(a["solution"])   # >= 2 ops: something is rewritten


def test_worked_solution_by_hand():
    assert worked_solution([17, 38, 9], ["+", "-"], "arith") == ("17+38=55. 55-9=46. \\boxed{46}", 46)
    assert worked_solution([17, 38, 9, 4], ["+", "-", "+"], "long") == (
        "17+38=55; 55-9+4. 55-9=46; 46+4. 46+4=50. \\boxed{50}", 50)
    assert worked_solution([3, 5], ["-"], "long") == ("3-5=-2. \\boxed{-2}", -2)   # one op: same as arith
    assert worked_solution([17, 38, 9, 4], ["+", "-", "+"], "reduce") == ("55-9+4 = 46+4 = 50. \\boxed{50}", 50)
    assert worked_solution([3, 5], ["-"], "reduce") == ("-2. \\boxed{-2}", -2)


def test_reduce_solutions_grow_faster_than_the_operations():
    """The default's point: 1-5 operations span >= 4x in solution length (arith: ~3x)."""
    def mean_len(task, ops):
        rs = make_split(300, ops, ops, 30, 5, "t", task=task)
        return sum(len(r["solution"]) for r in rs) / len(rs)
    assert mean_len("reduce", 5) / mean_len("reduce", 1) >= 4.0
    assert mean_len("arith", 5) / mean_len("arith", 1) < 3.5


def test_bad_arguments_are_named():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="task"):
        make_problem(rng, 2, 30, "essay")
    with pytest.raises(ValueError, match="n_ops"):
        make_problem(rng, 0, 30, "long")
    with pytest.raises(ValueError, match="operations"):
        worked_solution([1, 2], ["*"], "long")
    with pytest.raises(ValueError, match="one more operand"):
        worked_solution([1, 2], ["+", "+"], "arith")


def test_prepare_data_long_task(tmp_path):
    cfg = parse_dataclass(DataConfig, {
        "synthetic": {"task": "long", "n_train": 60, "min_ops": 2, "max_ops": 4, "seed": 1},
        "benchmarks": {"b": {"ops": 3, "n": 20, "seed": 2}}}, "data")
    stats = prepare_data(cfg, tmp_path)
    assert stats["train"]["task"] == "long"
    for path in (tmp_path / "train.jsonl", tmp_path / "bench/b.jsonl"):
        for r in read_jsonl(path):
            assert r["task"] == "long"
            _replay_long(r["solution"], r["prompt"])


def test_graded_config_prepares_and_its_solutions_grow_4x_with_difficulty(tmp_path):
    """config/graded.yaml (the length-graded testbed) loads, its data prepares (no benchmark
    asks for problems the training set used up), and the mean correct-solution length of its
    hardest training problems is >= 4x that of its easiest, as docs/testbed.md states."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/graded.yaml").read_text())
    cfg = W.load_config(raw)
    prepare_data(cfg.data, tmp_path)
    train = read_jsonl(tmp_path / "train.jsonl")
    by_ops = {}
    for r in train:
        by_ops.setdefault(r["ops"], []).append(len(r["solution"]) + 1)     # char tokens + EOS
    lo, hi = min(by_ops), max(by_ops)
    assert (lo, hi) == (cfg.data.synthetic.min_ops, cfg.data.synthetic.max_ops)
    assert statistics.mean(by_ops[hi]) >= 4 * statistics.mean(by_ops[lo])
    longest = max(n for lens in by_ops.values() for n in lens)
    assert longest <= min(cfg.teacher_cache.max_new_tokens, cfg.eval.max_new_tokens)
    train_prompts = {r["prompt"] for r in train}
    for name, b in cfg.data.benchmarks.items():
        bench = read_jsonl(tmp_path / f"bench/{name}.jsonl")
        assert len(bench) == b.n > 0 and not train_prompts & {r["prompt"] for r in bench}
