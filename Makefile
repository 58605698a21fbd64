# The README's commands. `make report` and `make test` create .venv first when it is missing
# or older than pyproject.toml / constraints.txt, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxr-installed
CONFIG ?= configs/demo.yaml

.PHONY: venv report test lab lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing cxr into $(VENV) (pinned by constraints.txt)..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@$(BIN)/python -m ipykernel install --sys-prefix --name cxr --display-name "Python (cxr)" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

report: venv
	@$(BIN)/cxr run $(CONFIG)

test: venv
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: venv
	@$(BIN)/jupyter lab --notebook-dir=notebooks --MultiKernelManager.default_kernel_name=cxr

lint: venv
	@$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
