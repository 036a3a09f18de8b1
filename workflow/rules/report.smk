# Paper tables, paired tests vs OPD, the falsification analysis and figures from every
# evaluation and training run.  `params.hparams` is the whole config except `resources`
# (printed under the tables), so any setting change reruns this job and nothing else it
# does not feed.  `snakemake --report results/report.html` collects the outputs marked
# report(...) below (captions: workflow/report/*.rst).

report: "../report/workflow.rst"

FIG_DIR = "results/figures"
TABLE_DIR = "results/tables"


def _fig(name, category="Figures"):
    return report(f"{FIG_DIR}/{name}.png", caption=f"../report/{name}.rst", category=category)


def _fig_data(name, category="Figures"):
    return report(f"{FIG_DIR}/{name}.csv", caption="../report/figure_data.rst", category=category,
                  subcategory="Plotted numbers")


rule report:
    input:
        eval=W.eval_targets(CFG),
        train=W.train_summaries(CFG),
        metrics=W.train_run_files(CFG, "metrics.jsonl"),
        candidates=W.train_run_files(CFG, "candidates.jsonl"),
        # solution lengths per difficulty: the teacher caches (samples.jsonl beside summary.json)
        teacher=[f"{W.teacher_cache_dir(slug)}/summary.json" for slug in W.teachers(CFG)],
        train_data=W.DATA_TRAIN,
    output:
        csv=report(f"{TABLE_DIR}/main.csv", caption="../report/main_csv.rst", category="Tables"),
        md=f"{TABLE_DIR}/main.md",
        tex=report(f"{TABLE_DIR}/main.tex", caption="../report/main_tex.rst", category="Tables"),
        html=report(f"{TABLE_DIR}/main.html", caption="../report/main_table.rst", category="Tables"),
        fals_csv=report(f"{TABLE_DIR}/falsification.csv", caption="../report/falsification_table.rst",
                        category="Falsification"),
        fals_md=f"{TABLE_DIR}/falsification.md",
        noise_csv=report(f"{TABLE_DIR}/reward_noise.csv", caption="../report/falsification_table.rst",
                         category="Falsification"),
        costs=report(f"{TABLE_DIR}/costs.csv", caption="../report/costs.rst", category="Tables"),
        stops=report(f"{TABLE_DIR}/stop_reasons.csv", caption="../report/stop_reasons.rst", category="Tables"),
        controls=report(f"{TABLE_DIR}/controls.csv", caption="../report/controls.rst", category="Tables"),
        tail=report(f"{TABLE_DIR}/tail.csv", caption="../report/tail.rst", category="Tables"),
        delta=report(f"{TABLE_DIR}/delta.csv", caption="../report/delta.rst", category="Tables"),
        lengths=report(f"{TABLE_DIR}/solution_lengths.csv", caption="../report/solution_lengths.rst",
                       category="Tables"),
        acc_wall=_fig("accuracy_vs_wall"),
        acc_wall_data=_fig_data("accuracy_vs_wall"),
        tokens=_fig("tokens_per_step"),
        tokens_data=_fig_data("tokens_per_step"),
        probe_hist=_fig("probe_overlap_hist"),
        probe_hist_data=_fig_data("probe_overlap_hist"),
        trunc=_fig("pruneopd_truncation"),
        trunc_data=_fig_data("pruneopd_truncation"),
        weights=_fig("pruneopd_weights"),
        weights_data=_fig_data("pruneopd_weights"),
        fals_fig=_fig("falsification", "Falsification"),
        fals_fig_data=_fig_data("falsification", "Falsification"),
    log:
        "results/logs/report/report.log",
    params:
        hparams=W.params_json(W.report_hparams(CFG)),
        teacher_samples=W.report_teacher_samples(CFG),
    threads: res("report")["cpus_per_task"]
    resources:
        **res("report"),
    shell:
        "OMP_NUM_THREADS={threads} MPLBACKEND=Agg {PGOPD} report --eval {input.eval:q} "
        "--train {input.train:q} --metrics {input.metrics:q} --candidates {input.candidates:q} "
        "--teacher-samples {params.teacher_samples} --train-data {input.train_data:q} "
        "--hparams {params.hparams:q} --out-dir {TABLE_DIR} --fig-dir {FIG_DIR} > {log:q} 2>&1"
