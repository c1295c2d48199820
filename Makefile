# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Prefect's settings that the project needs (telemetry off, ...) are set by the project itself
# (llc.launch.local_server.PREFECT_DEFAULTS), not here: `python flows/sweep.py` works the same without make.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: env demo test lint bench bench-peers bench-scale constraints clean slurm-up slurm-down s3-up s3-down browser compiler postgres

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | compiler
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: env
	$(PY) flows/sweep.py --study studies/quick.yaml

# The statistical validation files and the known-answer files of the step search and the model's parts
# (slow-marked checks, CPU-bound on one torch thread, no services) run on the second core beside the rest
# of the suite; their report follows the rest's, and either failing fails.
STATISTICAL := tests/test_devinterp_cases.py tests/test_validation.py tests/test_step_search.py tests/test_parts.py

test: env slurm-up browser postgres
	$(VENV)/bin/ruff check src tests benchmarks flows examples
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(STATISTICAL) > .pytest-statistical.log 2>&1 & statistical=$$!; \
	trap 'kill $$statistical 2>/dev/null' INT TERM; \
	$(PY) -m pytest $(addprefix --ignore=,$(STATISTICAL)); rest=$$?; \
	wait $$statistical; stat=$$?; \
	echo "== $(STATISTICAL), run beside the rest =="; cat .pytest-statistical.log; \
	exit $$(( rest != 0 || stat != 0 ))

lint: env
	$(VENV)/bin/ruff check src tests benchmarks flows examples
	$(VENV)/bin/ruff format --check src tests benchmarks flows examples
	$(VENV)/bin/lint-imports

bench:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -c constraints.txt -e ".[bench]"
	.venv-bench/bin/python benchmarks/throughput.py

# SGLD on the digits MLP against canonical-interp 0.2.7 and devinterp 1.3.2 (docs/performance.md).
# canonical-interp needs Python >= 3.12: its own venv, from pyenv's 3.12 where there is one.
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) python3.12)
bench-peers:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -c constraints.txt -e ".[bench]"
	test -x .venv-canonical/bin/python || $(PYTHON312) -m venv .venv-canonical
	.venv-canonical/bin/python -m pip install -q canonical-interp==0.2.7 \
	  "$$(grep '^numpy==' constraints.txt)" "$$(grep '^scikit-learn==' constraints.txt)" \
	  "torch==$$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)"
	.venv-bench/bin/python benchmarks/peers.py

# 2,000 no-op cells against standing Prefect servers on SQLite and on PostgreSQL (docs/performance.md).
bench-scale: env postgres
	$(PY) benchmarks/scale.py --cells 2000 --json benchmarks/results/scale.json

# Debian's PostgreSQL binaries; the scale benchmark and its test start their own server on a private
# port and data directory, so the package's own cluster is stopped if its installation started it.
postgres:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql >/dev/null && \
	  { $(SUDO) pg_ctlcluster --force "$$(ls /usr/lib/postgresql | tail -n 1)" main stop 2>/dev/null || true; }; }

constraints: env
	$(PY) -m pip freeze --exclude-editable | grep -v '^llc' > constraints.txt.new
	{ sed -n '1,2p' constraints.txt; cat constraints.txt.new; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	rm -f constraints.txt.new

# A single-node SLURM cluster on this machine (deployments/slurm) and the slurm extra in the venv.
slurm-up: $(VENV)/.slurm-installed
	$(SUDO) deployments/slurm/up.sh

$(VENV)/.slurm-installed: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[slurm]"
	touch $@

# compile=true builds C++ (torch inductor): a compiler and the interpreter's headers.
compiler:
	command -v g++ >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends g++ >/dev/null; }
	test -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-dev >/dev/null; }

# Headless Chromium (Debian's package) for the Prefect UI test.
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

slurm-down:
	$(SUDO) deployments/slurm/down.sh

# An S3-compatible server (SeaweedFS) on localhost for development (deployments/s3); no root needed.
s3-up: env
	deployments/s3/up.sh

s3-down:
	deployments/s3/down.sh

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .ruff_cache

# A local Prefect server (SQLite under .prefect/server, or PostgreSQL via PREFECT_API_DATABASE_CONNECTION_URL)
# with the llc-process pool and the deployments of prefect.yaml; then run deployments/prefect/worker.sh.
.PHONY: server-up server-down
server-up: env
	deployments/prefect/server.sh start
	deployments/prefect/deploy.sh

server-down:
	deployments/prefect/server.sh stop
