"""Answer grading: the last ``\\boxed{...}`` of a response against a gold answer, via math-verify.

Two layers:

* a fast path in the calling process: equal strings after trivial normalisation (spaces,
  an enclosing ``$...$`` or ``\\boxed{}``, ``142.0`` == ``142``) are right, two different
  integers are wrong.  This settles almost every answer of the embedded arithmetic task.
* everything else goes to math-verify in worker processes.  math-verify's own time limits
  use ``signal.alarm`` (main thread only), so they are switched off and the limit is
  enforced here instead: a worker that has not answered within ``timeout_s`` is killed
  and restarted, and that answer counts as wrong.  This holds whichever thread calls.

The workers are forked once per process (math-verify imported first) and reused;
:func:`shutdown` stops them (also done at exit).
"""
from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import re
import threading
import time
from collections import deque
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import wait as _wait_conns
from typing import Sequence

log = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_STARTUP_TIMEOUT_S = 120.0
_MAX_UNWRAP = 4
_WARM = False  # math-verify imported and exercised in this process


# ----------------------------------------------------------------------------- extraction
def _match_brace(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_pos``; escaped ``\\{ \\}`` are skipped."""
    depth = 0
    i, n = open_pos, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # the escaped character (\{, \}, \\) never counts as a brace
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_open(text: str, pos: int) -> int | None:
    """If a box command starts at ``pos``, the index of its ``{`` (spaces allowed before it)."""
    for cmd in _BOX_COMMANDS:
        if text.startswith(cmd, pos):
            j = pos + len(cmd)
            if j < len(text) and text[j].isalpha():  # \boxedfoo is another command
                return None
            while j < len(text) and text[j] == " ":
                j += 1
            if j < len(text) and text[j] == "{":
                return j
    return None


def _single_box(s: str) -> str | None:
    """The content if ``s`` (stripped) is exactly one box command, else None."""
    s = s.strip()
    if not s.startswith(_BOX_COMMANDS):
        return None
    brace = _box_open(s, 0)
    if brace is None or _match_brace(s, brace) != len(s) - 1:
        return None
    return s[brace + 1:-1]


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Nested braces are matched; a box whose content is itself one box (``\\boxed{\\boxed{7}}``)
    is unwrapped (a few levels).  None if there is no box, or if the last one is never
    closed (a truncated response has no final answer).  Linear in ``len(text)``.
    """
    if not isinstance(text, str):
        return None
    found = None
    pos = text.find("\\")
    while pos != -1:
        brace = _box_open(text, pos)
        if brace is None:
            pos = text.find("\\", pos + 1)
            continue
        close = _match_brace(text, brace)
        if close is None:
            return None
        found = text[brace + 1:close]
        pos = text.find("\\", close + 1)
    for _ in range(_MAX_UNWRAP):
        inner = _single_box(found) if found is not None else None
        if inner is None:
            break
        found = inner
    return found


# ----------------------------------------------------------------------------- fast path
def _normalise(s: str) -> str:
    """Trivial normalisation: no whitespace, no enclosing ``$``, a lone box unwrapped."""
    s = "".join(s.split())
    for _ in range(_MAX_UNWRAP):
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1]
            continue
        inner = _single_box(s)
        if inner is None:
            break
        s = inner
    return s


def _as_decimal(s: str) -> Decimal | None:
    if len(s) > 64 or not _NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def fast_compare(answer: str, gold: str) -> bool | None:
    """True/False when trivially decidable, else None (math-verify must decide).

    Equal normalised strings or equal plain numbers are right; two plain numbers that are
    both integers and differ are wrong (no tolerance question arises for integers).
    """
    a, g = _normalise(answer), _normalise(gold)
    if a == g and a:
        return True
    da, dg = _as_decimal(a), _as_decimal(g)
    if da is None or dg is None:
        return None
    if da == dg:
        return True
    if da == da.to_integral_value() and dg == dg.to_integral_value():
        return False
    return None


def _gold_latex(gold: str) -> str:
    """The gold answer as math-verify input: ``$gold$`` unless it is already delimited."""
    g = gold.strip()
    if "\\boxed" in g or g.startswith("$") or g.startswith("\\(") or g.startswith("\\["):
        return g
    return f"${g}$"


# ----------------------------------------------------------------------------- worker side
def _mv_verify(answer: str, gold: str) -> bool:
    """math-verify on one pair, without its signal-based timeouts (the caller enforces one)."""
    from math_verify import parse, verify

    gold_parsed = parse(_gold_latex(gold), parsing_timeout=None)
    if not gold_parsed:
        return False
    ans_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    if not ans_parsed:
        return False
    return bool(verify(gold_parsed, ans_parsed, timeout_seconds=None))


def _mv_parses(gold: str) -> bool:
    """Whether math-verify parses a gold answer to anything at all."""
    from math_verify import parse

    return bool(parse(_gold_latex(gold), parsing_timeout=None))


_JOBS = {"verify": _mv_verify, "parses": _mv_parses}


def _worker_loop(conn) -> None:
    """Worker process: answer ``(kind, args)`` jobs with a bool until the pipe closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which kills us
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (imported before the ready signal, not inside a time limit)

    conn.send("ready")
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = bool(_JOBS[kind](*args))
        except BaseException:  # noqa: BLE001 - any failure of math-verify is a wrong answer
            result = False
        conn.send(result)


# ----------------------------------------------------------------------------- parent side
_WARM_UP_PAIRS = (("\\frac{1}{2}", "0.5"), ("x^2+1", "1+x^2"), ("(1,2)", "[1,2]"),
                  ("\\{1,2\\}", "\\{2,1\\}"), ("x=3", "3"), ("\\text{B}", "B"))


def _warm_up() -> None:
    """Import math-verify and run its lazily built parts once in this process, so every
    forked worker starts warm and no first-use cost is charged to an answer's time limit.
    Its once-per-process "timeout is disabled" warning is silenced (the limit is ours)."""
    mv_log = logging.getLogger("math_verify")
    level = mv_log.level
    mv_log.setLevel(logging.ERROR)
    try:
        for answer, gold in _WARM_UP_PAIRS:
            _mv_verify(answer, gold)
    finally:
        mv_log.setLevel(level)


def _context():
    """``fork``: workers start in milliseconds with math-verify already imported, and no
    main module is re-imported (``forkserver`` / ``spawn`` would re-run an unguarded
    script).  The child only runs math-verify, never torch or the caller's threads."""
    global _WARM
    if not _WARM:
        _warm_up()
        _WARM = True
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class _Worker:
    """One math-verify worker process and its pipe."""

    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True,
                                name="pgopd-grader")
        self.proc.start()
        child.close()
        self.job = None  # (index, deadline) while busy

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            self.kill()
            raise RuntimeError(f"grading worker did not start within {timeout:.0f} s")
        msg = self.conn.recv()
        if msg != "ready":
            self.kill()
            raise RuntimeError(f"grading worker sent {msg!r} instead of 'ready'")

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


class _Pool:
    """Persistent workers; a hung or crashed worker is killed and replaced."""

    def __init__(self):
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []
        self.restarts = 0

    def _ensure(self, n: int) -> None:
        self.workers = [w for w in self.workers if w.proc.is_alive()]
        if len(self.workers) >= n:
            return
        ctx = _context()
        new = [_Worker(ctx) for _ in range(n - len(self.workers))]
        for w in new:
            w.wait_ready(_STARTUP_TIMEOUT_S)
        self.workers += new

    def run(self, jobs: list[tuple[str, tuple]], timeout_s: float, workers: int) -> list[bool]:
        """Results of ``jobs`` in order; a job over ``timeout_s`` or a crashed worker -> False."""
        results = [False] * len(jobs)
        if not jobs:
            return results
        with self.lock:
            n = max(1, min(workers, len(jobs)))
            self._ensure(n)
            active = self.workers[:n]
            pending = deque(range(len(jobs)))
            while pending or any(w.job for w in active):
                for k, w in enumerate(active):
                    if w.job is None and pending:
                        if not w.proc.is_alive():
                            w = active[k] = self._replace(w)
                        i = pending.popleft()
                        try:
                            w.conn.send(jobs[i])
                        except (OSError, ValueError):
                            active[k] = self._replace(w)
                            continue  # job i keeps its default False
                        w.job = (i, time.monotonic() + timeout_s)
                busy = [w for w in active if w.job]
                if not busy:
                    continue
                next_deadline = min(w.job[1] for w in busy)
                ready = _wait_conns([w.conn for w in busy], max(0.0, next_deadline - time.monotonic()))
                now = time.monotonic()
                for k, w in enumerate(active):
                    if w.job is None:
                        continue
                    i, deadline = w.job
                    if w.conn in ready:
                        try:
                            results[i] = bool(w.conn.recv())
                            w.job = None
                            continue
                        except (EOFError, OSError):
                            pass  # crashed worker: wrong answer, fresh worker below
                    elif now < deadline:
                        continue
                    log.debug("grading job %d %s; restarting its worker", i,
                              "crashed" if w.conn in ready else f"exceeded {timeout_s} s")
                    active[k] = self._replace(w)
            self.workers[:n] = active
        return results

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        self.restarts += 1
        new = _Worker(_context())
        new.wait_ready(_STARTUP_TIMEOUT_S)
        return new

    def shutdown(self) -> None:
        with self.lock:
            for w in self.workers:
                w.kill()
            self.workers = []


_POOL = _Pool()
atexit.register(_POOL.shutdown)


def shutdown() -> None:
    """Stop the grading worker processes (they restart on the next call that needs them)."""
    _POOL.shutdown()


def worker_restarts() -> int:
    """How many workers were replaced after a timeout or crash since the process started."""
    return _POOL.restarts


def _check_timeout(timeout_s: float) -> None:
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


# ----------------------------------------------------------------------------- public API
def grade_many(responses: Sequence[str], golds: Sequence[str], timeout_s: float = 5.0,
               workers: int = 1) -> list[bool]:
    """Grade ``responses[i]`` against ``golds[i]``; results in input order.

    A response without a closed ``\\boxed{}`` is wrong.  Answers the fast path cannot
    decide go to math-verify in ``workers`` processes, each limited to ``timeout_s``
    seconds (over the limit, or any error -> wrong).  Safe to call from any thread.
    """
    if len(responses) != len(golds):
        raise ValueError(f"grade_many: {len(responses)} responses but {len(golds)} gold answers")
    _check_timeout(timeout_s)
    if workers < 1:
        raise ValueError(f"grade_many: workers must be >= 1, got {workers}")
    results = [False] * len(responses)
    hard_idx, hard_jobs = [], []
    for i, (resp, gold) in enumerate(zip(responses, golds)):
        answer = extract_boxed(resp) if isinstance(resp, str) else None
        if answer is None or not isinstance(gold, str) or not gold.strip():
            continue
        quick = fast_compare(answer, gold)
        if quick is not None:
            results[i] = quick
        else:
            hard_idx.append(i)
            hard_jobs.append(("verify", (answer, gold)))
    if hard_jobs:
        for i, r in zip(hard_idx, _POOL.run(hard_jobs, timeout_s, workers)):
            results[i] = r
    return results


def grade(response: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether the last ``\\boxed{}`` of ``response`` is equivalent to ``gold`` (see grade_many)."""
    return grade_many([response], [gold], timeout_s=timeout_s)[0]


def gold_parseable_many(golds: Sequence[str], timeout_s: float = 5.0, workers: int = 1) -> list[bool]:
    """Whether math-verify parses each gold answer to something (plain numbers: yes at once)."""
    _check_timeout(timeout_s)
    results = [False] * len(golds)
    hard_idx, hard_jobs = [], []
    for i, g in enumerate(golds):
        if not isinstance(g, str) or not g.strip():
            continue
        if _as_decimal(_normalise(g)) is not None:
            results[i] = True
        else:
            hard_idx.append(i)
            hard_jobs.append(("parses", (g,)))
    if hard_jobs:
        for i, r in zip(hard_idx, _POOL.run(hard_jobs, timeout_s, workers)):
            results[i] = r
    return results
