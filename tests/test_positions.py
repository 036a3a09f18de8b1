"""Cost counted where it is spent: a counting wrapper around each model's forward.

The wrapper records the input positions of every forward call (padding included), so it
sees what the models really ran, independent of what the rollout reports.  For the chunked
loop the exact count follows from the candidates' lengths and the chunk grid: a candidate
that leaves the batch after the chunk ending at ``e`` costs the teacher ``e`` positions and
the student ``e - 1`` (the last sampled token is never fed back) after one prompt prefill.
A sampler or scorer that re-processes the prefix every chunk runs more and fails.
"""
import pytest
import torch
from torch import nn

from pgopd.config import TrainConfig, parse_dataclass
from pgopd.policies import make_policy
from pgopd.rollout.hf import HFSampler
from pgopd.rollout.kv import KVBatch
from pgopd.rollout.loop import STOP_REASONS, rollout
from pgopd.rollout.scorer import TeacherScorer

from test_rollout import EOS, PAD, PROMPTS, student, teacher  # noqa: F401 (module-scoped fixtures)


class Counting(nn.Module):
    """Wraps a causal LM; ``calls`` holds ``input_ids.numel()`` of every forward."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls = []

    @property
    def config(self):
        return self.inner.config

    def forward(self, input_ids=None, **kw):
        self.calls.append(int(input_ids.numel()))
        return self.inner(input_ids=input_ids, **kw)

    def get_decoder(self):
        """The base model (the teacher scores from hidden states), counted into the same list."""
        return _CountingDecoder(self.inner.get_decoder(), self.calls)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


class _CountingDecoder(nn.Module):
    def __init__(self, decoder, calls: list):
        super().__init__()
        self.inner, self.calls = decoder, calls

    def forward(self, input_ids=None, **kw):
        self.calls.append(int(input_ids.numel()))
        return self.inner(input_ids=input_ids, **kw)


def _end_of(length: int, chunk_ends: list) -> int:
    return min(e for e in chunk_ends if e >= length)


def check_positions(res, s_counter: Counting, t_counter: Counting, n_rows: int) -> None:
    """The wrapper's counts equal the chunk-grid count exactly, and the rollout reports them."""
    width = max(len(p) for p in PROMPTS)
    ends = [_end_of(c.length, res.chunk_ends) for c in res.cands]
    assert s_counter.calls[0] == t_counter.calls[0] == n_rows * width, "one prompt prefill each"
    assert sum(t_counter.calls[1:]) == sum(ends), "teacher re-ran positions"
    assert sum(s_counter.calls[1:]) == sum(e - 1 for e in ends), "student re-ran positions"
    assert res.positions_teacher == sum(t_counter.calls[1:])
    assert res.positions_student == sum(s_counter.calls[1:])
    assert res.prefill_positions_teacher == res.prefill_positions_student == n_rows * width


def _run(student, teacher, method, chunk, sampler_cls=HFSampler, scorer_cls=TeacherScorer, max_new=24, n=3):
    cfg = parse_dataclass(TrainConfig, {"max_new_tokens": max_new, "chunk_size": chunk,
                                        "controls": {"fixed_truncation_len": 10, "random_continue_rate": 0.5}},
                          "train")
    s, t = Counting(student), Counting(teacher)
    sampler = sampler_cls(s, EOS, PAD, temperature=1.0, top_p=1.0, topk=8, seed=7)
    scorer = scorer_cls(t, PAD, topk=8)
    res = rollout(sampler, scorer, make_policy(method, cfg, seed=0), PROMPTS, n_samples=n,
                  max_new_tokens=max_new, chunk_size=chunk, overlap_k=8, loss_top_k=cfg.loss_top_k)
    return res, s, t


@pytest.mark.parametrize("method,chunk", [("opd", 5), ("opd", 24), ("pgopd", 8), ("pruneopd", 8),
                                          ("fixed_truncation", 4), ("random_prune", 3)])
def test_forward_positions_match_the_chunk_grid(student, teacher, method, chunk):
    res, s, t = _run(student, teacher, method, chunk)
    check_positions(res, s, t, n_rows=len(PROMPTS) * 3)
    # each kept token was generated and scored, padding after EOS costs on top of it
    assert res.positions_teacher >= res.tokens_generated >= res.tokens_trained
    assert all(c.info["stop_reason"] in STOP_REASONS for c in res.cands)


def test_padding_after_eos_is_counted(student, teacher):
    res, s, t = _run(student, teacher, "opd", 24)
    finished_early = [c for c in res.cands if c.finished and c.length < res.chunk_ends[-1]]
    assert finished_early, "the test wants a row that ends inside the chunk"
    assert res.positions_teacher > res.tokens_generated


def test_sampler_stops_a_chunk_once_every_row_ended(student, teacher):
    # one chunk of 200 > any response here: the chunk ends with the last EOS, not at 200
    res, s, t = _run(student, teacher, "opd", 200, max_new=200, n=1)
    assert all(c.finished for c in res.cands)
    assert res.chunk_ends == [max(c.length for c in res.cands)] and res.chunk_ends[0] < 200


class RePrefillScorer(TeacherScorer):
    """Deliberately wasteful: re-runs prompt + every earlier token before each chunk."""

    def start(self, prompts):
        super().start(prompts)
        self.hist = [list(p) for p in prompts]

    @torch.no_grad()
    def score(self, tokens_BC, valid_BC, student_topk_ids_BCK=None):
        self.kv = KVBatch(self.model, self.hist, self.pad_id)
        self.next_hidden_BH = self.kv.prefill(hidden=True)
        self.hist = [h + row for h, row in zip(self.hist, tokens_BC.tolist())]
        return super().score(tokens_BC, valid_BC, student_topk_ids_BCK)

    def select(self, keep_B):
        super().select(keep_B)
        self.hist = [self.hist[i] for i in keep_B.tolist()]


class RePrefillSampler(HFSampler):
    """Deliberately wasteful: rebuilds its cache from the whole prefix at every chunk."""

    def start(self, prompts):
        super().start(prompts)
        self.hist = [list(p) for p in prompts]

    @torch.no_grad()
    def extend(self, n_tokens):
        if self.pending_B is not None:
            self.kv = KVBatch(self.model, self.hist, self.pad_id)
            self.logits_BV = self.kv.prefill()
            self.pending_B = None
        ch = super().extend(n_tokens)
        self.hist = [h + row for h, row in zip(self.hist, ch.tokens_BC.tolist())]
        return ch

    def select(self, keep_B):
        super().select(keep_B)
        self.hist = [self.hist[i] for i in keep_B.tolist()]


@pytest.mark.parametrize("which", ["scorer", "sampler"])
def test_a_re_prefilling_backend_fails_the_count(student, teacher, which):
    kw = {"scorer_cls": RePrefillScorer} if which == "scorer" else {"sampler_cls": RePrefillSampler}
    res, s, t = _run(student, teacher, "opd", 4, **kw)
    assert res.n_chunks > 1
    with pytest.raises(AssertionError):
        check_positions(res, s, t, n_rows=len(PROMPTS) * 3)
