"""Measure the long tail of a student's rollouts before any training (issue 15).

Samples ``--prompts`` training prompts x ``--n-samples`` responses from the student under
each allocation policy (the same prompts, seeds and training config), scores every token
with the teacher, and prints / writes (``--out``) per method: generated tokens (and the
ratio to OPD's), and for OPD the tail statistics of ``pgopd.tailstats.tail_stats``
(response-length histogram, share of tokens in rollouts that hit the limit or never boxed
an answer, per-position top-k overlap histograms tail vs rest).

Usage: python scripts/measure_tail.py --models DIR --train DIR/train.jsonl \
           [--params '{"max_new_tokens": 160}'] [--prompts 32] [--n-samples 4] [--out tail.json]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def run(models: Path, train: Path, params: dict, n_prompts: int, n_samples: int,
        methods: list[str], seed: int) -> dict:
    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.grading import extract_boxed
    from pgopd.models.loading import encode_prompts, load_model, load_tokenizer, response_text
    from pgopd.policies import make_policy
    from pgopd.rollout.hf import HFSampler
    from pgopd.rollout.loop import rollout
    from pgopd.rollout.scorer import TeacherScorer
    from pgopd.tailstats import tail_stats

    cfg = parse_dataclass(TrainConfig, {**params, "n_samples": n_samples}, "train")
    recs = [json.loads(x) for x in train.read_text().splitlines() if x.strip()]
    recs = random.Random(seed).sample(recs, n_prompts)
    tok = load_tokenizer(str(models / "student"))
    student, teacher = load_model(str(models / "student")), load_model(str(models / "teacher"))
    prompts = encode_prompts(tok, [r["prompt"] for r in recs])
    out = {"config": {"models": str(models), "prompts": n_prompts, "n_samples": n_samples,
                      "max_new_tokens": cfg.max_new_tokens, "chunk_size": cfg.chunk_size,
                      "temperature": cfg.temperature, "overlap_k": cfg.overlap_k}}
    for m in methods:
        sampler = HFSampler(student, tok.eos_token_id, tok.pad_token_id, cfg.temperature, cfg.top_p,
                            topk=cfg.overlap_k, seed=seed)
        scorer = TeacherScorer(teacher, tok.pad_token_id, topk=cfg.overlap_k)
        policy = make_policy(m, cfg, seed=seed, reference={"mean_generated_tokens": 40, "continue_rate": 0.5})
        policy.begin_step(0)
        t0 = time.perf_counter()
        res = rollout(sampler, scorer, policy, prompts, n_samples=n_samples, max_new_tokens=cfg.max_new_tokens,
                      chunk_size=cfg.chunk_size, overlap_k=cfg.overlap_k)
        row = {"seconds": round(time.perf_counter() - t0, 2), "tokens_generated": res.tokens_generated,
               "tokens_trained": res.tokens_trained}
        if m == "opd":
            rolls = []
            for c in res.cands:
                text = response_text(tok, c.tokens)
                gold = recs[c.group]["answer"]
                rolls.append({"n_tokens": c.length, "finished": c.finished, "text": text,
                              "correct": extract_boxed(text) == gold, "overlap": c.overlap,
                              "teacher_logp": c.teacher_logp})
            row["tail"] = tail_stats(rolls, cfg.max_new_tokens)
            row["examples"] = [r["text"] for r in rolls[:6]]
        out[m] = row
    base = out[methods[0]]["tokens_generated"]
    for m in methods:
        out[m]["tokens_ratio"] = round(out[m]["tokens_generated"] / base, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--params", default="{}", help="JSON of the 'train' config slice")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--methods", default="opd,pgopd,pruneopd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = run(args.models, args.train, json.loads(args.params), args.prompts, args.n_samples,
              args.methods.split(","), args.seed)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    t = out["opd"]["tail"]
    print(json.dumps({k: t[k] for k in ("mean_length", "hit_limit_rate", "boxed_rate", "correct_rate",
                                        "tail_rate", "tail_token_share", "length_hist", "mean_overlap",
                                        "mean_teacher_logp",
                                        "overlap_by_window")}, indent=1))
    print("tokens:", {m: (out[m]["tokens_generated"], out[m]["tokens_ratio"], out[m]["seconds"])
                      for m in args.methods.split(",")})
    print("examples:", *out["opd"]["examples"], sep="\n  ")


if __name__ == "__main__":
    main()
