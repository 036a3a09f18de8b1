# Two commands do all set-up on a fresh machine: `make pipeline` and `make test`.
# TORCH pins the CPU build that installs from local disk here; on a GPU cluster use e.g.
#   make install TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
VENV   ?= .venv
TORCH  ?= torch==2.13.0
CORES  ?= 2
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install pipeline test bench bench-memory clean-results

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)          # first: a later unpinned torch would pull CUDA
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/snakemake --profile workflow/profiles/default --configfile config/config.yaml --cores $(CORES)

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/rollout_bench.py

# peak memory of the update vs the memory plan (CPU, ~4 min on 2 cores): bench/memory.json
bench-memory: $(STAMP)
	PYTHONPATH=. $(PY) bench/memory.py --out bench/memory.json

clean-results:
	rm -rf results .snakemake
