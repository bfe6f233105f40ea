"""Shared fixtures.

``slurm_cluster``: the single-host test SLURM (slurm/testcluster), started once per session if it is not up.
Tests that need it skip only when ``sbatch`` is missing and CYCLEGAN_REQUIRE_SLURM is unset; with
CYCLEGAN_REQUIRE_SLURM=1 (CI) a missing or dead cluster is a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _node_up() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    states = proc.stdout.split()
    return proc.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A running test SLURM: started with slurm/testcluster/start.sh when it is not up (root only)."""
    if _node_up():
        return
    start = ROOT / "slurm" / "testcluster" / "start.sh"
    if os.geteuid() != 0 or not start.is_file():
        pytest.fail(f"SLURM is not running and cannot be started here (needs root and {start})")
    proc = subprocess.run(["bash", str(start)], check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not _node_up():
        pytest.fail(f"bash {start} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
