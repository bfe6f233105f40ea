"""CPU threads per rank: the CPUs the process may use (affinity, cgroup quota), minus what is busy on a shared
machine, divided among the local ranks; OMP_NUM_THREADS always wins. The figures behind it: benchmarks/threads.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cyclegan_dist.train import cpu_threads

from helpers import ROOT, TINY, _env, events


@pytest.mark.parametrize("text, cpus", [("max 100000", None), ("50000 100000", 0.5), ("400000 100000", 4.0),
                                        ("garbage", None)])
def test_cgroup_quota_is_read_from_cpu_max(tmp_path, text, cpus):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cpu_threads.cgroup_cpu_quota(tmp_path) == cpus


@pytest.mark.parametrize("affinity, quota, load, ranks, expected", [
    (4, None, 0.0, 1, 4),   # a quiet machine of 4: all of it
    (4, None, 2.2, 1, 2),   # two CPUs busy with other work: the two free ones
    (4, None, 9.0, 1, 1),   # all busy: one thread (they would only wait for each other)
    (4, None, 0.0, 2, 2),   # two ranks here share the machine
    (4, 1.5, 0.0, 1, 1),    # a cgroup quota of 1.5 CPUs
    (2, None, 9.0, 1, 2),   # an affinity mask (CPUs reserved for this process): other load does not count
])
def test_default_threads(monkeypatch, affinity, quota, load, ranks, expected):
    """The policy over the machine's readings (affinity, cgroup quota, load average: set here, as a test cannot make
    a 4-CPU machine or a steady load average)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(cpu_threads, "cgroup_cpu_quota", lambda: quota)
    assert cpu_threads.default_threads(ranks) == expected


def _train(run_dir, steps: int, env: dict) -> dict:
    """A tiny training without OMP_NUM_THREADS unless ``env`` sets it; its last train_start event."""
    base = {k: v for k, v in _env(None).items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "cyclegan_dist", "train", "--config", "smoke", "--run-dir", str(run_dir), "--set",
           *TINY, f"train.steps={steps}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=base | env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return events(run_dir, "train_start")[-1]


def test_the_run_chooses_its_threads_records_them_and_resume_keeps_them(tmp_path):
    """Two ranks on this machine (LOCAL_WORLD_SIZE=2) share its CPUs: fewer threads than torch's default on a
    machine of 2 or more; OMP_NUM_THREADS wins; a resume keeps the thread count its checkpoint was written with
    (other threads, other summation order), here 2 where it would choose fewer."""
    import torch

    usable = cpu_threads.usable_cpus()
    chosen = _train(tmp_path / "a", 1, {"LOCAL_WORLD_SIZE": "2"})["cpu_threads"]
    assert chosen == max(1, min(usable // 2, chosen)) and (usable < 2 or chosen < torch.get_num_threads() or
                                                           torch.get_num_threads() == 1)
    assert _train(tmp_path / "b", 2, {"OMP_NUM_THREADS": "2"})["cpu_threads"] == 2
    resumed = _train(tmp_path / "b", 4, {"LOCAL_WORLD_SIZE": "4"})  # alone it would choose max(1, usable // 4)
    assert resumed["resumed_from"] and resumed["cpu_threads"] == 2
