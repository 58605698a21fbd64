"""Package shape: stages import one way (import-linter's layers contract) and imports sit at module tops."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_helpers.paths import project_root

ROOT = project_root()
PACKAGE = ROOT / "cxr_helpers"

# (module file, imported cxr_helpers module) allowed inside a function body, and why.
# The CLI keeps each command's stack out of the others' start-up: `cxr --help` imports in ~0.2 s,
# cxr_helpers.run.runner (nbformat, jsonschema) takes ~3 s and train/predict (torch) ~8 s.
LAZY_SIBLING_IMPORTS = {
    ("run/cli.py", "cxr_helpers.run.runner"),
    ("run/cli.py", "cxr_helpers.train.loop"),
    ("run/cli.py", "cxr_helpers.predict.findings"),
    ("run/cli.py", "cxr_helpers.run.cache_cmd"),
    ("run/labels_cmd.py", "cxr_helpers.data.labeler"),
    ("run/labels_cmd.py", "cxr_helpers.paths"),
    ("run/sweep_cmd.py", "cxr_helpers.run.runner"),
    ("run/sweep_cmd.py", "cxr_helpers.run.sweep"),
    ("run/sweep_cmd.py", "cxr_helpers.run.sweep_optuna"),
    ("predict/single.py", "cxr_helpers.predict.overlays"),
}


def _lint_imports() -> Path:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        pytest.skip(f"{exe} missing: pip install -c constraints.txt -e '.[dev]'")
    return exe


def test_stages_import_one_way():
    """`lint-imports` keeps the layers contract in pyproject.toml (run > predict > ... > data > top level)."""
    proc = subprocess.run(
        [str(_lint_imports()), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _sibling_imports_in_functions(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every cxr_helpers import (absolute or relative) inside a function body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                if node.level or (node.module or "").split(".")[0] == "cxr_helpers":
                    found.append((node.lineno, "." * node.level + (node.module or "")))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "cxr_helpers"]
    return found


def test_sibling_imports_sit_at_module_tops():
    """The module header shows a module's real dependencies: no cxr_helpers import hides in a function."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, module in _sibling_imports_in_functions(path):
            if (rel, module) not in LAZY_SIBLING_IMPORTS:
                bad.append(f"cxr_helpers/{rel}:{line}: {module}")
    assert not bad, "move these imports to the module top:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from cxr_helpers.data import cache\n    from . import x\n    import os\n")
    assert _sibling_imports_in_functions(src) == [(4, "cxr_helpers.data"), (5, ".")]
