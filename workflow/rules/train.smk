# On-policy distillation of each pair's student with each method and seed.
# fixed_truncation / random_prune copy their length / rate from the reference run
# (train.controls.references: fixed_truncation-<ref>, random_prune-<ref>) of the same pair and seed.
# One process, or one per GPU when resources.train.gpu > 1 or nodes > 1 (torchrun, or the
# deepspeed launcher with resources.train.launcher: deepspeed): see pgopd.workflow.train_command.
# The launch command is not part of params, so changing GPUs / nodes reruns nothing.

TRAIN_LAUNCH = W.train_command(CFG, workflow.basedir)


rule train:
    input:
        unpack(lambda wc: W.train_inputs(CFG, wc.pair, wc.method, wc.seed)),
    output:
        summary="results/train/{pair}/{method}/seed{seed}/summary.json",
        metrics="results/train/{pair}/{method}/seed{seed}/metrics.jsonl",
        candidates="results/train/{pair}/{method}/seed{seed}/candidates.jsonl",
        checkpoint=directory("results/train/{pair}/{method}/seed{seed}/checkpoint"),
    log:
        "results/logs/train/{pair}/{method}/seed{seed}.log",
    params:
        cfg=lambda wc: W.params_json(W.train_params(CFG, wc.method)),
        teacher=lambda wc: W.model_path(CFG.pairs[wc.pair].teacher, "teacher"),
        student=lambda wc: W.model_path(CFG.pairs[wc.pair].student, "student"),
        reference=lambda wc, input: W.reference_arg(input.get("reference")),
        teacher_cache=lambda wc: W.teacher_cache_dir(W.pair_teacher_slug(CFG, wc.pair)),
        out_dir=lambda wc: W.train_dir(wc.pair, wc.method, wc.seed),
    threads: res("train")["cpus_per_task"]
    resources:
        **W.train_resources(CFG),
    shell:
        "{TRAIN_LAUNCH} train --params {params.cfg:q} "
        "--method {wildcards.method} --seed {wildcards.seed} "
        "--teacher {params.teacher:q} --student {params.student:q} "
        "--train-data {input.train:q} --teacher-cache {params.teacher_cache:q} "
        "{params.reference} --out-dir {params.out_dir:q} > {log:q} 2>&1"
