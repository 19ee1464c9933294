# `make demo`: set up .venv (if missing), install pml_hyper with its extras, run the offline demo.
# `make test`: the same set-up, then lint and pytest.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pml_hyper_installed

.PHONY: test lint install demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

$(STAMP): $(PY) setup.py pyproject.toml
	$(PY) -m pip install -e ".[dev,faiss,demo]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collected no test; any non-zero status fails the target.
test: lint
	$(PY) -m pytest

demo: install
	$(VENV)/bin/pml-hyper demo
