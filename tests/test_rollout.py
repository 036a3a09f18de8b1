"""The chunked rollout loop: chunking changes nothing, the teacher scores each token once,
and its incremental scores equal a full-sequence forward."""
import time

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pgopd.config import TrainConfig, parse_dataclass
from pgopd.policies import make_policy
from pgopd.rollout.hf import HFSampler, generate, sample_tokens
from pgopd.rollout.loop import rollout
from pgopd.rollout.scorer import TeacherScorer
from pgopd.update import assemble

V, PAD, EOS = 40, 0, 1


def tiny_model(seed, layers=2, d=32):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # make EOS reasonably likely so some rows finish early
        m.lm_head.weight[EOS] *= 0  # tied: also the EOS embedding; logit 0 ~ typical
    return m


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]


@pytest.fixture(scope="module")
def student():
    return tiny_model(0)


@pytest.fixture(scope="module")
def teacher():
    return tiny_model(1, layers=3)


def run(student, teacher, chunk, method="opd", max_new=24, n=3, **kw):
    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": max_new, "chunk_size": chunk, **kw}, "train")
    sampler = HFSampler(student, EOS, PAD, temperature=1.0, top_p=1.0, topk=8, seed=123)
    scorer = TeacherScorer(teacher, PAD, topk=8)
    return rollout(sampler, scorer, make_policy(method, cfg, seed=0), PROMPTS, n_samples=n,
                   max_new_tokens=max_new, chunk_size=chunk, overlap_k=8, loss_top_k=cfg.loss_top_k)


def test_chunked_equals_one_shot(student, teacher):
    one = run(student, teacher, chunk=24)
    for chunk in (1, 5, 8):
        ch = run(student, teacher, chunk=chunk)
        assert [c.tokens for c in ch.cands] == [c.tokens for c in one.cands]
        for a, b in zip(ch.cands, one.cands):
            assert torch.allclose(torch.tensor(a.student_logp), torch.tensor(b.student_logp), atol=1e-5)
            assert torch.allclose(torch.tensor(a.teacher_logp), torch.tensor(b.teacher_logp), atol=1e-5)
    lengths = [c.length for c in one.cands]
    assert min(lengths) < 24 and max(lengths) == 24, "the test wants both early EOS and full-length rows"


def full_forward_logp(model, prompt, tokens):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    return logp.gather(-1, tgt[:, None])[:, 0][len(prompt) - 1:]


def test_incremental_teacher_scores_equal_full_forward(student, teacher):
    res = run(student, teacher, chunk=5)
    for c, p in zip(res.cands, res.prompts):
        ref_t = full_forward_logp(teacher, p, c.tokens)
        ref_s = full_forward_logp(student, p, c.tokens)
        assert torch.allclose(torch.tensor(c.teacher_logp), ref_t, atol=1e-4)
        assert torch.allclose(torch.tensor(c.student_logp), ref_s, atol=1e-4)


def test_every_token_scored_exactly_once(student, teacher):
    res = run(student, teacher, chunk=4)
    assert res.tokens_teacher_scored == res.tokens_generated
    assert all(len(c.teacher_logp) == c.length for c in res.cands)
    # PG-OPD stops half the candidates at the prefix: they leave the teacher batch too
    pg = run(student, teacher, chunk=4, method="pgopd", pgopd={"prefix_len": 8, "probe_end": 8})
    assert pg.tokens_teacher_scored == pg.tokens_generated < res.tokens_generated + 1
    stopped = [c for c in pg.cands if c.stopped]
    assert stopped and all(c.length == 8 for c in stopped)


class _SlowScorer(TeacherScorer):
    """A teacher that sleeps ``delay`` s per call: that time must land in t_teacher_s only."""

    delay = 0.02

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def _slow(self, name):
        self.calls.append(name)
        time.sleep(self.delay)

    def start(self, prompts):
        self._slow("start")
        return super().start(prompts)

    def score(self, *args):
        self._slow("score")
        return super().score(*args)

    def select(self, idx):
        self._slow("select")
        return super().select(idx)


def test_rollout_charges_student_and_teacher_time_to_their_own_clocks(student, teacher):
    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": 24, "chunk_size": 4}, "train")
    sampler = HFSampler(student, EOS, PAD, temperature=1.0, top_p=1.0, topk=8, seed=123)
    scorer = _SlowScorer(teacher, PAD, topk=8)
    t0 = time.perf_counter()
    res = rollout(sampler, scorer, make_policy("opd", cfg, seed=0), PROMPTS, n_samples=3,
                  max_new_tokens=24, chunk_size=4, overlap_k=8)
    wall = time.perf_counter() - t0
    slept = _SlowScorer.delay * len(scorer.calls)
    assert scorer.calls[0] == "start" and scorer.calls.count("score") == res.n_chunks
    assert "select" in scorer.calls, "the test wants finished rows leaving the batch"
    assert res.t_teacher_s >= slept                     # every teacher call, sleep included
    assert 0 < res.t_rollout_s <= wall - slept          # the sleeps are not the student's
    assert res.t_rollout_s + res.t_teacher_s <= wall


def test_topk_rollout_keeps_teacher_logp_on_student_topk(student, teacher):
    res = run(student, teacher, chunk=6, loss_top_k=4)
    c = max(res.cands, key=lambda c: c.length)
    ids = res.student_topk_ids[c.cid]
    assert ids.shape == (c.length, 4)
    p = res.prompts[c.cid]
    full = torch.tensor([p + c.tokens])
    with torch.no_grad():
        logp = torch.log_softmax(teacher(full).logits[0, :-1], -1)[len(p) - 1:]
    assert torch.allclose(logp.gather(-1, ids), res.teacher_logp_topk[c.cid], atol=1e-4)


def test_assemble_aligns_targets(student, teacher):
    res = run(student, teacher, chunk=8)
    b = assemble(res, PAD)
    rows = [c for c in res.cands if c.length]
    assert b["mask_BT"].sum() == sum(c.length for c in rows)
    # the target at each masked position is the candidate's token
    tgt = b["input_ids_BS"][:, 1:]
    for r, c in enumerate(rows):
        assert tgt[r][b["mask_BT"][r]].tolist() == c.tokens
        assert torch.allclose(b["teacher_logp_BT"][r][b["mask_BT"][r]], torch.tensor(c.teacher_logp))


def test_sample_tokens_greedy_and_nucleus():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]])
    u = torch.rand(1000, 4, generator=torch.Generator().manual_seed(0))
    assert sample_tokens(logits, 0.0, 1.0, u[:1]).item() == 1
    # top_p=0.5: only the most likely token (p≈0.84) is in the nucleus
    draws = sample_tokens(logits.expand(1000, 4), 1.0, 0.5, u)
    assert set(draws.tolist()) == {1}
    draws = sample_tokens(logits.expand(1000, 4), 1.0, 1.0, u)
    freq = torch.bincount(draws, minlength=4).float() / 1000
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=0.04)


def test_generate_stops_at_eos_and_is_seeded(student):
    a = generate(student, PROMPTS, eos_id=EOS, pad_id=PAD, n=2, max_new_tokens=20, seed=3, batch_size=3,
                 chunk_size=7)
    b = generate(student, PROMPTS, eos_id=EOS, pad_id=PAD, n=2, max_new_tokens=20, seed=3, batch_size=3,
                 chunk_size=7)
    assert [x["tokens"] for x in a] == [x["tokens"] for x in b]
    assert [(x["prompt_idx"], x["sample_idx"]) for x in a] == [(p, s) for p in range(4) for s in range(2)]
    for x in a:
        assert len(x["tokens"]) <= 20
        assert EOS not in x["tokens"][:-1]


# ----------------------------------------------------------------------------- row groups
def _rollout_grouped(student, teacher, method, max_live_rows, group_offset=0, **kw):
    from pgopd.rollout.loop import rollout_in_groups

    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": 16, "chunk_size": 4, "loss_top_k": 4,
                                        "pgopd": {"prefix_len": 8, "probe_end": 8},
                                        "controls": {"random_continue_rate": 0.5}, **kw}, "train")
    n = 3
    make = lambda r0: HFSampler(student, EOS, PAD, topk=8, seed=77, row_offset=r0, n_global=len(PROMPTS) * n)
    return rollout_in_groups(make, TeacherScorer(teacher, PAD, topk=8, chunk_tokens=5),
                             make_policy(method, cfg, seed=4), PROMPTS, n_samples=n, max_live_rows=max_live_rows,
                             step=2, group_offset=group_offset, max_new_tokens=16, chunk_size=4, overlap_k=8,
                             loss_top_k=4)


FIELDS = ("cid", "group", "tokens", "finished", "stopped", "keep", "train_len")


@pytest.mark.parametrize("method", ["pgopd", "random_prune", "pruneopd"])
def test_row_groups_equal_one_rollout(student, teacher, method):
    """max_live_rows splits the rollout into whole prompt groups; the result is the same as
    one rollout: candidates, decisions (random_prune's draws included), teacher scores."""
    one = _rollout_grouped(student, teacher, method, 0, group_offset=5)
    decisions = [(c.stopped, c.keep, c.train_len) for c in one.cands]
    assert len(set(decisions)) > 1, "the test wants candidates decided differently"
    for rows in (3, 4, 7):  # 1, 1 and 2 prompts (of 3 samples) per group
        g = _rollout_grouped(student, teacher, method, rows, group_offset=5)
        assert [[getattr(c, f) for f in FIELDS] for c in g.cands] == [[getattr(c, f) for f in FIELDS] for c in one.cands]
        assert [c.info.get("continued") for c in g.cands] == [c.info.get("continued") for c in one.cands]
        for a, b in zip(g.cands, one.cands):
            assert torch.allclose(torch.tensor(a.teacher_logp), torch.tensor(b.teacher_logp), atol=1e-5)
            assert torch.allclose(torch.tensor(a.weights), torch.tensor(b.weights), atol=1e-6)
            assert torch.allclose(torch.tensor(a.overlap), torch.tensor(b.overlap))
        assert g.prompts == one.prompts
        assert all(torch.equal(x, y) for x, y in zip(g.student_topk_ids, one.student_topk_ids))
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(g.teacher_logp_topk, one.teacher_logp_topk))
        assert g.tokens_teacher_scored == one.tokens_teacher_scored == one.tokens_generated


def test_row_groups_bound_the_live_batch(student, teacher):
    seen = []

    class Spy(TeacherScorer):
        def start(self, prompts):
            seen.append(len(prompts))
            return super().start(prompts)

    from pgopd.rollout.loop import rollout_in_groups

    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": 8, "chunk_size": 4,
                                        "pgopd": {"prefix_len": 4, "probe_end": 4}}, "train")
    rollout_in_groups(lambda r0: HFSampler(student, EOS, PAD, topk=8, seed=1, row_offset=r0, n_global=12),
                      Spy(teacher, PAD, topk=8), make_policy("opd", cfg, seed=0), PROMPTS, n_samples=3,
                      max_live_rows=7, step=0, max_new_tokens=8, chunk_size=4, overlap_k=8)
    assert seen == [6, 6]  # two whole prompt groups of 3 fit in 7 rows
    seen.clear()
    rollout_in_groups(lambda r0: HFSampler(student, EOS, PAD, topk=8, seed=1, row_offset=r0, n_global=12),
                      Spy(teacher, PAD, topk=8), make_policy("opd", cfg, seed=0), PROMPTS, n_samples=3,
                      max_live_rows=2, step=0, max_new_tokens=8, chunk_size=4, overlap_k=8)
    assert seen == [3, 3, 3, 3]  # fewer rows than a prompt group: one whole group at a time
