"""The main results table: accuracy per benchmark, average, training cost, paired tests vs OPD.

Inputs are the summaries the workflow writes:

* evaluation: ``.../eval/{pair}/{method}/{tag}/{bench}.json`` with ``accuracy`` (0..1, avg@k),
  ``k``, ``n_problems``, ``bench`` and ``per_problem`` ({problem id: fraction of the k
  samples correct}); ``tag`` is ``base`` (teacher, student) or ``seed<k>``;
* training: ``.../train/{pair}/{method}/seed{k}/summary.json`` with ``train_wall_s`` and
  ``gen_tokens``.

Cells
-----
* Accuracy is in percent (2 decimals).  A cell is the mean over seeds; ``<bench>_std`` the
  sample std over seeds (empty with one seed).  ``avg`` is, per seed, the mean of that
  seed's benchmark accuracies (every benchmark counts equally), then the mean over the seeds
  that have every benchmark; ``avg_std`` its std over those seeds.  ``n_seeds`` counts the
  seeds evaluated (empty for the base models, evaluated once with tag ``base``).
* ``train_wall_s`` / ``gen_tokens``: means over seeds (``_std``: std); ``speedup_vs_opd`` =
  mean OPD wall time / mean wall time of the row (same pair).

Paired comparison with vanilla OPD (every trained method except OPD itself)
--------------------------------------------------------------------------
Pairing: the same problem id of the same benchmark, evaluated with the checkpoints of the
same training seed of both methods (``per_problem`` fractions); only seeds that both
methods have on every benchmark, and problem ids present in all of those evaluations, take
part.  ``avg_diff_vs_opd`` (percentage points) = mean over benchmarks of the mean over
problems and seeds of (method - OPD); with complete, identical problem sets it equals
``avg - avg(OPD)``.  ``avg_diff_ci_low/high``: 95 % two-way bootstrap CI (seeds and
problems redrawn, :func:`pgopd.report.stats.paired_bootstrap`, 2,000 resamples, seeded).
``p_vs_opd``: two-sided Wilcoxon signed-rank test on the per-seed ``avg`` pairs (empty
with fewer than :data:`~pgopd.report.stats.MIN_WILCOXON_PAIRS` seeds, where even a perfect
record cannot reach p < 0.05).  ``p_problems_vs_opd``: paired sign-flip randomization test
of the same statistic over problems (fixed seeds; it does not cover seed-to-seed variation).
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import stats as S
from .common import BASE_ROWS, LABELS, ROW_ORDER, method_rank, run_key, write_atomic  # noqa: F401 (re-exported)

BASELINE = "opd"
TRAIN_COLUMNS = ("train_wall_s", "gen_tokens")
_method_rank = method_rank


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the summary json: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object")
    return data


def _need(data: dict, key: str, path: Path):
    if key not in data or data[key] is None:
        raise ValueError(f"{path}: missing key {key!r}")
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{path}: {key!r} must be a number, got {v!r}")
    return float(v)


def _eval_key(path: Path) -> tuple[str, str, str]:
    parts = Path(path).parts
    if len(parts) < 4:
        raise ValueError(f"{path}: expected .../eval/<pair>/<method>/<tag>/<bench>.json")
    return parts[-4], parts[-3], parts[-2]


_train_key = run_key


def _tag_seed(tag: str):
    m = re.fullmatch(r"seed(\d+)", tag)
    return int(m.group(1)) if m else None


@dataclass
class EvalResult:
    pair: str
    method: str
    tag: str
    bench: str
    accuracy: float
    per_problem: Optional[dict]

    @property
    def seed(self):
        return _tag_seed(self.tag)


def load_evals(eval_jsons) -> list[EvalResult]:
    out, seen = [], {}
    for path in map(Path, eval_jsons):
        pair, method, tag = _eval_key(path)
        data = _read_json(path)
        bench = str(data.get("bench") or path.stem)
        a = _need(data, "accuracy", path)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"{path}: accuracy {a} is not in 0..1")
        pp = data.get("per_problem")
        if pp is not None:
            if not isinstance(pp, dict):
                raise ValueError(f"{path}: per_problem must be a mapping id -> fraction correct")
            pp = {str(k): float(v) for k, v in pp.items()}
        key = (pair, method, tag, bench)
        if key in seen:
            raise ValueError(f"{path}: {pair}/{method}/{tag}/{bench} is also in {seen[key]}")
        seen[key] = path
        out.append(EvalResult(pair, method, tag, bench, a, pp))
    return out


def load_train(train_jsons) -> dict[tuple[str, str, int], dict]:
    out = {}
    for path in map(Path, train_jsons):
        key = run_key(path)
        data = _read_json(path)
        for k in TRAIN_COLUMNS:
            data[k] = _need(data, k, path)
        out[key] = data
    return out


# ----------------------------------------------------------------------------- numbers
@dataclass
class Row:
    """One row of the table in numbers (accuracies 0..1; None = not available)."""
    pair: str
    method: str
    bench_mean: dict = field(default_factory=dict)
    bench_std: dict = field(default_factory=dict)
    avg: Optional[float] = None
    avg_std: Optional[float] = None
    seed_avgs: dict = field(default_factory=dict)  # seed -> avg (complete seeds only)
    n_seeds: Optional[int] = None
    train_wall_s: Optional[float] = None
    train_wall_s_std: Optional[float] = None
    gen_tokens: Optional[float] = None
    gen_tokens_std: Optional[float] = None
    speedup_vs_opd: Optional[float] = None
    avg_diff_vs_opd: Optional[float] = None
    avg_diff_ci_low: Optional[float] = None
    avg_diff_ci_high: Optional[float] = None
    p_vs_opd: Optional[float] = None
    p_problems_vs_opd: Optional[float] = None
    n_paired_seeds: int = 0
    n_paired_problems: int = 0


@dataclass
class Table:
    benches: list
    pairs: list
    rows: list
    n_boot: int = S.N_BOOT
    seed: int = 0


def paired_diffs(evals: list[EvalResult], pair: str, method: str, baseline: str = BASELINE,
                 benches=None):
    """Per benchmark a ``[n_seeds, n_problems]`` array of (method - baseline) per-problem
    fractions, on the seeds both have for every benchmark (with ``per_problem``) and the
    problem ids present in all of those evaluations.  Returns (diffs, seeds)."""
    import numpy as np

    by = {(e.method, e.seed, e.bench): e for e in evals if e.pair == pair and e.seed is not None}
    benches = list(benches) if benches is not None else sorted({b for _m, _s, b in by})
    if not benches:
        return [], []

    def complete(m, s):
        return all((m, s, b) in by and by[(m, s, b)].per_problem is not None for b in benches)

    seeds = sorted({s for m, s, _b in by if m == method} & {s for m, s, _b in by if m == baseline})
    seeds = [s for s in seeds if complete(method, s) and complete(baseline, s)]
    if not seeds:
        return [], []
    diffs = []
    for b in benches:
        ids = None
        for s in seeds:
            for m in (method, baseline):
                k = set(by[(m, s, b)].per_problem)
                ids = k if ids is None else ids & k
        ids = sorted(ids)
        if not ids:
            continue
        diffs.append(np.array([[by[(method, s, b)].per_problem[i] - by[(baseline, s, b)].per_problem[i]
                                for i in ids] for s in seeds]))
    return diffs, seeds


def compute_table(evals: list[EvalResult], trains: dict, n_boot: int = S.N_BOOT, seed: int = 0,
                  baseline: str = BASELINE) -> Table:
    benches, pairs = [], []
    acc = defaultdict(lambda: defaultdict(dict))  # (pair, method) -> tag -> bench -> acc
    for e in evals:
        if e.bench not in benches:
            benches.append(e.bench)
        if e.pair not in pairs:
            pairs.append(e.pair)
        acc[(e.pair, e.method)][e.tag][e.bench] = e.accuracy
    cost = defaultdict(dict)  # (pair, method) -> seed -> summary
    for (pair, method, s), data in trains.items():
        if pair not in pairs:
            pairs.append(pair)
        cost[(pair, method)][s] = data

    rows = []
    for pair in pairs:
        methods = sorted({m for p, m in set(acc) | set(cost) if p == pair}, key=_method_rank)
        for method in methods:
            r = Row(pair, method)
            by_tag = acc.get((pair, method), {})
            for b in benches:
                vals = [t[b] for t in by_tag.values() if b in t]
                r.bench_mean[b], r.bench_std[b], _ = S.mean_std(vals)
            r.seed_avgs = {tag: sum(t[b] for b in benches) / len(benches)
                           for tag, t in by_tag.items() if all(b in t for b in benches)}
            r.avg, r.avg_std, _ = S.mean_std(list(r.seed_avgs.values()))
            if method not in BASE_ROWS:
                r.n_seeds = len({tag for tag in by_tag} | {f"seed{s}" for s in cost.get((pair, method), {})})
            c = cost.get((pair, method), {})
            if c:
                r.train_wall_s, r.train_wall_s_std, _ = S.mean_std([d["train_wall_s"] for d in c.values()])
                r.gen_tokens, r.gen_tokens_std, _ = S.mean_std([d["gen_tokens"] for d in c.values()])
            rows.append(r)

    # vs the baseline (same pair)
    index = {(r.pair, r.method): r for r in rows}
    for r in rows:
        base = index.get((r.pair, baseline))
        if r.method in BASE_ROWS or base is None:
            continue
        if base.train_wall_s and r.train_wall_s:
            r.speedup_vs_opd = base.train_wall_s / r.train_wall_s
        if r.method == baseline:
            continue
        diffs, seeds = paired_diffs(evals, r.pair, r.method, baseline, benches)
        if diffs:
            bs = S.paired_bootstrap(diffs, n_boot=n_boot, seed=seed)
            r.avg_diff_vs_opd, r.avg_diff_ci_low, r.avg_diff_ci_high = bs["diff"], bs["ci_low"], bs["ci_high"]
            r.n_paired_seeds, r.n_paired_problems = bs["n_seeds"], bs["n_problems"]
            r.p_problems_vs_opd = S.sign_flip_test(diffs, n_perm=n_boot, seed=seed)
        common = sorted(set(r.seed_avgs) & set(base.seed_avgs), key=lambda t: (_tag_seed(t) or -1, t))
        if common:
            x = [r.seed_avgs[t] for t in common]
            y = [base.seed_avgs[t] for t in common]
            if r.avg_diff_vs_opd is None:
                r.avg_diff_vs_opd = sum(a - b for a, b in zip(x, y)) / len(x)
                r.n_paired_seeds = len(common)
            r.p_vs_opd = S.wilcoxon_paired(x, y)
    return Table(benches, pairs, rows, n_boot, seed)


# ----------------------------------------------------------------------------- formatting
def _pct(v):
    return "" if v is None else f"{100 * v:.2f}"


def _num(v, fmt):
    return "" if v is None else format(v, fmt)


def _p(v):
    return "" if v is None else f"{v:.4g}"


def csv_columns(benches) -> list[str]:
    return (["pair", "method", *benches, "avg", *TRAIN_COLUMNS]
            + [f"{b}_std" for b in benches]
            + ["avg_std", "train_wall_s_std", "gen_tokens_std", "n_seeds", "speedup_vs_opd",
               "avg_diff_vs_opd", "avg_diff_ci_low", "avg_diff_ci_high", "p_vs_opd", "p_problems_vs_opd"])


def csv_row(r: Row, benches) -> dict:
    out = {"pair": r.pair, "method": r.method}
    for b in benches:
        out[b] = _pct(r.bench_mean.get(b))
    out["avg"] = _pct(r.avg)
    out["train_wall_s"] = _num(r.train_wall_s, ".1f")
    out["gen_tokens"] = _num(r.gen_tokens, ".0f")
    for b in benches:
        out[f"{b}_std"] = _pct(r.bench_std.get(b))
    out["avg_std"] = _pct(r.avg_std)
    out["train_wall_s_std"] = _num(r.train_wall_s_std, ".1f")
    out["gen_tokens_std"] = _num(r.gen_tokens_std, ".0f")
    out["n_seeds"] = "" if r.n_seeds is None else str(r.n_seeds)
    out["speedup_vs_opd"] = _num(r.speedup_vs_opd, ".2f")
    out["avg_diff_vs_opd"] = _pct(r.avg_diff_vs_opd)
    out["avg_diff_ci_low"] = _pct(r.avg_diff_ci_low)
    out["avg_diff_ci_high"] = _pct(r.avg_diff_ci_high)
    out["p_vs_opd"] = _p(r.p_vs_opd)
    out["p_problems_vs_opd"] = _p(r.p_problems_vs_opd)
    return out


def build_table(eval_jsons, train_jsons, n_boot: int = S.N_BOOT, seed: int = 0) -> tuple[list[str], list[dict]]:
    """(columns, rows) of ``main.csv``; each row maps column -> formatted cell ('' = n/a)."""
    t = compute_table(load_evals(eval_jsons), load_train(train_jsons), n_boot=n_boot, seed=seed)
    return csv_columns(t.benches), [csv_row(r, t.benches) for r in t.rows]


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(columns, rows) -> str:
    """A flat markdown table of (columns, rows) as given."""
    text = {"pair", "method"}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(":---" if c in text else "---:" for c in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean, std, scale=100.0, fmt=".2f"):
    if mean is None:
        return ""
    s = format(scale * mean, fmt)
    return s if std is None else f"{s} ± {format(scale * std, fmt)}"


def _signed_ci(r: Row, pm=" ", minus="−"):
    if r.avg_diff_vs_opd is None:
        return ""

    def sg(v):
        s = f"{100 * v:+.2f}"
        return s.replace("-", minus)
    s = sg(r.avg_diff_vs_opd)
    if r.avg_diff_ci_low is not None:
        s += f"{pm}[{sg(r.avg_diff_ci_low)}, {sg(r.avg_diff_ci_high)}]"
    return s


def display_cells(r: Row, benches) -> list[str]:
    """The paper-layout cells of one row (markdown / html), in :func:`display_header` order."""
    cells = [LABELS.get(r.method, r.method)]
    cells += [_pm(r.bench_mean.get(b), r.bench_std.get(b)) for b in benches]
    cells.append(_pm(r.avg, r.avg_std))
    cells.append(_pm(r.train_wall_s, r.train_wall_s_std, 1.0, ".1f"))
    cells.append("" if r.speedup_vs_opd is None else f"{r.speedup_vs_opd:.2f}×")
    cells.append("" if r.gen_tokens is None else f"{r.gen_tokens:,.0f}")
    cells.append(_signed_ci(r))
    cells.append(_p(r.p_vs_opd))
    cells.append(_p(r.p_problems_vs_opd))
    return cells


def display_header(benches) -> list[str]:
    return (["Method", *benches, "Avg.", "Train time (s)", "Speed-up vs OPD", "Tokens gen.",
             "Δ Avg. vs OPD [95% CI]", "p (seeds)", "p (problems)"])


def pair_title(pair: str, hparams: Optional[dict], trains: Optional[dict] = None) -> str:
    p = ((hparams or {}).get("pairs") or {}).get(pair) or {}
    teacher, student = p.get("teacher"), p.get("student")
    if not (teacher and student) and trains:
        for (pp, _m, _s), d in trains.items():
            if pp == pair:
                teacher, student = teacher or d.get("teacher"), student or d.get("student")
    if teacher and student:
        return f"{pair}: teacher {teacher} → student {student}"
    return pair


def stats_note(t: Table) -> str:
    return (f"Accuracy: avg@k in %, mean ± sample std over training seeds (base models: one "
            f"evaluation). Avg.: mean over benchmarks, per seed, then over seeds. Δ Avg.: paired "
            f"difference to OPD in points (same problem ids, same training seed), 95% CI from a "
            f"two-way bootstrap over seeds and problems ({t.n_boot} resamples, seed {t.seed}). "
            f"p (seeds): two-sided Wilcoxon signed-rank test over the seeds' Avg. (shown from "
            f"{S.MIN_WILCOXON_PAIRS} seeds on). p (problems): paired sign-flip test over "
            f"problems ({t.n_boot} resamples; seeds held fixed). Speed-up: OPD's mean training "
            f"wall time / the row's.")


# ----------------------------------------------------------------------------- hyperparameters
_SECTIONS = (  # (title, path in the config dict, keys to leave out)
    ("Seeds", ("seeds",), ()),
    ("Data", ("data",), ("benchmarks",)),
    ("Benchmarks", ("data", "benchmarks"), ()),
    ("Teacher cache", ("teacher_cache",), ()),
    ("Training (all methods)", ("train",), ("pgopd", "pruneopd", "controls")),
    ("PG-OPD", ("train", "pgopd"), ()),
    ("Prune-OPD", ("train", "pruneopd"), ()),
    ("Controls", ("train", "controls"), ()),
    ("Evaluation", ("eval",), ()),
    ("Toy models", ("toy_models",), ()),
)


def _flat(d, prefix=""):
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out += _flat(v, key)
            else:
                out.append((key, v))
    else:
        out.append((prefix, d))
    return out


def _val(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(_val, v)) + "]"
    if isinstance(v, str):
        return v if v else '""'
    return json.dumps(v)


def hparam_lines(hparams: Optional[dict]) -> list[tuple[str, str]]:
    """(section title, 'key=value, ...') for the hyperparameters printed under the tables."""
    if not hparams:
        return []
    out = []
    for title, path, skip in _SECTIONS:
        d = hparams
        for k in path:
            d = d.get(k) if isinstance(d, dict) else None
        if d is None:
            continue
        if title == "Toy models" and not _uses_toy(hparams):
            continue
        if title == "Controls" and isinstance(d, dict) and not d.get("enabled"):
            out.append((title, "not run"))
            continue
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k not in skip}
            if title == "Benchmarks":
                text = "; ".join(f"{name}: " + ", ".join(f"{k}={_val(v)}" for k, v in b.items()
                                                           if v not in ("", None))
                                 for name, b in d.items())
            else:
                text = ", ".join(f"{k}={_val(v)}" for k, v in _flat(d) if v != "")
        else:
            text = _val(d)
        out.append((title, text))
    return out


def _uses_toy(hparams: dict) -> bool:
    return any("toy" in (p.get("teacher"), p.get("student")) for p in (hparams.get("pairs") or {}).values())


# ----------------------------------------------------------------------------- renderers
def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def render_markdown(t: Table, hparams: Optional[dict] = None, trains: Optional[dict] = None,
                    after: str = "") -> str:
    """main.md: the table per pair, the statistics note, ``after`` (sections that read with the
    table: Δ per benchmark, solution lengths), then the hyperparameters."""
    head = display_header(t.benches)
    align = ["---" if i == 0 else "---:" for i in range(len(head))]
    align[0] = ":---"
    lines = ["# Main results", ""]
    for pair in t.pairs:
        lines += [f"## {_md_escape(pair_title(pair, hparams, trains))}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(align) + "|")
        for r in t.rows:
            if r.pair == pair:
                lines.append("| " + " | ".join(_md_escape(c) for c in display_cells(r, t.benches)) + " |")
        seeds = sorted({r.n_seeds for r in t.rows if r.pair == pair and r.n_seeds})
        if seeds:
            lines += ["", f"Seeds per trained method: {', '.join(map(str, seeds))}."]
        lines.append("")
    lines += [stats_note(t), ""]
    if after:
        lines += [after.rstrip("\n"), ""]
    hp = hparam_lines(hparams)
    if hp:
        lines += ["## Hyperparameters", ""]
        lines += [f"- **{title}**: {_md_escape(text)}" for title, text in hp]
        lines.append("")
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def _tex_pm(mean, std, scale=100.0, fmt=".2f"):
    if mean is None:
        return ""
    s = format(scale * mean, fmt)
    return s if std is None else f"{s}$\\pm${format(scale * std, fmt)}"


def render_latex(t: Table, hparams: Optional[dict] = None, trains: Optional[dict] = None) -> str:
    """A booktabs table: one block per pair; hyperparameters in a footnotesize paragraph below."""
    ncol = 1 + len(t.benches) + 7
    head = (["Method", *map(tex_escape, t.benches), "Avg.", "Time (s)", "Speed-up", "Tokens",
             r"$\Delta$ vs OPD [95\% CI]", "$p_{\\text{seeds}}$", "$p_{\\text{problems}}$"])
    lines = [r"% generated by pgopd report; needs \usepackage{booktabs,amsmath}",
             r"\begin{table*}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             r"\begin{tabular}{l" + "r" * (ncol - 1) + "}", r"\toprule",
             " & ".join(head) + r" \\"]
    for pair in t.pairs:
        lines += [r"\midrule",
                  rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{tex_escape(pair_title(pair, hparams, trains))}}}}} \\",
                  r"\midrule"]
        for r in t.rows:
            if r.pair != pair:
                continue
            cells = [tex_escape(LABELS.get(r.method, r.method))]
            cells += [_tex_pm(r.bench_mean.get(b), r.bench_std.get(b)) for b in t.benches]
            cells.append(_tex_pm(r.avg, r.avg_std))
            cells.append(_tex_pm(r.train_wall_s, r.train_wall_s_std, 1.0, ".1f"))
            cells.append("" if r.speedup_vs_opd is None else f"${r.speedup_vs_opd:.2f}\\times$")
            cells.append("" if r.gen_tokens is None else f"{r.gen_tokens:,.0f}".replace(",", "{,}"))
            cells.append(_signed_ci(r, pm=" ", minus="$-$").replace("+", "$+$"))
            cells.append(_p(r.p_vs_opd))
            cells.append(_p(r.p_problems_vs_opd))
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + tex_escape(stats_note(t)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$") + "}"]
    hp = hparam_lines(hparams)
    if hp:
        lines.append(r"\par\vspace{2pt}{\footnotesize\raggedright")
        lines += [rf"\textbf{{{tex_escape(title)}}}: {tex_escape(text)}\\" for title, text in hp]
        lines.append("}")
    lines += [r"\end{table*}", ""]
    return "\n".join(lines).replace("→", r"$\rightarrow$")


def _h(s) -> str:
    import html

    return html.escape(str(s))


def render_html_table(t: Table, hparams: Optional[dict] = None, trains: Optional[dict] = None) -> str:
    """HTML fragment of the paper-layout blocks, the statistics note and the hyperparameters."""
    head = display_header(t.benches)
    parts = []
    for pair in t.pairs:
        parts.append(f"<h3>{_h(pair_title(pair, hparams, trains))}</h3>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c in head) + "</tr></thead><tbody>")
        for r in t.rows:
            if r.pair == pair:
                parts.append("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in display_cells(r, t.benches)) + "</tr>")
        parts.append("</tbody></table>")
    parts.append(f"<p class='note'>{_h(stats_note(t))}</p>")
    hp = hparam_lines(hparams)
    if hp:
        parts.append("<h3>Hyperparameters</h3><ul>")
        parts += [f"<li><b>{_h(title)}</b>: {_h(text)}</li>" for title, text in hp]
        parts.append("</ul>")
    return "\n".join(parts)


HTML_STYLE = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0}"
              "th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right}"
              "th:first-child,td:first-child{text-align:left}.note{font-size:90%;color:#444}")


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_h(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h2>{_h(title)}</h2>\n{body}\n</body></html>\n")


# ----------------------------------------------------------------------------- files
_write_atomic = write_atomic


def write_tables(t: Table, out_dir: Path, hparams: Optional[dict] = None, trains: Optional[dict] = None) -> None:
    """``main.csv``, ``main.md`` (paper layout + hyperparameters), ``main.tex``."""
    out_dir = Path(out_dir)
    cols = csv_columns(t.benches)
    write_atomic(out_dir / "main.csv", to_csv(cols, [csv_row(r, t.benches) for r in t.rows]))
    write_atomic(out_dir / "main.md", render_markdown(t, hparams, trains))
    write_atomic(out_dir / "main.tex", render_latex(t, hparams, trains))
