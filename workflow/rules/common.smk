# Shared by all rules: how `pgopd` is called, wildcard patterns, per-rule resources.
# Every rule's `params.cfg` is the JSON of only its own config slice (pgopd.workflow),
# so Snakemake reruns exactly the jobs whose slice changed.

import shlex

PGOPD = W.pgopd_command(workflow.basedir)


wildcard_constraints:
    **W.wildcard_patterns(CFG),


def res(rule_name):
    """threads + resources of one job of `rule_name` (config: resources.<rule>)."""
    return W.rule_resources(CFG, rule_name)
