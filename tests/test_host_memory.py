"""CPU training keeps freed host memory for reuse (train/host_memory.py): the same large block allocated again
costs no page faults; a user's own malloc settings are left alone. Each check runs in a fresh interpreter
(``mallopt`` is process-wide and cannot be undone)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _thp_always() -> bool:
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"),
    pytest.mark.skipif(_thp_always(), reason="transparent huge pages 'always': 2 MiB faults, the 4 KiB count "
                       "below does not apply"),
]

PROBE = textwrap.dedent("""
    import resource, sys, torch
    from cyclegan_dist.train.host_memory import retain_freed_memory

    def faults_per_alloc(n=6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            x = torch.empty(16 * 2**20)  # 64 MiB, above glibc's largest default mmap threshold
            x.fill_(1.0)  # first touch of every page
            del x
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    default = faults_per_alloc()
    applied = retain_freed_memory()
    faults_per_alloc(12)  # the heap grows to hold the block (glibc settles within a few allocations)
    print(applied, default, faults_per_alloc())
""")


def _probe(extra_env: dict | None = None) -> tuple[bool, float, float]:
    from cyclegan_dist.train.host_memory import OPT_OUT, USER_SETTINGS

    env = {k: v for k, v in os.environ.items() if k not in (*USER_SETTINGS, OPT_OUT)}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, default, kept = out.stdout.split()
    return applied == "True", float(default), float(kept)


def test_freed_blocks_are_reused_without_page_faults():
    applied, default, kept = _probe({"GLIBC_TUNABLES": "glibc.pthread.rseq=1"})  # other tunables: not in the way
    assert applied
    assert default > 10_000  # 64 MiB / 4 KiB pages, faulted in again at every allocation by default
    assert kept < default / 20  # kept in the heap: reused as it is


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"CYCLEGAN_KEEP_FREED_MEMORY": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_a_users_own_malloc_settings_win(env):
    applied, default, kept = _probe(env)
    assert not applied and kept > default / 2  # left as the user set it: still faulting
