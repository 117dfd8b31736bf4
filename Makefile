# LLF, the Local LLM Framework: every user-facing action is a target here.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON    ?= python3
VENV      ?= llf_venv
INVENTORY ?= inventories/local
LIMIT     ?=
MODEL     ?=
# several models on this machine, comma-separated catalog names, the main one first
# (make install MODELS=smollm2-135m-instruct,all-minilm-l6-v2)
MODELS    ?=
# make install VERIFY=full: hash every model file against its lock (default quick: only
# the files whose size or modification time changed)
VERIFY    ?=
ARGS      ?=
PURGE     ?= 0
LOCK_ARGS ?=
# make install MONITORING=1: Prometheus and Alertmanager on this machine too (llf_monitoring_here);
# ALERT_WEBHOOK=<url>: where Alertmanager sends the alerts
MONITORING    ?=
# make install WEBUI=1: Open WebUI on this machine too (llf_webui_here), on 127.0.0.1:8080
WEBUI         ?=
ALERT_WEBHOOK ?=

# Molecule (make molecule): the roles' scenarios, in the order the roles stand on each other
MOLECULE_SCENARIOS := llf_host llf_engine llf_model llf_server llf_gateway
ROLE      ?=
KEEP      ?= 0

# load test overrides (see loadtests/README.md)
HOST      ?=
USERS     ?=
RATE      ?=
DURATION  ?=
SCENARIO  ?=
SLO       ?=
WORKERS   ?=
METRICS   ?=
EMBED_MODEL ?=
# make bench overrides (see README: Capacity curves); HOST= and SLO= as for loadtest
LADDER    ?=
STEP      ?=
REPEATS   ?=
OUT       ?=
BASELINES ?=
FROM      ?=
EMBED     ?=
VS        ?=
VS_ARGS   ?=
VS_PORT   ?=
BENCH_ARGS = $(if $(HOST),--host $(HOST)) $(if $(LADDER),--ladder $(LADDER)) $(if $(STEP),--step $(STEP)) \
  $(if $(REPEATS),--repeats $(REPEATS)) $(if $(OUT),--out $(OUT)) $(if $(SLO),--slo $(SLO)) \
  $(if $(BASELINES),--baselines $(BASELINES)) $(if $(FROM),--from $(FROM)) $(if $(filter 0,$(EMBED)),--no-embeddings) \
  $(if $(VS),--vs $(VS)) $(if $(VS_ARGS),--vs-args='$(VS_ARGS)') $(if $(VS_PORT),--vs-port $(VS_PORT))

PLAYBOOK   = $(VENV)/bin/ansible-playbook -i $(INVENTORY) $(if $(LIMIT),--limit $(LIMIT))
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# real systemd test hosts (systemd-nspawn): make testhosts-up N=3, testhosts-down
include mk/testhosts.mk

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: INVENTORY=$(INVENTORY) MODEL=<catalog name> PURGE=1 ARGS='<ansible-playbook args>'"

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "LLF needs Python 3.11 or newer for the controller; set PYTHON=python3.11")'
	@echo "==> Creating the controller venv $(VENV)/"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the controller venv llf_venv/ (Python 3.11+)

.PHONY: install
install: venv ## Deploy the vLLM server to INVENTORY (default: this machine); MODEL= picks a catalog model, MODELS=a,b several, VERIFY=full hashes every model file
	@start=$$(date +%s); \
	$(PLAYBOOK) playbooks/deploy.yml $(if $(MODEL),-e llf_model_name=$(MODEL)) $(if $(MODELS),-e llf_model_list=$(MODELS)) \
	  $(if $(VERIFY),-e llf_model_verify=$(VERIFY)) \
	  $(if $(filter 1,$(MONITORING)),-e llf_monitoring_here=true) $(if $(filter 1,$(WEBUI)),-e llf_webui_here=true) \
	  $(if $(ALERT_WEBHOOK),-e llf_monitoring_alert_webhook_url=$(ALERT_WEBHOOK)) $(ARGS); \
	echo "==> make install took $$(( $$(date +%s) - start )) s"

.PHONY: deploy
deploy: install ## Same as install

.PHONY: uninstall
uninstall: ## Remove the server, engines, user, config and llf_venv/; PURGE=1 also deletes the models
	@if [ ! -x $(VENV)/bin/ansible-playbook ] && [ "$(INVENTORY)" = inventories/local ] \
	    && [ ! -e /etc/llf ] && [ ! -e /opt/llf ] && [ ! -e /var/lib/llf/server ] \
	    && ! getent passwd llf >/dev/null && { [ "$(PURGE)" != 1 ] || [ ! -e /var/lib/llf ]; }; then \
	  echo "==> LLF is not installed here: nothing to do"; exit 0; fi; \
	$(MAKE) --no-print-directory venv; \
	$(PLAYBOOK) playbooks/uninstall.yml $(if $(filter 1,$(PURGE)),-e llf_model_purge=true) $(ARGS); \
	rm -rf $(VENV) llf_client.egg-info; \
	echo "==> LLF removed$(if $(filter 1,$(PURGE)),, (models kept in /var/lib/llf/models; PURGE=1 deletes them))"

.PHONY: smoke
smoke: venv ## Smoke-check every deployed endpoint
	$(VENV)/bin/llf-client smoke $(if $(filter-out inventories/local,$(INVENTORY)),--inventory $(INVENTORY))

.PHONY: loadtest
loadtest: venv ## Load-test the deployed endpoint (HOST= USERS= RATE= DURATION= SCENARIO= SLO= WORKERS= METRICS='<server URLs>' EMBED_MODEL=)
	$(VENV)/bin/python -m loadtests run $(if $(HOST),--host $(HOST)) $(if $(USERS),--users $(USERS)) \
	  $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(SCENARIO),--scenario $(SCENARIO)) \
	  $(if $(SLO),--slo $(SLO)) $(if $(WORKERS),--workers $(WORKERS)) $(foreach url,$(METRICS),--metrics-url $(url)) \
	  $(if $(EMBED_MODEL),--embed-model $(EMBED_MODEL))

.PHONY: bench
bench: venv ## Capacity curve of the deployed endpoint, judged against its baseline (LADDER=1,2,4 STEP=30s REPEATS=3 OUT= VS=vllm-defaults FROM=<dir> EMBED=0)
	$(VENV)/bin/python -m loadtests bench $(BENCH_ARGS)

.PHONY: bench-save
bench-save: venv ## Same as bench, and store the run as the baseline of its host profile (bench/baselines/; FROM=<dir> stores a past run)
	$(VENV)/bin/python -m loadtests bench --save $(BENCH_ARGS)

.PHONY: lock
lock: venv ## Regenerate the engine's hash-locked requirements (roles/llf_engine/files/locks/; LOCK_ARGS='--python 3.12')
	$(VENV)/bin/python roles/llf_engine/files/llf_engine_lock.py $(LOCK_ARGS)

.PHONY: lock-webui
lock-webui: venv ## Regenerate Open WebUI's hash-locked requirements, torch's CPU build (roles/llf_webui/files/locks/)
	$(VENV)/bin/python roles/llf_webui/files/llf_webui_lock.py $(LOCK_ARGS)

# promtool, from Debian's prometheus package: downloaded and extracted, never installed
# (the package's postinst would start a Prometheus daemon)
TOOLS    := .cache/tools
PROMTOOL := $(TOOLS)/promtool

$(PROMTOOL):
	@echo "==> Fetching promtool (Debian's prometheus package) into $(TOOLS)/"
	@rm -rf $(TOOLS)/deb && mkdir -p $(TOOLS)/deb
	@cd $(TOOLS)/deb && { apt-get download prometheus 2>/dev/null \
	  || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/deb/root
	install -m 0755 $(TOOLS)/deb/root/usr/bin/promtool $@
	@rm -rf $(TOOLS)/deb
	@$@ --version | head -n 1

# nginx, its njs module and njs's CLI, for the gateway's unit tests: Debian's packages,
# downloaded and extracted into $(NGINX_ROOT)/ (usr/sbin/nginx, usr/bin/njs, ...),
# never installed (CI must leave the machine without nginx); the stamp lists the versions
NGINX_ROOT  := $(TOOLS)/nginx
NGINX_STAMP := $(NGINX_ROOT)/.fetched
NGINX_DEBS  := nginx nginx-common libnginx-mod-http-js njs

$(NGINX_STAMP):
	@echo "==> Fetching nginx, its njs module and njs's CLI (Debian's $(NGINX_DEBS)) into $(NGINX_ROOT)/"
	@rm -rf $(NGINX_ROOT) $(TOOLS)/nginx-deb && mkdir -p $(TOOLS)/nginx-deb/root
	@cd $(TOOLS)/nginx-deb && { apt-get download $(NGINX_DEBS) 2>/dev/null \
	  || { apt-get update -qq && apt-get download $(NGINX_DEBS); }; }
	@for deb in $(TOOLS)/nginx-deb/*.deb; do dpkg-deb -x $$deb $(TOOLS)/nginx-deb/root || exit 1; done
	@missing=$$(ldd $(TOOLS)/nginx-deb/root/usr/sbin/nginx $(TOOLS)/nginx-deb/root/usr/bin/njs \
	  $(TOOLS)/nginx-deb/root/usr/lib/nginx/modules/ngx_http_js_module.so | { grep 'not found' || true; } | sort -u); \
	  if [ -n "$$missing" ]; then echo "make tools: libraries the extracted nginx/njs need are missing" \
	  "(install them with apt-get): $$missing" >&2; exit 1; fi
	@for deb in $(TOOLS)/nginx-deb/*.deb; do dpkg-deb -W --showformat='$${Package} $${Version}\n' $$deb; done \
	  > $(TOOLS)/nginx-deb/root/.fetched
	@mv $(TOOLS)/nginx-deb/root $(NGINX_ROOT) && rm -rf $(TOOLS)/nginx-deb
	@cat $@

.PHONY: tools
tools: $(PROMTOOL) $(NGINX_STAMP) ## Fetch promtool, nginx and njs into .cache/tools (Debian's packages, not installed)

ALERTS_ARGS ?=
.PHONY: alerts
alerts: venv ## Regenerate the alert rules and the Grafana dashboard in monitoring/ from loadtests/slo.yaml
	$(VENV)/bin/python -m loadtests.alerts $(ALERTS_ARGS)

.PHONY: lint
lint: venv tools ## ansible-lint (production profile), syntax checks, ruff, mypy, promtool check rules
	$(VENV)/bin/python -m loadtests.alerts --check
	$(PROMTOOL) check rules monitoring/prometheus/llf-rules.yml
	$(VENV)/bin/ansible-lint --profile production
	$(VENV)/bin/ansible-playbook -i $(INVENTORY) --syntax-check playbooks/deploy.yml playbooks/uninstall.yml
	$(VENV)/bin/ruff check llf_client loadtests tests roles playbooks
	$(VENV)/bin/mypy llf_client loadtests

.PHONY: unit
unit: venv tools ## Unit tests only (no server)
	$(VENV)/bin/pytest -m "not e2e" tests/unit

.PHONY: molecule
molecule: venv ## Molecule scenarios of the roles on real systemd test hosts (ROLE=llf_server for one; KEEP=1 keeps the hosts; STEPS='converge verify' runs only those)
	@case " $(MOLECULE_SCENARIOS) " in *" $(or $(ROLE),llf_host) "*) ;; \
	  *) echo "make molecule: ROLE must be one of: $(MOLECULE_SCENARIOS) (got '$(ROLE)')" >&2; exit 2;; esac; \
	export PATH="$(abspath $(VENV))/bin:$$PATH"; rc=0; \
	for scenario in $(or $(ROLE),$(MOLECULE_SCENARIOS)); do \
	  start=$$(date +%s); \
	  molecule reset --scenario-name $$scenario >/dev/null 2>&1 || true; \
	  if [ -n "$(STEPS)" ]; then \
	    for step in $(STEPS); do \
	      molecule $$step --scenario-name $$scenario || { rc=$$?; break; }; \
	    done; \
	    [ $$rc = 0 ] || { echo "==> molecule: $$scenario failed" >&2; break; }; \
	  else \
	    molecule test --scenario-name $$scenario --destroy never || { rc=$$?; echo "==> molecule: $$scenario failed" >&2; break; }; \
	  fi; \
	  echo "==> molecule: $$scenario passed in $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ "$(KEEP)" != 1 ]; then $(MAKE) --no-print-directory testhosts-down; fi; \
	exit $$rc

# the browser the web UI's tests drive (Playwright pointed at it): Debian's chromium
.PHONY: browser
browser: ## Install Debian's chromium for the web UI's browser tests, when missing
	@test -x /usr/bin/chromium || { echo "==> Installing Debian's chromium (the web UI's browser tests drive it)"; \
	  apt-get install -y -q chromium >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -q chromium >/dev/null; }; }

.PHONY: test
test: venv browser ## Lint, unit tests and the end-to-end deploy on this machine, with coverage (>= 90 %)
	@start=$$(date +%s); $(MAKE) --no-print-directory lint || exit $$?; \
	export LLF_LINT_SECONDS=$$(( $$(date +%s) - start )); \
	echo "$(VENV)/bin/pytest --cov --cov-report=term --cov-fail-under=90 tests"; \
	$(VENV)/bin/pytest --cov --cov-report=term --cov-fail-under=90 tests

.PHONY: clean
clean: ## Remove test results and caches (not the deployment)
	rm -rf .pytest_cache .coverage .mypy_cache .ruff_cache loadtests/results
