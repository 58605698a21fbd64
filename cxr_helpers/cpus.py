"""How many CPU cores heavy work should use now: the affinity mask, the cgroup quota, and the cores
other processes keep busy.

Why the load matters: PyTorch's intra-op threads (OpenMP) meet at a barrier after every parallel
region. When one of them shares a core with another busy process, the scheduler takes that core
away for whole time slices while the other threads wait, so every operator waits for the slowest
thread; on a 2-core box with one other busy process, two threads trained the demo 1.6x slower
than one (``docs/benchmarks.md``, "Busy machine"). So the default counts a core as ours only when
most of it is idle.

``cpu_budget()`` samples ``/proc/stat`` for the cores in the affinity mask over ``interval``
seconds (0.2 s by default), subtracts this process's own CPU time, and returns a ``CpuBudget``:
``usable = max(1, floor(limit - busy_others + 1 - BUSY_SHARE))`` where ``limit`` is
``min(affinity cores, cgroup quota)``; i.e. a core stays usable while others use less than
``BUSY_SHARE`` of it. Where ``/proc/stat`` cannot be read (macOS, Windows) the load is unknown and
``usable = limit``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

BUSY_SHARE = 0.6
"""Others may use up to (not including) this share of a core before it stops counting as ours."""
SAMPLE_SECONDS = 0.2

CpuTimes = dict[int, tuple[int, int]]
"""cpu index -> (busy jiffies, total jiffies) since boot."""


@dataclass(frozen=True)
class CpuBudget:
    """The cores work may use: ``cores`` in the affinity mask, ``quota`` the cgroup CPU limit in
    cores (None: unlimited), ``busy_others`` the cores other processes used during the sample (None:
    not measurable here), ``usable`` the resulting count (>= 1)."""

    cores: int
    quota: Optional[float]
    busy_others: Optional[float]
    usable: int

    def reason(self) -> str:
        """One line for reports: how ``usable`` came about."""
        parts = [f"{self.cores} core{'s' if self.cores != 1 else ''} in the affinity mask"]
        if self.quota is not None:
            parts.append(f"cgroup quota {self.quota:g} cores")
        if self.busy_others is None:
            parts.append("load of other processes unknown")
        else:
            parts.append(f"other processes busy on {self.busy_others:.1f} cores")
        return f"{self.usable} usable: " + ", ".join(parts)


def affinity_cores() -> list[int]:
    """The CPU indices this process may run on (all CPUs where there is no affinity API)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return list(range(os.cpu_count() or 1))


def _cgroup_v2_dir(root: Path, proc_cgroup: Path) -> Path:
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
                cand = root / rel
                if (cand / "cpu.max").is_file():
                    return cand
    except OSError:
        pass
    return root


def cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[float]:
    """The cgroup CPU limit in cores (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None when
    unlimited or unreadable."""
    try:
        text = (_cgroup_v2_dir(root, proc_cgroup) / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text and text[0] == "max":
            return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def read_cpu_times(path: Path = Path("/proc/stat")) -> Optional[CpuTimes]:
    """Per-CPU (busy, total) jiffies from ``/proc/stat``; None where it cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    out: CpuTimes = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            vals = [int(v) for v in fields[:8]]
        except ValueError:
            continue
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        total = sum(vals)
        out[int(name[3:])] = (total - idle, total)
    return out or None


def busy_cores(before: CpuTimes, after: CpuTimes, cpus: list[int]) -> Optional[float]:
    """Cores busy between two ``read_cpu_times`` samples, summed over ``cpus`` (each in [0, 1])."""
    busy = 0.0
    seen = False
    for c in cpus:
        if c not in before or c not in after:
            continue
        d_busy = after[c][0] - before[c][0]
        d_total = after[c][1] - before[c][1]
        if d_total > 0:
            busy += min(1.0, max(0.0, d_busy / d_total))
            seen = True
    return busy if seen else None


def usable_cores(cores: int, quota: Optional[float], busy_others: Optional[float]) -> int:
    """``max(1, floor(limit - busy_others + 1 - BUSY_SHARE))`` with ``limit = min(cores, quota)``."""
    limit = float(cores) if quota is None else min(float(cores), max(1.0, quota))
    if busy_others is None:
        return max(1, int(math.floor(limit)))
    return max(1, min(int(math.floor(limit)), int(math.floor(limit - busy_others + 1 - BUSY_SHARE))))


def cpu_budget(
    interval: float = SAMPLE_SECONDS,
    read_times: Callable[[], Optional[CpuTimes]] = read_cpu_times,
    quota: Callable[[], Optional[float]] = cgroup_quota,
) -> CpuBudget:
    """Sample the machine for ``interval`` seconds and say how many cores work may use now."""
    cpus = affinity_cores()
    limit = quota()
    before = read_times()
    own0, wall0 = time.process_time(), time.perf_counter()
    others = None
    if before is not None:
        time.sleep(interval)
        after = read_times()
        own = (time.process_time() - own0) / max(time.perf_counter() - wall0, 1e-6)
        busy = busy_cores(before, after, cpus) if after is not None else None
        others = None if busy is None else max(0.0, busy - own)
    return CpuBudget(len(cpus), limit, others, usable_cores(len(cpus), limit, others))
