# avg@k of one model on every benchmark (one job per model: it loads once).
# tag `base` = the pair's teacher / student, tag `seed<k>` = the checkpoint of a trained method.


rule evaluate:
    input:
        unpack(lambda wc: W.evaluate_inputs(CFG, wc.pair, wc.method, wc.tag)),
    output:
        summaries=expand("results/eval/{{pair}}/{{method}}/{{tag}}/{bench}.json", bench=W.bench_names(CFG)),
        samples=expand("results/eval/{{pair}}/{{method}}/{{tag}}/{bench}.jsonl", bench=W.bench_names(CFG)),
    log:
        "results/logs/evaluate/{pair}/{method}/{tag}.log",
    params:
        cfg=W.params_json(W.eval_params(CFG)),
        model=lambda wc: W.eval_model(CFG, wc.pair, wc.method, wc.tag),
        out_dir="results/eval/{pair}/{method}/{tag}",
    threads: res("evaluate")["cpus_per_task"]
    resources:
        **res("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} {PGOPD} evaluate --params {params.cfg:q} "
        "--model {params.model:q} --bench {input.bench:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
