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
# MkDocs' banner about its next major version, printed on every build
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install demo test docs docs-serve bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# writes need this bearer token; the demo's default is for a laptop only
export LMREC_API_TOKEN ?= demo-token
PORT ?= 8000

# train + evaluate on the embedded catalog (report and training curve in runs/demo), export the gated int8
# artifact, then serve it on one node (co-located, HAProxy mode; Ctrl-C stops it). A second `make demo`
# serves what the first made; `make clean` starts over.
demo: runs/demo/artifact/manifest.json
	$(VENV)/bin/lmrec serve --artifact runs/demo/artifact --port $(PORT)

runs/demo/checkpoint/config.yaml: $(STAMP) configs/demo.yaml
	$(VENV)/bin/lmrec demo configs/demo.yaml --out runs/demo

runs/demo/artifact/manifest.json: runs/demo/checkpoint/config.yaml
	rm -rf runs/demo/artifact runs/demo/serve
	$(VENV)/bin/lmrec export --checkpoint runs/demo/checkpoint --out runs/demo/artifact

# the suite includes the docs site's strict build (tests/test_docs.py)
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

# the docs site: reference pages generated from the code at build time (docs/hooks.py); `make docs-serve` to browse
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

# every benchmark; the serving ones run the demo artifact (made by `make demo`'s first steps)
bench: runs/demo/artifact/manifest.json
	$(VENV)/bin/lmrec bench quality --out reports/quality
	$(VENV)/bin/lmrec bench retrieval --out reports/retrieval
	$(VENV)/bin/lmrec bench scorer --out reports/scorer
	$(VENV)/bin/lmrec bench serve --out reports/serve
	$(VENV)/bin/lmrec bench freshness --out reports/freshness
	$(VENV)/bin/lmrec bench rollout --retrain configs/demo.yaml --set train.epochs=1 --out reports/rollout
	$(VENV)/bin/lmrec bench startup --out reports/startup
	$(VENV)/bin/lmrec bench chaos --out reports/chaos
	$(VENV)/bin/lmrec bench soak --minutes 30 --out reports/soak
	$(VENV)/bin/lmrec bench loop --artifact runs/demo/artifact --world configs/demo.yaml --retrain configs/demo.yaml --out reports/loop

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests docs
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs reports site .pytest_cache
