# The README's commands. Each target creates/updates the virtualenv it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; override for CUDA, e.g. `make TORCH_SPEC=torch==2.13.0 ...` with your own index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lmrec-installed
export LMREC_DATA_DIR ?= $(abspath ../shared/data)
# quiet, offline-friendly defaults for the pretrained LM
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmrec demo configs/demo.yaml --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/lmrec bench quality --out reports/quality

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests

clean:
	rm -rf runs reports .pytest_cache
