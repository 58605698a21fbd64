"""Real full and read-only disks for tests: small tmpfs mounts (root only; skipped where mount fails)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(where: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """Mount a ``size`` tmpfs (read-only with ``read_only``) at ``where``; unmounted in a finally.
    Skips the test with the reason when this machine cannot mount (not root, a container without
    CAP_SYS_ADMIN, CI)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()[:120]}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Write zeros into ``folder/name`` until the disk is full; returns the file."""
    path = folder / name
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    try:
        os.sync()
    except AttributeError:  # pragma: no cover
        pass
    return path


def tmp_files(folder: Path) -> list[Path]:
    """Temp files left anywhere under ``folder`` by atomic writes (``.NAME.tmpPID``, ``*.tmp``)."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name and p.is_file()]
