# fleetproxy: the collection fleetproxy.fleet and the proxy it deploys.
#
#   make demo    the proxy on proxy/examples/quickstart.yml in front of two demo backends
#   make test    every test: unit, integration, lint and sanity, Molecule scenarios
#   make bench   benchmarks against HAProxy (and keepalived), results in proxy/bench/

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test test-proxy test-modules lint bench bench-failover clean

all: test

$(STAMP): proxy/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'proxy[test,bench]' ruff
	touch $@

venv: $(STAMP)

# ansible-core 2.19 and the collections the module tests use (the `ansible` 12 package).
ANSIBLE_STAMP := $(VENV)/.ansible-installed
$(ANSIBLE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet 'ansible>=12,<13'
	touch $@

demo: $(STAMP)
	$(BIN)/fleetproxy demo -c proxy/examples/quickstart.yml

test: test-proxy lint

test-proxy: $(STAMP)
	cd proxy && ../$(BIN)/python -m pytest -q -p no:cacheprovider

# The modules against a real fleetproxy (tests/unit); the vip tests need root.
test-modules: $(ANSIBLE_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=300 tests/unit

lint: $(STAMP)
	$(BIN)/ruff check proxy/src proxy/tests proxy/bench

bench: $(STAMP)
	$(BIN)/python proxy/bench/run.py

# VRRP failover against keepalived (root: network namespaces); writes proxy/bench/RESULTS-failover.md
bench-failover: $(STAMP)
	$(BIN)/python proxy/bench/failover.py

clean:
	rm -rf $(VENV) proxy/src/*.egg-info
