# The two commands: `make up` starts HyperCheckout, `make test` runs every test. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install install-load test up system-deps browser-deps load-deps lint bench scenarios chaos dist profile \
        instructions cpu

# The venv is rebuilt when the package's dependencies change.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-load: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,load]'
	touch $@

install-load: $(VENV)/.installed-load

# PostgreSQL, Redis and nginx (tests and `up` start private instances of them). As root on Debian/Ubuntu they are
# installed with apt-get when missing; otherwise the message says what to install.
system-deps:
	@missing=""; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing. Debian/Ubuntu: sudo apt-get install$$missing; macOS: brew install postgresql redis nginx"; \
	    exit 1; \
	  fi; \
	fi

# Debian's Chromium for the dashboard's browser test, driven by the playwright package (never `playwright install`:
# it downloads a browser build, and only package registries are reachable).
browser-deps:
	@if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "chromium is missing (Debian/Ubuntu: sudo apt-get install chromium); the browser test will be skipped"; \
	  fi; \
	fi

test: install system-deps browser-deps load-deps
	$(BIN)/pytest

# The sdist and the wheel in dist/, each checked as PyPI would (twine check). The wheel is what the Dockerfile
# installs and what `pipx install dist/hypercheckout-*.whl` takes; the suite installs one into a fresh venv.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

lint: install
	$(BIN)/ruff check hypercheckout tests load-tests

up: install system-deps
	$(BIN)/hypercheckout up

# wrk for the raw ceilings (make bench).
load-deps:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: wrk"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; \
	  else echo "missing: wrk (Debian/Ubuntu: sudo apt-get install wrk)"; exit 1; fi; }

bench: install-load system-deps load-deps
	$(BIN)/python load-tests/bench.py $(ARGS)

# A flame graph of one replica per path (purchase, sold-out, not started, rate-limited, joining a queue, the no-op),
# with each path's CPU per request: load-tests/results/<date>-profiles/. ARGS="--only purchase,sold-out".
profile: install-load system-deps load-deps
	$(BIN)/python load-tests/flamegraphs.py $(ARGS)

# CPU per request of each kind of process (replicas, nginx, PostgreSQL, Redis), a purchase against a no-op, in
# alternating rounds on one cluster (load-tests/cpu_per_request.py). ARGS="--rounds 3 --limiter --replicas 1
# --set HC_NAME=value --out DIR".
cpu: install-load system-deps load-deps
	$(BIN)/python load-tests/cpu_per_request.py $(ARGS)

# Instructions per request of one replica, by path, counted by valgrind's callgrind: they do not move with the
# machine's load as req/s do, so one run shows a change's cost (load-tests/instructions.py). ARGS="--out DIR".
instructions: install-load system-deps
	@command -v valgrind >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing: valgrind"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null; \
	  else echo "missing: valgrind (Debian/Ubuntu: sudo apt-get install valgrind)"; exit 1; fi; }
	$(BIN)/python load-tests/instructions.py $(ARGS)

scenarios: install-load system-deps
	$(BIN)/python load-tests/run.py $(ARGS)

# A seeded fault campaign against a real cluster (load-tests/chaos.py): ARGS="--runs 50 --seed 7 --duration 20".
chaos: install system-deps
	$(BIN)/python load-tests/chaos.py $(ARGS)
