"""What the tests that submit to the test SLURM share: the job environment, the launcher as a subprocess, polling."""

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

ROOT = Path(__file__).resolve().parent.parent
NEEDS_SLURM = pytest.mark.skipif(shutil.which("sbatch") is None and not os.environ.get("CYCLEGAN_REQUIRE_SLURM"),
                                 reason="no SLURM (sbatch not found); CYCLEGAN_REQUIRE_SLURM=1 makes this a failure")
TINY = ["train.sample_every=0", "model.ngf=8", "model.ndf=8", "data.num_workers=0", "wandb.mode=disabled"]


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
