# pgopd: on-policy distillation (OPD) with PG-OPD and Prune-OPD rollout allocation.
#   local (embedded tiny CPU default):  snakemake
#   cluster:                            snakemake --profile slurm --configfile config/paper.yaml
# Every knob, its default and its range live in pgopd/config.py; config/config.yaml lists them all.
import os
import sys

sys.path.insert(0, workflow.basedir)  # `import pgopd` works even when it is not installed

from snakemake.utils import validate

import pgopd.workflow as W


# A config file named on the command line (--configfile) replaces config/config.yaml
# instead of being deep-merged into it: a merge would keep the default `toy` pair and
# benchmarks next to those of e.g. config/paper.yaml.  Keys it leaves out take the
# defaults of pgopd/config.py, which are exactly the values written in config/config.yaml.
if workflow.config_settings.configfiles:
    workflow.config_settings.replace_workflow_config = True
elif os.path.exists("config/config.yaml"):
    # a YAML syntax error in the default config: file and line (Snakemake names neither).
    # A --configfile is read before this file runs: `pgopd check-config <file>` does it there.
    W.C.load_yaml("config/config.yaml")


configfile: "config/config.yaml"


# Typed parse first: its errors are one line naming the key (`train.pgopd.prefix_len: ...`);
# it also does the range and cross-field checks a schema cannot express.  The schema
# (generated from the same dataclasses) is checked as well, on the parsed values (a number
# YAML read as a string, `lr: 1e-6`, is the number there).
CFG = W.load_config(config)
validate(W.C.to_dict(CFG), "workflow/schemas/config.schema.json")


# The cluster profile (slurm/config.yaml): no CHANGE_ME placeholder reaches sbatch, no rule
# asks for GPUs twice, no GPU rule lands on the default partition (whatever set it: profile,
# --default-resources, --set-resources), and a rule without GPUs (the toy default) never
# queues on the GPU partition: its profile partition is dropped, so it takes the default one.  Changing
# the parsed set-resources here also changes what the job steps get (--set-resources).
_RS = workflow.resource_settings
_SET_RES = _RS._parsed_overwrite_resources
W.check_profile_placeholders(dict(_RS._parsed_default_resources.items()), _SET_RES)
W.check_profile_gpu_flags(CFG, _SET_RES)
W.check_gpu_rules_partition(CFG, dict(_RS._parsed_default_resources.items()), _SET_RES)
for _rule in W.cpu_rules_sent_to_other_partition(CFG, dict(_RS._parsed_default_resources.items()), _SET_RES):
    del _SET_RES[_rule]._data["slurm_partition"]
    print(f"pgopd: {_rule} uses no GPU (resources.{_rule}.gpu: 0): it goes to the default partition, "
          "not the one the profile names for it", file=sys.stderr)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        W.targets(CFG),
    default_target: True
