# The two commands a newcomer types: `make up` and `make test`.
# Both work on a fresh Debian 12 / Ubuntu machine as root: they install what is missing.

# The distribution's interpreter when it is recent enough: Debian's and Ubuntu's python3
# is built for speed (profile-guided, libpython linked in). One found first on PATH may
# not be: a pyenv --enable-shared build ran the same Python code at half the speed on the
# benchmark machine (loadtests/bench/notes.md). `make PYTHON=python3.12 ...` chooses another.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)
endif
export PYTHON  # scripts/system-packages checks venv support in this interpreter
VENV := .venv
BIN := $(VENV)/bin
# command:package pairs needed from the system (see scripts/system-packages)
SITE_PACKAGES := python3-venv:python3-venv mariadbd:mariadb-server openssl:openssl
MONITORING_PACKAGES := promtool:prometheus amtool:prometheus-alertmanager
TEST_PACKAGES := $(SITE_PACKAGES) ip:iproute2 nft:nftables chromium:chromium \
	haproxy:haproxy nginx:nginx wrk:wrk taskset:util-linux curl:curl keepalived:keepalived \
	$(MONITORING_PACKAGES)

.PHONY: up test lint typecheck pytest loadtest bench instructions clean

# locust against a running `make up` (USERS, DURATION, HOST to change); exits 1 on any failure
USERS ?= 20
DURATION ?= 60s
HOST ?= https://localhost:8443
loadtest: $(BIN)/.installed
	@mkdir -p var/loadtest
	$(BIN)/locust -f loadtests/locustfile.py --headless --host $(HOST) -u $(USERS) -r $(USERS) \
		-t $(DURATION) --csv var/loadtest/foobar --html var/loadtest/report.html --only-summary

# foobar against HAProxy, nginx and Python's floor, side by side, 7 rounds of 5 s (about
# 15 minutes); writes docs/benchmarks.md. A quick look writes var/bench/benchmarks.md instead:
# make bench BENCH_ROUNDS=1 BENCH_SECONDS=2 BENCH_ONLY="lb http,1 KiB"
BENCH_PACKAGES := haproxy:haproxy nginx:nginx wrk:wrk taskset:util-linux curl:curl
bench: $(BIN)/.installed
	@scripts/system-packages $(SITE_PACKAGES) $(BENCH_PACKAGES)
	$(BIN)/python -m loadtests.bench.run

# user-space instructions per proxied request under callgrind: foobar.lb, foobar.web, the
# floor; the same count on a busy or a quiet machine (loadtests/bench/instructions.py)
instructions: $(BIN)/.installed
	@scripts/system-packages $(SITE_PACKAGES) nginx:nginx valgrind:valgrind
	$(BIN)/python -m loadtests.bench.instructions lb web floor

# the whole site on this machine: https://localhost:8443/ (Ctrl-C stops it);
# `make up UP_FLAGS=--monitoring` adds Prometheus and Alertmanager
UP_FLAGS ?=
up: $(BIN)/.installed
	@scripts/system-packages $(SITE_PACKAGES) \
		$(if $(findstring --monitoring,$(UP_FLAGS)),$(MONITORING_PACKAGES))
	$(BIN)/python -m foobar up $(UP_FLAGS)

test: lint typecheck pytest

$(BIN)/.installed: pyproject.toml
	@scripts/system-packages python3-venv:python3-venv  # (brings python3 to a bare machine)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "foobar needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check foobar tests loadtests
	$(BIN)/ruff format --check foobar tests loadtests

typecheck: $(BIN)/.installed
	$(BIN)/mypy --strict foobar loadtests

pytest: $(BIN)/.installed
	@scripts/system-packages $(TEST_PACKAGES)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
