# fleetproxy: the collection fleetproxy.fleet and the proxy it deploys.
#
#   make demo    the example fleet in Docker: a proxy pair behind a VIP, backends, a failover
#   make demo-down      removes the demo's containers
#   make demo-local     the proxy alone on proxy/examples/quickstart.yml (no Docker)
#   make test    every test: unit, integration, lint and sanity, Molecule scenarios
#   make test-ansible   the collection's gates only (lint, sanity, module tests, build, Molecule)
#   make bench   benchmarks against HAProxy and keepalived, results in proxy/bench/RESULTS*.md

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo demo-down demo-local test test-proxy test-modules lint bench bench-proxy bench-failover clean \
	test-ansible ansible-venv ansible-lint ansible-sanity ansible-syntax ansible-build \
	molecule molecule-image collection-link

all: test

$(STAMP): proxy/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'proxy[test,bench]' ruff
	touch $@

venv: $(STAMP)

# ansible-core 2.19 and the collections the tests use (the `ansible` 12 package), plus
# ansible-lint, molecule, testinfra, antsibull-changelog: tests/requirements-ansible.txt.
ANSIBLE_STAMP := $(VENV)/.ansible-installed
$(ANSIBLE_STAMP): $(STAMP) tests/requirements-ansible.txt
	$(BIN)/pip install --quiet -r tests/requirements-ansible.txt
	touch $@

ansible-venv: $(ANSIBLE_STAMP)

# The fleet demo (root; Docker is installed and started when missing): containers from
# inventories/demo, deployed with playbooks/site.yml from this tree, then a failover.
demo: $(ANSIBLE_STAMP) collection-link
	.ci/docker.sh
	molecule/images/build.sh
	$(BIN)/python demo/fleet.py up

demo-down: $(ANSIBLE_STAMP)
	$(BIN)/python demo/fleet.py down

demo-local: $(STAMP)
	$(BIN)/fleetproxy demo -c proxy/examples/quickstart.yml

test: test-proxy lint test-ansible

# (the ansible tools too: one test drives fleetproxy with community.general.haproxy)
test-proxy: $(STAMP) $(ANSIBLE_STAMP)
	cd proxy && ../$(BIN)/python -m pytest -q -p no:cacheprovider

# The modules against a real fleetproxy (tests/unit); the vip tests need root.
test-modules: $(ANSIBLE_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=300 tests/unit

lint: $(STAMP)
	$(BIN)/ruff check proxy/src proxy/tests proxy/bench

# Every benchmark: the data path against HAProxy, then failover against keepalived.
bench: bench-proxy bench-failover

# The data path against HAProxy; writes proxy/bench/RESULTS.md
bench-proxy: $(STAMP)
	$(BIN)/python proxy/bench/run.py

# VRRP failover against keepalived (root: network namespaces); writes proxy/bench/RESULTS-failover.md
bench-failover: $(STAMP)
	$(BIN)/python proxy/bench/failover.py

# --- The Ansible collection fleetproxy.fleet --------------------------------------
# Every gate prints its wall time. Molecule needs Docker and root (see .ci/run).
ANSIBLE_ENV := PATH="$(CURDIR)/$(BIN):$$PATH"
MOLECULE_SCENARIOS ?= default ha rolling
TIME = TIMEFORMAT='[$@ took %0R s]'; time

# build/collections/ansible_collections/fleetproxy/fleet -> this tree, for running
# playbooks and Molecule straight from the working tree:
#   ANSIBLE_COLLECTIONS_PATH=$$PWD/build/collections molecule converge
collection-link:
	mkdir -p build/collections/ansible_collections/fleetproxy
	ln -sfn ../../../.. build/collections/ansible_collections/fleetproxy/fleet

test-ansible: ansible-lint ansible-syntax ansible-sanity test-modules ansible-build molecule

ansible-lint: $(ANSIBLE_STAMP) collection-link
	$(TIME) $(ANSIBLE_ENV) ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections $(BIN)/ansible-lint
	$(BIN)/antsibull-changelog lint
	$(BIN)/python tests/check_role_docs.py

ansible-syntax: $(ANSIBLE_STAMP) collection-link
	$(BIN)/ansible-inventory -i inventories/example --list >/dev/null
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections \
	  $(BIN)/ansible-playbook -i inventories/example --syntax-check \
	  playbooks/site.yml playbooks/rolling_backend_change.yml playbooks/node_maintenance.yml

ansible-sanity: $(ANSIBLE_STAMP)
	$(TIME) tests/ansible-sanity.sh

ansible-build: $(ANSIBLE_STAMP)
	$(TIME) $(ANSIBLE_ENV) tests/ansible-collection.sh

molecule-image:
	molecule/images/build.sh

# Deploys the collection as built and installed by ansible-build.
molecule: $(ANSIBLE_STAMP) ansible-build molecule-image
	for scenario in $(MOLECULE_SCENARIOS); do \
	  TIMEFORMAT="[molecule test -s $$scenario took %0R s]"; \
	  time $(ANSIBLE_ENV) ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/installed \
	    $(BIN)/molecule test -s $$scenario || exit 1; \
	done

clean:
	rm -rf $(VENV) proxy/src/*.egg-info build tests/output
