"""How far the embedded default's table moves with the toy models' build (docs/testbed.md).

The toy models are trained from scratch; another seed or another thread count (float
summation order) gives other models.  This runs the default DAG once per build, each in its
own directory (``--workdir/<name>/``, Snakemake ``--directory``), with an overlay that changes
only the build: ``toy_models.{teacher,student}.seed`` and the build jobs' threads
(``resources.build_toy_models.cpus_per_task``).  Everything else is config/config.yaml
(training seeds included unless ``--seeds`` is given).

Per build it keeps, from ``results/tables/``: teacher / student / OPD Avg., OPD's gain, each
method's and control's Avg., speed-up vs OPD, Δ Avg. vs OPD with its CI, Δ on the hardest
benchmark, and the share of the teacher's correct solutions the matched fixed cuts truncate;
then the range over builds, and whether PG-OPD / Prune-OPD reach <= 0.5x OPD's training wall
time at OPD's accuracy within max(2, OPD's seed std) points on every build.

Usage: python bench/robustness.py --builds 0:1 1:1 2:1 0:2 1:2 2:2 [--workdir /tmp/pgopd-robust]
                                  [--out bench/robustness.json] [--seeds 0 1]
A build is ``<seed>:<threads>``: teacher seed <seed>, student seed <seed>+1 (the default
pair is 0 / 1), <threads> threads per build job.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("pgopd", "pruneopd")
CONTROLS = ("fixed_truncation-pgopd", "random_prune-pgopd", "fixed_truncation-pruneopd", "random_prune-pruneopd")


def overlay(seed: int, threads: int, seeds=None) -> dict:
    out = {"toy_models": {"teacher": {"seed": seed}, "student": {"seed": seed + 1}},
           "resources": {"build_toy_models": {"cpus_per_task": threads}}}
    if seeds is not None:
        out["seeds"] = list(seeds)
    return out


def run_build(name: str, ov: dict, workdir: Path) -> float:
    d = workdir / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "overlay.yaml").write_text(yaml.safe_dump(ov))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(d),
                        "--profile", str(ROOT / "workflow/profiles/default"), "--cores", "2",
                        "--configfile", str(ROOT / "config/config.yaml"), str(d / "overlay.yaml")],
                       capture_output=True, text=True)
    (d / "snakemake.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed (rc {p.returncode}); see {d / 'snakemake.log'}")
    return time.perf_counter() - t0


def _csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _f(v):
    return float(v) if v not in (None, "") else None


def summarise(tables: Path) -> dict:
    """The numbers of one build (accuracy in points)."""
    main = {r["method"]: r for r in _csv(tables / "main.csv")}
    delta = {r["method"]: r for r in _csv(tables / "delta.csv") if r.get("baseline", "opd") == "opd"}
    lengths = {r["level"]: r for r in _csv(tables / "solution_lengths.csv")}
    benches = [c[:-len("_diff")] for c in next(iter(delta.values())) if c.endswith("_diff") and c != "avg_diff"]
    hard = benches[-1]
    opd = main["opd"]
    out = {"teacher": _f(main["teacher"]["avg"]), "student": _f(main["student"]["avg"]), "opd": _f(opd["avg"]),
           "opd_std": _f(opd["avg_std"]), "opd_wall_s": _f(opd["train_wall_s"]), "hard_bench": hard,
           "rows": {}}
    out["opd_gain"] = out["opd"] - out["student"]
    for m in (*METHODS, *CONTROLS):
        if m not in main:
            continue
        r, d = main[m], delta.get(m, {})
        out["rows"][m] = {"avg": _f(r["avg"]), "speedup": _f(r["speedup_vs_opd"]),
                          "wall_ratio": None if not _f(r["speedup_vs_opd"]) else 1 / _f(r["speedup_vs_opd"]),
                          "diff": _f(r["avg_diff_vs_opd"]), "ci": [_f(r["avg_diff_ci_low"]), _f(r["avg_diff_ci_high"])],
                          "diff_hard": None if d.get(f"{hard}_diff") in (None, "") else 100 * float(d[f"{hard}_diff"]),
                          "ci_hard": [None if d.get(f"{hard}_ci_{k}") in (None, "") else 100 * float(d[f"{hard}_ci_{k}"])
                                      for k in ("low", "high")]}
    allrow = lengths.get("all") or next(iter(lengths.values()))
    out["fixed_cut_share"] = {ref: _f(allrow.get(f"cut_{ref}_share")) for ref in METHODS}
    out["fixed_cut_len"] = {ref: _f(allrow.get(f"cut_{ref}_len")) for ref in METHODS}
    bound = max(2.0, out["opd_std"] or 0.0)
    out["bound"] = bound
    out["methods_hold"] = {m: (out["rows"][m]["wall_ratio"] is not None and out["rows"][m]["wall_ratio"] <= 0.5
                               and abs(out["rows"][m]["diff"]) <= bound) for m in METHODS if m in out["rows"]}
    return out


def ranges(builds: dict) -> dict:
    """min / max over builds of the headline numbers."""
    def rng(vals):
        vals = [v for v in vals if v is not None]
        return [min(vals), max(vals)] if vals else None
    b = list(builds.values())
    out = {k: rng([x[k] for x in b]) for k in ("teacher", "student", "opd", "opd_gain")}
    for m in (*METHODS, *CONTROLS):
        rows = [x["rows"][m] for x in b if m in x["rows"]]
        out[m] = {k: rng([r[k] for r in rows]) for k in ("speedup", "diff", "diff_hard")}
    out["methods_hold_on_every_build"] = {m: all(x["methods_hold"].get(m, False) for x in b) for m in METHODS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--builds", nargs="+", default=["0:1", "1:1", "2:1", "0:2", "1:2", "2:2"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pgopd-robust"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/robustness.json")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="training seeds (default: config.yaml's)")
    ap.add_argument("--collect-only", action="store_true", help="summarise the existing --workdir builds")
    a = ap.parse_args(argv)
    prev = json.loads(a.out.read_text()) if a.out.exists() else {}
    builds = prev.get("builds", {})
    for spec in a.builds:
        seed, threads = (int(x) for x in spec.split(":"))
        name = f"seed{seed}-threads{threads}"
        wall = builds.get(name, {}).get("dag_wall_s")  # --collect-only keeps the measured one
        if not a.collect_only:
            wall = run_build(name, overlay(seed, threads, a.seeds), a.workdir)
        builds[name] = {"teacher_seed": seed, "student_seed": seed + 1, "threads": threads,
                        "dag_wall_s": wall, **summarise(a.workdir / name / "results/tables")}
        a.out.write_text(json.dumps({"builds": builds, "ranges": ranges(builds)}, indent=1) + "\n")
        print(f"{name}: {json.dumps(builds[name])}", flush=True)
    print(json.dumps(ranges(builds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
