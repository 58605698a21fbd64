"""Where things are (the project root, paths relative to it or to the cwd) and how a run's JSON
files are written and read (atomically; NumPy values as plain JSON).

Notebooks run with the repo root as cwd under ``cxr run`` and with ``notebooks/`` as cwd in
JupyterLab; a relative path like ``configs/demo.yaml`` must mean the same in both. Each run file
has one owner module that knows its schema; the owners use ``write_json``/``read_json`` below.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

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


def _json_plain(obj: Any) -> Any:
    """NumPy scalars/arrays and paths as plain JSON values (non-finite NumPy floats as null)."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file, then rename); parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_plain))
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Optional[Any]:
    """The JSON value in ``path``; None when the file is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
