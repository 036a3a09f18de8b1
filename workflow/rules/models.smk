# The toy teacher and student (trained from scratch on the synthetic solutions); only
# when a pair names `toy`.  One job per role: they are independent, and each job's params
# hold only its own config slice, so a student change does not rebuild the teacher.

if W.uses_toy(CFG):

    rule build_toy_models:
        input:
            train=W.DATA_TRAIN,
        output:
            model=directory("results/models/toy/{role}"),
            build="results/models/toy/build_{role}.json",
        wildcard_constraints:
            role="teacher|student",
        log:
            "results/logs/build_toy_models/{role}.log",
        params:
            cfg=lambda wc: W.params_json(W.toy_params(CFG, wc.role)),
        threads: res("build_toy_models")["cpus_per_task"]
        resources:
            **res("build_toy_models"),
        shell:
            "OMP_NUM_THREADS={threads} {PGOPD} build-toy-models --params {params.cfg:q} --role {wildcards.role} "
            "--train {input.train:q} --out-dir results/models/toy > {log:q} 2>&1"
