"""Where a run came from: code version, package versions, device, timings.

A reviewer reading a report months later must be able to tell which code and environment
produced it; ``provenance.json`` in the run dir holds that.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cxr_helpers.paths import project_root, read_json, write_json

PROVENANCE_FILE = "provenance.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(root: Path | None = None) -> dict[str, Any]:
    """Commit hash and whether the working tree has uncommitted changes (None outside git)."""
    root = root or project_root()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = ("torch", "torchvision", "timm", "grad-cam", "numpy", "pandas",
                                                 "scikit-learn", "papermill", "cxr")) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The accelerator torch sees (or the CPU), with CUDA version when present."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    try:
        info["cpu_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        pass
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["cuda_version"] = torch.version.cuda
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        else:
            info["device"] = "cpu"
    except ImportError:  # pragma: no cover
        info["device"] = "cpu"
    return info


def collect(seed: int) -> dict[str, Any]:
    """Everything except timings, which the runner fills in as notebooks finish."""
    return {
        "git": git_state(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(),
        "seed": seed,
    }


def save_provenance(run_dir: str | os.PathLike, prov: dict[str, Any]) -> Path:
    """Write ``provenance.json`` (``collect``'s record plus timings) into ``run_dir`` atomically."""
    return write_json(Path(run_dir) / PROVENANCE_FILE, prov)


def read_provenance(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``provenance.json`` of a run dir; {} when absent or unreadable."""
    obj = read_json(Path(run_dir) / PROVENANCE_FILE)
    return obj if isinstance(obj, dict) else {}
