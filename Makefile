# slimserve — the two commands are `make run` and `make test`; both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run build serve protos bench-server bench-peers bench-workers bench-router bench-router-sim bench-observability bench-reload bench-first-run soak loadtest image test-image test test-unit test-integration test-slow lint typecheck suite clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes. `make run` builds the default models, so it
# installs the build extras (torch and the pipeline; serving alone needs `pip install .`);
# tests, benchmarks and load tests add the test extras (so a first `make run` installs less).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[build]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## run: set up and serve the default model repository, building what is missing in the background
## (fp32 and int8 of every model first, served as soon as they exist; the rest added as they finish)
run: $(VENV)/.installed
	$(BIN)/slimserve serve --repository $(REPOSITORY) --build-missing

## protos: regenerate the committed gRPC stubs from slimserve/protos/*.proto
protos: $(VENV)/.installed-test
	$(BIN)/python tools/generate_protos.py

## build: rebuild the default model repository from scratch
build: $(VENV)/.installed
	$(BIN)/slimserve build --repository $(REPOSITORY)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile deploy/image/prometheus.Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/k8s/*.yaml

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy slimserve loadtest tools tests

# Tests run in TEST_PROCESSES processes (pytest-xdist), a test file to one process so that its
# module fixtures start once. Run one at a time, the tests kept one of a 2-core machine's cores
# idle on average (they wait on servers, subprocesses and sockets as much as they compute).
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile

## suite: every test, then the time each tier took (unit, integration, slow: tests/conftest.py)
suite: $(VENV)/.installed-test
	$(PYTEST)

## test-unit / test-integration / test-slow: one tier only
test-unit test-integration test-slow: test-%: $(VENV)/.installed-test
	$(PYTEST) -m $*

## test: set up, lint, type-check, run the test suite (all tiers)
test: lint typecheck suite

## bench-server: server vs in-process ONNX Runtime, side by side (needs `make run`'s repository)
bench-server: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_server --repository $(REPOSITORY)

## bench-peers: slimserve vs MLServer 1.7.1 and KServe 0.21 (own venvs in .bench-peers/), same ONNX files and client (needs `make run`'s repository)
bench-peers: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_peers --repository $(REPOSITORY) --out docs/bench

## bench-workers: serve --workers 2 vs --workers 1 on distilled digits, a Python and a C++ client (needs `make run`'s repository)
bench-workers: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_workers --repository $(REPOSITORY) --out docs/bench

## bench-router: router vs pinned variants vs ablated routers on a production arrival trace (needs `make run`'s repository)
bench-router: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_router --repository $(REPOSITORY) --out docs/bench

## bench-router-sim: the router vs best static, hindsight-best mix and fluid bound in the calibrated simulator (needs `make run`'s repository)
bench-router-sim: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_router_sim --repository $(REPOSITORY) --out docs/bench

## bench-observability: saturation throughput with metrics + shadow sampling on vs off, one run
bench-observability: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_observability --repository $(REPOSITORY)

## bench-first-run: clean clone → make run: seconds to the first answer and to every variant (uses ports 8001/8002)
bench-first-run: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.first_run --out docs/bench/first_run.json

## bench-reload: 16 callers on digits while it is reloaded 20 times and a variant swapped 10 times; failed calls, RSS
bench-reload: $(VENV)/.installed-test
	$(BIN)/python -m loadtest.bench_reload --repository $(REPOSITORY) --out docs/bench

## soak: 20,000 fuzzed requests; 5 minutes at 3x capacity and a SIGTERM, digits then minilm (needs `make run`'s repository)
soak: $(VENV)/.installed-test
	SLIMSERVE_FUZZ_EXAMPLES=20000 $(BIN)/pytest -q -s -p no:cacheprovider tests/server/test_fuzz.py
	$(BIN)/python -m loadtest.soak_overload --repository $(REPOSITORY) --out docs/bench --model digits
	$(BIN)/python -m loadtest.soak_overload --repository $(REPOSITORY) --out docs/bench --model minilm --seconds 120 --slo-ms 200

## loadtest: Locust, headless, against a running server (make run in another shell); CSV + summary
LOADTEST_HOST ?= 127.0.0.1:8001
LOADTEST_USERS ?= 20
LOADTEST_SECONDS ?= 60
LOADTEST_CLASSES ?= MixedUser
LOADTEST_OUT ?= loadtest-results
loadtest: $(VENV)/.installed-test
	mkdir -p $(LOADTEST_OUT)
	$(BIN)/locust -f loadtest/locustfile.py --headless --host $(LOADTEST_HOST) \
		-u $(LOADTEST_USERS) -r $(LOADTEST_USERS) -t $(LOADTEST_SECONDS)s --stop-timeout 10 \
		--csv $(LOADTEST_OUT)/slimserve --only-summary $(LOADTEST_CLASSES)
	@echo "CSV files and slimserve_summary.json are in $(LOADTEST_OUT)/"

## image: build the container image (IMAGE, default slimserve:0.1.0) with a local Docker engine;
## IMAGE_REPOSITORY=model_repository carries a built repository instead of building one in the image
IMAGE ?= slimserve:0.1.0
IMAGE_REPOSITORY ?=
image:
	IMAGE=$(IMAGE) IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) deploy/image/build.sh

## test-image: build the image, then run it for real: health, answers, drain, non-root secrets, Prometheus (tests/image)
test-image: image $(VENV)/.installed-test
	SLIMSERVE_IMAGE=$(IMAGE) $(BIN)/pytest -q -p no:cacheprovider -m image tests/image

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
