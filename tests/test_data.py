"""Data loading (real verl parquet files, plain jsonl, malformed rows) and prepare_data."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgopd.config import DataConfig, parse_dataclass
from pgopd.data.loaders import BadRow, load_records, read_jsonl, write_jsonl
from pgopd.data.prepare import prepare_data
from pgopd.grading import grade

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA / "benchmarks").is_dir():
        pytest.fail(f"real data not found at {DATA}: the tests expect a 'shared/data' directory "
                    f"beside the repository checkout (benchmarks/AIME24/test.parquet, ...)")
    return DATA


def _raw_verl(path: Path, limit: int | None = None) -> list[dict]:
    """Rows read straight with pyarrow (independent of the loader)."""
    table = pq.read_table(path, columns=["prompt", "reward_model", "extra_info"])
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


def _check_against_file(records: list[dict], raw: list[dict]) -> None:
    assert [r["id"] for r in records] == [r["extra_info"]["index"] for r in raw]
    for rec, row in zip(records, raw):
        user = [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]
        assert isinstance(rec["prompt"], str) and len(rec["prompt"].strip()) > 20
        assert rec["prompt"] == user  # problem text kept verbatim
        assert rec["answer"] == row["reward_model"]["ground_truth"]
        assert rec["answer"].strip()
        assert grade("\\boxed{" + rec["answer"] + "}", rec["answer"]), rec


# ----------------------------------------------------------------------------- real files
@pytest.mark.parametrize("name,expected_rows", [("AIME24", 30), ("AMC23", 40)])
def test_real_benchmarks_load_completely(data_dir, name, expected_rows):
    path = data_dir / "benchmarks" / name / "test.parquet"
    assert pq.ParquetFile(path).metadata.num_rows == expected_rows
    records, stats = load_records(path, source_name=name)
    assert len(records) == expected_rows
    assert stats["rows"] == expected_rows and stats["kept"] == expected_rows
    assert sum(stats["skipped"].values()) == 0
    assert stats["fields"] == {"prompt": "prompt", "answer": "reward_model.ground_truth",
                               "id": "extra_info.index"}
    _check_against_file(records, _raw_verl(path))
    assert len({r["id"] for r in records}) == expected_rows


def test_amc23_answers_keep_their_string_form(data_dir):
    path = data_dir / "benchmarks" / "AMC23" / "test.parquet"
    records, _ = load_records(path)
    raw = {r["extra_info"]["index"]: r["reward_model"]["ground_truth"] for r in _raw_verl(path)}
    assert all(isinstance(r["answer"], str) and r["answer"] == raw[r["id"]] for r in records)
    decimal_form = [r["answer"] for r in records if r["answer"].endswith(".0")]
    for ans in decimal_form:  # e.g. "142.0": kept as is, still matches the integer
        assert grade("\\boxed{" + ans[:-2] + "}", ans)


def test_math500_with_limit(data_dir):
    path = data_dir / "benchmarks" / "MATH-500" / "test.parquet"
    assert pq.ParquetFile(path).metadata.num_rows == 500
    records, stats = load_records(path, limit=40)
    assert len(records) == 40 and stats["rows"] == 40
    _check_against_file(records, _raw_verl(path, limit=40))


def test_dapo_train_prefix_and_suffix_detection(data_dir):
    path = data_dir / "train" / "dapo-math-17k-dedup.parquet"
    assert pq.ParquetFile(path).metadata.num_rows == 17398
    raw = _raw_verl(path, limit=64)
    records, stats = load_records(path, limit=64, prompt_suffix=SUFFIX)
    assert len(records) == 64 and stats["rows"] == 64
    # DAPO prompts already end with the instruction: it is not appended a second time
    assert stats["suffix_added"] == 0
    _check_against_file(records, raw)
    other, stats2 = load_records(path, limit=3, prompt_suffix="Answer briefly.")
    assert stats2["suffix_added"] == 3
    assert [r["prompt"] for r in other] == [r["prompt"] + "\n\nAnswer briefly." for r in records[:3]]


# ----------------------------------------------------------------------------- plain sources
def _write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_plain_problem_answer_jsonl(tmp_path):
    rows = [{"problem": "Compute $1+1$.", "answer": "2"},
            {"problem": "Find $x$ if $2x=1$.", "answer": 0.5},
            {"problem": "How many primes are below 10?", "answer": 4}]
    path = _write_lines(tmp_path / "hmmt.jsonl", rows + [""])  # trailing blank line
    records, stats = load_records(path, source_name="hmmt")
    assert records == [{"id": f"hmmt-{i}", "prompt": r["problem"], "answer": str(r["answer"])}
                       for i, r in enumerate(rows)]
    assert stats["fields"] == {"prompt": "problem", "answer": "answer", "id": None}
    assert stats["kept"] == 3 and stats["rows"] == 3


def test_question_column_and_plain_prompt_string(tmp_path):
    path = _write_lines(tmp_path / "q.jsonl", [{"question": "What is 3*3?", "answer": "9"}])
    assert load_records(path)[0][0]["prompt"] == "What is 3*3?"
    path = _write_lines(tmp_path / "p.jsonl", [{"prompt": "What is 2*3?", "answer": "6"}])
    assert load_records(path)[0][0]["prompt"] == "What is 2*3?"


def test_explicit_dotted_fields_jsonl(tmp_path):
    rows = [{"q": {"text": f"Problem {i}: add {i} and 1."}, "meta": {"gold": str(i + 1)}, "uid": f"u{i}",
             "answer": "decoy"} for i in range(4)]
    path = _write_lines(tmp_path / "nested.jsonl", rows)
    records, stats = load_records(path, prompt_field="q.text", answer_field="meta.gold", id_field="uid")
    assert [(r["id"], r["prompt"], r["answer"]) for r in records] == \
        [(f"u{i}", f"Problem {i}: add {i} and 1.", str(i + 1)) for i in range(4)]
    assert stats["fields"] == {"prompt": "q.text", "answer": "meta.gold", "id": "uid"}


def test_explicit_dotted_fields_parquet(tmp_path):
    table = pa.table({
        "info": [{"statement": "Evaluate 6/3.", "key": "p1"}, {"statement": "Evaluate 9/3.", "key": "p2"}],
        "sol": [{"final": "2"}, {"final": "3"}],
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    records, _ = load_records(path, prompt_field="info.statement", answer_field="sol.final",
                              id_field="info.key")
    assert records == [{"id": "p1", "prompt": "Evaluate 6/3.", "answer": "2"},
                       {"id": "p2", "prompt": "Evaluate 9/3.", "answer": "3"}]


def test_prompt_messages_take_last_user_message(tmp_path):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "old"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "What is 5-2?"}]
    path = _write_lines(tmp_path / "chat.jsonl", [{"prompt": msgs, "answer": "3"}])
    assert load_records(path)[0][0]["prompt"] == "What is 5-2?"


def test_missing_configured_column_names_field_and_columns(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(ValueError, match=r"answer_field 'reward_model\.ground_truth'.*problem, answer"):
        load_records(path, answer_field="reward_model.ground_truth")
    with pytest.raises(ValueError, match=r"prompt_field 'text'.*available: problem, answer"):
        load_records(path, prompt_field="text")
    no_answer = _write_lines(tmp_path / "b.jsonl", [{"problem": "1+1?", "solution": "it is 2"}])
    with pytest.raises(ValueError, match=r"no answer column.*problem, solution"):
        load_records(no_answer)


def test_bad_paths(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'.*\.parquet, \.jsonl"):
        load_records(csv)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- malformed rows
GOOD = {"uid": "ok-1", "problem": "What is 2+2?", "answer": "4"}
BAD_ROWS = {
    "empty_prompt": ({"uid": "bad-7", "problem": "   ", "answer": "1"}, "problem"),
    "missing_answer": ({"uid": "bad-7", "problem": "What is 1+0?", "answer": None}, "answer"),
    "unparseable_answer": ({"uid": "bad-7", "problem": "What is 1+0?", "answer": "\\text{}"}, "answer"),
    "missing_id": ({"problem": "What is 1+0?", "answer": "1"}, "uid"),
    "invalid_json": ('{"uid": "bad-7", "problem": "What', "line 2"),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_malformed_row_error_names_file_row_and_field(tmp_path, reason):
    bad, field = BAD_ROWS[reason]
    path = _write_lines(tmp_path / "rows.jsonl", [GOOD, bad, {**GOOD, "uid": "ok-2"}])
    with pytest.raises(BadRow) as e:
        load_records(path, id_field="uid", source_name="src")
    msg = str(e.value)
    assert "rows.jsonl" in msg and field in msg
    row_id = "bad-7" if reason not in ("missing_id", "invalid_json") else "src-1"
    assert repr(row_id) in msg


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_malformed_row_skip_counts_it(tmp_path, reason):
    bad, _ = BAD_ROWS[reason]
    path = _write_lines(tmp_path / "rows.jsonl", [GOOD, bad, bad, {**GOOD, "uid": "ok-2"}])
    if reason not in ("missing_id", "invalid_json"):
        path = _write_lines(path, [GOOD, bad, {**bad, "uid": "bad-8"}, {**GOOD, "uid": "ok-2"}])
    records, stats = load_records(path, id_field="uid", on_bad_row="skip")
    assert records == [{"id": "ok-1", "prompt": GOOD["problem"], "answer": "4"},
                       {"id": "ok-2", "prompt": GOOD["problem"], "answer": "4"}]
    assert stats["rows"] == 4 and stats["kept"] == 2
    assert stats["skipped"][reason] == 2
    assert sum(stats["skipped"].values()) == 2


def test_empty_answer_string_and_absent_key_are_missing_answers(tmp_path):
    rows = [GOOD, {"uid": "e", "problem": "x?", "answer": ""}, {"uid": "f", "problem": "y?"}]
    records, stats = load_records(_write_lines(tmp_path / "r.jsonl", rows), id_field="uid",
                                  on_bad_row="skip")
    assert [r["id"] for r in records] == ["ok-1"] and stats["skipped"]["missing_answer"] == 2


def test_duplicate_ids(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [GOOD, {**GOOD, "problem": "What is 3+3?", "answer": "6"}])
    with pytest.raises(BadRow, match=r"'ok-1'.*uid.*already used"):
        load_records(path, id_field="uid")
    records, stats = load_records(path, id_field="uid", on_bad_row="skip")
    assert len(records) == 1 and records[0]["answer"] == "4" and stats["skipped"]["duplicate_id"] == 1


def test_limit_keeps_first_good_rows_and_stops_reading(tmp_path):
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    rows.insert(2, {"problem": "", "answer": "0"})
    rows.append({"problem": "", "answer": "0"})  # beyond the limit: never read
    path = _write_lines(tmp_path / "l.jsonl", rows)
    records, stats = load_records(path, limit=4, on_bad_row="skip")
    assert [r["answer"] for r in records] == ["1", "2", "3", "4"]
    assert stats["rows"] == 5 and stats["skipped"]["empty_prompt"] == 1
    records, _ = load_records(path, limit=2)  # the bad row 2 comes after the first 2 good rows
    assert [r["answer"] for r in records] == ["1", "2"]


def test_write_and_read_jsonl_roundtrip_atomically(tmp_path):
    recs = [{"id": "a", "prompt": "π ≈ ?", "answer": "3.14"}, {"id": "b", "prompt": "x", "answer": "1"}]
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, recs) == 2
    assert read_jsonl(path) == recs
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": "c"}, {"id": object()}])  # fails half-way
    assert read_jsonl(path) == recs  # the old file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.jsonl"]  # no temp files left
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2"):
        read_jsonl(tmp_path / "broken.jsonl")


# ----------------------------------------------------------------------------- prepare_data
EXPR = re.compile(r"\d+([+-]\d+)+")


def _small_cfg(**over) -> DataConfig:
    raw = {
        "synthetic": {"n_train": 150, "operand_max": 9, "min_ops": 1, "max_ops": 2, "seed": 3},
        "benchmarks": {"one": {"ops": 1, "n": 30, "seed": 5},
                       "two": {"ops": 2, "n": 30, "seed": 5},
                       "one_again": {"ops": 1, "n": 30, "seed": 5}},
    }
    raw.update(over)
    return parse_dataclass(DataConfig, raw, "data")


def test_prepare_data_synthetic(tmp_path):
    cfg = _small_cfg()
    stats = prepare_data(cfg, tmp_path)
    train = read_jsonl(tmp_path / "train.jsonl")
    benches = {n: read_jsonl(tmp_path / "bench" / f"{n}.jsonl") for n in cfg.benchmarks}
    assert len(train) == 150 and all(len(b) == 30 for b in benches.values())

    prompts = {"train": {r["prompt"] for r in train}} | {n: {r["prompt"] for r in b} for n, b in benches.items()}
    assert sum(map(len, prompts.values())) == len(set().union(*prompts.values()))  # all disjoint
    for rec in train:
        assert rec["solution"].endswith(f"\\boxed{{{rec['answer']}}}") and 1 <= rec["ops"] <= 2
    for name, recs in {"train": train, **benches}.items():
        for rec in recs:
            assert EXPR.fullmatch(rec["prompt"]), rec
            assert int(rec["answer"]) == eval(rec["prompt"])  # noqa: S307 - digits and +/- only
            assert len(re.findall(r"[+-]", rec["prompt"])) == rec["ops"]
            if name != "train":
                assert rec["ops"] == cfg.benchmarks[name].ops
    assert {r["ops"] for r in train} == {1, 2}

    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk == stats
    assert stats["train"]["kept"] == len(train)
    assert {n: (s["kept"], s["ops"]) for n, s in stats["bench"].items()} == \
        {n: (len(benches[n]), cfg.benchmarks[n].ops) for n in cfg.benchmarks}
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_prepare_data_impossible_benchmark_is_named(tmp_path):
    cfg = _small_cfg(synthetic={"n_train": 10, "operand_max": 2, "min_ops": 2, "max_ops": 2},
                     benchmarks={"tiny": {"ops": 1, "n": 20, "seed": 1}})
    with pytest.raises(ValueError, match=r"data\.benchmarks\.tiny"):
        prepare_data(cfg, tmp_path)
    assert not (tmp_path / "train.jsonl").exists()  # nothing half-written


def test_prepare_data_from_files(tmp_path, data_dir):
    rows = [{"problem": f"What is {i} squared?", "answer": str(i * i)} for i in range(6)]
    rows.insert(1, {"problem": "What is nothing?", "answer": None})
    train_path = _write_lines(tmp_path / "train_src.jsonl", rows)
    cfg = _small_cfg(
        train={"source": "file", "path": str(train_path), "limit": 4},
        benchmarks={"amc": {"source": "file", "path": str(data_dir / "benchmarks/AMC23/test.parquet"), "n": 5},
                    "toy": {"ops": 1, "n": 10, "seed": 2}},
        on_bad_row="skip", prompt_suffix="Put the final answer in \\boxed{}.")
    stats = prepare_data(cfg, tmp_path / "out")
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [r["prompt"] for r in train] == \
        [f"What is {i} squared?\n\nPut the final answer in \\boxed{{}}." for i in range(4)]
    assert stats["train"]["skipped"]["missing_answer"] == 1 and stats["train"]["kept"] == 4
    amc = read_jsonl(tmp_path / "out" / "bench" / "amc.jsonl")
    assert [r["id"] for r in amc] == [f"AMC23-{i}" for i in range(5)]
    assert all(r["prompt"].endswith("Put the final answer in \\boxed{}.") for r in amc)
    toy = read_jsonl(tmp_path / "out" / "bench" / "toy.jsonl")
    assert all("Put the final" not in r["prompt"] for r in toy)  # synthetic prompts untouched
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    assert stats["bench"]["amc"]["source"] == "file" and stats["bench"]["amc"]["kept"] == 5
