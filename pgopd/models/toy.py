"""Toy teacher and student: tiny Qwen2 models trained from scratch on the synthetic task.

Both are trained by supervised next-token prediction on the worked solutions of
``train.jsonl`` (loss on the response only: solution + EOS).  The teacher trains long
enough to be good; the student only gets a short warm start, so it knows the output format
(``... \\boxed{n}`` then EOS) but is clearly weaker: the gap OPD has to close.

The teacher's learning rate is annealed to 1% of its peak; the student's only to a third
(``final_lr_fraction``), as a checkpoint taken mid-way through pre-training.  Measured on
the embedded default (docs/testbed.md, "The clean-student toy"): a student annealed to 1% sits in a sharp
minimum that any further update at OPD's learning rates leaves -- OPD, and even SFT on fresh
correct solutions, lowered its held-out accuracy -- while the un-annealed student is
improved by OPD.

The default student's warm start also has a ramble (``loop_fraction`` of its solutions,
see :func:`looping_solution`): a share of its rollouts lose the thread and run to the length
limit without an answer, the long tail that PG-OPD and Prune-OPD exist to cut (issue 15).
The teacher never sees one, so it is off its distribution on that tail.

Output (``out_dir``): ``teacher/`` and ``student/`` (HF ``save_pretrained`` with the
tokenizer) and ``build_<role>.json`` (parameters, train time, losses, held-out greedy
accuracy).  The two models are independent, so the workflow builds them in two jobs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import ToyModelConfig, ToyModelsConfig, to_dict
from ..data.synthetic import make_split
from .loading import encode_prompts, response_text
from .tokenizer import build_char_tokenizer

log = logging.getLogger(__name__)

MAX_POSITIONS = 256            # context of the toy models (prompt + response)
WARMUP_FRACTION = 0.1          # one-cycle: share of the steps spent raising the learning rate
EVAL_OPS = (1, 2, 3)           # held-out difficulty levels (plus any op count seen in training)
VLLM_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}
_EXPR = re.compile(r"\d+(?:[+-]\d+)+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


# ----------------------------------------------------------------------------- data
def read_train_records(path: Path) -> list[dict]:
    """Records of train.jsonl; each needs a ``prompt`` and a worked ``solution``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training file {path} does not exist")
    records = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            for key in ("prompt", "solution"):
                if not rec.get(key):
                    raise ValueError(
                        f"{path}:{line_no} (id {rec.get('id', '?')!r}): missing {key!r}; the toy models "
                        f"train on worked solutions, so train.jsonl must come from the synthetic task")
            records.append(rec)
    if not records:
        raise ValueError(f"{path}: no training records")
    return records


def encode_examples(tok, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, lengths): chat prompt + solution + EOS, right-padded.

    ``labels`` is -100 on the prompt and on padding, so only the response is learnt.
    A record marked ``loop`` (see ``with_loops``) gets no EOS.
    """
    prompts = encode_prompts(tok, [r["prompt"] for r in records])
    seqs, n_prompt = [], []
    for rec, p in zip(records, prompts):
        resp = tok.encode(rec["solution"], add_special_tokens=False)
        resp += [] if rec.get("loop") else [tok.eos_token_id]     # a looping trace never ends
        if len(p) + len(resp) > MAX_POSITIONS:
            raise ValueError(f"training record {rec.get('id', '?')!r} is {len(p) + len(resp)} tokens long; "
                             f"the toy models hold {MAX_POSITIONS}")
        seqs.append(p + resp)
        n_prompt.append(len(p))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, n_prompt)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, n:len(s)] = torch.tensor(s[n:])
    return ids, labels, torch.tensor([len(s) for s in seqs])


def looping_solution(solution: str, rng: random.Random, length: int, phrase: str = "",
                     max_start: int = -1) -> str:
    """A degenerate trace of ``length`` characters with no ``\\boxed{}`` answer.

    ``phrase == ""`` (repeat): ``solution`` cut after a random step, then that step repeated
    (space-separated).  ``phrase`` given (ramble): the first ``j`` clean steps, ``j`` drawn
    from ``0..max_start`` (``-1`` = any step), then ``phrase`` repeated -- a student that
    loses the thread and rambles ("wait, let me check again. ...") instead of computing.

    Trained on without EOS (see ``encode_examples``), it gives a warm-started student a
    share of rollouts that run to the length limit -- the long tail of the papers'
    reasoning traces -- while the teacher, trained on clean solutions only, has never seen
    one: a rambling prefix puts the teacher off its distribution (low top-k overlap).
    """
    body = solution.rsplit(" \\boxed{", 1)[0]
    if " = " in body:  # task reduce: steps joined by " = ", the last one ends with "."
        steps, sep = body.split(" = "), " = "
    else:
        steps, sep = [s.rstrip(".") + "." for s in body.split(". ")], " "
    if phrase:
        last = len(steps) if max_start < 0 else min(len(steps), max_start)
        n_clean, unit = rng.randrange(last + 1), phrase
    else:
        cut = rng.randrange(len(steps))
        n_clean, unit = cut + 1, steps[cut]
    out = sep.join(steps[:n_clean])
    while len(out) < length:
        out += (" " if out else "") + unit
    return out[:length]


def with_loops(records: list[dict], fraction: float, length: int, seed: int, phrase: str = "",
               max_start: int = -1) -> list[dict]:
    """``records`` with a ``fraction`` of solutions replaced by looping traces (``loop: True``)."""
    if fraction <= 0:
        return records
    rng = random.Random(seed)
    return [{**r, "solution": looping_solution(r["solution"], rng, length, phrase, max_start), "loop": True}
            if rng.random() < fraction else r for r in records]


def training_expressions(records: list[dict]) -> list[str]:
    """The ``a+b-c`` expression of every training prompt that holds one."""
    found = (_EXPR.search(r["prompt"]) for r in records if isinstance(r["prompt"], str))
    return [m.group(0) for m in found if m]


def heldout_problems(records: list[dict], n: int, seed: int) -> dict[int, list[dict]]:
    """``n`` unseen problems per difficulty, drawn like the training ones (same ``task`` format).

    The difficulties are ``EVAL_OPS`` and every operation count of the training records.
    The operand range is read off the training expressions and the prompt wording is copied
    from the first record (the expression replaced).  Empty when the prompts hold no
    ``a+b-c`` expression (then no accuracy is measured); a difficulty whose problems are
    all used up by training is left out.
    """
    first = records[0]["prompt"]
    match = _EXPR.search(first) if isinstance(first, str) else None
    exprs = training_expressions(records)
    if match is None or not exprs or n <= 0:
        return {}
    operand_max = max(2, max(int(x) for e in exprs for x in re.findall(r"\d+", e)))
    head, tail = first[:match.start()], first[match.end():]
    task = records[0].get("task", "arith")
    levels = sorted(set(EVAL_OPS) | {r["ops"] for r in records if isinstance(r.get("ops"), int)})
    out = {}
    for ops in levels:
        try:
            probs = make_split(n, ops, ops, operand_max, seed + ops, f"heldout{ops}", exclude=set(exprs),
                               task=task)
        except ValueError as e:
            log.warning("no held-out accuracy for %d-operation problems: %s", ops, e)
            continue
        out[ops] = [{**p, "prompt": head + p["prompt"] + tail} for p in probs]
    return out


# ----------------------------------------------------------------------------- model
def make_model(mcfg: ToyModelConfig, tok, name: str = "model"):
    """A freshly initialised Qwen2ForCausalLM sized by ``mcfg`` for the char tokenizer."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if mcfg.d_model % mcfg.n_heads:
        raise ValueError(f"toy_models.{name}.n_heads: d_model ({mcfg.d_model}) must be divisible "
                         f"by n_heads ({mcfg.n_heads})")
    head = mcfg.d_model // mcfg.n_heads
    if head not in VLLM_HEAD_SIZES:
        log.warning("toy_models.%s: head size %d (d_model/n_heads) is not supported by vLLM (needs one of %s); "
                    "only the hf rollout backend can run this model", name, head, sorted(VLLM_HEAD_SIZES))
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=mcfg.d_model, intermediate_size=mcfg.d_ff or 4 * mcfg.d_model,
        num_hidden_layers=mcfg.n_layers, num_attention_heads=mcfg.n_heads,
        num_key_value_heads=mcfg.n_heads, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(mcfg.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=None, max_length=MAX_POSITIONS)
    return model


def n_params(model) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def one_cycle(total_steps: int, warmup_fraction: float = WARMUP_FRACTION, final: float = 0.01):
    """LR multiplier per step: linear warm-up to 1, then cosine annealing down to ``final``.

    Works for any ``total_steps`` >= 0 (torch's OneCycleLR fails on very short runs).
    """
    warmup = max(1, round(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def train_model(model, data: tuple, mcfg: ToyModelConfig, name: str = "model") -> dict:
    """Supervised training with AdamW and a one-cycle schedule; returns loss and time stats."""
    ids, labels, lengths = data
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=mcfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle(mcfg.train_steps, final=mcfg.final_lr_fraction))
    gen = torch.Generator().manual_seed(mcfg.seed)
    order, pos = torch.randperm(len(ids), generator=gen), 0
    losses, last_lr = [], None
    t0 = time.perf_counter()
    bar = tqdm(range(mcfg.train_steps), desc=f"train {name}", mininterval=5.0, leave=False)
    for step in bar:
        if pos + mcfg.batch_size > len(order):
            order, pos = torch.randperm(len(ids), generator=gen), 0
        idx = order[pos:pos + mcfg.batch_size]
        pos += mcfg.batch_size
        width = int(lengths[idx].max())
        loss = model(input_ids=ids[idx, :width], labels=labels[idx, :width]).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"toy {name}: non-finite loss at step {step}; lower toy_models.{name}.lr")
        opt.zero_grad(set_to_none=True)
        last_lr = opt.param_groups[0]["lr"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        if (step + 1) % max(1, mcfg.train_steps // 10) == 0:
            log.info("%s step %d/%d loss %.4f (%.0f s)", name, step + 1, mcfg.train_steps, losses[-1],
                     time.perf_counter() - t0)
    bar.close()
    model.eval()
    tail = losses[-min(len(losses), 20):]
    return {
        "train_seconds": round(time.perf_counter() - t0, 2),
        "initial_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "seconds_per_step": round((time.perf_counter() - t0) / max(1, len(losses)), 4),
        "last_lr": last_lr,
    }


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], eos_id: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy responses (EOS included when emitted) with a KV cache.

    Prompts are grouped by length, so no padding (and no position bookkeeping) is needed.
    """
    out: list[list[int] | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for members in groups.values():
        x = torch.tensor([prompts[i] for i in members])
        res = model(input_ids=x, use_cache=True)
        past, done = res.past_key_values, torch.zeros(len(members), dtype=torch.bool)
        gen = []
        for _ in range(max_new_tokens):
            nxt = res.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            gen.append(nxt)
            done |= nxt == eos_id
            if done.all():
                break
            res = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
            past = res.past_key_values
        toks = torch.stack(gen, 1).tolist()
        for row, i in zip(toks, members):
            out[i] = row[:row.index(eos_id) + 1] if eos_id in row else row
    return out


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (None if there is none)."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


def greedy_accuracy(model, tok, problems: dict[int, list[dict]], max_new_tokens: int) -> dict:
    """Per difficulty: exact-match accuracy of the boxed answer, EOS rate and boxed rate."""
    out = {}
    for ops, probs in problems.items():
        prompts = encode_prompts(tok, [p["prompt"] for p in probs])
        gens = greedy_generate(model, prompts, tok.eos_token_id, max_new_tokens)
        texts = [response_text(tok, g) for g in gens]
        answers = [boxed_answer(t) for t in texts]
        n = len(probs)
        out[f"ops{ops}"] = {
            "n": n,
            "accuracy": sum(a == p["answer"] for a, p in zip(answers, probs)) / n,
            "eos_rate": sum(bool(g) and g[-1] == tok.eos_token_id for g in gens) / n,
            "boxed_rate": sum(a is not None for a in answers) / n,
            "example": {"prompt": probs[0]["prompt"], "response": texts[0], "answer": probs[0]["answer"]},
        }
    return out


# ----------------------------------------------------------------------------- saving
def save_atomically(model, tok, dest: Path) -> None:
    """``save_pretrained`` model and tokenizer into a temp dir, then rename it to ``dest``."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def write_json_atomically(obj, dest: Path) -> None:
    tmp = Path(dest).with_name(f".{Path(dest).name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, dest)


# ----------------------------------------------------------------------------- entry point
ROLES = ("teacher", "student")


def build_toy_models(cfg: ToyModelsConfig, train_jsonl: Path, out_dir: Path, *,
                     roles: tuple[str, ...] = ROLES, n_eval: int = 100, eval_seed: int = 9000) -> dict:
    """Build the char tokenizer, train the toy models named in ``roles``, save them, report.

    Returns ``{role: report}`` and writes each report to ``out_dir/build_<role>.json``:
    parameter count, train seconds, initial loss (first step) and final loss (mean of the
    last 20 steps), and greedy accuracy / EOS rate / boxed rate on ``n_eval`` held-out
    problems per difficulty (1, 2, 3 operations; operand range read off the training prompts).
    Every role uses the same deterministic tokenizer, so models built in separate jobs match.
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"roles must be a non-empty subset of {ROLES}, got {list(roles)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_train_records(train_jsonl)
    tok = build_char_tokenizer()
    data = encode_examples(tok, records)
    problems = heldout_problems(records, n_eval, eval_seed)
    if not problems:
        log.warning("train prompts hold no a+b-c expression: held-out accuracy is not measured")
    max_resp = int((data[1] != -100).sum(1).max())
    log.info("toy models: %d training sequences (longest %d tokens), vocab %d",
             len(records), int(data[2].max()), len(tok))
    out = {}
    for name in roles:
        t0 = time.perf_counter()
        mcfg = getattr(cfg, name)
        model = make_model(mcfg, tok, name)
        log.info("%s: %d parameters, %d steps of batch %d", name, n_params(model), mcfg.train_steps,
                 mcfg.batch_size)
        role_data = data
        if mcfg.loop_fraction > 0:
            role_data = encode_examples(tok, with_loops(records, mcfg.loop_fraction, mcfg.loop_len, mcfg.seed,
                                                          mcfg.loop_phrase, mcfg.loop_max_start))
        stats = train_model(model, role_data, mcfg, name)
        stats["params"] = n_params(model)
        stats["accuracy"] = greedy_accuracy(model, tok, problems, max_resp + 16)
        log.info("%s: final loss %.4f, greedy accuracy %s", name, stats["final_loss"] or math.nan,
                 {k: v["accuracy"] for k, v in stats["accuracy"].items()})
        save_atomically(model, tok, out_dir / name)
        report = {"role": name, "n_train": len(records), "vocab_size": len(tok),
                  "max_seq_len": int(data[2].max()),
                  "heldout": {"n_per_ops": n_eval, "ops": sorted(problems), "seed": eval_seed},
                  "config": to_dict(mcfg), **stats, "build_seconds": round(time.perf_counter() - t0, 2)}
        write_json_atomically(report, out_dir / f"build_{name}.json")
        out[name] = report
    return out
