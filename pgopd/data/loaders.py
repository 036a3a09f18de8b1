"""Load prompt sets (parquet or jsonl files, or Hugging Face datasets by name) as
``{"id", "prompt", "answer"}`` records.

Sources differ: verl parquet files hold ``prompt`` as a chat message list and the answer
in ``reward_model.ground_truth``; other public copies (MathArena's HMMT, plain jsonl) use
``problem`` / ``answer`` columns.  Fields left empty are detected; explicit field names
may use dots for nested keys (``reward_model.ground_truth``).

A malformed row (empty prompt, missing / empty / unparseable answer, duplicate id,
invalid JSON line) either stops the load with the file, row id and field named
(``on_bad_row="error"``) or is dropped and counted by reason (``"skip"``).  Values are
never altered beyond turning a numeric answer into a string.

A Hugging Face dataset (``source: hf``, the ``datasets`` package imported only then) goes
through the same detection and checks as a file (:func:`records_from_dataset`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".jsonl")
BAD_ROW_REASONS = ("invalid_json", "missing_id", "empty_prompt", "missing_answer",
                   "unparseable_answer", "duplicate_id")
_AUTO_PROMPT = ("problem", "question", "prompt")
_AUTO_ANSWER = ("reward_model.ground_truth", "answer")
_AUTO_ID = "extra_info.index"
_BATCH = 512


class BadRow(ValueError):
    """A malformed row under ``on_bad_row="error"``; names the file, row id and field."""


# ----------------------------------------------------------------------------- jsonl i/o
def _atomic_write(path: str | Path, write) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, then ``os.replace`` it into place.

    Readers see either the old file or the complete new one, never a partial write.  The
    temp file is created normally (umask permissions) and removed on any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line, atomically; returns the number of records."""
    count = [0]

    def write(fh):
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count[0] += 1

    _atomic_write(path, write)
    return count[0]


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document (indented), atomically."""
    def write(fh):
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")

    _atomic_write(path, write)


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a jsonl file (blank lines ignored); a bad line is named in the error."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON: {e}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {lineno} is a {type(rec).__name__}, not a JSON object")
            out.append(rec)
    return out


# ----------------------------------------------------------------------------- raw rows
def _check_path(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; "
                         f"allowed: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")


class _Unreadable(ValueError):
    """A parquet file pyarrow cannot read (truncated download, corrupt page)."""


def _parquet_error(path: Path, e: Exception) -> _Unreadable:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return _Unreadable(f"{path}: cannot read this parquet file ({type(e).__name__}: {text}); it is "
                       "probably truncated or corrupt -- download it again")


def _arrow_errors() -> tuple:
    import pyarrow as pa

    return (pa.ArrowException, OSError, EOFError)


def _parquet_columns(path: Path) -> dict[str, Any]:
    """Top-level column name -> its arrow type (read from the footer, no data)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except _arrow_errors() as e:
        raise _parquet_error(path, e) from None
    return {name: schema.field(name).type for name in schema.names}


def _nested_names(arrow_type, prefix: str) -> list[str]:
    import pyarrow as pa

    names = [prefix]
    if pa.types.is_struct(arrow_type):
        for i in range(arrow_type.num_fields):
            f = arrow_type.field(i)
            names += _nested_names(f.type, f"{prefix}.{f.name}")
    return names


def _iter_parquet(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | None, str]]:
    import pyarrow.parquet as pq

    i = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=_BATCH, columns=columns):
            for row in batch.to_pylist():
                yield i, row, ""
                i += 1
    except _arrow_errors() as e:  # e.g. "Corrupt snappy compressed data" in a data page
        raise _parquet_error(path, e) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(row number, row or None, error text) for every non-blank line.

    Bytes that are not UTF-8 make only their line bad (``surrogateescape`` keeps reading);
    a leading byte-order mark is dropped.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        i = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")
                row = json.loads(line)
                err = "" if isinstance(row, dict) else f"line {lineno} is not a JSON object"
                if not err:  # a "\ud800" escape decodes to a lone surrogate that cannot be written back
                    json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                row, err = None, f"line {lineno} is not valid UTF-8 (or holds an unpaired \\uD800-\\uDFFF escape)"
            except (ValueError, RecursionError) as e:  # bad JSON, ints past the digit limit, deep nesting
                row, err = None, f"line {lineno} is not valid JSON: {e}"
            yield i, (row if not err else None), err
            i += 1


def _jsonl_first_row(path: Path) -> dict:
    for _, row, _err in _iter_jsonl(path):
        if row is not None:
            return row
    return {}


def _flat_keys(row: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in row.items():
        name = f"{prefix}{k}"
        out.append(name)
        if isinstance(v, dict):
            out += _flat_keys(v, name + ".")
    return out


# ----------------------------------------------------------------------------- field mapping
def _get(row: dict, dotted: str):
    """``row["a"]["b"]`` for ``"a.b"``; None when any level is missing."""
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _is_message_list_type(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _resolve_fields(path: Path, prompt_field: str, answer_field: str, id_field: str):
    """(prompt, answer, id-or-'' , top-level columns to read) after auto-detection."""
    if path.suffix == ".parquet":
        types = _parquet_columns(path)
        available = [n for name, t in types.items() for n in _nested_names(t, name)]
        prompt_is_messages = "prompt" in types and _is_message_list_type(types["prompt"])
    else:
        first = _jsonl_first_row(path)
        if not first:
            if any(row is not None or err for _, row, err in _iter_jsonl(path)):
                raise ValueError(f"{path}: no valid JSON object on any line")
            raise ValueError(f"{path}: the file has no rows (only blank lines)")
        available = _flat_keys(first)
        prompt_is_messages = isinstance(first.get("prompt"), list)
    return _pick_fields(path, available, prompt_is_messages, prompt_field, answer_field, id_field)


def _pick_fields(path, available: list[str], prompt_is_messages: bool, prompt_field: str,
                 answer_field: str, id_field: str):
    """Explicit field names checked against ``available`` (dotted nested names), empty ones
    detected; ``path`` only names the source in errors."""
    def pick(kind: str, explicit: str, auto: tuple[str, ...]) -> str:
        if explicit:
            if explicit not in available:
                raise ValueError(f"{path}: {kind}_field {explicit!r} is not a column; "
                                 f"available: {', '.join(available) or '(none)'}")
            return explicit
        for name in auto:
            if name in available:
                return name
        raise ValueError(f"{path}: no {kind} column found (looked for {', '.join(auto)}); set "
                         f"{kind}_field to one of: {', '.join(available) or '(none)'}")

    auto_prompt = ("prompt",) + _AUTO_PROMPT if prompt_is_messages else _AUTO_PROMPT
    prompt = pick("prompt", prompt_field, auto_prompt)
    answer = pick("answer", answer_field, _AUTO_ANSWER)
    if id_field:
        ident = pick("id", id_field, ())
    else:
        ident = _AUTO_ID if _AUTO_ID in available else ""
    columns = sorted({f.split(".")[0] for f in (prompt, answer, ident) if f})
    return prompt, answer, ident, columns


def _prompt_text(value) -> str:
    """A prompt cell as text: the last ``user`` message of a chat list, or the string."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        return content if isinstance(content, str) else ""
    if isinstance(value, str):
        return value
    return ""


def _answer_text(value) -> str | None:
    """An answer cell as text: strings kept as they are, numbers stringified, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # NaN (a pandas missing value) or inf is no answer
        return str(value) if math.isfinite(value) else None
    return None


# ----------------------------------------------------------------------------- loading
def _append_suffix(prompt: str, suffix: str) -> tuple[str, bool]:
    """``prompt`` + blank line + ``suffix``, unless the prompt already ends with it."""
    if not suffix or prompt.rstrip().endswith(suffix.strip()):
        return prompt, False
    sep = "" if suffix[0].isspace() else "\n\n"
    return prompt + sep + suffix, True


def _check_row(i: int, row: dict | None, err: str, fields: tuple[str, str, str],
               source_name: str) -> dict:
    """One raw row -> ``{"id", "prompt", "answer"}`` or ``{"id", "bad": (reason, field, detail)}``."""
    prompt_f, answer_f, id_f = fields
    row_id = f"{source_name}-{i}"
    if row is None:
        return {"id": row_id, "bad": ("invalid_json", "(line)", err)}
    if id_f:
        raw_id = _get(row, id_f)
        if raw_id is None or str(raw_id).strip() == "":
            return {"id": row_id, "bad": ("missing_id", id_f, "id is missing or empty")}
        row_id = str(raw_id)
    prompt = _prompt_text(_get(row, prompt_f))
    if not prompt.strip():
        return {"id": row_id, "bad": ("empty_prompt", prompt_f, "prompt is missing or empty "
                                      "(a message list needs a non-empty 'user' message)")}
    raw_answer = _get(row, answer_f)
    if raw_answer is None or (isinstance(raw_answer, str) and not raw_answer.strip()):
        return {"id": row_id, "bad": ("missing_answer", answer_f, "answer is missing or empty")}
    answer = _answer_text(raw_answer)
    if answer is None:
        what = repr(raw_answer) if isinstance(raw_answer, float) else f"a {type(raw_answer).__name__}"
        return {"id": row_id, "bad": ("unparseable_answer", answer_f, f"answer is {what}, "
                                      f"expected a string or finite number")}
    return {"id": row_id, "prompt": prompt, "answer": answer}


class _Collector:
    """Applies the bad-row policy, the limit and the suffix, in row order; keeps the counts."""

    def __init__(self, path: Path, on_bad_row: str, limit: int, prompt_suffix: str,
                 answer_field: str, id_field: str, timeout_s: float):
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0 (0 = all), got {limit}")
        self.path, self.on_bad_row, self.limit = path, on_bad_row, limit
        self.prompt_suffix, self.answer_field, self.id_field = prompt_suffix, answer_field, id_field
        self.timeout_s = timeout_s
        self.records: list[dict] = []
        self.rows = 0
        self.skipped = {r: 0 for r in BAD_ROW_REASONS}
        self.seen_ids: set[str] = set()
        self.suffix_added = 0

    def room(self) -> int:
        """How many more rows may be examined without overshooting the limit."""
        return _BATCH if not self.limit else min(_BATCH, self.limit - len(self.records))

    def bad(self, reason: str, row_id: str, field: str, detail: str) -> None:
        if self.on_bad_row == "error":
            raise BadRow(f"{self.path}: row {row_id!r}: {field}: {detail} "
                         f"(on_bad_row: skip drops such rows and counts them)")
        self.skipped[reason] += 1
        log.debug("%s: skipping row %r (%s: %s)", self.path, row_id, field, detail)

    def add_batch(self, checked: list[dict]) -> None:
        """Check gold answers with math-verify (batched), then accept rows in order."""
        from ..grading import gold_parseable_many

        good = [c for c in checked if "bad" not in c]
        parses = iter(gold_parseable_many([c["answer"] for c in good], timeout_s=self.timeout_s))
        for rec in checked:
            self.rows += 1
            if "bad" in rec:
                self.bad(rec["bad"][0], rec["id"], *rec["bad"][1:])
                continue
            if not next(parses):
                self.bad("unparseable_answer", rec["id"], self.answer_field,
                         f"math-verify cannot parse the gold answer {rec['answer'][:80]!r}")
                continue
            if rec["id"] in self.seen_ids:
                self.bad("duplicate_id", rec["id"], self.id_field or "(row number)",
                         "id already used by an earlier row")
                continue
            rec["prompt"], added = _append_suffix(rec["prompt"], self.prompt_suffix)
            self.suffix_added += added
            self.seen_ids.add(rec["id"])
            self.records.append(rec)

    def stats(self) -> dict:
        return {"rows": self.rows, "kept": len(self.records), "skipped": dict(self.skipped),
                "suffix_added": self.suffix_added}


def _collect(where, rows: Iterable[tuple[int, dict | None, str]], fields: tuple[str, str, str], *,
             limit: int, on_bad_row: str, prompt_suffix: str, source_name: str,
             parse_timeout_s: float) -> tuple[list[dict], dict]:
    """The shared normalisation: rows -> checked ``{id, prompt, answer}`` records and stats."""
    prompt_f, answer_f, id_f = fields
    col = _Collector(where, on_bad_row, limit, prompt_suffix, answer_f, id_f, parse_timeout_s)
    batch: list[dict] = []
    for i, row, err in rows:
        batch.append(_check_row(i, row, err, fields, source_name))
        if len(batch) >= col.room():
            col.add_batch(batch)
            batch = []
            if col.room() <= 0:
                break
    if batch:
        col.add_batch(batch)
    stats = col.stats()
    stats["fields"] = {"prompt": prompt_f, "answer": answer_f, "id": id_f or None}
    return col.records, stats


def load_records(path: str | Path, *, prompt_field: str = "", answer_field: str = "",
                 id_field: str = "", limit: int = 0, on_bad_row: str = "error",
                 prompt_suffix: str = "", source_name: str = "",
                 parse_timeout_s: float = 5.0) -> tuple[list[dict], dict]:
    """Read a parquet or jsonl prompt set as ``[{"id", "prompt", "answer"}]`` plus stats.

    Fields left empty are detected (prompt: verl ``prompt`` messages, else ``problem`` /
    ``question`` / ``prompt``; answer: ``reward_model.ground_truth``, else ``answer``; id:
    ``extra_info.index``, else ``f"{source_name}-{row}"``).  ``limit`` keeps the first
    ``limit`` good rows (0 = all); rows after them are not read.  ``prompt_suffix`` is
    appended after a blank line unless the prompt already ends with it.  Stats:
    ``{"rows": read, "kept", "skipped": {reason: n}, "suffix_added", "path", "fields"}``.
    """
    path = Path(path)
    _check_path(path)
    source_name = source_name or path.stem
    prompt_f, answer_f, id_f, columns = _resolve_fields(path, prompt_field, answer_field, id_field)
    rows = _iter_parquet(path, columns) if path.suffix == ".parquet" else _iter_jsonl(path)
    records, stats = _collect(path, rows, (prompt_f, answer_f, id_f), limit=limit, on_bad_row=on_bad_row,
                              prompt_suffix=prompt_suffix, source_name=source_name,
                              parse_timeout_s=parse_timeout_s)
    if stats["rows"] == 0:
        raise ValueError(f"{path}: the file has no rows")
    stats["path"] = str(path)
    return records, stats


# ----------------------------------------------------------------------------- Hugging Face datasets
class HFUnavailable(ValueError):
    """A ``source: hf`` set cannot be loaded (no ``datasets`` package, offline, unknown name)."""


def _hf_where(name: str, config: str, split: str) -> str:
    return f"hf:{name}" + (f" ({config})" if config else "") + f" [{split}]"


def hf_dataset(name: str, *, split: str, config: str = "", key: str = "data"):
    """``datasets.load_dataset(name, config, split=split)``; a missing package, no network or an
    unknown name becomes :class:`HFUnavailable` telling how to use local files instead."""
    local = (f"download the data where there is network and point {key} at the files instead "
             f"(source: file, path: <parquet or jsonl>)")
    try:
        import datasets
    except ImportError:
        raise HFUnavailable(f"{key}: source: hf needs the `datasets` package (pip install 'pgopd[hf]'), "
                            f"or {local}") from None
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # network, offline mode, unknown dataset / split / config
        text = str(e).strip()
        msg = text.splitlines()[0] if text else ""
        raise HFUnavailable(f"{key}: cannot load the Hugging Face dataset {name!r} (config "
                            f"{config or 'default'}, split {split!r}): {type(e).__name__}: {msg}; "
                            f"offline or no access? Then {local}") from None


def _first_row(dataset) -> dict:
    try:
        if len(dataset) == 0:
            return {}
        return dict(dataset[0])
    except TypeError:  # not indexable (an iterable dataset)
        for row in dataset:
            return dict(row)
        return {}


def records_from_dataset(dataset, *, prompt_field: str = "", answer_field: str = "", id_field: str = "",
                         limit: int = 0, on_bad_row: str = "error", prompt_suffix: str = "",
                         source_name: str = "", where: str = "dataset",
                         parse_timeout_s: float = 5.0) -> tuple[list[dict], dict]:
    """``{id, prompt, answer}`` records from an in-memory dataset, through the same field
    detection, checks, limit and suffix as files.

    ``dataset``: a ``datasets.Dataset`` or anything that iterates over row mappings (a list
    of dicts); nested columns are dicts (``reward_model.ground_truth``), a chat prompt a list of
    ``{role, content}``.  Columns are read from the first row.  ``where`` names the source in
    errors and stats.
    """
    first = _first_row(dataset)
    available = _flat_keys(first)
    prompt_is_messages = isinstance(first.get("prompt"), (list, tuple))
    prompt_f, answer_f, id_f, _ = _pick_fields(where, available, prompt_is_messages, prompt_field,
                                                answer_field, id_field)

    def rows():
        for i, row in enumerate(dataset):
            if hasattr(row, "keys"):
                yield i, dict(row), ""
            else:
                yield i, None, f"row {i} is not a mapping"

    records, stats = _collect(where, rows(), (prompt_f, answer_f, id_f), limit=limit, on_bad_row=on_bad_row,
                              prompt_suffix=prompt_suffix, source_name=source_name or "hf",
                              parse_timeout_s=parse_timeout_s)
    stats["path"] = where
    return records, stats


def load_hf_records(name: str, *, split: str, config: str = "", key: str = "data", **kw
                    ) -> tuple[list[dict], dict]:
    """A Hugging Face dataset by name as ``{id, prompt, answer}`` records (see
    :func:`records_from_dataset` for the keyword arguments); ``key`` names the config entry
    in errors."""
    where = _hf_where(name, config, split)
    dataset = hf_dataset(name, split=split, config=config, key=key)
    records, stats = records_from_dataset(dataset, where=where, **kw)
    stats.update(hf_name=name, hf_split=split, hf_config=config)
    return records, stats
