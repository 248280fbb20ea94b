# Every target installs what it needs into .venv, so a fresh clone works with `make run` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on the development machines' disk; an unpinned torch would
# pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check
# uv (installed into .venv, and used from there for the other environments too) installs what
# pip did, from the same registry. Where pip is told of wheels on disk (PIP_FIND_LINKS: the CPU
# torch on the development machines), uv looks there too.
UV     = $(BIN)/uv pip install -q --python $(1)/bin/python $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))

# Bytecode is written as modules are first imported, not compiled for every file at install
# (uv's --compile-bytecode took 28 of an install's 35 s, most of it for modules nothing imports).
# Where PYTHONDONTWRITEBYTECODE is set (as on CI) nothing would be kept: every process of the
# suite compiled what it imported again, and pytest rewrote every test module in each of its
# processes (collecting the suite: 16 s of CPU, 8.5 s with bytecode kept). So make's commands
# run without it; the bytecode goes to __pycache__ folders, which git ignores.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-fast docs docs-check lint typecheck checks pytest pytest-parallel pytest-serial bench-test docker-test browser perf-analyzer models reproduce bench gpu-check bench-peers compare profile soak clean help

help:
	@echo "make run        install the serve and client extras (and tritonclient, for the README's"
	@echo "                examples) and serve the shipped models on 127.0.0.1:8000"
	@echo "make test       install everything and run ruff, mypy, the docs build and pytest"
	@echo "make docs       regenerate docs/settings.md and build the documentation site into site/"
	@echo "make test-fast  the inner loop: ruff, mypy, the unit tests and the protocols against"
	@echo "                real servers (under a minute on 2 cores, once installed)"
	@echo "make bench-test the benchmark harnesses' own tests (tests/bench), out of make test"
	@echo "make models     retrain and re-export the shipped models (fixed seeds)"
	@echo "make reproduce  train the paper's table and write results/"
	@echo "make bench      throughput and latency against raw onnxruntime (benchmarks/results.md)"
	@echo "make gpu-check  onnxruntime and the service on the provider found here, parity with"
	@echo "                the CPU (benchmarks/gpu-<provider>.md; docs/gpu.md: the GPU machine's run)"
	@echo "make bench-peers  the same model on PyTriton and MLServer beside this service"
	@echo "make compare BEFORE=ref  this checkout against another commit, in turns"
	@echo "make profile    a flame graph of the service under load (py-spy)"
	@echo "make docker-test  build the images and run compose's profiles on a Docker engine"
	@echo "make soak       long fuzzing and a 10-minute soak (docs/reliability.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(PIP) install 'uv>=0.5'

# What the README's examples after `make run` use: the service, `coordconv client`, and Triton's
# own Python clients (`tritonclient.http` and `.grpc`); no torch.
RUN_PACKAGES := -e '.[serve,client]' 'tritonclient[http,grpc]>=2.45'
$(VENV)/.run: pyproject.toml | $(BIN)/uv
	$(call UV,$(VENV)) $(RUN_PACKAGES)
	touch $@

$(VENV)/.all: pyproject.toml | $(BIN)/uv
	$(call UV,$(VENV)) -e '.[serve,train,client,dev,ray]' '$(TORCH)'
	touch $@ $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/coordconv serve

lint: $(VENV)/.all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.all
	$(BIN)/mypy

# The demo page's test drives Debian's Chromium; install it where we can (root with apt: CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (and not root): the browser test will skip"; fi; }

# NVIDIA Triton's perf_analyzer: the binary inside tritonclient 2.51.0's wheel (newer wheels need a
# newer glibc), with the CUDA runtime library it links (no GPU is used) and Debian's libb64.
PERF_VENV := .venv-perf
# uv makes the environment (no pip in it: 11 s of a fresh clone's install became 3 s).
$(PERF_VENV)/.done: | $(BIN)/uv
	$(BIN)/uv venv -q --python $(PYTHON) $(PERF_VENV)
	$(call UV,$(PERF_VENV)) tritonclient==2.51.0 'nvidia-cuda-runtime-cu12>=12.4,<13'
	@ls /usr/lib/x86_64-linux-gnu/libb64.so.0d >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null; \
	  else echo "libb64-0d is not installed (and not root): perf_analyzer will not start"; fi; }
	touch $@

perf-analyzer: $(PERF_VENV)/.done

# The tiers (tests/unit, service, system, training; docs/getting-started.md). The Docker tests build
# images for minutes (`make docker-test`); the benchmark harnesses' tests start servers of other
# commits and other projects (`make bench-test`).
# Two test processes (pytest-xdist, a whole file to each: module fixtures are built once; the
# longest files first, tests/conftest.py), then the tests marked `serial` (timed against the
# clock) alone. A third process was slower from a fresh clone (its parallel pass 860 s against
# 711 s, the cores 100% busy) and left Ray's proxy no time to start.
pytest: pytest-parallel pytest-serial

pytest-parallel: $(VENV)/.all browser perf-analyzer
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
	    -m "not docker and not bench and not serial"

# Only the files that mark a test serial are collected (tests/conftest.py refuses a serial test
# marked otherwise).
SERIAL_FILES = $(shell grep -rl --include='test_*.py' 'pytest.mark.serial' tests)
pytest-serial: $(VENV)/.all browser perf-analyzer
	$(BIN)/python -m pytest -q -m "serial and not docker and not bench" $(SERIAL_FILES)

# The tests of benchmarks/ itself: compare's worktree and its two servers, the peers' requests,
# gpu-check's sections (tests/bench).
bench-test: $(VENV)/.all
	$(BIN)/python -m pytest -q tests/bench

# The images built and run on a Docker engine: the serving image, compose's cpu, client and trainer
# profiles, `stop` under load (tests/system/test_docker.py; figures in runs/docker-test.json). Skipped,
# loudly, without an engine; DOCKER_TEST=require makes that a failure.
docker-test: $(VENV)/.all
	$(BIN)/python -m pytest -q -s -m docker tests/system/test_docker.py

# ruff, mypy and the docs build (about a minute of CPU, mypy most of it) run beside the tests at
# the lowest priority: they take what the tests leave idle of the cores (the serial pass leaves
# one nearly free, and its timed tests took as long beside them as alone), their output printed
# at the end.
test: $(VENV)/.all browser perf-analyzer
	@nice -n 19 $(MAKE) --no-print-directory checks > $(VENV)/checks.log 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory pytest-parallel && $(MAKE) --no-print-directory pytest-serial; \
	tests=$$?; wait $$checks; status=$$?; cat $(VENV)/checks.log; \
	if [ $$status -ne 0 ]; then echo "make test: ruff, mypy or the docs build failed (above)"; fi; \
	[ $$tests -eq 0 ] && [ $$status -eq 0 ]

checks: docs-check lint typecheck

# The documentation site (mkdocs.yml, docs/): `make docs` regenerates the settings page from the
# Settings model and builds site/ (served at /guide/); `make test` builds it --strict, offline.
docs: $(VENV)/.all
	$(BIN)/python docs/gen_settings.py
	$(BIN)/mkdocs build --strict

docs-check: $(VENV)/.all
	$(BIN)/mkdocs build --strict --quiet

# The inner loop: lint, types, the unit tier (the shape checks, codecs) and the protocols against
# real servers (HTTP, gRPC, both dispatches, every decoding placement). `make test` before you push.
FAST_TESTS := tests/unit tests/service/test_service_api.py tests/service/test_v2.py \
	tests/service/test_grpc.py tests/service/test_service_errors.py \
	tests/service/test_dispatch.py tests/service/test_offload.py
test-fast: lint typecheck
	$(BIN)/python -m pytest -q $(FAST_TESTS)

models: $(VENV)/.all
	$(BIN)/coordconv models --repo models

# The committed table: the campaign of training/campaign.py on the seeds fixed in
# results/plan.json (paper recipe, ours, ablations, baselines), resumed from results/records/.
# One block only: REPRODUCE_ARGS="--blocks paper"; the report alone: REPRODUCE_ARGS=--report-only.
REPRODUCE_ARGS ?=
reproduce: $(VENV)/.all
	$(BIN)/coordconv reproduce --out results $(REPRODUCE_ARGS)

# GPU machines: make bench PROVIDERS=cuda,cpu (figures go beside the CPU ones).
PROVIDERS ?= cpu
bench: $(VENV)/.all perf-analyzer
	$(BIN)/python -m benchmarks.bench --providers $(PROVIDERS) --sweep --ray

# One run, one results file: benchmarks/gpu-<provider>.json and .md (docs/gpu.md). Longer points
# on a GPU machine: make gpu-check GPU_CHECK_ARGS="--seconds 4 --ort-seconds 1".
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.all
	$(BIN)/python -m benchmarks.gpu $(GPU_CHECK_ARGS)

# This service beside NVIDIA PyTriton and MLServer on the same model, one run (benchmarks/peers.md);
# each peer in its own virtual environment under .venv-peers/.
bench-peers: $(VENV)/.all perf-analyzer
	$(BIN)/python -m benchmarks.peers

# This checkout against another commit, servers in turns on the same machine: BEFORE=<git ref>
# COMPARE_ARGS="--before-env COORDCONV_FAST_DISPATCH=false": one feature's own gain (BEFORE=HEAD).
BEFORE ?= HEAD
ROUNDS ?= 3
COMPARE_ARGS ?=
compare: $(VENV)/.all
	$(BIN)/python -m benchmarks.compare --before $(BEFORE) --rounds $(ROUNDS) --case b a $(COMPARE_ARGS)

# A flame graph of the service under case (b) load: benchmarks/flame-$(PROFILE_LABEL).svg
PROFILE_LABEL ?= now
profile: $(VENV)/.all
	$(BIN)/python -m benchmarks.profile --label $(PROFILE_LABEL)

# Longer reliability runs: many more fuzz examples, then a 10-minute soak at ~70% of capacity.
soak: $(VENV)/.all
	FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest -q tests/service/test_fuzz.py \
	    tests/system/test_reliability.py
	$(BIN)/python -m benchmarks.soak --seconds $${SOAK_SECONDS:-600}

clean:
	rm -rf $(VENV) $(PERF_VENV) .venv-peers .pytest_cache .mypy_cache .ruff_cache runs
