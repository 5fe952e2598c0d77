# veil — two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-keras check install bench bench-mpc bench-dp bench-he bench-plans bench-device bench-compare fuzz clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/veil demo

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: check
	$(BIN)/pytest -n 2 -q

# Keras 3 models on veil (veil.keras): installs the keras extra into .venv, then its tests and doctests
test-keras: $(STAMP)
	$(BIN)/pip install -q -e '.[keras]'
	$(BIN)/pytest -q tests/keras src/veil/keras src/veil/serde/keras_models.py src/veil/ops/keras.py

# A model trained with Keras on TensorFlow: a side venv with TensorFlow (CPU; created if
# missing, kept out of .venv) reruns tests/keras/fixtures/make_tf_fixture.py into a temporary
# directory and checks the checked-in fixture still predicts what TF predicted; then
# tests/keras/test_tf_trained.py compares the fresh run with the checked-in files on torch.
TF_VENV ?= $(HOME)/.cache/veil/tf-venv
TF_PINS ?= tensorflow-cpu==2.21.0 keras==3.15.1 scikit-learn h5py
.PHONY: test-tf
test-tf: $(STAMP)
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('keras') and u.find_spec('h5py')))" \
		|| $(BIN)/pip install -q -e '.[keras]'
	test -x $(TF_VENV)/bin/python || { $(PY) -m venv $(TF_VENV) && $(TF_VENV)/bin/pip install -q $(TF_PINS); }
	set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
		$(TF_VENV)/bin/python tests/keras/fixtures/make_tf_fixture.py "$$out"; \
		$(TF_VENV)/bin/python tests/keras/fixtures/make_tf_fixture.py --verify tests/keras/fixtures; \
		VEIL_TF_FIXTURE="$$out" $(BIN)/pytest -q tests/keras/test_tf_trained.py

# Property tests of the privacy rules for as long as asked: make fuzz FUZZ_SECONDS=3600
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	VEIL_FUZZ_SECONDS=$(FUZZ_SECONDS) VEIL_FUZZ_EXAMPLES=100000000 $(BIN)/pytest -q --timeout=0 \
		tests/node/test_noninterference.py tests/dp -k "scientist or property"

bench: $(STAMP)
	$(BIN)/python benchmarks/remote_ops.py

# CrypTen's side venv (benchmarks/README.md); the benchmark stops if it runs another torch
CRYPTEN_PY ?= /tmp/crypten-venv/bin/python

bench-mpc: $(STAMP)
	$(BIN)/python benchmarks/mpc.py --crypten $(CRYPTEN_PY)

bench-dp: $(STAMP)
	$(BIN)/python benchmarks/dp_sgd.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

bench-he: $(STAMP)
	$(BIN)/python benchmarks/he.py

bench-plans: $(STAMP)
	$(BIN)/python benchmarks/plans.py

# Batch-1 prediction with veil.device (onnxruntime) vs torch eager, and the device install's size
bench-device: $(STAMP)
	$(BIN)/python benchmarks/device.py

# The three benchmarks for this checkout and another commit, side by side: make bench-compare REF=HEAD~1
REF ?= HEAD~1
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py --ref $(REF)

# The package import graph from the code (Mermaid + layered listing); `make architecture
# ARCH_ARGS=--write` refreshes the diagram in docs/ARCHITECTURE.md (tests check it is current).
.PHONY: architecture
ARCH_ARGS ?=
architecture: $(STAMP)
	$(BIN)/python scripts/architecture.py $(ARCH_ARGS)

# Federated simulation: a round of 100 and 1,000 in-process clients, per-client loop vs batched cohort
.PHONY: bench-fl-sim
bench-fl-sim: $(STAMP)
	$(BIN)/python benchmarks/fl_simulation.py

# Federated learning vs Flower 1.42 (simulation at 10/100/1,000 clients, SecAgg+, loopback
# deployment). Flower lives in a side venv (benchmarks/README.md has the recipe); without it
# only veil's figures are printed: make bench-fl FLOWER_PY=/work/flower-venv/bin/python
FLOWER_PY ?= /work/flower-venv/bin/python
.PHONY: bench-fl
bench-fl: $(STAMP)
	$(BIN)/python benchmarks/fl.py $(if $(wildcard $(FLOWER_PY)),--flower $(FLOWER_PY))

# Keras training on a loopback node (remote.fit, one message per epoch) vs Keras's fit locally
.PHONY: bench-keras
bench-keras: $(STAMP)
	$(BIN)/pip install -q -e '.[keras]'
	$(BIN)/python benchmarks/keras.py

# The Ray backend of veil.fl.simulate: installs the `ray` extra into .venv and runs its tests
# on a local 2-CPU Ray cluster (they skip, with the reason, where Ray is missing).
.PHONY: test-ray
test-ray: $(STAMP)
	$(BIN)/pip install -q -e '.[ray]'
	$(BIN)/pytest -q tests/fl/test_ray.py src/veil/fl/ray_backend.py
