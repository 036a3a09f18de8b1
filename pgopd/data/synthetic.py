"""The embedded tasks: multi-step integer arithmetic with a worked solution.

Three formats (``data.synthetic.task``), same prompts (``17+38-9``) and grader:

* ``arith`` (short): ``17+38=55. 55-9=46. \\boxed{46}``.
* ``reduce``: every step rewrites the whole expression with its first operation done
  (``17+38-9+4`` -> ``55-9+4 = 46+4 = 50. \\boxed{50}``): a step is local (compute two
  neighbouring numbers, copy the rest), and a solution's length grows faster than linearly
  with the number of operations (1-5 operations: ~15 to ~63 tokens, 4.2x), so a fixed length
  budget that fits easy problems cuts hard ones -- as on the papers' benchmarks.
* ``long``: every step also rewrites what is left of the expression, so a solution is a
  longer trace whose length grows with the number of operations (``17+38-9+4`` ->
  ``17+38=55; 55-9+4. 55-9=46; 46+4. 46+4=50. \\boxed{50}``).  This is the task on which a
  weak student's rollouts can lose their place, repeat a step and run to the length limit:
  the long tail PG-OPD and Prune-OPD are meant to cut.

The number of operations sets the difficulty, so held-out sets with rising operation counts
stand in for the papers' AMC / AIME / HMMT columns.
"""
from __future__ import annotations

import random

TASKS = ("arith", "reduce", "long")


def _check(n_ops: int, operand_max: int, task: str) -> None:
    if n_ops < 1:
        raise ValueError(f"n_ops must be >= 1, got {n_ops}")
    if operand_max < 2:
        raise ValueError(f"operand_max must be >= 2, got {operand_max}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def worked_solution(operands: list[int], ops: list[str], task: str = "arith") -> tuple[str, int]:
    """(worked solution ending in ``\\boxed{answer}``, answer) of ``operands`` joined by ``ops``."""
    if len(operands) != len(ops) + 1 or not ops:
        raise ValueError(f"need one more operand than operations, got {len(operands)} and {len(ops)}")
    steps, acc = [], operands[0]
    for i, (op, b) in enumerate(zip(ops, operands[1:])):
        if op not in "+-" or len(op) != 1:
            raise ValueError(f"operations are '+' or '-', got {op!r}")
        new = acc + b if op == "+" else acc - b
        rest = "".join(f"{o}{x}" for o, x in zip(ops[i + 1:], operands[i + 2:]))
        if task == "reduce":
            steps.append(f"{new}{rest}")                          # the expression, one operation done
        elif task == "long" and rest:
            steps.append(f"{acc}{op}{b}={new}; {new}{rest}.")   # rewrite what is left
        else:
            steps.append(f"{acc}{op}{b}={new}.")
        acc = new
    if task == "reduce":
        return " = ".join(steps) + f". \\boxed{{{acc}}}", acc
    return " ".join(steps) + f" \\boxed{{{acc}}}", acc


def make_problem(rng: random.Random, n_ops: int, operand_max: int,
                 task: str = "arith") -> tuple[str, str, str]:
    """One problem: (expression, worked solution ending in \\boxed{answer}, answer)."""
    _check(n_ops, operand_max, task)
    operands = [rng.randint(1, operand_max) for _ in range(n_ops + 1)]
    ops = [rng.choice("+-") for _ in range(n_ops)]
    expr = str(operands[0]) + "".join(f"{o}{b}" for o, b in zip(ops, operands[1:]))
    solution, answer = worked_solution(operands, ops, task)
    return expr, solution, str(answer)


def make_split(n: int, min_ops: int, max_ops: int, operand_max: int, seed: int,
               id_prefix: str, exclude: set[str] | None = None, task: str = "arith") -> list[dict]:
    """``n`` distinct problems as ``{id, prompt, answer, solution, ops, task}`` records.

    ``exclude`` holds expressions that must not appear (keeps benchmarks out of training).
    """
    _check(min_ops, operand_max, task)
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
        expr, sol, ans = make_problem(rng, n_ops, operand_max, task)
        if expr in seen:
            continue
        seen.add(expr)
        out.append({"id": f"{id_prefix}-{len(out)}", "prompt": expr, "answer": ans,
                    "solution": sol, "ops": n_ops, "task": task})
    return out
