"""pgopd: on-policy distillation with prefix-guided and drift-pruned rollout allocation."""
__version__ = "0.1.0"
