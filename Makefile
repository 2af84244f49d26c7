# The two fresh-machine commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-docker

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/droppos-bench demo

# One torch thread per xdist worker: two workers on two cores instead of four threads fighting over them.
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

# Checks that train for minutes (a tiny detector learning on CPU); not part of CI's `make test`.
test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -m slow

# Builds docker/Dockerfile with buildah (no Docker engine needed; root, `apt-get install buildah mmdebstrap`) and runs
# `demo --quick` in the image on the CPU; not part of `make test`. Storage: docker/build_local.sh's header.
test-docker:
	docker/build_local.sh
