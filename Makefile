# Energy web server — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
VENV := .venv/bin

.PHONY: help setup run test test-fast lint bench docs-check messages

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: ## Install uv, the locked environment and redis-server when missing (`make test`: chromium too)
	@scripts/setup.sh

run: setup ## Start everything on this machine (http://127.0.0.1:8080), Ctrl-C to stop
	@$(VENV)/ews up

test: ## Run the whole test suite (unit, integration on real servers, end to end, browser)
	@scripts/setup.sh --browser
	@$(VENV)/pytest -q

test-fast: setup ## Unit tests only (no servers)
	@$(VENV)/pytest -q -m "not integration and not e2e"

lint: setup ## ruff
	@$(VENV)/ruff check .

bench: setup ## Run every benchmark in benchmarks/ (figures for the README; not part of the tests)
	@failed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; $(VENV)/python $$b || failed="$$failed $$b"; done; \
	  if [ -n "$$failed" ]; then echo "goals missed:$$failed"; exit 1; fi

docs-check: setup ## Check the committed AsyncAPI catalogue against the event models
	@$(VENV)/ews asyncapi --check

messages: setup ## Extract the pages' strings into messages.pot and merge them into every catalogue (.po)
	@cd services/gateway-api && ../../$(VENV)/pybabel extract -F babel.cfg -k N_ -k _ -k pgettext:1c,2 -k NP_:1c,2 \
	  --no-location --sort-output --omit-header -o src/ews_gateway_api/locale/messages.pot . ../../libs/analytics/src >/dev/null \
	  && ../../$(VENV)/pybabel update -D messages -i src/ews_gateway_api/locale/messages.pot \
	  -d src/ews_gateway_api/locale --ignore-obsolete --no-fuzzy-matching --width 110
