"""What ``launcher status`` (and each ``--watch`` refresh) costs the scheduler: one ``squeue`` call and at most one
``sacct`` call for all the runs shown, and the state of finished runs from their own job events when ``sacct``
cannot answer (no slurmdbd).

``squeue`` and ``sacct`` are wrapped by scripts first on PATH that log each call and run the real binary (or, for
the no-accounting case, fail as SLURM does without accounting). The runs: two real PENDING array tasks (a held
job array on the test cluster) and four finished runs whose jobs SLURM no longer knows (their run directories
hold their job events: completed, failed, cancelled; or none).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from slurm_helpers import NEEDS_SLURM, sh

from launcher import runs

from helpers import launcher

pytestmark = [NEEDS_SLURM, pytest.mark.xdist_group("slurm")]
NO_ACCOUNTING = "sacct: error: Slurm accounting storage is disabled"
FINISHED = {"f-done": ("9900001", "completed", "COMPLETED"), "f-failed": ("9900002", "failed", "FAILED"),
            "f-cancelled": ("9900003", "cancelled", "CANCELLED"),
            "f-vanished": ("9900004", None, "ENDED")}  # run -> (job id nobody knows, last event, state)
# f-vanished: no job event at all (cancelled while pending, say): gone from squeue, no word from sacct -> ENDED


def fake_run(root: Path, name: str, job_id: str, last_event: str | None) -> None:
    """A run directory as ``launcher submit`` leaves it (the fields status reads), with its job events."""
    run_dir = root / "smoke" / name
    runs.write_manifest(run_dir, {
        "version": 1, "run": name, "experiment": "smoke", "seed": 0, "run_dir": str(run_dir), "run_root": str(root),
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "job": {"id": job_id}, "job_ids": [job_id],
        "cluster": {"name": "testcluster", "executor": "slurm"}, "resources": {"gpus": 0, "world_size": 1},
        "config": {"train": {"steps": 4}}})
    if last_event:
        runs.append_event(run_dir, "start", job_id=job_id, step=0)
        runs.append_event(run_dir, last_event, job_id=job_id, step=4)


def wrappers(bin_dir: Path, log: Path, accounting: bool) -> dict[str, str]:
    """squeue and sacct scripts that log their calls; the environment that puts them first on PATH."""
    bin_dir.mkdir()
    for tool in ("squeue", "sacct"):
        real = shutil.which(tool)
        assert real, f"{tool} not on PATH"
        body = f'exec {real} "$@"' if accounting or tool == "squeue" else f'echo "{NO_ACCOUNTING}" >&2; exit 1'
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{body}\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def run_root(slurm_cluster, tmp_path_factory):
    """Two PENDING runs (a held 2-task job array: it never starts) and the finished ones."""
    root = tmp_path_factory.mktemp("polling") / "runs"
    held = sh("sbatch", "--parsable", "--hold", "--array=0-1", "-p", "debug", "-J", "held", "-o", "/dev/null",
              "--wrap", "true").strip().split(";")[0]
    try:
        for i in range(2):
            fake_run(root, f"p{i}", f"{held}_{i}", None)
        for name, (job_id, event, _) in FINISHED.items():
            fake_run(root, name, job_id, event)
        yield root
    finally:
        sh("scancel", held, check=False)


def status(run_root: Path, tmp_path: Path, accounting: bool, *args: str) -> tuple[dict[str, str], list[str]]:
    """``launcher status`` through the wrappers: run -> STATE column, and the logged scheduler calls."""
    log = tmp_path / "calls.log"
    env = wrappers(tmp_path / "bin", log, accounting)
    out = launcher("status", "--run-root", str(run_root), *args, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.startswith(("p", "f-"))]
    return {cols[0]: cols[3] for cols in lines}, log.read_text().splitlines() if log.exists() else []


def count(calls: list[str], tool: str) -> int:
    return sum(1 for c in calls if c.split()[0] == tool)


@pytest.mark.parametrize("accounting", [True, False], ids=["sacct", "no-accounting"])
def test_one_squeue_at_most_one_sacct_for_all_runs(run_root, tmp_path, accounting):
    states, calls = status(run_root, tmp_path, accounting)
    assert count(calls, "squeue") == 1 and count(calls, "sacct") == 1, calls  # the finished jobs: asked once
    assert states == {"p0": "PENDING", "p1": "PENDING", **{n: s for n, (_, _, s) in FINISHED.items()}}, states


def test_watch_refresh_costs_the_same(run_root, tmp_path):
    states, calls = status(run_root, tmp_path, False, *FINISHED, "--watch", "0.1")  # all ended: one refresh
    assert count(calls, "squeue") == 1 and count(calls, "sacct") <= 1, calls
    assert states == {n: s for n, (_, _, s) in FINISHED.items()}, states
