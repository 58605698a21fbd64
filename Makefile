# The README's commands. `make report` and `make test` create .venv first when it is missing
# or older than pyproject.toml / constraints.txt, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxr-installed
CONFIG ?= configs/demo.yaml

.PHONY: venv report test lab app lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing cxr into $(VENV) (pinned by constraints.txt)..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,dicom,medmnist,sweep,hf,app]"
	@$(BIN)/python -m ipykernel install --sys-prefix --name cxr --display-name "Python (cxr)" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

report: venv
	@$(BIN)/cxr run $(CONFIG)

# One pytest worker per core (at most 4; tests use one torch thread each), whole files per worker
# so a module's expensive fixture (the demo chain in test_chain.py) is built once.
PYTEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadfile

test: venv
	@$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

lab: venv
	@$(BIN)/jupyter lab --notebook-dir=notebooks --MultiKernelManager.default_kernel_name=cxr

# The upload-and-predict page of a trained run: `make app RUN=outputs/demo [PORT=8866]`
RUN ?= outputs/demo
PORT ?= 8866
app: venv
	@$(BIN)/cxr app $(RUN) --port $(PORT)

# ruff, the stage layers (pyproject [tool.importlinter]) and dead code; vulture reads the
# notebooks' code too (converted to a temp dir), so names only notebooks use count as used.
lint: venv
	@$(BIN)/ruff check .
	@$(BIN)/lint-imports --no-logo --no-cache
	@$(BIN)/nbstripout --keep-id --verify notebooks/*.ipynb
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/jupyter nbconvert --to python --log-level ERROR --output-dir "$$tmp" notebooks/*.ipynb && \
	  $(BIN)/vulture cxr_helpers vulture_allowlist.py "$$tmp"

clean-venv:
	rm -rf $(VENV)
