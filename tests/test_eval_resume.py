"""Evaluation resumes per problem from ``<out>.jsonl.partial``: an interrupted-then-resumed
run writes exactly the rows of an uninterrupted one; torn or foreign partial files are
handled without losing or mixing anything."""
import json
import logging

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import pgopd.grading
import pgopd.rollout
from pgopd.config import EvalConfig, parse_dataclass
from pgopd.data.loaders import write_jsonl
from pgopd.evaluate import evaluate, evaluate_one
from pgopd.models.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

N_PROBLEMS, K = 7, 2
PARAMS = {"k": K, "batch_size": 4, "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "seed": 5}
MODEL = "tiny"
REAL_GENERATE = pgopd.rollout.generate_with


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # EOS likely enough that responses differ in length
        m.lm_head.weight[tok.eos_token_id] *= 0
    return m


@pytest.fixture(scope="module", autouse=True)
def fake_grading():
    """A random model never writes \\boxed{}; grade by response length so accuracy is not 0."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pgopd.grading, "grade_many",
                   lambda texts, golds, timeout_s=5.0, workers=1: [len(t) % 2 == 0 for t in texts])
        yield


def bench(path, prefix="b", n=N_PROBLEMS):
    write_jsonl(path, [{"id": f"{prefix}-{i}", "prompt": f"{i + 3}+{2 * i}", "answer": str(3 * i + 3)}
                       for i in range(n)])
    return path


def cfg(**kw):
    return parse_dataclass(EvalConfig, {**PARAMS, **kw}, "eval")


def rows(out):
    return [json.loads(x) for x in out.with_name(out.name + ".jsonl").read_text().splitlines()]


def partial_of(out):
    return out.with_name(out.name + ".jsonl.partial")


def count_calls(monkeypatch, fail_at=None):
    """Count generation calls (one per block, by seed); raise Interrupt at call ``fail_at``."""
    calls = []

    def wrapped(*a, **kw):
        calls.append(kw["seed"])
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupt
        return REAL_GENERATE(*a, **kw)

    monkeypatch.setattr(pgopd.rollout, "generate_with", wrapped)
    return calls


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model, tok):
    """An uninterrupted evaluation."""
    d = tmp_path_factory.mktemp("ref")
    b = bench(d / "b.jsonl")
    out = d / "out" / "b"
    summary = evaluate_one(cfg(), model, tok, MODEL, b, out)
    return b, summary, rows(out)


def interrupted(tmp_path, monkeypatch, model, tok, b, fail_at, c=None, name=MODEL):
    """Run until generation call ``fail_at`` raises: the blocks before it are in the partial."""
    out = tmp_path / "out" / "b"
    count_calls(monkeypatch, fail_at)
    with pytest.raises(Interrupt):
        evaluate_one(c or cfg(), model, tok, name, b, out)
    return out


def assert_same(summary, out, reference):
    _, ref_summary, ref_rows = reference
    assert rows(out) == ref_rows
    for key in ("accuracy", "pass_at_k", "per_problem", "mean_response_tokens", "n_problems", "k"):
        assert summary[key] == ref_summary[key], key
    assert not partial_of(out).exists()
    assert not list(out.parent.glob("*.tmp")) and not list(out.parent.glob(".*.tmp"))


def test_reference_is_nontrivial(reference):
    _, summary, ref_rows = reference
    assert len(ref_rows) == N_PROBLEMS * K
    assert [(r["id"], r["sample_idx"]) for r in ref_rows] == [(f"b-{i}", s) for i in range(N_PROBLEMS)
                                                               for s in range(K)]
    assert 0 < summary["accuracy"] < 1
    assert set(summary) == {"model", "bench", "k", "n_problems", "accuracy", "pass_at_k", "per_problem",
                            "mean_response_tokens", "temperature", "top_p", "max_new_tokens", "wall_s"}
    assert len({r["response"] for r in ref_rows}) > 1


def test_resume_after_interrupt(tmp_path, monkeypatch, model, tok, reference):
    b = reference[0]
    out = interrupted(tmp_path, monkeypatch, model, tok, b, fail_at=3)  # blocks 0 and 1 done
    lines = partial_of(out).read_text().splitlines()
    assert "partial_of" in json.loads(lines[0])
    assert [json.loads(x) for x in lines[1:]] == reference[2][:4 * K]
    assert not out.with_name("b.jsonl").exists() and not out.with_name("b.json").exists()
    calls = count_calls(monkeypatch)
    summary = evaluate_one(cfg(), model, tok, MODEL, b, out)
    assert calls == [PARAMS["seed"] + 4, PARAMS["seed"] + 6]  # only the blocks not done
    assert_same(summary, out, reference)


def test_torn_last_line_is_dropped(tmp_path, monkeypatch, model, tok, reference, caplog):
    b = reference[0]
    out = interrupted(tmp_path, monkeypatch, model, tok, b, fail_at=3)
    p = partial_of(out)
    data = p.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    p.write_bytes(data[:-(len(last) // 2 + 1)])  # half of the last row (problem 3, sample 1) is lost
    calls = count_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pgopd.evaluate"):
        summary = evaluate_one(cfg(), model, tok, MODEL, b, out)
    assert "unreadable" in caplog.text
    assert calls == [PARAMS["seed"] + 2, PARAMS["seed"] + 4, PARAMS["seed"] + 6]  # problem 3 redone
    assert_same(summary, out, reference)


def test_half_written_extra_line_and_garbage(tmp_path, monkeypatch, model, tok, reference):
    b = reference[0]
    out = interrupted(tmp_path, monkeypatch, model, tok, b, fail_at=2)  # block 0 done
    with open(partial_of(out), "ab") as fh:
        fh.write(b'{"id": "b-2", "sample_idx": 0, "answer": "9", "resp')  # killed mid-write
    calls = count_calls(monkeypatch)
    summary = evaluate_one(cfg(), model, tok, MODEL, b, out)
    assert len(calls) == 3
    assert_same(summary, out, reference)


def test_partial_of_another_benchmark_is_ignored(tmp_path, monkeypatch, model, tok, reference, caplog):
    other = bench(tmp_path / "b.jsonl", prefix="other")  # same stem, other problems
    out = interrupted(tmp_path, monkeypatch, model, tok, other, fail_at=3)
    assert len(partial_of(out).read_text().splitlines()) == 1 + 4 * K
    calls = count_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pgopd.evaluate"):
        summary = evaluate_one(cfg(), model, tok, MODEL, reference[0], out)
    assert "ignoring" in caplog.text
    assert len(calls) == 4
    assert_same(summary, out, reference)


def test_rows_with_foreign_ids_are_ignored(tmp_path, monkeypatch, model, tok, reference, caplog):
    """Right header, but rows whose ids are not in the benchmark: the whole partial is dropped."""
    b = reference[0]
    out = interrupted(tmp_path, monkeypatch, model, tok, b, fail_at=3)
    p = partial_of(out)
    lines = p.read_text().splitlines()
    foreign = [json.dumps({**json.loads(x), "id": "zz-" + json.loads(x)["id"]}) for x in lines[1:]]
    p.write_text("\n".join([lines[0], *foreign]) + "\n")
    calls = count_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pgopd.evaluate"):
        summary = evaluate_one(cfg(), model, tok, MODEL, b, out)
    assert "does not match benchmark" in caplog.text
    assert len(calls) == 4
    assert_same(summary, out, reference)


def test_partial_of_another_config_is_ignored(tmp_path, monkeypatch, model, tok, reference, caplog):
    b = reference[0]
    out = interrupted(tmp_path, monkeypatch, model, tok, b, fail_at=3)
    calls = count_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pgopd.evaluate"):
        evaluate_one(cfg(temperature=0.5), model, tok, MODEL, b, out)
    assert "another model, benchmark or eval config" in caplog.text
    assert len(calls) == 4


def test_block_size_one_and_evaluate_entry_point(tmp_path, monkeypatch, model, tok, reference):
    """batch_size < k: one problem per block; ``evaluate`` (model from disk) keeps its signature."""
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    c = cfg(batch_size=1)
    calls = count_calls(monkeypatch)
    res = evaluate(c, str(tmp_path / "m"), [reference[0]], tmp_path / "ev")
    assert list(res) == ["b"] and res["b"]["n_problems"] == N_PROBLEMS
    assert calls == [PARAMS["seed"] + i for i in range(N_PROBLEMS)]
    full = rows(tmp_path / "ev" / "b")
    # interrupted after 3 problems, then resumed: identical rows
    out = interrupted(tmp_path, monkeypatch, model, tok, reference[0], fail_at=4, c=c,
                      name=str(tmp_path / "m"))
    assert len(partial_of(out).read_text().splitlines()) == 1 + 3 * K
    calls = count_calls(monkeypatch)
    evaluate_one(c, model, tok, str(tmp_path / "m"), reference[0], out)
    assert len(calls) == N_PROBLEMS - 3
    assert rows(out) == full


def test_vllm_backend_builds_one_engine_for_all_blocks(tmp_path, monkeypatch, model, tok, reference):
    """Blocks must not each start an engine: one is built, passed to every call, shut down."""
    import pgopd.rollout.vllm_backend as vb

    engines = []

    class FakeEngine:
        def __init__(self, path, **kw):
            self.path, self.closed = path, False
            engines.append(self)

        def shutdown(self):
            self.closed = True

    def fake_generate(backend, model_ref, _model, *a, **kw):
        assert backend == "vllm" and model_ref is engines[0] and not model_ref.closed
        return REAL_GENERATE("hf", MODEL, model, *a, **kw)  # the hf samples stand in for vLLM's

    monkeypatch.setattr(vb, "VLLMEngine", FakeEngine)
    monkeypatch.setattr(pgopd.rollout, "generate_with", fake_generate)
    out = tmp_path / "out" / "b"
    summary = evaluate_one(cfg(backend="vllm"), None, tok, MODEL, reference[0], out)
    assert len(engines) == 1 and engines[0].path == MODEL and engines[0].closed
    assert_same(summary, out, reference)
