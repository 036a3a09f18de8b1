# Paper tables from every evaluation and training run.


rule report:
    input:
        eval=W.eval_targets(CFG),
        train=W.train_summaries(CFG),
    output:
        csv="results/tables/main.csv",
        md="results/tables/main.md",
    log:
        "results/logs/report/report.log",
    threads: res("report")["cpus_per_task"]
    resources:
        **res("report"),
    shell:
        "OMP_NUM_THREADS={threads} {PGOPD} report --eval {input.eval:q} --train {input.train:q} "
        "--out-dir results/tables > {log:q} 2>&1"
