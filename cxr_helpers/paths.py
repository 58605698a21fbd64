"""Where things are: the project root, and paths given relative to it or to the cwd.

Notebooks run with the repo root as cwd under ``cxr run`` and with ``notebooks/`` as cwd in
JupyterLab; a relative path like ``configs/demo.yaml`` must mean the same in both.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def project_root() -> Path:
    """The folder holding ``pyproject.toml`` and ``notebooks/`` (env CXR_ROOT wins)."""
    env = os.environ.get("CXR_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), PACKAGE_DIR):
        for cand in (start, *start.parents):
            if (cand / "pyproject.toml").is_file() and (cand / "notebooks").is_dir():
                return cand
    return Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute path: as given if absolute or existing from the cwd, else under the project root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.resolve()
    return project_root() / p


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout (env CXR_SHARED_DATA wins)."""
    env = os.environ.get("CXR_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"
