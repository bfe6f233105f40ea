"""What the tests that submit to the test SLURM share: whether they run (:data:`NEEDS_SLURM`), the scheduler's view
of a job (squeue, sacct, its task processes), a run's job events and logs, waiting for a job to complete.

SLURM tests skip only when ``sbatch`` is missing and CYCLEGAN_REQUIRE_SLURM is unset; with CYCLEGAN_REQUIRE_SLURM=1
(CI) they run, and a missing or dead cluster fails them (the ``slurm_cluster`` fixture, conftest.py). The nodes
themselves (listing them, taking one down): cluster_nodes.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.runs import JOB_EVENTS, read_manifest

from helpers import env_flag, events, loss_records, skip_or_fail, wait_for

REQUIRE_SLURM_ENV = "CYCLEGAN_REQUIRE_SLURM"
REQUIRE_SLURM = env_flag(REQUIRE_SLURM_ENV)
NO_SBATCH = shutil.which("sbatch") is None
NO_SLURM = "no SLURM (sbatch not found)"
# The one SLURM mark (a module's pytestmark or a test's decorator; in a fixture: require_slurm()). Under
# CYCLEGAN_REQUIRE_SLURM the test runs even without sbatch, and fails where it needs SLURM: the slurm_cluster
# fixture (conftest.py), or sbatch itself.
NEEDS_SLURM = pytest.mark.skipif(NO_SBATCH and not REQUIRE_SLURM,
                                 reason=f"{NO_SLURM}; {REQUIRE_SLURM_ENV}=1 makes this a failure")
JOB_TIMEOUT = 300  # s: a hang guard for one smoke-size job on a loaded 2-core machine, not a speed requirement


def skip_or_fail_slurm(message: str = NO_SLURM) -> None:
    """In a fixture or test: skip, or fail under CYCLEGAN_REQUIRE_SLURM (e.g. too few nodes for this test)."""
    skip_or_fail(message, REQUIRE_SLURM_ENV)


def require_slurm() -> None:
    """In a fixture or test, what :data:`NEEDS_SLURM` does as a mark: no sbatch -> skip, or fail under the switch."""
    if NO_SBATCH:
        skip_or_fail_slurm()


def sh(*args: str, check: bool = True, timeout: int = 60) -> str:
    """A SLURM (or other) command's stdout; with ``check``, a non-zero exit fails with its output."""
    proc = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout


# ---- a job, as the scheduler sees it


def squeue_ids(under: Path | None = None) -> set[str]:
    """Every job and array task squeue knows (``123``, ``124_0``, ...); with ``under``, only those whose working
    directory lies there (other tests' jobs may be queued meanwhile)."""
    rows = [line.split("|", 1) for line in sh("squeue", "-h", "-r", "-o", "%i|%Z").splitlines() if "|" in line]
    return {job for job, workdir in rows if under is None or Path(workdir).is_relative_to(under)}


def job_ended(job_id: str) -> bool:
    """The job (or array task ``ID_N``) has left squeue."""
    return job_id not in squeue_ids()


def squeue_state(job_id: str) -> str:
    """The job's state in squeue (RUNNING, PENDING, ...); "" once it has left."""
    return sh("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip()


def sacct_state(job_id: str) -> str:
    """The job's (or array task's) state in the accounting (COMPLETED, ...); "" before sacct has a record."""
    lines = sh("sacct", "-n", "-X", "-P", "-j", job_id.split("_")[0], "-o", "JobID,State", check=False).splitlines()
    return next((line.split("|")[1] for line in lines if line.split("|")[0] == job_id), "")


def accounting(job_id: str) -> list[tuple[str, str, str, str]]:
    """(JobID, Start, End, State) of the job or of every task of the array, from sacct (ISO times: they sort as
    text; ``Unknown`` / ``None`` while not started or not ended)."""
    text = sh("sacct", "-n", "-P", "-X", "-o", "JobID,Start,End,State", "-j", job_id)
    return [tuple(line.split("|")) for line in text.splitlines() if line.strip()]


def wait_recorded_end(job_id: str, what: str, timeout: float = JOB_TIMEOUT) -> str:
    """Until the job has left the queue and sacct records how it ended; that state (COMPLETED, FAILED, ...)."""
    wait_for(lambda: job_ended(job_id) and sacct_state(job_id) not in ("", "PENDING", "RUNNING", "REQUEUED"),
             f"{what} (job {job_id}) to end", timeout, interval=1)
    return sacct_state(job_id)


def job_nodes(job_id: str) -> list[str]:
    """The nodes a running job holds, in SLURM's order; [] when it holds none."""
    nodelist = sh("squeue", "-h", "-j", job_id, "-o", "%N", check=False).strip()
    return sh("scontrol", "show", "hostnames", nodelist).split() if nodelist else []


def task_pids(job_id: str, node: str | None = None) -> dict[int, int]:
    """Global rank -> pid of the tasks of the job's step 0 (srun's) on ``node`` (default: the job's first node).
    ``scontrol listpids`` asks that node's slurmd; the processes the tasks start have no rank there."""
    node = node or next(iter(job_nodes(job_id)), None)
    out: dict[int, int] = {}
    if node is None:
        return out
    for line in sh("scontrol", "listpids", job_id, node, check=False).splitlines()[1:]:
        cols = line.split()  # PID JOBID STEPID LOCALID GLOBALID
        if len(cols) == 5 and cols[2] == "0" and cols[4].isdigit():
            out[int(cols[4])] = int(cols[0])
    return out


# ---- a run the launcher submitted: its job events, its logs


def job_events(run_dir: Path) -> list[dict]:
    """The launcher's job events (start, stopped, requeued, completed, failed), without training's own."""
    return [e for e in events(run_dir) if e["event"] in JOB_EVENTS]


def last_step(run_dir: Path) -> int:
    """The last logged training step (0 before the first)."""
    records = loss_records(run_dir)
    return records[-1]["step"] if records else 0


def task_log(manifest: dict, rank: int = 0) -> str:
    """Rank ``rank``'s log (submitit's ``<job>_<rank>_log.out``); "" while it does not exist."""
    folder = manifest["job"].get("folder")
    path = Path(folder or "") / f"{manifest['job']['id']}_{rank}_log.out"
    return path.read_text(errors="replace") if folder and path.is_file() else ""


def logs_of(manifest: dict) -> str:
    """The end of every rank's log, for a failure message."""
    world = manifest.get("resources", {}).get("world_size", 1)
    return "\n".join(f"---- rank {r} ----\n{task_log(manifest, r)[-3000:]}" for r in range(world))


def wait_done(run_dir: Path, timeout: float = JOB_TIMEOUT) -> dict:
    """Until the run's job has completed (its event written, the job gone from squeue); its manifest. A timeout
    fails with the job events and the ranks' logs."""
    m = read_manifest(run_dir)
    try:
        wait_for(lambda: any(e["event"] == "completed" for e in job_events(run_dir)) and job_ended(m["job"]["id"]),
                 f"job {m['job']['id']} ({run_dir.name}) to complete", timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\nevents: {job_events(run_dir)}\nlogs:\n{logs_of(m)}") from None
    return m
