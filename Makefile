# One command each: `make test`, `make demo` (offline, generated phantoms), `make run` (config.yaml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CORES  ?= 2
SNAKEMAKE = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --snakefile workflow/Snakefile \
            --cores $(CORES) --keep-going --rerun-incomplete --printshellcmds

.PHONY: install test demo run lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(CORES) --durations=15

# The whole workflow on generated phantoms, in demo/ (no network needed).
demo: $(STAMP)
	$(SNAKEMAKE) --directory demo --configfile $(CURDIR)/config.yaml --config source=phantom
	@echo "demo: SEG/SR in demo/results/series/*/, cohort in demo/results/cohort/"

# The workflow as config.yaml stands, in this folder: a small real cohort from IDC (needs the
# internet; offline it stops within seconds and says so).
run: $(STAMP)
	$(SNAKEMAKE) --configfile config.yaml
	@echo "run: SEG/SR in results/series/*/, cohort in results/cohort/"

lint: $(STAMP)
	$(BIN)/snakemake --snakefile workflow/Snakefile --lint

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/stages.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/seg_dcmqi.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/query.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/download_s3.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/download_dicomweb.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/publish.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/plan.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/infer.py --train
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/cost.py --series-per-vm-hour 135 --vm-price 0.02 --vms 500

clean:
	rm -rf demo results work logs resources .snakemake
