"""Report figures (PNG, matplotlib Agg), each with a CSV beside it holding exactly the plotted numbers.

``<fig_dir>/<name>.png`` + ``<fig_dir>/<name>.csv``:

* ``accuracy_vs_wall``: per pair and trained method, mean Avg. accuracy (%) against mean
  training wall time (s), std over seeds as error bars; the base teacher / student as
  horizontal lines (``kind = hline``, no wall time).
* ``tokens_per_step``: tokens generated per training step (``tokens_generated`` of
  metrics.jsonl), mean (and std) over seeds, per pair and method.
* ``probe_overlap_hist``: PG-OPD candidates ranked at the probe: histogram of
  ``probe_overlap`` (20 bins on [0, 1]) split by continued / stopped.
* ``pruneopd_truncation``: Prune-OPD: how many candidates were truncated for drift at each
  response position (``truncated_at``), out of ``n_candidates``.
* ``pruneopd_weights``: Prune-OPD weight curves over training: per step, the mean over
  candidates (and seeds) of ``weight_mean`` and ``weight_min`` (trained tokens), the mean
  number of drift events and the fraction of candidates truncated for drift.
* ``falsification``: the outcome (suffix reward, final correctness) in quantile bins of probe
  overlap (:mod:`pgopd.report.falsification`).

A figure without data (e.g. Prune-OPD not run) says so and its CSV has only the header.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import stats as S
from .common import BASE_ROWS, LABELS, csv_text, load_runs, write_atomic
from .common import method_rank as _method_rank
from .falsification import OUTCOME_LABELS, OUTCOMES, bin_rows
from .table import Table

FIGURES = ("accuracy_vs_wall", "tokens_per_step", "probe_overlap_hist", "pruneopd_truncation",
           "pruneopd_weights", "falsification")
HIST_BINS = 20

COLUMNS = {
    "accuracy_vs_wall": ("pair", "method", "kind", "train_wall_s", "train_wall_s_std", "avg", "avg_std", "n_seeds"),
    "tokens_per_step": ("pair", "method", "step", "tokens_generated", "tokens_generated_std", "n_seeds"),
    "probe_overlap_hist": ("pair", "bin_low", "bin_high", "continued", "stopped"),
    "pruneopd_truncation": ("pair", "truncated_at", "count", "n_candidates"),
    "pruneopd_weights": ("pair", "step", "weight_mean", "weight_min", "drift_events", "truncated_frac",
                         "n_candidates"),
    "falsification": ("pair", "source", "outcome", "bin", "x_low", "x_high", "x_mean", "y_mean", "y_sem", "n"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_metrics(paths) -> dict[tuple[str, str, int], list[dict]]:
    """(pair, method, seed) -> metrics.jsonl records."""
    return load_runs(paths)


def _write_csv(path: Path, columns, rows) -> None:
    write_atomic(path, csv_text(columns, rows))


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    _plt().close(fig)


def _panels(pairs, title):
    plt = _plt()
    n = max(1, len(pairs))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False, layout="constrained")
    fig.suptitle(title)
    return fig, list(axes[0])


def _empty(path: Path, title: str, why: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.0), layout="constrained")
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()
    _save(fig, path)


def _per_pair(fig_dir: Path, name: str, rows: list[dict], title: str, why_empty: str, pairs, draw,
              has_data: bool | None = None) -> list[dict]:
    """Write ``<name>.csv`` (exactly ``rows``) and ``<name>.png``: one panel per pair, drawn
    by ``draw(ax, pair)``, or a figure saying ``why_empty`` when there is nothing to plot
    (``has_data``; default: any rows)."""
    _write_csv(fig_dir / f"{name}.csv", COLUMNS[name], rows)
    if not (bool(rows) if has_data is None else has_data):
        _empty(fig_dir / f"{name}.png", title, why_empty)
        return rows
    fig, axes = _panels(pairs, title)
    for ax, pair in zip(axes, pairs):
        draw(ax, pair)
    _save(fig, fig_dir / f"{name}.png")
    return rows


def _axes_text(ax, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=8)


def _pairs(keys):
    out = []
    for k in keys:
        if k[0] not in out:
            out.append(k[0])
    return out


def _color(method):
    order = list(LABELS)
    cmap = _plt().get_cmap("tab10")
    return cmap(order.index(method) % 10) if method in order else "gray"


# ----------------------------------------------------------------------------- figures
def accuracy_vs_wall(t: Table, fig_dir: Path) -> list[dict]:
    rows = []
    for r in t.rows:
        if r.avg is None:
            continue
        if r.method in BASE_ROWS:
            rows.append({"pair": r.pair, "method": r.method, "kind": "hline", "avg": 100 * r.avg,
                         "avg_std": None if r.avg_std is None else 100 * r.avg_std, "n_seeds": None})
        elif r.train_wall_s is not None:
            rows.append({"pair": r.pair, "method": r.method, "kind": "point", "train_wall_s": r.train_wall_s,
                         "train_wall_s_std": r.train_wall_s_std, "avg": 100 * r.avg,
                         "avg_std": None if r.avg_std is None else 100 * r.avg_std, "n_seeds": r.n_seeds})

    def draw(ax, pair):
        for r in rows:
            if r["pair"] != pair:
                continue
            label = LABELS.get(r["method"], r["method"])
            if r["kind"] == "hline":
                ax.axhline(r["avg"], ls="--" if r["method"] == "teacher" else ":", color="gray", lw=1)
                ax.annotate(label, (0.01, r["avg"]), xycoords=("axes fraction", "data"), fontsize=8,
                            va="bottom", color="gray")
            else:
                ax.errorbar(r["train_wall_s"], r["avg"], xerr=r["train_wall_s_std"] or 0, yerr=r["avg_std"] or 0,
                            fmt="o", color=_color(r["method"]), label=label, capsize=3)
        _axes_text(ax, pair, "training wall time (s)", "Avg. accuracy (%)")
    # base-model lines alone compare nothing: the figure says so, the CSV still holds them
    return _per_pair(fig_dir, "accuracy_vs_wall", rows, "Accuracy vs training wall time",
                     "no trained run with evaluations", _pairs([(r["pair"],) for r in rows]), draw,
                     has_data=any(r["kind"] == "point" for r in rows))


def tokens_per_step(metrics: dict, fig_dir: Path) -> list[dict]:
    acc = defaultdict(lambda: defaultdict(list))  # (pair, method) -> step -> values over seeds
    for (pair, method, _s), recs in metrics.items():
        for m in recs:
            if m.get("tokens_generated") is not None:
                acc[(pair, method)][int(m["step"])].append(float(m["tokens_generated"]))
    rows = []
    for (pair, method) in sorted(acc, key=lambda k: (_pairs(acc).index(k[0]), _method_rank(k[1]))):
        for step in sorted(acc[(pair, method)]):
            mean, std, n = S.mean_std(acc[(pair, method)][step])
            rows.append({"pair": pair, "method": method, "step": step, "tokens_generated": mean,
                         "tokens_generated_std": std, "n_seeds": n})

    def draw(ax, pair):
        for method in dict.fromkeys(r["method"] for r in rows if r["pair"] == pair):
            rr = [r for r in rows if r["pair"] == pair and r["method"] == method]
            xs = [r["step"] for r in rr]
            ys = [r["tokens_generated"] for r in rr]
            ax.plot(xs, ys, marker=".", color=_color(method), label=LABELS.get(method, method))
            sd = [r["tokens_generated_std"] for r in rr]
            if all(s is not None for s in sd):
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                                color=_color(method), alpha=0.15)
        _axes_text(ax, pair, "step", "tokens generated")
    return _per_pair(fig_dir, "tokens_per_step", rows, "Tokens generated per training step", "no metrics.jsonl",
                     _pairs([(r["pair"],) for r in rows]), draw)


def probe_overlap_hist(candidates: dict, fig_dir: Path) -> list[dict]:
    import numpy as np

    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    rows = []
    pairs = _pairs([k for k in candidates if k[1] == "pgopd"])
    for pair in pairs:
        cont, stop = [], []
        for (p, m, _s), recs in candidates.items():
            if p != pair or m != "pgopd":
                continue
            for r in recs:
                if r.get("decision_step") is None or r.get("probe_overlap") is None:
                    continue
                (cont if r.get("continued") else stop).append(min(max(float(r["probe_overlap"]), 0.0), 1.0))
        hc, _ = np.histogram(cont, bins=edges)
        hs, _ = np.histogram(stop, bins=edges)
        for i in range(HIST_BINS):
            rows.append({"pair": pair, "bin_low": round(float(edges[i]), 6), "bin_high": round(float(edges[i + 1]), 6),
                         "continued": int(hc[i]), "stopped": int(hs[i])})
    w = 1.0 / HIST_BINS

    def draw(ax, pair):
        rr = [r for r in rows if r["pair"] == pair]
        lows = [r["bin_low"] for r in rr]
        ax.bar(lows, [r["stopped"] for r in rr], width=w, align="edge", color="tab:red", alpha=0.6, label="stopped")
        ax.bar(lows, [r["continued"] for r in rr], width=w, align="edge", color="tab:blue", alpha=0.6,
               bottom=[r["stopped"] for r in rr], label="continued")
        _axes_text(ax, pair, "probe overlap", "candidates")
    return _per_pair(fig_dir, "probe_overlap_hist", rows, "PG-OPD probe overlap: continued vs stopped",
                     "PG-OPD was not run", pairs, draw)


def pruneopd_truncation(candidates: dict, fig_dir: Path) -> list[dict]:
    rows = []
    pairs = _pairs([k for k in candidates if k[1] == "pruneopd"])
    for pair in pairs:
        counts = defaultdict(int)
        n = 0
        for (p, m, _s), recs in candidates.items():
            if p != pair or m != "pruneopd":
                continue
            n += len(recs)
            for r in recs:
                if r.get("truncated_at") is not None:
                    counts[int(r["truncated_at"])] += 1
        rows += [{"pair": pair, "truncated_at": t, "count": c, "n_candidates": n} for t, c in sorted(counts.items())]
        if not counts:
            rows.append({"pair": pair, "truncated_at": None, "count": 0, "n_candidates": n})

    def draw(ax, pair):
        rr = [r for r in rows if r["pair"] == pair and r["truncated_at"] is not None]
        n = next(r["n_candidates"] for r in rows if r["pair"] == pair)
        ax.bar([r["truncated_at"] for r in rr], [r["count"] for r in rr], width=0.9, color="tab:purple")
        _axes_text(ax, f"{pair}: {sum(r['count'] for r in rr)} of {n} candidates truncated",
                   "response position of the truncation (truncated_at)", "candidates", legend=False)
    return _per_pair(fig_dir, "pruneopd_truncation", rows, "Prune-OPD: drift truncation points",
                     "Prune-OPD was not run", pairs, draw)


def pruneopd_weights(candidates: dict, fig_dir: Path) -> list[dict]:
    acc = defaultdict(lambda: defaultdict(list))  # pair -> step -> records
    for (p, m, _s), recs in candidates.items():
        if m == "pruneopd":
            for r in recs:
                acc[p][int(r.get("step") or 0)].append(r)
    rows = []
    for pair in acc:
        for step in sorted(acc[pair]):
            recs = acc[pair][step]

            def mean(key):
                v = [float(r[key]) for r in recs if r.get(key) is not None]
                return sum(v) / len(v) if v else None
            rows.append({"pair": pair, "step": step, "weight_mean": mean("weight_mean"),
                         "weight_min": mean("weight_min"), "drift_events": mean("drift_events"),
                         "truncated_frac": sum(r.get("truncated_at") is not None for r in recs) / len(recs),
                         "n_candidates": len(recs)})

    def draw(ax, pair):
        rr = [r for r in rows if r["pair"] == pair]
        xs = [r["step"] for r in rr]
        for key, style in (("weight_mean", "-"), ("weight_min", "--"), ("truncated_frac", ":")):
            ax.plot(xs, [r[key] for r in rr], style, marker=".", label=key)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("step")
        ax.set_ylabel("mean over candidates")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["drift_events"] for r in rr], color="tab:red", alpha=0.6, label="drift_events")
        ax2.set_ylabel("drift events per candidate", color="tab:red")
        ax.set_title(pair)
        ax.legend(fontsize=8, loc="lower left")
    return _per_pair(fig_dir, "pruneopd_weights", rows, "Prune-OPD: reward weights and drift over training",
                     "Prune-OPD was not run", list(acc), draw)


def falsification_curves(fals: dict, fig_dir: Path) -> list[dict]:

    rows = bin_rows(fals)
    name = "falsification"
    _write_csv(fig_dir / f"{name}.csv", COLUMNS[name], rows)
    title = "Falsification: suffix value by probe-overlap quantile bin"
    if not rows:
        _empty(fig_dir / f"{name}.png", title, "no candidate has a probe overlap and an outcome")
        return rows
    plt = _plt()
    pairs = _pairs([(r["pair"],) for r in rows])
    fig, axes = plt.subplots(len(OUTCOMES), len(pairs), figsize=(5.2 * len(pairs), 3.4 * len(OUTCOMES)),
                             squeeze=False, layout="constrained")
    fig.suptitle(title)
    for j, pair in enumerate(pairs):
        entry = fals["pairs"][pair]
        for i, outcome in enumerate(OUTCOMES):
            ax = axes[i][j]
            rr = [r for r in rows if r["pair"] == pair and r["outcome"] == outcome]
            if rr:
                ax.errorbar([r["x_mean"] for r in rr], [r["y_mean"] for r in rr],
                            yerr=[r["y_sem"] or 0 for r in rr], marker="o", capsize=3)
            res = entry["results"].get(outcome, {})
            rho = res.get("spearman_rho")
            ax.set_title(f"{pair} ({entry['source']}): ρ = {'n/a' if rho is None else f'{rho:+.2f}'}", fontsize=9)
            ax.set_xlabel("probe overlap (bin mean)")
            ax.set_ylabel(OUTCOME_LABELS[outcome], fontsize=8)
    _save(fig, fig_dir / f"{name}.png")
    return rows


def write_all(t: Table, *, trains: dict, metrics: dict, candidates: dict, falsification: dict,
              fig_dir: Path) -> dict[str, list[dict]]:
    """Every figure and its CSV; returns name -> plotted rows."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return {
        "accuracy_vs_wall": accuracy_vs_wall(t, fig_dir),
        "tokens_per_step": tokens_per_step(metrics, fig_dir),
        "probe_overlap_hist": probe_overlap_hist(candidates, fig_dir),
        "pruneopd_truncation": pruneopd_truncation(candidates, fig_dir),
        "pruneopd_weights": pruneopd_weights(candidates, fig_dir),
        "falsification": falsification_curves(falsification, fig_dir),
    }
