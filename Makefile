# Two commands do all set-up on a fresh machine: `make pipeline` and `make test`.
# TORCH pins the CPU build that installs from local disk here; on a GPU cluster use e.g.
#   make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
VENV   ?= .venv
TORCH  ?= torch==2.13.0
CORES  ?= 2
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install pipeline pipeline-graded test bench bench-memory bench-robustness clean-results

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)          # first: a later unpinned torch would pull CUDA
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/snakemake --profile workflow/profiles/default --configfile config/config.yaml --cores $(CORES)

# the length-graded testbed (config/graded.yaml: four seeds, controls on each; Snakemake ~30 min on 2 cores), in runs/graded/results/
pipeline-graded: $(STAMP)
	mkdir -p runs/graded
	$(VENV)/bin/snakemake -s Snakefile --directory runs/graded --profile workflow/profiles/default \
		--configfile config/graded.yaml --cores $(CORES)

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/rollout_bench.py

# per-phase peak memory vs the memory plan (bf16, ZeRO-2/3, 2 processes on CPU, ~4.5-8.5 min on
# 2 cores): bench/memory.json; the update's flatness in sequences (fp32, ~4 min): bench/memory_sweep.json
bench-memory: $(STAMP)
	PYTHONPATH=. nice -n 10 $(PY) bench/memory.py --out bench/memory.json
	PYTHONPATH=. nice -n 10 $(PY) bench/memory_sweep.py --out bench/memory_sweep.json

# the default DAG once per toy-model build (teacher seeds 0-2 x 1 and 2 threads), each in
# /tmp/pgopd-robust/<build>/ (~9-16 min per build on 2 cores; the builds are its --builds default):
# bench/robustness.json
bench-robustness: $(STAMP)
	$(PY) bench/robustness.py --out bench/robustness.json

clean-results:
	rm -rf results .snakemake
