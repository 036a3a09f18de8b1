# Training prompts and every benchmark as {id, prompt, answer} jsonl.
# Local data files (source: file) are inputs: editing one reruns this job and what follows.


rule prepare_data:
    input:
        W.data_inputs(CFG),
    output:
        train=W.DATA_TRAIN,
        bench=[W.bench_data(b) for b in W.bench_names(CFG)],
        stats="results/data/stats.json",
    log:
        "results/logs/prepare_data/prepare_data.log",
    params:
        cfg=W.params_json(W.data_params(CFG)),
    threads: res("prepare_data")["cpus_per_task"]
    resources:
        **res("prepare_data"),
    shell:
        "OMP_NUM_THREADS={threads} {PGOPD} prepare-data --params {params.cfg:q} "
        "--out-dir results/data > {log:q} 2>&1"
