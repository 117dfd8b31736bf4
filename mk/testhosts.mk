# Real systemd test hosts (systemd-nspawn) for Ansible and Molecule: tests/testhosts/README.md.
# Included by the main Makefile; also runs alone: make -f mk/testhosts.mk testhosts-up N=3
# Needs root. Every variable below can be overridden on the command line or in the environment.

TESTHOSTS_ROOT   := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
TESTHOSTS_SCRIPT := $(TESTHOSTS_ROOT)/tests/testhosts/testhosts.sh

N                   ?= 3
TESTHOSTS_DIR       ?= /var/tmp/llf-testhosts
TESTHOSTS_BRIDGE    ?= llfbr0
TESTHOSTS_BRIDGE_IP ?= 10.231.0.1
TESTHOSTS_FIRST     ?= 11
TESTHOSTS_PREFIX    ?= llf-th
TESTHOSTS_SUITE     ?= bookworm
TESTHOSTS_MIRROR    ?=
TESTHOSTS_PKGS      ?=
export TESTHOSTS_DIR TESTHOSTS_BRIDGE TESTHOSTS_BRIDGE_IP TESTHOSTS_FIRST TESTHOSTS_PREFIX \
       TESTHOSTS_SUITE TESTHOSTS_MIRROR TESTHOSTS_PKGS

# standalone (make -f mk/testhosts.mk) the default goal lists these targets
ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := testhosts-help
endif

.PHONY: testhosts-help
testhosts-help:
	@awk 'BEGIN {FS = ":.*## "} /^testhosts-[a-z-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(TESTHOSTS_ROOT)/mk/testhosts.mk
	@echo
	@echo "Variables: N=$(N) TESTHOSTS_DIR=$(TESTHOSTS_DIR) TESTHOSTS_BRIDGE=$(TESTHOSTS_BRIDGE) TESTHOSTS_BRIDGE_IP=$(TESTHOSTS_BRIDGE_IP)"

.PHONY: testhosts-up
testhosts-up: ## Boot N real systemd test hosts (default 3) and write tests/testhosts/inventory/
	@$(TESTHOSTS_SCRIPT) up $(N)

.PHONY: testhosts-down
testhosts-down: ## Power off and remove every test host, their network and the inventory
	@$(TESTHOSTS_SCRIPT) down

.PHONY: testhosts-status
testhosts-status: ## List the test hosts and their systemd state
	@$(TESTHOSTS_SCRIPT) status

.PHONY: testhosts-check
testhosts-check: ## Check the running test hosts (systemd, service restart, ping mesh, no route out)
	@$(TESTHOSTS_SCRIPT) check

.PHONY: testhosts-base
testhosts-base: ## Build the cached Debian base rootfs of the test hosts (once)
	@$(TESTHOSTS_SCRIPT) base

.PHONY: testhosts-clean
testhosts-clean: ## testhosts-down, then delete the cached base rootfs and the ssh key
	@$(TESTHOSTS_SCRIPT) clean
