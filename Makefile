# One task runner: `make run` and `make test` set up what they need, idempotently.
# Supported Pythons: pyproject.toml's classifiers. `make test PYTHON=python3.13` picks one: a command
# on PATH, or pyenv's copy of it (pyenv's shim refuses a version that is not selected).
PYTHON ?= python3
PYTHON_BIN := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$(PYTHON) 2>/dev/null | sort -V | tail -n 1)
# One venv per Python, so they never clobber each other: .venv for the default,
# .venv-3.13 for PYTHON=python3.13 (or choose with VENV=...).
ifeq ($(origin VENV),undefined)
ifeq ($(origin PYTHON),file)
VENV := .venv
else
VENV := .venv-$(if $(PYTHON_BIN),$(shell $(PYTHON_BIN) -c 'import sys; print("%d.%d" % sys.version_info[:2])'),none)
endif
endif
PY := $(VENV)/bin/python
LIVEKIT_VERSION := v1.13.5
LIVEKIT_BIN := tools/bin/livekit-server

.PHONY: run run-lan caddy test lint unit setup setup-dev system-packages livekit bench instructions profile soak screenshot clean python-path

run: setup
	@$(PY) -m dev.run

# `make run` plus HTTPS on the LAN (Caddy) in OpenVidu's local layout: see the README's
# "Test from your phone". Without Caddy, dev.lan says how to get it.
run-lan: setup caddy
	@$(PY) -m dev.lan

caddy:
	@if ! command -v caddy >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's caddy"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy >/dev/null; \
	  systemctl disable --now caddy >/dev/null 2>&1 || true; \
	fi

test: setup-dev lint
	$(PY) -m pytest

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

setup: $(VENV)/.runtime node_modules/.installed

setup-dev: setup $(VENV)/.dev system-packages livekit

$(VENV)/bin/python:
	@[ -n "$(PYTHON_BIN)" ] || { echo "No $(PYTHON) on PATH or in pyenv: install it, or set PYTHON"; exit 2; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's chromium (browser tests), redis-server (shared event log), wrk (bench), nginx and
# caddy (tests behind a proxy; openssl makes their certificate; caddy also serves
# `make run-lan`), certutil (libnss3-tools: Chromium trusting run-lan's local CA), zbarimg
# (zbar-tools: the LAN tests read QR codes back), and podman, runc, podman-compose,
# debootstrap and aardvark-dns (service names) for the container tests, installed when
# missing and when we may; otherwise the tests say what is missing.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v caddy >/dev/null || missing="$$missing caddy"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v certutil >/dev/null || missing="$$missing libnss3-tools"; \
	command -v zbarimg >/dev/null || missing="$$missing zbar-tools"; \
	command -v podman >/dev/null || missing="$$missing podman"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	command -v podman-compose >/dev/null || missing="$$missing podman-compose"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	[ -x /usr/lib/podman/aardvark-dns ] || command -v aardvark-dns >/dev/null || missing="$$missing aardvark-dns"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    case "$$missing" in *caddy*) systemctl disable --now caddy >/dev/null 2>&1 || true;; esac; \
	  else echo "Not installed (needs root and apt-get):$$missing"; fi; \
	fi

# The real LiveKit server, for the end-to-end tests and `make run`: the one on PATH,
# or a pinned release built with Go into tools/bin.
livekit:
	@if command -v livekit-server >/dev/null || [ -x $(LIVEKIT_BIN) ]; then :; \
	elif command -v go >/dev/null; then \
	  echo "Building livekit-server $(LIVEKIT_VERSION) into tools/bin (a few minutes, once)"; \
	  mkdir -p tools/bin && \
	  GOBIN=$(CURDIR)/tools/bin go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_VERSION) && \
	  mv tools/bin/server $(LIVEKIT_BIN); \
	else echo "No livekit-server and no Go: end-to-end tests will skip (fail in CI)"; fi

bench: setup-dev bench/node_modules/.installed
	$(PY) -m bench.run

# Where our server spends its time under load (cProfile, or PROFILE_TOOL=py-spy): see bench/profile.py.
profile: setup-dev
	$(PY) -m bench.profile

# Instructions a request, ours against bare Tornado, under valgrind: see bench/instructions.py.
instructions: setup-dev
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; } || true
	$(PY) -m bench.instructions

bench/node_modules/.installed: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	touch $@

soak: setup-dev bench/node_modules/.installed
	$(PY) -m bench.soak

screenshot: setup-dev
	SCREENSHOT=1 $(PY) -m pytest tests/test_e2e.py -k screenshot_scene -q

# The interpreter PYTHON resolves to (empty when there is none): .ci/run asks.
python-path:
	@echo $(PYTHON_BIN)

clean:
	rm -rf .venv .venv-* node_modules tools data
