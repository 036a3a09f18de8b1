"""The embedded default task: multi-step integer arithmetic with a worked solution.

``17+38-9`` -> ``17+38=55. 55-9=46. \\boxed{46}``.  The number of operations sets the
difficulty, so three held-out sets with 1, 2 and 3 operations stand in for the papers'
AMC / AIME / HMMT columns (rising difficulty, same grader).
"""
from __future__ import annotations

import random


def make_problem(rng: random.Random, n_ops: int, operand_max: int) -> tuple[str, str, str]:
    """One problem: (expression, worked solution ending in \\boxed{answer}, answer)."""
    if n_ops < 1:
        raise ValueError(f"n_ops must be >= 1, got {n_ops}")
    if operand_max < 2:
        raise ValueError(f"operand_max must be >= 2, got {operand_max}")
    operands = [rng.randint(1, operand_max) for _ in range(n_ops + 1)]
    ops = [rng.choice("+-") for _ in range(n_ops)]
    expr = str(operands[0])
    steps = []
    acc = operands[0]
    for op, b in zip(ops, operands[1:]):
        new = acc + b if op == "+" else acc - b
        steps.append(f"{acc}{op}{b}={new}.")
        expr += f"{op}{b}"
        acc = new
    solution = " ".join(steps) + f" \\boxed{{{acc}}}"
    return expr, solution, str(acc)


def make_split(n: int, min_ops: int, max_ops: int, operand_max: int, seed: int,
               id_prefix: str, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct problems as ``{id, prompt, answer, solution, ops}`` records.

    ``exclude`` holds expressions that must not appear (keeps benchmarks out of training).
    """
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems with ops in [{min_ops}, {max_ops}] "
                             f"and operands up to {operand_max}; raise operand_max or lower n")
        n_ops = rng.randint(min_ops, max_ops)
        expr, sol, ans = make_problem(rng, n_ops, operand_max)
        if expr in seen:
            continue
        seen.add(expr)
        out.append({"id": f"{id_prefix}-{len(out)}", "prompt": expr, "answer": ans,
                    "solution": sol, "ops": n_ops})
    return out
