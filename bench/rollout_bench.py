"""Rollout benchmark (issue: rollout allocation).  Prints and writes bench/results.json:

1. chunked vs one-shot rollout time for the same tokens (target <= 1.10x),
2. cost where it is spent, for every method: the positions each model's forward ran
   (padding after EOS and tokens past a cut included) over the tokens that were kept:
   teacher positions / trained tokens and student positions / generated tokens (physical
   limit 1.00), with the waste split into padding and generated-but-not-trained tokens,
3. from the default pipeline's results (if present): generated tokens and training wall
   time of pgopd and pruneopd relative to opd at the same number of steps,
4. the same ratios for the real training stage run *alone* (one method after the other,
   ``--alone-steps`` steps of the default config, one thread): the pipeline runs two jobs on
   two cores next to evaluation jobs, so its wall times also measure who shared a core.

Usage: python bench/rollout_bench.py [--models results/models/toy] [--repeats 5] [--alone-steps 20]
       [--only positions]   (recompute section 2 only; the other sections of --out are kept)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: what the matched controls copy here (a reference run's summary fields)
REFERENCE = {"mean_generated_tokens": 20, "mean_kept_tokens": 20, "continue_rate": 0.5, "cut_rate": 0.3,
             "mean_cut_len": 20}


def _models(models_dir: Path):
    from pgopd.models.loading import encode_prompts, load_model, load_tokenizer

    tok = load_tokenizer(str(models_dir / "student"))
    student, teacher = load_model(str(models_dir / "student")), load_model(str(models_dir / "teacher"))
    from pgopd.data.synthetic import make_split

    prompts = encode_prompts(tok, [r["prompt"] for r in make_split(16, 1, 3, 30, 7, "b")])
    return tok, student, teacher, prompts


def time_rollout(tok, student, teacher, prompts, method, chunk, cfg, repeats):
    from pgopd.policies import make_policy
    from pgopd.rollout.hf import HFSampler
    from pgopd.rollout.loop import rollout
    from pgopd.rollout.scorer import TeacherScorer

    times, res = [], None
    for r in range(repeats):
        sampler = HFSampler(student, tok.eos_token_id, tok.pad_token_id, 1.0, 1.0, topk=cfg.overlap_k, seed=r)
        scorer = TeacherScorer(teacher, tok.pad_token_id, topk=cfg.overlap_k)
        policy = make_policy(method, cfg, seed=0, reference=REFERENCE)
        t0 = time.perf_counter()
        res = rollout(sampler, scorer, policy, prompts, n_samples=cfg.n_samples,
                      max_new_tokens=cfg.max_new_tokens, chunk_size=chunk, overlap_k=cfg.overlap_k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def main() -> None:
    from pgopd.config import TrainConfig, parse_dataclass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / "results/models/toy")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--alone-steps", type=int, default=20, help="training steps per method in section 4 (0 = skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results.json")
    ap.add_argument("--only", choices=("positions",), help="recompute one section, keep the rest of --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not (args.models / "teacher").exists():
        raise SystemExit(f"{args.models}/teacher not found: run the default pipeline first (make pipeline)")
    tok, student, teacher, prompts = _models(args.models)
    cfg = parse_dataclass(TrainConfig, {}, "train")
    out = {"config": {"prompts": len(prompts), "n_samples": cfg.n_samples, "max_new_tokens": cfg.max_new_tokens,
                      "chunk_size": cfg.chunk_size, "repeats": args.repeats, "threads": 1}}

    if args.only == "positions":
        prev = json.loads(args.out.read_text()) if args.out.exists() else {}
        prev.pop("scored_over_generated", None)  # the identity it replaces (always 1.000)
        prev["positions_over_kept"] = positions_over_kept(tok, student, teacher, prompts, cfg, args.models)
        args.out.write_text(json.dumps(prev, indent=2))
        print(f"wrote section 2 of {args.out}")
        return
    t_one, r_one = time_rollout(tok, student, teacher, prompts, "opd", cfg.max_new_tokens, cfg, args.repeats)
    t_chunk, r_chunk = time_rollout(tok, student, teacher, prompts, "opd", cfg.chunk_size, cfg, args.repeats)
    same = [c.tokens for c in r_one.cands] == [c.tokens for c in r_chunk.cands]
    out["chunked_vs_one_shot"] = {"one_shot_s": t_one, "chunked_s": t_chunk, "ratio": t_chunk / t_one,
                                  "same_tokens": same, "tokens": r_one.tokens_generated, "target": "<= 1.10"}
    print(f"chunked ({cfg.chunk_size}) vs one-shot rollout: {t_chunk:.3f}s / {t_one:.3f}s = "
          f"{t_chunk / t_one:.3f}x for {r_one.tokens_generated} tokens (same tokens: {same})")

    out["positions_over_kept"] = positions_over_kept(tok, student, teacher, prompts, cfg, args.models)
    runs = {}
    for s in sorted(args.results.glob("train/*/*/seed*/summary.json")):
        pair, method, seed = s.parts[-4], s.parts[-3], s.parts[-2]
        runs.setdefault((pair, seed), {})[method] = json.loads(s.read_text())
    out["default_run_vs_opd"] = {}
    for (pair, seed), ms in sorted(runs.items()):
        if "opd" not in ms:
            continue
        base = ms["opd"]
        for m, s in ms.items():
            if m == "opd":
                continue
            row = {"gen_tokens_ratio": s["gen_tokens"] / base["gen_tokens"],
                   "wall_time_ratio": s["train_wall_s"] / base["train_wall_s"], "steps": s["steps"]}
            out["default_run_vs_opd"][f"{pair}/{seed}/{m}"] = row
            print(f"{pair}/{seed} {m:>16} over opd: generated tokens {row['gen_tokens_ratio']:.3f}x, "
                  f"training wall time {row['wall_time_ratio']:.3f}x")
    if args.alone_steps:
        out["alone_vs_opd"] = train_alone(args.models, args.results, args.alone_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def positions_over_kept(tok, student, teacher, prompts, cfg, models: Path) -> dict:
    """Section 2: per method, forward positions against kept tokens (one rollout, seed 0)."""
    from pgopd.config import ALL_METHODS, MATCHED

    out = {"chunk_size": cfg.chunk_size, "models": str(models), "prompts": len(prompts),
           "n_samples": cfg.n_samples, "note": "positions after the prompt prefill; limit 1.00"}
    for m in ALL_METHODS:
        if m in MATCHED:
            continue  # the bare names are aliases of <control>-pgopd
        _, r = time_rollout(tok, student, teacher, prompts, m, cfg.chunk_size, cfg, 1)
        gen, trained = r.tokens_generated, r.tokens_trained
        row = {"generated": gen, "trained": trained, "positions_student": r.positions_student,
               "positions_teacher": r.positions_teacher,
               "student_positions_per_generated": r.positions_student / max(gen, 1),
               "teacher_positions_per_trained": r.positions_teacher / max(trained, 1),
               "teacher_padding": r.positions_teacher - gen, "generated_not_trained": gen - trained}
        out[m] = row
        print(f"{m:>26}: teacher positions / trained = {r.positions_teacher}/{trained} = "
              f"{row['teacher_positions_per_trained']:.3f}; student positions / generated = "
              f"{r.positions_student}/{gen} = {row['student_positions_per_generated']:.3f}")
    return out


def train_alone(models: Path, results: Path, steps: int, methods=("opd", "pgopd", "pruneopd")) -> dict:
    """Run the training stage for each method in turn (same seed, prompts and start) and
    compare wall time and generated tokens with opd's."""
    import tempfile

    from pgopd.config import TrainConfig, parse_dataclass
    from pgopd.train import train

    data, cache = results / "data/train.jsonl", results / "teacher/toy"
    if not (data.exists() and (cache / "summary.json").exists()):
        print(f"section 4 skipped: {data} or {cache}/summary.json missing (run make pipeline)")
        return {}
    cfg = parse_dataclass(TrainConfig, {"steps": steps}, "train")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            summ = train(cfg, method=m, seed=0, teacher=str(models / "teacher"), student=str(models / "student"),
                         train_data=data, teacher_cache=cache, out_dir=Path(tmp) / m)
            steps_ = [json.loads(x) for x in (Path(tmp) / m / "metrics.jsonl").read_text().splitlines()]
            rows[m] = {"train_wall_s": summ["train_wall_s"], "gen_tokens": summ["gen_tokens"],
                       **{k: sum(r[k] for r in steps_) for k in ("t_rollout_s", "t_teacher_s", "t_update_s")}}
    base = rows["opd"]
    for m, r in rows.items():
        r["wall_time_ratio"] = r["train_wall_s"] / base["train_wall_s"]
        r["gen_tokens_ratio"] = r["gen_tokens"] / base["gen_tokens"]
        print(f"alone, {steps} steps: {m:>9} wall {r['train_wall_s']:.1f}s ({r['wall_time_ratio']:.3f}x opd), "
              f"tokens {r['gen_tokens']} ({r['gen_tokens_ratio']:.3f}x); rollout {r['t_rollout_s']:.1f}s, "
              f"teacher {r['t_teacher_s']:.1f}s, update {r['t_update_s']:.1f}s")
    return {"steps": steps, "seed": 0, "methods": rows}


if __name__ == "__main__":
    main()
