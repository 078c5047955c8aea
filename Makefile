# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml tests/example_plugin/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q -e tests/example_plugin
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/pipeline launch graphs/demo.yaml --stats

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check pipeline plugins tests benchmarks

docs: $(VENV)/.installed
	$(BIN)/pipeline inspect --builtin --markdown > docs/yaml.md

bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[bench]'
	for b in overhead offline jitter calls sip conference aec video latency; do \
		$(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) out build *.egg-info
