"""How many threads a CPU training process uses: the CPUs it may really run on and that are free, per local rank.

torch's default is the number of physical cores of the machine, whatever the process was given and whatever else
runs there. OpenMP's threads wait for each other at every op, so a thread that shares its core loses far more
than it adds (``python -m benchmarks.threads``; figures in benchmarks/RESULTS.md, session 6). So unless the user
set ``OMP_NUM_THREADS`` (SLURM jobs get it from ``SLURM_CPUS_PER_TASK`` through the launcher; torchrun sets it to 1), a
CPU rank uses the CPUs of its affinity mask, capped by the cgroup quota, divided among the ranks of this machine;
and when the process may run on every CPU of the machine (nothing reserved for it), the ones that the 1-minute load
average says are busy are left out. Decided once, at start; at least one thread. A resumed run uses the count its
checkpoint was written with (other threads sum in another order: resume would not be bit-exact).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cyclegan_dist.train")


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs the cgroup v2 quota allows (``cpu.max``: quota/period), or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded down, at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def default_threads(local_ranks: int) -> int:
    ranks = max(1, local_ranks)
    usable = usable_cpus()
    threads = usable // ranks
    if usable >= (os.cpu_count() or usable):  # the whole machine, shared: leave out what is busy already
        threads = min(threads, (usable - round(_load())) // ranks)
    return max(1, threads)


def _load() -> float:
    """The 1-minute load average (runnable processes on the whole machine), 0 when unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def set_cpu_threads(local_ranks: int) -> int | None:
    """Set torch's intra-op threads for a CPU rank, unless the user chose (OMP_NUM_THREADS); returns the number
    set, or None when left alone."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = default_threads(local_ranks)
    if threads != torch.get_num_threads():
        log.info("CPU training: %d thread(s) per rank (%d usable CPU(s), load %.1f, %d rank(s) here; "
                 "OMP_NUM_THREADS overrides)", threads, usable_cpus(), _load(), local_ranks)
        torch.set_num_threads(threads)
    return threads
