"""The single-host test SLURM cluster (slurm/testcluster/start.sh) behaves like a real one.

Skipped only when `sbatch` is missing and CYCLEGAN_REQUIRE_SLURM is unset; with
CYCLEGAN_REQUIRE_SLURM=1 (CI) a missing or dead cluster fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import NEEDS_SLURM, sacct_state, squeue_state

from helpers import wait_for

START_HINT = "start it with: bash slurm/testcluster/start.sh"

pytestmark = [NEEDS_SLURM, pytest.mark.xdist_group("slurm")]  # one xdist worker runs every SLURM test


def run(*args: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} not found: SLURM is not installed; {START_HINT}")
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def submit(*args: str) -> str:
    out = run("sbatch", "--parsable", *args).stdout.strip()
    return out.split(";")[0]


@pytest.fixture(scope="module")
def cluster():
    proc = run("sinfo", "-h", "-N", "-o", "%N|%T|%c|%G", check=False)
    if proc.returncode != 0:
        pytest.fail(f"sinfo failed ({proc.stderr.strip()}): the cluster is not running; {START_HINT}")
    submitted: list[str] = []
    yield submitted
    if submitted:
        run("scancel", *submitted, check=False)


def test_sinfo_shows_node_with_two_gpus(cluster):
    def ready_rows():  # a node another test has taken down (state with a '*': not responding) comes back first
        rows = [line.split("|") for line in run("sinfo", "-h", "-N", "-o", "%N|%T|%c|%G").stdout.split()]
        return rows if rows and not any(r[1].endswith("*") for r in rows) else None

    rows = wait_for(ready_rows, "every node to respond (sinfo lists them)", 300, 1.0)
    names = [r[0] for r in rows]
    # start.sh: one node "localhost", or (--nodes N) N nodes PREFIX-node1..N, each in its own network namespace
    assert names == ["localhost"] or (len(names) >= 2 and all(re.fullmatch(r"[a-z0-9]+-node\d+", n) for n in names)
                                      and len({n.rsplit("-node", 1)[0] for n in names}) == 1), names
    for node, state, cpus, gres in rows:
        assert state in {"idle", "mixed", "allocated", "completing"}, (node, state)
        assert int(cpus) == 4
        assert gres.startswith("gpu:2"), gres


def test_multi_task_gpu_job_runs_and_is_accounted(cluster, tmp_path: Path):
    out = tmp_path / "job.out"
    script = (
        'echo "CVD=$CUDA_VISIBLE_DEVICES NTASKS=$SLURM_NTASKS"; '
        'srun bash -c "echo task=\\$SLURM_PROCID"'
    )
    job = submit("--ntasks-per-node=2", "--gpus-per-node=2", "--time=5", "-o", str(out), "--wrap", script)
    # 2 tasks x 2 CPUs fits too (4 CPUs advertised); run it alongside
    out2 = tmp_path / "job2.out"
    job2 = submit("--ntasks=2", "--cpus-per-task=2", "--gpus-per-node=2", "-o", str(out2),
                  "--wrap", "srun hostname")
    cluster.extend([job, job2])
    wait_for(lambda: sacct_state(job) == "COMPLETED", f"job {job} COMPLETED in sacct (sacct says "
             f"{sacct_state(job)!r})", 600)  # hang guards: the multinode tests may hold the nodes
    text = out.read_text()
    assert "CVD=0,1 NTASKS=2" in text, text
    assert sorted(line for line in text.split() if line.startswith("task=")) == ["task=0", "task=1"]
    wait_for(lambda: sacct_state(job2) == "COMPLETED", f"job {job2} COMPLETED in sacct", 600)
    assert len(out2.read_text().split()) == 2, out2.read_text()


def test_impossible_request_rejected_at_submit(cluster):
    proc = run("sbatch", "--gpus-per-node=4", "--wrap", "true", check=False)
    assert proc.returncode != 0, f"sbatch accepted an impossible request: {proc.stdout}"
    proc = run("sbatch", "--ntasks-per-node=8", "--wrap", "true", check=False)
    assert proc.returncode != 0, f"sbatch accepted more tasks than CPUs: {proc.stdout}"


def test_requeue_running_job_runs_again(cluster, tmp_path: Path):
    out = tmp_path / "requeue.out"
    job = submit("--open-mode=append", "-o", str(out), "--wrap",
                 'echo "restart=${SLURM_RESTART_COUNT:-0}"; sleep 120')
    cluster.append(job)
    wait_for(lambda: out.exists() and "restart=0" in out.read_text(), f"job {job} to start", 600)
    run("scontrol", "requeue", job)
    # cred_expire=10 delays the restart by ~10 s
    wait_for(lambda: "restart=1" in out.read_text(), f"job {job} to run again after requeue", 40)
    assert squeue_state(job) == "RUNNING"
    run("scancel", job)
