# headroom: `make lab` runs the main job on a local lab; `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := false
export PY_COLORS := 0

SCENARIOS ?= $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
PLAYBOOKS := site.yml $(wildcard playbooks/*.yml)

stage = @echo; echo "==== $(1) ===="; echo

# The stages of `make test`, in order; each prints its duration at the end (reports/stage-times.tsv).
TEST_STAGES := setup lint syntax unit apps collection $(addprefix molecule-,$(SCENARIOS)) bench-smoke
STAGE_TIMES := reports/stage-times.tsv

.PHONY: help setup lint unit apps syntax molecule collection bench bench-smoke test lab lab-down clean

help:
	@echo "make lab       build the images, start the lab, run site.yml against it"
	@echo "make lab-down  remove the lab containers"
	@echo "make test      lint, syntax, unit tests, client examples (apps), collection install test, every molecule scenario, bench-smoke"
	@echo "make setup     virtualenv, Docker engine and the lab's images only"
	@echo "make molecule-NAME  one molecule scenario (molecule/NAME)"
	@echo "make bench     benchmarks on the lab (long); results in bench/results/<date>/"

$(BIN)/ansible: requirements.txt
	$(call stage,setup: virtualenv from requirements.txt)
	@command -v python3 >/dev/null || { echo "headroom setup: python3 is missing: install Python 3.11 or later."; exit 1; }
	@python3 -m venv $(VENV) || { echo "headroom setup: python3 cannot create a virtualenv: apt-get install python3-venv."; exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(BIN)/ansible
	$(call stage,setup: Docker engine and base images)
	scripts/bootstrap.sh

lint: $(BIN)/ansible
	$(call stage,lint: yamllint)
	yamllint --strict .
	$(call stage,lint: ansible-lint (production profile))
	ansible-lint --profile production --nocolor
# ansible-test sanity, every finding an error (exceptions, each with its reason: tests/sanity/ignore-2.19.txt).
# scripts/sanity.sh copies the checkout's files into $(mktemp -d)/ansible_collections/headroom/pg,
# where ansible-test must run, and runs `ansible-test sanity --local --python 3.11` there with this
# virtualenv: no Docker. Each test's own virtualenv (~/.ansible/test/venv) gets pip from a bootstrap
# script that ansible-test would download from a host not reachable here; the script writes a stand-in
# into ansible-test's cache (~/.ansible/test/cache/get_pip_<version>.py) that installs pip with the
# wheel bundled in Python's ensurepip. The tests' pinned requirements come from PyPI on the first run,
# then from those cached virtualenvs; shellcheck, if missing, from Debian (as root).
	$(call stage,lint: ansible-test sanity)
	scripts/sanity.sh

syntax: $(BIN)/ansible
	$(call stage,syntax: ansible-playbook --syntax-check)
	@for p in $(PLAYBOOKS); do echo "$$p"; ansible-playbook -i inventories/example --syntax-check "$$p" >/dev/null || exit 1; done

unit: $(BIN)/ansible
	$(call stage,unit: pytest tests/unit)
	pytest -q tests/unit

# examples/ (the client pattern) against PostgreSQL 15 in container headroom-apps-db (removed at the end).
apps: setup
	$(call stage,apps: the client examples against a real PostgreSQL)
	pytest -q tests/apps

collection: setup
	$(call stage,collection: build and install headroom.pg into an unrelated project)
	tests/collection/run.sh

molecule: $(addprefix molecule-,$(SCENARIOS))

molecule-%: setup
	$(call stage,molecule: $*)
	molecule test -s $*

# The benchmarks run on the lab (bench/README.md). bench-smoke runs them on a tiny size and
# only checks that every result file is written and well-formed: it measures nothing.
BENCH_OUT ?= bench/results/$(shell date +%F)

bench: setup
	$(call stage,bench: full size on the lab (see bench/README.md))
	$(BIN)/python bench/bench.py run --size full --out $(BENCH_OUT)
	$(BIN)/python bench/bench.py check $(BENCH_OUT)
	$(BIN)/python bench/memory.py run --size full --out $(BENCH_OUT)
	$(BIN)/python bench/memory.py check $(BENCH_OUT)
	$(BIN)/python bench/pools.py run --size full --out $(BENCH_OUT)
	$(BIN)/python bench/pools.py check $(BENCH_OUT)
	$(BIN)/python bench/ceiling.py run --size full --out $(BENCH_OUT)
	$(BIN)/python bench/ceiling.py check $(BENCH_OUT)

bench-smoke: setup
	$(call stage,bench-smoke: every benchmark on a tiny size, result files checked)
	$(BIN)/python bench/bench.py run --size smoke --out reports/bench-smoke
	$(BIN)/python bench/bench.py check reports/bench-smoke
	$(BIN)/python bench/memory.py run --size smoke --out reports/bench-smoke
	$(BIN)/python bench/memory.py check reports/bench-smoke
	$(BIN)/python bench/pools.py run --size smoke --out reports/bench-smoke
	$(BIN)/python bench/pools.py check reports/bench-smoke
	$(BIN)/python bench/ceiling.py run --size smoke --out reports/bench-smoke
	$(BIN)/python bench/ceiling.py check reports/bench-smoke

# bench-smoke last: it brings the lab up and converges db1 with the bench databases.
# A failed stage stops the run; the times so far are printed either way.
test:
	@mkdir -p reports && : > $(STAGE_TIMES)
	@for stage in $(TEST_STAGES); do \
	  scripts/stage-time.sh $(STAGE_TIMES) $$stage $(MAKE) --no-print-directory $$stage \
	    || { scripts/stage-time.sh $(STAGE_TIMES) --report; exit 1; }; \
	done; scripts/stage-time.sh $(STAGE_TIMES) --report
	$(call stage,test: all stages passed)

lab: setup
	$(call stage,lab: containers and inventory)
	ansible-playbook tests/lab/up.yml
	$(call stage,lab: site.yml)
	ansible-playbook site.yml

lab-down: $(BIN)/ansible
	ansible-playbook tests/lab/down.yml

clean: lab-down
	rm -rf $(VENV) .cache reports
