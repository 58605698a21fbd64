"""Where things are (the project root, paths relative to it or to the cwd) and how a run's JSON
files are written and read (atomically; NumPy values as plain JSON).

Notebooks run with the repo root as cwd under ``cxr run`` and with ``notebooks/`` as cwd in
JupyterLab; a relative path like ``configs/demo.yaml`` must mean the same in both. Each run file
has one owner module that knows its schema; the owners use ``write_json``/``read_json`` below.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


def outputs_root() -> Path:
    """Where run dirs go by default and ``outputs/index.html`` lists them: ``<project>/outputs``,
    or env ``CXR_OUTPUTS`` (the test suite points it at a temp folder so tests never touch yours)."""
    env = os.environ.get("CXR_OUTPUTS")
    return Path(env).resolve() if env else project_root() / "outputs"


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


class DiskWriteError(OSError):
    """A file could not be written (full or read-only disk, no permission, quota); the message is one
    line naming the file and the free space where it was going."""


_DISK_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is too large for this file system",
}
# what torch.save's zip writer raises when a write is cut short (a full disk under its feet)
_TORCH_WRITE_FAILURES = ("inline_container", "file write failed", "unexpected pos")


def is_disk_error(exc: BaseException) -> bool:
    """True for the errors a full, read-only or forbidden target gives (OSError errno, or torch.save's
    ``RuntimeError: [enforce fail at inline_container.cc...]``)."""
    if isinstance(exc, DiskWriteError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _DISK_REASONS
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _TORCH_WRITE_FAILURES)


def _existing(path: Path) -> Path:
    for cand in (path, *path.parents):
        if cand.exists():
            return cand
    return Path("/")


def _free_bytes(path: str | os.PathLike) -> int:
    try:
        return shutil.disk_usage(_existing(Path(path).absolute())).free
    except OSError:
        return 2**62


def free_space(path: str | os.PathLike) -> str:
    """``"1.2 MiB free on /data"``: the free space of the file system ``path`` is (or would be) on."""
    where = _existing(Path(path).absolute())
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return f"free space on {where} unknown"
    size = float(free)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    amount = f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
    return f"{amount} free on {where}"


def disk_error(path: str | os.PathLike, exc: BaseException, todo: str = "") -> DiskWriteError:
    """The one-line DiskWriteError for a failed write of ``path``: what went wrong, the free space,
    and ``todo`` (default: free space there or write somewhere else)."""
    if isinstance(exc, DiskWriteError):
        return exc
    code = getattr(exc, "errno", None)
    reason = _DISK_REASONS.get(code) if code else None
    if reason is None and _free_bytes(path) < 2**20:  # torch.save's zip writer hides the errno
        code, reason = errno.ENOSPC, _DISK_REASONS[errno.ENOSPC]
    if reason is None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"the write failed ({first[:100]})"
    if not todo:
        full = code in (errno.ENOSPC, errno.EDQUOT) or reason.startswith("the write failed")
        todo = ("free some space there or write" if full else "write") + " to another folder (e.g. --out DIR)"
    err = DiskWriteError(f"cannot write {path}: {reason} ({free_space(path)}); {todo}")
    err.errno = code or errno.EIO
    return err


@contextmanager
def removing_on_failure(target: str | os.PathLike, *tmp_paths: str | os.PathLike) -> Iterator[None]:
    """Run a write of ``target`` through ``tmp_paths``: on any failure the temp files are removed, and
    a full/read-only/forbidden disk is re-raised as a one-line DiskWriteError naming ``target`` and
    the free space at the moment of failure (before the temp files were removed)."""
    try:
        yield
    except BaseException as exc:
        err = disk_error(target, exc) if is_disk_error(exc) else None  # the free space as it failed
        for tmp in tmp_paths:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if err is not None:
            raise err from exc
        raise


def temp_name(path: str | os.PathLike) -> Path:
    """The hidden temp file an atomic write of ``path`` goes through (``.NAME.tmpPID`` beside it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file, then rename; parents created). On failure
    the temp file is removed and a full or read-only disk raises DiskWriteError (one line)."""
    path = Path(path)
    tmp = temp_name(path)
    with removing_on_failure(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there (a small probe file, then
    removed); DiskWriteError (one line, with the free space) otherwise. Used before long work."""
    folder = Path(folder)
    probe = folder / f".cxr-write-probe{os.getpid()}"
    with removing_on_failure(folder, probe):
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    return folder


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (``write_text``: temp file, then rename;
    temp file removed and DiskWriteError on a full or read-only disk)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_plain))


def read_json(path: str | os.PathLike) -> Optional[Any]:
    """The JSON value in ``path``; None when the file is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
