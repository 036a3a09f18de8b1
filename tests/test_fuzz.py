"""Fuzzing the two input gates: mutated configs through :func:`pgopd.config.parse` and
malformed data rows through :func:`pgopd.data.loaders.load_records`.

A config either parses or raises :class:`ConfigError` naming a key; a data row is either
kept (and valid) or, under ``on_bad_row="error"``, stops the load with a ``BadRow`` naming
its id, and under ``"skip"`` is counted by reason.  Never another exception type.  The CLI
turns a bad ``--params`` into exit code 2 and one ``config error:`` line.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pgopd import config as C
from pgopd.config import ConfigError, parse, to_dict
from pgopd.data.loaders import BAD_ROW_REASONS, BadRow, load_records

ROOT = Path(__file__).resolve().parents[1]


# ============================================================================ configs
def _field_names(cls, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp) and tp not in seen:
            seen.add(tp)
            names |= _field_names(tp, seen)
    for item in getattr(cls, "_item_types", {}).values():
        names |= _field_names(item, seen)
    return names


FIELD_NAMES = _field_names(C.Config)
WRONG_VALUES = ["x", "", "  ", [], [1], ["opd"], {}, {"a": 1}, None, True, False, 10**400, 10**5000,
                2**63, -1, -(10**30), float("nan"), float("inf"), -float("inf"), 1e308, 0.5, -0.5, 0,
                "opd", [None], [[]], [{}], "1", "true"]
ODD_KEYS = ["zz", "", 1, None, True, 1.5, "a.b", "threshold", "path", "k", "Steps", " steps"]


def _paths(d, pre=()):
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append(pre + (k,))
            out += _paths(v, pre + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.append(pre + (i,))
            out += _paths(v, pre + (i,))
    return out


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _set(raw, path, value):
    _get(raw, path[:-1])[path[-1]] = value


def _mutate(rng: random.Random, raw):
    """One random mutation; returns the (possibly replaced) raw config."""
    paths = _paths(raw) if isinstance(raw, dict) else []
    kind = rng.choice(["delete", "unknown", "wrong", "wrong", "range", "range", "methods", "file_bench",
                       "names", "seeds", "cross", "toplevel"])
    if kind == "delete" and paths:
        p = rng.choice(paths)
        del _get(raw, p[:-1])[p[-1]]
    elif kind == "unknown" and isinstance(raw, dict):
        dicts = [()] + [p for p in paths if isinstance(_get(raw, p), dict)]
        _get(raw, rng.choice(dicts))[rng.choice(ODD_KEYS)] = copy.deepcopy(rng.choice(WRONG_VALUES))
    elif kind == "wrong" and paths:
        _set(raw, rng.choice(paths), copy.deepcopy(rng.choice(WRONG_VALUES)))
    elif kind == "range" and paths:
        nums = [p for p in paths if isinstance(_get(raw, p), (int, float)) and not isinstance(_get(raw, p), bool)]
        if nums:
            p = rng.choice(nums)
            v = _get(raw, p)
            _set(raw, p, rng.choice([-1, -v - 1, v * 1000 + 7, 2**63, 1.5, 1e9, 0, 9, 49, 1.0001, -0.0,
                                     10**400]))
    elif kind == "methods" and isinstance(raw, dict):
        raw.setdefault("train", {})["methods"] = copy.deepcopy(rng.choice(
            [["opd", "bogus"], ["OPD"], ["continue_all"], ["opd", "opd"], [], "opd", [1], None, ["pgopd "]]))
    elif kind == "file_bench" and isinstance(raw, dict):
        data = raw.setdefault("data", {})
        if not isinstance(data, dict):
            return raw
        bench = rng.choice([{"source": "file"}, {"source": "file", "path": None}, {"source": "file", "path": ""},
                            {"source": "file", "path": 3}, {"source": "hf"}, {"source": "url", "path": "x"},
                            {"source": "file", "path": "x.jsonl", "n": -1}, None, [], "easy"])
        data["benchmarks"] = {rng.choice(["f", "easy"]): copy.deepcopy(bench)}
        if rng.random() < 0.3:
            data["train"] = rng.choice([{"source": "file"}, {"source": "file", "limit": -3}])
    elif kind == "names" and isinstance(raw, dict):
        name = rng.choice(["", "a b", 1, None, "x/y", "a.b", True, 10**5000])
        section = rng.choice(["pairs", "benchmarks"])
        value = {"teacher": "toy"} if section == "pairs" else {"n": 1}
        target = raw if section == "pairs" else raw.setdefault("data", {})
        if isinstance(target, dict):
            target[section] = {name: value}
    elif kind == "seeds" and isinstance(raw, dict):
        raw["seeds"] = copy.deepcopy(rng.choice([[0, 0], [-1], ["0"], [1.5], [True], [None], 0, [], [10**400],
                                                 [1, 2, 3], {"a": 0}]))
    elif kind == "cross" and isinstance(raw, dict):
        section, values = rng.choice([
            ("train", {"pgopd": {"prefix_len": 4, "probe_end": 8}}),
            ("train", {"pgopd": {"probe_start": 5, "probe_end": 5}}),
            ("train", {"max_new_tokens": 4, "pgopd": {"prefix_len": 8, "probe_end": 4}}),
            ("train", {"pruneopd": {"truncate_threshold": 0.9, "drift_threshold": 0.1}}),
            ("toy_models", {"teacher": {"d_model": 30, "n_heads": 4}}),
            ("data", {"synthetic": {"min_ops": 5, "max_ops": 2}}),
            ("train", {"controls": {"references": ["opd"]}}),
            ("resources", {"train": {"launcher": "none", "nodes": 2}}),
        ])
        raw[section] = values
    elif kind == "toplevel":
        return copy.deepcopy(rng.choice([[], "x", 1, [1, 2], True, {1: 2, "a": 3}, {None: 1, "b": 2}]))
    return raw


def _bases():
    yaml_cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    test_cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    return [to_dict(parse({})), yaml_cfg, test_cfg]


def _safe_repr(value) -> str:
    try:
        return repr(value)
    except ValueError:  # an int past the int->str digit limit
        return ""


def _names_a_key(msg: str, raw) -> bool:
    """The message starts with ``dotted.key[i]: ...`` whose last part is a config field, a name
    present in the raw mapping (a benchmark, a pair, an unknown key), or ``config`` (root)."""
    head = msg.split(": ", 1)[0]
    if head == "config":
        return not isinstance(raw, dict)
    head = re.sub(r"\[\d+\]$", "", head)
    keys = [p[-1] for p in _paths(raw)] if isinstance(raw, dict) else []
    present = {_safe_repr(k) for k in keys} | {k for k in keys if isinstance(k, str)}
    return any(head == k or head.endswith("." + k) for k in FIELD_NAMES | present if k)


def _check_config(raw):
    try:
        cfg = parse(copy.deepcopy(raw))
    except ConfigError as e:
        msg = str(e)
        assert _names_a_key(msg, raw), f"message names no key: {msg!r} for {raw!r:.300}"
        assert "\n" not in msg
        return "error"
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(e).__name__} from parse (not ConfigError): {e!s:.200} for {raw!r:.300}")
    assert parse(to_dict(cfg)) == cfg  # a parsed config round-trips
    return "ok"


def test_fuzz_config_every_leaf_with_wrong_values():
    """Each leaf of the default config replaced by each of a few wrong values."""
    rng = random.Random(1)
    base = to_dict(parse({}))
    outcomes = []
    for path in _paths(base):
        for value in rng.sample(WRONG_VALUES, 2):
            raw = copy.deepcopy(base)
            _set(raw, path, copy.deepcopy(value))
            outcomes.append(_check_config(raw))
    assert len(outcomes) >= 200
    assert outcomes.count("error") >= 150


def test_fuzz_config_random_mutations():
    rng = random.Random(20240601)
    bases = _bases()
    outcomes = []
    for _ in range(400):
        raw = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            raw = _mutate(rng, raw)
        outcomes.append(_check_config(raw))
    assert outcomes.count("error") >= 200 and outcomes.count("ok") >= 20, (
        outcomes.count("error"), outcomes.count("ok"))


@pytest.mark.parametrize("raw, key", [
    ({"eval": {"temperature": 10**400}}, "eval.temperature"),                      # float overflow
    ({"train": {"controls": {"random_continue_rate": 10**400}}}, "train.controls.random_continue_rate"),
    ({"eval": {"top_p": 10**5000}}, "eval.top_p"),                                  # past the int->str limit
    ({"eval": {1: 0, "zz": 1}}, "eval.1"),                                         # mixed-type unknown keys
    ({"data": {None: 0, "a": 1}}, "data.None"),
    ({"pairs": {10**5000: {"teacher": "toy"}}}, "pairs"),
    ({"data": {"benchmarks": {"f": {"source": "file"}}}}, "data.benchmarks.f.path"),
    ({"train": {"methods": ["opd", "sft"]}}, "train.methods[1]"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"eval": {"top_p": float("nan")}}, "eval.top_p"),
    ({"train": {"pgopd": {"threshold": -0.5}}}, "train.pgopd.threshold"),
])
def test_config_edge_cases_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse(raw)
    assert str(e.value).startswith(key + ":"), str(e.value)


# ============================================================================ data rows
GOOD_ANSWERS = ["2", "17", "-3", "3.5", "\\frac{1}{2}", 4, 2.5, -7]
UNPARSEABLE = ["\\", "$$", "\\boxed{}"]  # math-verify parses nothing out of these
LONG = "7+" * 50_000 + "1"


def _good_prompt(rng):
    return rng.choice(["1+1", "What is 2+3?", "  spaced  ", "ünïcödé ∑ 漢字", "a\u0000b", LONG, "x\n\ny"])


# --- plain jsonl: prompt key "problem", answer "answer", id "uid"
def _bad_plain_row(rng, uid):
    """A malformed plain row: (row dict or raw line bytes, reason, uses_uid)."""
    good = {"problem": _good_prompt(rng), "answer": rng.choice(GOOD_ANSWERS), "uid": uid}
    kind = rng.choice(["prompt", "answer", "answer", "id", "line", "unparseable"])
    row = dict(good)
    if kind == "prompt":
        value = rng.choice(["<del>", None, "", "   ", "\n\t", 12, 1.5, True, [], {}, ["text"], [1, 2],
                            [{"role": "user"}], {"role": "user", "content": "x"}])
        if value == "<del>":
            del row["problem"]
        else:
            row["problem"] = value
        return row, "empty_prompt", True
    if kind == "answer":
        value = rng.choice(["<del>", None, "", "   ", "\n"])
        if value == "<del>":
            del row["answer"]
        else:
            row["answer"] = value
        return row, "missing_answer", True
    if kind == "unparseable":
        row["answer"] = rng.choice([*UNPARSEABLE, [], [1], {}, {"a": 1}, True, False, "<nan>", "<inf>"])
        if row["answer"] in ("<nan>", "<inf>"):  # NaN / Infinity: json accepts them, an answer they are not
            line = json.dumps({**row, "answer": 0}).replace('"answer": 0', '"answer": ' + (
                "NaN" if row["answer"] == "<nan>" else "-Infinity"))
            return line.encode(), "unparseable_answer", True
        return row, "unparseable_answer", True
    if kind == "id":
        value = rng.choice(["<del>", None, "", "  "])
        if value == "<del>":
            del row["uid"]
        else:
            row["uid"] = value
        return row, "missing_id", False
    line = json.dumps(row, ensure_ascii=False).encode()
    bad_line = rng.choice([
        line[: len(line) // 2],                                   # half-written
        line[:-1] + b",}",                                        # trailing comma
        line.replace(b'"problem"', b"problem"),                   # unquoted key
        line.replace(b"{", b"{\xff\xfe", 1),                      # non-UTF8 bytes
        b'{"problem": "caf\xe9", "answer": "1", "uid": "z"}',     # latin-1, not UTF-8
        b'{"problem": "\\ud800", "answer": "1", "uid": "z"}',     # lone surrogate escape
        b'{"problem": "1+1", "answer": 1' + b"0" * 5000 + b"}",   # int past the digit limit
        b"[" * 50_000 + b"]" * 50_000,                            # nesting past the recursion limit
        b"[1, 2]", b'"just a string"', b"42", b"null", b"true",   # not objects
        b"{'problem': '1+1'}",                                    # python, not JSON
    ])
    return bad_line, "invalid_json", False


def _write_jsonl(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else json.dumps(line, ensure_ascii=False).encode()) + b"\n")


def _valid_record(rec):
    return (isinstance(rec["prompt"], str) and rec["prompt"].strip() and isinstance(rec["answer"], str)
            and rec["answer"].strip() and isinstance(rec["id"], str)
            and json.dumps(rec, ensure_ascii=False).encode("utf-8"))


def _check_skip(path, n_rows, expected, **kw):
    records, stats = load_records(path, on_bad_row="skip", parse_timeout_s=2.0, **kw)
    assert stats["rows"] == n_rows
    assert stats["kept"] + sum(stats["skipped"].values()) == stats["rows"]
    assert {r: stats["skipped"][r] for r in BAD_ROW_REASONS} == {r: expected.get(r, 0) for r in BAD_ROW_REASONS}
    assert len(records) == stats["kept"] and all(_valid_record(r) for r in records)
    assert len({r["id"] for r in records}) == len(records)
    return records


def _check_error(path, expected_id, **kw):
    with pytest.raises(Exception) as e:
        load_records(path, on_bad_row="error", parse_timeout_s=2.0, **kw)
    assert type(e.value) is BadRow, f"{type(e.value).__name__}: {e.value}"
    assert repr(expected_id) in str(e.value), (expected_id, str(e.value))


@pytest.fixture(scope="module")
def jsonl_cases(tmp_path_factory):
    """240 files, each: a good first row, good rows, and one malformed row at a random place."""
    d = tmp_path_factory.mktemp("fuzz_jsonl")
    rng = random.Random(7)
    cases = []
    for n in range(240):
        use_id = n % 3 != 0
        bad, reason, names_uid = _bad_plain_row(rng, f"u{n}-bad")
        pos = rng.randint(1, 4)
        lines = []
        for i in range(pos + rng.randint(0, 3)):
            lines.append({"problem": _good_prompt(rng), "answer": rng.choice(GOOD_ANSWERS), "uid": f"u{n}-{i}"})
        if use_id and rng.random() < 0.15:  # a duplicate id instead
            bad, reason, names_uid = dict(lines[0], problem="again"), "duplicate_id", True
            bad["uid"] = lines[0]["uid"]
        if not use_id and reason in ("missing_id", "duplicate_id"):
            bad, reason = {"problem": "", "answer": "1"}, "empty_prompt"
        lines.insert(pos, bad)
        path = d / f"case{n}.jsonl"
        _write_jsonl(path, lines)
        if names_uid and use_id:
            expected_id = bad["uid"] if isinstance(bad, dict) else "u%d-bad" % n
        else:
            expected_id = f"case{n}-{pos}"
        cases.append((path, len(lines), reason, expected_id, {"id_field": "uid"} if use_id else {}))
    return cases


def test_fuzz_jsonl_rows_error_names_the_row(jsonl_cases):
    assert len(jsonl_cases) >= 200
    for path, _, _, expected_id, kw in jsonl_cases:
        _check_error(path, expected_id, **kw)


def test_fuzz_jsonl_rows_skip_counts_them(jsonl_cases):
    reasons = set()
    for path, n_rows, reason, _, kw in jsonl_cases:
        _check_skip(path, n_rows, {reason: 1}, **kw)
        reasons.add(reason)
    assert reasons == set(BAD_ROW_REASONS)


def test_fuzz_jsonl_many_bad_rows_in_one_file(tmp_path):
    """Good and malformed rows mixed (also blank lines and long prompts); every count exact."""
    rng = random.Random(11)
    lines, expected, n_good = [{"problem": "1+1", "answer": "2", "uid": "first"}], {}, 1
    for n in range(300):
        if rng.random() < 0.3:
            lines.append({"problem": _good_prompt(rng), "answer": rng.choice(GOOD_ANSWERS), "uid": f"g{n}"})
            n_good += 1
            continue
        bad, reason, _ = _bad_plain_row(rng, f"b{n}")
        if reason == "duplicate_id":
            continue
        lines.append(bad)
        expected[reason] = expected.get(reason, 0) + 1
    lines.append({"problem": "dup", "answer": "1", "uid": "first"})
    expected["duplicate_id"] = 1
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, lines)
    with open(path, "ab") as fh:
        fh.write(b"\n   \n\n")  # blank lines are no rows
    records = _check_skip(path, len(lines), expected, id_field="uid")
    assert len(records) == n_good and sum(expected.values()) >= 150


# --- verl-style jsonl: prompt is a chat list, the answer in reward_model.ground_truth
def _verl_row(rng, n, bad: bool):
    row = {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": _good_prompt(rng)}],
           "reward_model": {"ground_truth": str(rng.choice(GOOD_ANSWERS)), "style": "rule"},
           "extra_info": {"index": n}}
    if not bad:
        return row, None
    kind = rng.choice(["prompt", "answer", "id"])
    if kind == "prompt":
        row["prompt"] = copy.deepcopy(rng.choice([
            [], None, "", [{"role": "assistant", "content": "x"}], [{"role": "user"}],
            [{"role": "user", "content": ""}], [{"role": "user", "content": "  "}],
            [{"role": "user", "content": 5}], [{"role": "user", "content": ["x"]}],
            [{"role": "User", "content": "x"}], [{"content": "x"}], [1, 2], ["user", "x"], [[]],
            [{"role": "system", "content": "only system"}], {"role": "user", "content": "x"}]))
        return row, "empty_prompt"
    if kind == "answer":
        change = rng.choice(["no_rm", "rm_none", "rm_str", "rm_empty", "gt_none", "gt_empty", "gt_list",
                             "gt_dict", "gt_bool", "gt_unparse"])
        if change == "no_rm":
            del row["reward_model"]
        elif change == "rm_none":
            row["reward_model"] = None
        elif change == "rm_str":
            row["reward_model"] = "42"
        elif change == "rm_empty":
            row["reward_model"] = {}
        elif change == "gt_none":
            row["reward_model"]["ground_truth"] = None
        elif change == "gt_empty":
            row["reward_model"]["ground_truth"] = rng.choice(["", " \t "])
        else:
            wrong = {"gt_list": ["1", "2"], "gt_dict": {"x": 1}, "gt_bool": False,
                     "gt_unparse": rng.choice(UNPARSEABLE)}
            row["reward_model"]["ground_truth"] = wrong[change]
            return row, "unparseable_answer"
        return row, "missing_answer"
    row["extra_info"] = rng.choice([None, {}, {"index": None}, {"index": ""}, {"other": 1}])
    return row, "missing_id"


def test_fuzz_verl_jsonl_rows(tmp_path):
    rng = random.Random(5)
    expected, lines, reasons = {}, [], []
    for n in range(120):
        row, reason = _verl_row(rng, n, bad=n > 0 and rng.random() < 0.6)
        lines.append(row)
        reasons.append(reason)
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    path = tmp_path / "verl.jsonl"
    _write_jsonl(path, lines)
    _check_skip(path, len(lines), expected)
    assert sum(expected.values()) >= 50
    # error mode: each bad row after the good rows before it stops the load, naming that row
    for n, reason in enumerate(reasons):
        if reason:
            good = [line for line, r in zip(lines[:n], reasons) if r is None]
            one = tmp_path / f"verl-{n}.jsonl"
            _write_jsonl(one, good + [lines[n]])
            _check_error(one, f"verl-{len(good)}" if reason == "missing_id" else str(n), source_name="verl")


# --- parquet: typed columns, so each family of malformations gets its own schema
MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _parquet_families(rng):
    """(name, table, reason per row (None = good), kwargs, id of each row (None = row number))."""
    fams = []
    # plain strings with an id column
    prompts, answers, ids, reasons = [], [], [], []
    for n in range(80):
        p, a, i, r = _good_prompt(rng), str(rng.choice(GOOD_ANSWERS)), f"p{n}", None
        if n and rng.random() < 0.7:
            kind = rng.choice(["prompt", "answer", "unparseable", "id", "dup"])
            if kind == "prompt":
                p, r = rng.choice([None, "", "  ", "\n"]), "empty_prompt"
            elif kind == "answer":
                a, r = rng.choice([None, "", " "]), "missing_answer"
            elif kind == "unparseable":
                a, r = rng.choice(UNPARSEABLE), "unparseable_answer"
            elif kind == "id":
                i, r = rng.choice([None, "", "   "]), "missing_id"
            else:
                i, r = "p0", "duplicate_id"
        prompts.append(p), answers.append(a), ids.append(i), reasons.append(r)
    fams.append(("plain", pa.table({"problem": pa.array(prompts, pa.string()),
                                    "answer": pa.array(answers, pa.string()),
                                    "uid": pa.array(ids, pa.string())}),
                 reasons, {"id_field": "uid"}, [None if r == "missing_id" else i for i, r in zip(ids, reasons)]))
    # verl: chat-list prompts, struct answer, auto id from extra_info.index
    msgs, rms, infos, reasons = [], [], [], []
    for n in range(80):
        m = [{"role": "user", "content": _good_prompt(rng)}]
        rm, info, r = {"ground_truth": str(rng.choice(GOOD_ANSWERS))}, {"index": n}, None
        if n and rng.random() < 0.7:
            kind = rng.choice(["prompt", "answer", "unparseable", "id", "dup"])
            if kind == "prompt":
                m, r = rng.choice([None, [], [{"role": "assistant", "content": "x"}],
                                   [{"role": "user", "content": None}], [{"role": None, "content": "x"}],
                                   [{"role": "user", "content": " "}]]), "empty_prompt"
            elif kind == "answer":
                rm, r = rng.choice([None, {"ground_truth": None}, {"ground_truth": ""}]), "missing_answer"
            elif kind == "unparseable":
                rm, r = {"ground_truth": rng.choice(UNPARSEABLE)}, "unparseable_answer"
            elif kind == "id":
                info, r = rng.choice([None, {"index": None}]), "missing_id"
            else:
                info, r = {"index": 0}, "duplicate_id"
        msgs.append(m), rms.append(rm), infos.append(info), reasons.append(r)
    fams.append(("verl", pa.table({"prompt": pa.array(msgs, MSG),
                                   "reward_model": pa.array(rms, pa.struct([("ground_truth", pa.string())])),
                                   "extra_info": pa.array(infos, pa.struct([("index", pa.int64())]))}),
                 reasons, {}, [None if r == "missing_id" else str(i["index"]) for i, r in zip(infos, reasons)]))
    # numeric answers: NaN (a pandas missing value), inf, null
    vals = [2.0] + [rng.choice([1.5, 3.0, float("nan"), float("inf"), -float("inf"), None]) for _ in range(40)]
    reasons = [None if v is not None and math.isfinite(v) else
               "missing_answer" if v is None else "unparseable_answer" for v in vals]
    fams.append(("floats", pa.table({"problem": ["1+1"] * len(vals), "answer": pa.array(vals, pa.float64())}),
                 reasons, {}, [None] * len(vals)))
    # wrong column types: list / struct / bool / binary answers, integer or binary prompts
    wrong = [
        ("answer", pa.array([[1, 2]] * 6, pa.list_(pa.int64())), "unparseable_answer"),
        ("answer", pa.array([{"a": "1"}] * 6, pa.struct([("a", pa.string())])), "unparseable_answer"),
        ("answer", pa.array([True, False] * 3, pa.bool_()), "unparseable_answer"),
        ("answer", pa.array([b"1", b"\xff"] * 3, pa.binary()), "unparseable_answer"),
        ("problem", pa.array([1, 2] * 3, pa.int64()), "empty_prompt"),
        ("problem", pa.array([b"1+1", b"\xff"] * 3, pa.binary()), "empty_prompt"),
        ("problem", pa.array([["1+1"]] * 6, pa.list_(pa.string())), "empty_prompt"),
    ]
    for j, (col, arr, reason) in enumerate(wrong):
        cols = {"problem": pa.array(["1+1"] * 6), "answer": pa.array(["2"] * 6), col: arr}
        fams.append((f"wrong{j}", pa.table(cols), [reason] * 6, {}, [None] * 6))
    return fams


def test_fuzz_parquet_rows(tmp_path):
    """Every family: skip counts exact; error names the first bad row, and each bad row alone
    (after the good rows before it) is named in its own file."""
    rng = random.Random(3)
    total_bad = 0
    for name, table, reasons, kw, ids in _parquet_families(rng):
        kw = {**kw, "source_name": name}
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path, row_group_size=16)
        expected = {}
        for r in reasons:
            if r:
                expected[r] = expected.get(r, 0) + 1
        total_bad += sum(expected.values())
        _check_skip(path, len(reasons), expected, **kw)
        for i, r in enumerate(reasons):
            if r:
                keep = [j for j in range(i) if reasons[j] is None] + [i]
                one = tmp_path / f"{name}-{i}.parquet"
                pq.write_table(table.take(keep), one)
                _check_error(one, ids[i] if ids[i] is not None else f"{name}-{len(keep) - 1}", **kw)
    assert total_bad >= 100


# ============================================================================ CLI
CLI = [sys.executable, "-m", "pgopd.cli"]


@pytest.mark.parametrize("argv, key", [
    (["evaluate", "--params", '{"k": -1}', "--model", "m", "--bench", "b.jsonl", "--out-dir", "o"], "eval.k"),
    (["train", "--params", '{"pgopd": {"prefix_len": "x"}}', "--method", "opd", "--teacher", "t",
      "--student", "s", "--train-data", "d", "--teacher-cache", "c", "--out-dir", "o"], "train.pgopd.prefix_len"),
    (["prepare-data", "--params", '{"benchmarks": {"f": {"source": "file"}}}', "--out-dir", "o"],
     "data.benchmarks.f.path"),
    (["cache-teacher", "--params", '{"temperature": NaN, "zz": 1}', "--teacher", "t", "--train", "x",
      "--out-dir", "o"], "teacher_cache.zz"),
])
def test_cli_bad_params_exit_2_with_one_line(tmp_path, argv, key):
    p = subprocess.run(CLI + argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"config error: {key}:" in lines[0], lines[0]
    assert not list(tmp_path.iterdir())  # nothing written
