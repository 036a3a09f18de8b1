# One teacher cache per distinct teacher: samples, correctness and top-k log-probs on the
# training prompts (results/teacher/<slug>/; <slug> = pgopd.workflow.teacher_slug).


rule cache_teacher:
    input:
        # the students are read only for the tokenizer check (train repeats it), so a rebuilt
        # student does not resample the teacher: ancient() ignores their timestamps
        unpack(lambda wc: {k: ([ancient(s) for s in v] if k == "students" else v)
                           for k, v in W.cache_teacher_inputs(CFG, wc.teacher).items()}),
    output:
        summary="results/teacher/{teacher}/summary.json",
    log:
        "results/logs/cache_teacher/{teacher}.log",
    params:
        cfg=W.params_json(W.teacher_cache_params(CFG)),
        teacher=lambda wc: W.model_path(W.teachers(CFG)[wc.teacher], "teacher"),
        students=lambda wc: " ".join(map(shlex.quote, W.students_of(CFG, wc.teacher))),
        out_dir=lambda wc: W.teacher_cache_dir(wc.teacher),
    threads: res("cache_teacher")["cpus_per_task"]
    resources:
        **res("cache_teacher"),
    shell:
        "OMP_NUM_THREADS={threads} {PGOPD} cache-teacher --params {params.cfg:q} "
        "--teacher {params.teacher:q} --students {params.students} --train {input.train:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"
