"""What the tests that submit to the test SLURM share: whether they run (:data:`NEEDS_SLURM`), the job
environment, the launcher as a subprocess, polling.

SLURM tests skip only when ``sbatch`` is missing and CYCLEGAN_REQUIRE_SLURM is unset; with CYCLEGAN_REQUIRE_SLURM=1
(CI) they run, and a missing or dead cluster fails them (the ``slurm_cluster`` fixture, conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyclegan_dist.rundir import RunDir
from launcher.runs import JOB_EVENTS

from helpers import env_flag, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SLURM_ENV = "CYCLEGAN_REQUIRE_SLURM"
REQUIRE_SLURM = env_flag(REQUIRE_SLURM_ENV)
NO_SBATCH = shutil.which("sbatch") is None
NO_SLURM = "no SLURM (sbatch not found)"
TINY = ["train.sample_every=0", "model.ngf=8", "model.ndf=8", "data.num_workers=0", "wandb.mode=disabled"]
# The one SLURM mark (a module's pytestmark or a test's decorator; in a fixture: require_slurm()). Under
# CYCLEGAN_REQUIRE_SLURM the test runs even without sbatch, and fails where it needs SLURM: the slurm_cluster
# fixture (conftest.py), or sbatch itself.
NEEDS_SLURM = pytest.mark.skipif(NO_SBATCH and not REQUIRE_SLURM,
                                 reason=f"{NO_SLURM}; {REQUIRE_SLURM_ENV}=1 makes this a failure")


def skip_or_fail_slurm(message: str = NO_SLURM) -> None:
    """In a fixture or test: skip, or fail under CYCLEGAN_REQUIRE_SLURM (e.g. too few nodes for this test)."""
    skip_or_fail(message, REQUIRE_SLURM_ENV)


def require_slurm() -> None:
    """In a fixture or test, what :data:`NEEDS_SLURM` does as a mark: no sbatch -> skip, or fail under the switch."""
    if NO_SBATCH:
        skip_or_fail_slurm()


def job_env(pythonpath: Path | str = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_")) or k == "SLURM_CONF"}
    env.update({"PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "CYCLEGAN_DIST_CACHE": env.get("CYCLEGAN_DIST_CACHE", str(ROOT / ".cache" / "test"))})
    env.pop("CYCLEGAN_CLUSTER", None)
    env.pop("CYCLEGAN_RUN_ROOT", None)
    return env


def launcher(*args: str, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], check=False, capture_output=True, text=True,
                          env={**job_env(), **(env or {})}, cwd=cwd, timeout=timeout)


def sh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def wait_for(predicate, what: str, timeout: float = 300, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def last_step(run_dir: Path) -> int:
    records = [r for r in RunDir(run_dir).metrics() if "loss/G" in r]
    return records[-1]["step"] if records else 0


def job_events(run_dir: Path) -> list[dict]:
    return [e for e in RunDir(run_dir).events() if e["event"] in JOB_EVENTS]


def job_ended(job_id: str) -> bool:
    return job_id.split("_")[0] not in set(sh("squeue", "-h", "-o", "%A").split())
