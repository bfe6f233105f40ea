"""Faults of a real cluster, on the test SLURM: the code edited while a job waits to be requeued, a rank killed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from slurm_helpers import NEEDS_SLURM, job_ended, job_events, last_step, sh, task_pids

from cyclegan_dist.rundir import RunDir
from launcher.runs import read_manifest

from helpers import ROOT, TINY, job_env, launcher, wait_for

pytestmark = [NEEDS_SLURM, pytest.mark.xdist_group("slurm")]  # one xdist worker runs every SLURM test


def test_a_requeued_job_runs_the_snapshot_not_the_edited_checkout(tmp_path, slurm_cluster):
    """Submitted from a checkout that is then edited (here: the training loop replaced by a crash) before the job is
    requeued: every attempt imports the snapshot taken at submission, and the manifest and each start event say so."""
    checkout = tmp_path / "checkout"
    for part in ("cyclegan_dist", "launcher", "configs", "slurm/clusters"):  # the packages and what they ship
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    out = launcher("submit", "--exp", "smoke", "--cluster", "testcluster", "--gpus", "2", "--name", "snap", "--set",
                   *TINY, "train.steps=60", "train.log_every=2", "train.checkpoint_every=10", cwd=work,
                   env=job_env(checkout))
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = work / "runs" / "smoke" / "snap"
    m = read_manifest(run_dir)
    snapshot = Path(m["code"]["snapshot"])
    assert m["code"]["source"] == str(checkout) and (snapshot / "cyclegan_dist" / "train" / "loop.py").is_file()
    wait_for(lambda: last_step(run_dir) >= 4, "training to start", 600)
    (checkout / "cyclegan_dist" / "train" / "loop.py").write_text("raise RuntimeError('edited after submission')\n")
    sh("scancel", "--signal=USR2", m["job"]["id"])
    wait_for(lambda: any(e["event"] == "completed" for e in job_events(run_dir)), "the requeued job to finish", 600)
    starts = [e for e in job_events(run_dir) if e["event"] == "start"]
    assert [e["restart_count"] for e in starts] == [0, 1] and all(e["code"]["path"] == str(snapshot) for e in starts)
    assert "edited after submission" not in Path(m["job"]["log"]).read_text()


def test_a_killed_rank_ends_the_job_promptly_and_resume_continues(tmp_path, slurm_cluster):
    """SIGKILL of one rank of a 2-task job: the job ends (srun --kill-on-bad-exit, or the survivor's broken
    connection), not through the collective's timeout: that is set to 30 min here, beyond the 10 min hang guard;
    the surviving rank's error is recorded and shown by `launcher status`, and `launcher resume` continues from
    the last complete checkpoint."""
    out = launcher("submit", "--exp", "smoke", "--cluster", "testcluster", "--gpus", "2", "--name", "kill", "--set",
                   *TINY, "train.steps=400", "train.log_every=2", "train.checkpoint_every=4",
                   "train.dist_timeout_min=30", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "smoke" / "kill"
    job = read_manifest(run_dir)["job"]["id"]
    wait_for(lambda: RunDir(run_dir).latest() is not None and last_step(run_dir) >= 6, "a checkpoint", 600)
    pids = wait_for(lambda: (p := task_pids(job)) and len(p) == 2 and p, "the two ranks' processes", 120)
    t_kill = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: job_ended(job), "the job to end (a hang guard, far below the 30 min collective timeout)", 600)
    print(f"\nrank 1 killed -> job ended in {time.monotonic() - t_kill:.1f} s")
    status = launcher("status", "--json", "kill", cwd=tmp_path)
    (row,) = json.loads(status.stdout)
    assert row["state"] in ("FAILED", "CANCELLED", "NODE_FAIL"), row["state"]
    assert row["last_problem"] and row["last_problem"].startswith("failed (rank 0)"), row["last_problem"]
    failed = [e for e in job_events(run_dir) if e["event"] == "failed"]
    assert failed and failed[0]["rank"] == 0 and failed[0]["error"], failed
    assert "timed out" not in failed[0]["error"].lower(), failed  # not the collective's timeout
    table = launcher("status", "kill", cwd=tmp_path).stdout
    assert "failed (rank 0)" in table
    last_good = RunDir(run_dir).latest()
    again = launcher("resume", "kill", "--set", "train.steps=40", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    wait_for(lambda: any(e["event"] == "completed" for e in job_events(run_dir)), "the resumed job to finish", 600)
    log = Path(read_manifest(run_dir)["job"]["log"]).read_text()
    resumed = re.findall(r"resumed from (\S+) at step (\d+)", log)
    assert resumed and resumed[0][0] == str(last_good), (resumed, last_good)
    assert RunDir(run_dir).latest().name == "step-00000040"
