"""Project hygiene: committed notebooks are clean and parameterized; conda and pip agree; CI calls make test."""

from __future__ import annotations

import json
import re

import nbformat
import pytest
import tomllib
import yaml

from cxr_helpers.paths import project_root
from cxr_helpers.run.notebook import NOTEBOOK_PARAMS, notebook_parameters

ROOT = project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_parameterized(path):
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") for c in code), "outputs must be stripped before commit"
    assert all(c.get("execution_count") is None for c in code), "execution counts must be cleared"
    tagged = [c for c in raw["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert tagged[0] is code[0], "the parameters cell is the first code cell"
    namespace: dict = {}
    exec("".join(tagged[0]["source"]), namespace)  # plain literals only
    params = set(notebook_parameters({k: v for k, v in namespace.items() if k != "__builtins__"}))
    assert params == set(NOTEBOOK_PARAMS[path.stem]), f"parameters {params} != {NOTEBOOK_PARAMS[path.stem]}"
    setup = "".join(code[1]["source"])
    opener = ("open_comparison(sweep_dir, run_dirs, out_dir)" if path.stem == "06_compare"
              else f'setup(globals(), "{path.stem}")')
    assert opener in setup, "the cell after parameters opens the run (06: the runs to compare)"
    assert raw["metadata"]["kernelspec"]["name"] == "cxr"


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_side = {r.replace(" ", "") for r in pip_block if not r.startswith("-")}
    assert conda_side == pip_side
    assert "-e ." in pip_block
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert py.split("=")[-1] in {"3.10", "3.11", "3.12"}


def test_constraints_pin_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert _name(req) in pinned, f"{req} is not pinned in constraints.txt"


def test_ci_runs_make_test_with_shared_data_required():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "CXR_REQUIRE_SHARED_DATA=1" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make report" in readme and "make test" in readme
