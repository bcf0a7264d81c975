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

# writes need this bearer token; the demo's default is for a laptop only
export LMREC_API_TOKEN ?= demo-token

# train + evaluate on the embedded catalog, export the gated int8 artifact, then serve it (Ctrl-C stops)
demo: $(STAMP)
	@# Ray's HTTP proxy shares a port with another one already bound to it: requests would be split between them
	@if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8000/; then \
	  echo "port 8000 already answers (another 'serve run'?): stop it first (Ctrl-C it, or 'ray stop')"; exit 1; fi
	$(VENV)/bin/lmrec demo configs/demo.yaml --out runs/demo
	$(VENV)/bin/lmrec export --checkpoint runs/demo/checkpoint --out runs/demo/artifact
	@echo
	@echo "Serving on http://127.0.0.1:8000 (API docs: /docs)."
	@echo "Console: http://127.0.0.1:8000/ui (writes ask for the API token: $(LMREC_API_TOKEN))"
	@echo "From another terminal, for example:"
	@echo "  curl -s -X POST localhost:8000/v1/recommend -H 'Content-Type: application/json' -d '{\"user_id\": \"u0001\", \"k\": 5, \"explain\": true}'"
	@echo "  curl -s -X POST localhost:8000/v1/events -H 'Content-Type: application/json' -H 'Authorization: Bearer $(LMREC_API_TOKEN)' \\"
	@echo "       -d '{\"user_id\": \"u0001\", \"item_id\": \"i0001\", \"event_type\": \"click\"}'"
	@echo "  curl -s -X PUT localhost:8000/v1/items/new-vest -H 'Content-Type: application/json' -H 'Authorization: Bearer $(LMREC_API_TOKEN)' \\"
	@echo "       -d '{\"text\": \"Ultralight Trail Running Vest. Sports & Outdoors > Running. Ridgeline.\"}'"
	@echo "  deployments/demo-requests.sh    # the whole API, step by step"
	@echo
	$(VENV)/bin/serve run deployments/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/lmrec bench quality --out reports/quality
	$(VENV)/bin/lmrec bench retrieval --out reports/retrieval
	$(VENV)/bin/lmrec bench scorer --out reports/scorer
	$(VENV)/bin/lmrec bench serve --out reports/serve
	$(VENV)/bin/lmrec bench freshness --out reports/freshness
	$(VENV)/bin/lmrec bench rollout --retrain configs/demo.yaml --set train.epochs=1 --out reports/rollout

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests

clean:
	rm -rf runs reports .pytest_cache
