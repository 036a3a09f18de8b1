# The toy teacher and student (trained from scratch on the synthetic solutions); only
# when a pair names `toy`.

if W.uses_toy(CFG):

    rule build_toy_models:
        input:
            train=W.DATA_TRAIN,
        output:
            teacher=directory(W.model_path("toy", "teacher")),
            student=directory(W.model_path("toy", "student")),
            build="results/models/toy/build.json",
        log:
            "results/logs/build_toy_models/build_toy_models.log",
        params:
            cfg=W.params_json(W.toy_params(CFG)),
        threads: res("build_toy_models")["cpus_per_task"]
        resources:
            **res("build_toy_models"),
        shell:
            "OMP_NUM_THREADS={threads} {PGOPD} build-toy-models --params {params.cfg:q} "
            "--train {input.train:q} --out-dir results/models/toy > {log:q} 2>&1"
