# avg@k of one model on one benchmark: tag `base` = the pair's teacher / student,
# tag `seed<k>` = the checkpoint of a trained method.


rule evaluate:
    input:
        unpack(lambda wc: W.evaluate_inputs(CFG, wc.pair, wc.method, wc.tag, wc.bench)),
    output:
        summary="results/eval/{pair}/{method}/{tag}/{bench}.json",
        samples="results/eval/{pair}/{method}/{tag}/{bench}.jsonl",
    log:
        "results/logs/evaluate/{pair}/{method}/{tag}/{bench}.log",
    params:
        cfg=W.params_json(W.eval_params(CFG)),
        model=lambda wc: W.eval_model(CFG, wc.pair, wc.method, wc.tag),
        out="results/eval/{pair}/{method}/{tag}/{bench}",
    threads: res("evaluate")["cpus_per_task"]
    resources:
        **res("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} {PGOPD} evaluate --params {params.cfg:q} "
        "--model {params.model:q} --bench {input.bench:q} --out {params.out:q} > {log:q} 2>&1"
