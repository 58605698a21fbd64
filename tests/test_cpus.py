"""Threads follow the cores free now (affinity, cgroup quota, other processes' load); a pinned count
is kept whatever the load."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from cxr_helpers import cpus, runtime
from cxr_helpers.cpus import CpuBudget, busy_cores, cgroup_quota, read_cpu_times, usable_cores


def test_usable_cores_counts_a_core_only_when_others_leave_most_of_it():
    assert usable_cores(2, None, 0.05) == 2  # quiet
    assert usable_cores(2, None, 0.35) == 2  # a light background job
    assert usable_cores(2, None, 0.7) == 1  # one busy process
    assert usable_cores(2, None, 2.0) == 1  # never below one
    assert usable_cores(8, None, 3.0) == 5
    assert usable_cores(8, 2.5, 0.0) == 2  # the cgroup quota caps it
    assert usable_cores(4, None, None) == 4  # load unknown: the cores we may use


def test_cgroup_v2_and_v1_quotas_are_read(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")
    (v2 / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    assert cgroup_quota(v2, proc) == pytest.approx(1.5)
    proc.write_text("0::/\n")
    assert cgroup_quota(v2, proc) is None  # unlimited
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1, proc) == pytest.approx(3.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(v1, proc) is None


def test_proc_stat_gives_per_cpu_busy_share(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 80 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0\nintr 1\n")
    before = read_cpu_times(stat)
    stat.write_text("cpu  0 0 0 0 0 0 0 0\ncpu0 105 0 5 40 0 0 0 0\ncpu1 5 0 25 120 0 0 0 0\n")
    after = read_cpu_times(stat)
    assert busy_cores(before, after, [0, 1]) == pytest.approx(1.0 + 0.2)
    assert busy_cores(before, after, [1]) == pytest.approx(0.2)  # only the cores we may use
    assert read_cpu_times(tmp_path / "absent") is None


def test_a_busy_process_takes_a_core_out_of_the_budget():
    """A real spinning process pinned to one of our cores: the budget sees it and leaves that core."""
    cores = cpus.affinity_cores()
    if len(cores) < 2 or read_cpu_times() is None:
        pytest.skip(f"needs /proc/stat and 2+ cores in the affinity mask (have {len(cores)})")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {cores[0]}))
    try:
        time.sleep(0.3)
        busy = cpus.cpu_budget(interval=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy.busy_others is not None and busy.busy_others >= 0.7
    assert busy.usable <= len(cores) - 1
    assert "other processes busy on" in busy.reason()


def test_pinned_threads_ignore_the_load(monkeypatch):
    loaded = CpuBudget(cores=8, quota=None, busy_others=7.5, usable=1)
    monkeypatch.setattr(runtime, "cpu_budget", lambda: loaded)
    monkeypatch.delenv("CXR_THREADS", raising=False)
    cpu = torch.device("cpu")
    assert runtime.choose_threads(3, cpu).threads == 3 and runtime.choose_threads(3, cpu).pinned
    monkeypatch.setenv("CXR_THREADS", "2")
    assert runtime.choose_threads(None, cpu).reason == "CXR_THREADS=2 (pinned)"
    monkeypatch.delenv("CXR_THREADS")
    choice = runtime.choose_threads(None, cpu)
    assert choice.threads == 1 and not choice.pinned and "busy on 7.5 cores" in choice.reason


def test_apply_threads_sets_torch_and_returns_the_reason(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "cpu_budget", lambda: CpuBudget(2, None, 0.9, 1))
    monkeypatch.delenv("CXR_THREADS", raising=False)
    try:
        choice = runtime.apply_threads(None, torch.device("cpu"))
        assert torch.get_num_threads() == 1 and choice.reason.startswith("1 usable")
    finally:
        torch.set_num_threads(before)


def test_cache_workers_follow_the_budget(monkeypatch):
    from cxr_helpers.data import decode

    monkeypatch.setattr(decode, "cpu_budget", lambda: CpuBudget(4, None, 2.0, 2))
    assert decode.default_workers(None) == 2
    assert decode.default_workers(3) == 3  # data.num_workers pins it
