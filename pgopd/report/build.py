"""The ``report`` stage: every table, the falsification analyses and the figures, in one call.

The one module that imports all the others (table, falsification, noise, costs, figures);
none of them imports it, so the report package has no import circle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import costs as K
from . import delta as D
from . import falsification as F
from . import lengths as L
from . import noise as N
from . import stats as S
from . import tail as TL
from .common import csv_text, read_jsonl, write_atomic
from .table import (Table, compute_table, html_page, load_evals, load_train, render_html_table, render_markdown,
                    write_tables)

#: the extra tables next to main.csv
EXTRA_TABLES = ("costs.csv", "stop_reasons.csv", "controls.csv", "reward_noise.csv", "tail.csv", "delta.csv",
                "solution_lengths.csv")


def report(eval_jsons: list[Path], train_jsons: list[Path], out_dir: Path, *, metrics=(), candidates=(),
           fig_dir: Optional[Path] = None, hparams: Optional[dict] = None, n_boot: int = S.N_BOOT,
           seed: int = 0, teacher_samples: Optional[dict] = None, train_data: Optional[Path] = None) -> Table:
    """Write the tables to ``out_dir`` (main.{csv,md,tex,html}, falsification.{csv,md},
    costs.csv, stop_reasons.csv, controls.csv, reward_noise.csv, tail.csv, delta.csv,
    solution_lengths.csv) and, with ``fig_dir``, the figures and their data files
    (:mod:`pgopd.report.figures`).

    ``metrics`` / ``candidates``: the runs' metrics.jsonl / candidates.jsonl (costs, stop
    reasons, figures, falsification); ``hparams``: the run's config (printed under the tables).
    """
    from .common import load_runs

    evals = load_evals(eval_jsons)
    trains = load_train(train_jsons)
    t = compute_table(evals, trains, n_boot=n_boot, seed=seed)
    out_dir = Path(out_dir)
    runs_metrics = load_runs(metrics)
    cands = F.load_candidates(candidates)
    max_new = ((hparams or {}).get("train") or {}).get("max_new_tokens")
    costs, stops, controls = K.cost_rows(runs_metrics), K.stop_rows(cands, max_new), K.control_rows(t, trains)
    tail_rows = TL.tail_rows(cands, max_new)
    deltas = D.delta_rows(t, evals, n_boot=n_boot, seed=seed) + D.versus_control_rows(t, evals, n_boot=n_boot, seed=seed)
    len_rows = []
    if teacher_samples and train_data is not None:
        len_rows = L.length_rows(teacher_samples, read_jsonl(Path(train_data), ["id", "ops"]), trains)
    extra = TL.render_markdown(tail_rows, TL.summary(cands)) + "\n" + K.render_markdown(costs, stops, controls)
    write_tables(t, out_dir, hparams, trains)
    write_atomic(out_dir / "main.md", render_markdown(t, hparams, trains, after="\n".join(
        x for x in (D.render_markdown(deltas, t.benches), L.render_markdown(len_rows)) if x)) + "\n" + extra)
    write_atomic(out_dir / "delta.csv", csv_text(D.columns(t.benches), deltas))
    write_atomic(out_dir / "solution_lengths.csv", csv_text(L.columns(len_rows), len_rows))
    write_atomic(out_dir / "costs.csv", csv_text(K.COST_COLUMNS, costs))
    write_atomic(out_dir / "stop_reasons.csv", csv_text(K.STOP_COLUMNS, stops))
    write_atomic(out_dir / "controls.csv", csv_text(K.CONTROL_COLUMNS, controls))
    write_atomic(out_dir / "tail.csv", csv_text(TL.COLUMNS, tail_rows))
    fals = F.analyse(cands, n_boot=n_boot, seed=seed)
    noise = N.analyse(cands, n_boot=n_boot, seed=seed)
    write_atomic(out_dir / "reward_noise.csv", csv_text(N.CSV_COLUMNS, N.rows(noise)))
    F.write(fals, out_dir, extra_md=N.render_markdown(noise))
    body = (render_html_table(t, hparams, trains)
            + "\n<h2>Falsification: does probe overlap predict suffix value?</h2>\n" + F.render_html(fals)
            + "\n<h2>Falsification: is the reward noisier where window overlap is low?</h2>\n<ul>"
            + "".join(f"<li>{_h(e['text'])}</li>" for e in noise.values()) + "</ul>")
    write_atomic(out_dir / "main.html", html_page("pgopd: main results", body))
    if fig_dir is not None:
        from . import figures

        figures.write_all(t, trains=trains, metrics=runs_metrics, candidates=cands,
                          falsification=fals, fig_dir=Path(fig_dir))
    return t


def _h(s) -> str:
    import html

    return html.escape(str(s))
