"""Job states from the scheduler (squeue while SLURM knows the job, then sacct; a pid for local jobs), cancel.

States are SLURM's words (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...); a local job is
RUNNING while its submitit controller process lives on this host. A SLURM job squeue no longer lists and sacct
has no word about (no record, or no accounting: sacct fails) is ENDED; anything else unknown is left out. The
caller then decides from the run's own job events (a ``completed`` event: COMPLETED). One squeue call per
refresh (two when it refuses an id it no longer knows) and at most one sacct call, whatever the number of runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from typing import Any

from cyclegan_dist.errors import UserError
from launcher.runs import Run

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
          "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "STOPPED"}


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_states(job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """job id (``123`` or ``123_4``) -> {state, source, reason/elapsed_s}, from squeue then sacct."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    parents = sorted({i.split("_")[0] for i in ids})
    text = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(parents)])
    if text is None:  # an id squeue no longer knows makes it fail: ask for everything and filter
        text = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r"])
    squeue_answered = text is not None
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            out[parts[0]] = {"state": parts[1].split()[0], "source": "squeue", "reason": parts[2]}
    missing = [i for i in ids if i not in out]
    if missing:
        fields = "JobID,State,ElapsedRaw,Start,End,ExitCode"
        text = _run(["sacct", "-n", "-P", "-X", "-o", fields, "-S", "2000-01-01",
                     "-j", ",".join(sorted({i.split("_")[0] for i in missing}))]) or ""
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 6 or parts[0] not in missing:
                continue
            out[parts[0]] = {"state": parts[1].split()[0] if parts[1] else "UNKNOWN", "source": "sacct",
                             "elapsed_s": int(parts[2]) if parts[2].isdigit() else None, "exit_code": parts[5]}
    if squeue_answered:  # not queued, not running, and sacct has no word (no record yet, or no accounting here)
        out.update({i: {"state": "ENDED", "source": "squeue"} for i in ids if i not in out})
    return out


def local_state(run: Run) -> dict[str, Any] | None:
    """RUNNING while the submitit controller (pid = job id) lives; None when it cannot be told from here."""
    job = run.manifest.get("job", {})
    if run.manifest.get("host") != socket.gethostname():
        return None
    pid = job.get("id")
    if not str(pid).isdigit():
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return {"state": "ENDED", "source": "pid"}
    if "submitit" in cmdline and job.get("folder", "") in cmdline:
        return {"state": "RUNNING", "source": "pid"}
    return {"state": "ENDED", "source": "pid"}


def states(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """run dir -> scheduler info (possibly empty)."""
    return states_and_jobs(runs)[0]


def states_and_jobs(runs: list[Run], job_ids: Iterable[str] = ()) -> tuple[dict[str, dict[str, Any]],
                                                                           dict[str, dict[str, Any]]]:
    """run dir -> scheduler info, and SLURM job id -> info for ``job_ids`` (e.g. a sweep's ``--then`` jobs),
    from one squeue call (two when it refuses an id it no longer knows) and at most one sacct call."""
    slurm_ids = [r.job_id for r in runs if r.executor == "slurm" and r.job_id]
    extra = [str(i) for i in job_ids]
    slurm = slurm_states(slurm_ids + extra) if slurm_ids or extra else {}
    out = {}
    for r in runs:
        if r.executor == "slurm":
            out[str(r.dir)] = slurm.get(r.job_id or "", {})
        else:
            out[str(r.dir)] = local_state(r) or {}
    return out, {i: slurm[i] for i in extra if i in slurm}


def is_active(run: Run) -> bool:
    """Whether the run's job is still queued or running (for the scheduler; a local job while its controller lives)."""
    return states([run]).get(str(run.dir), {}).get("state") in ACTIVE


def cancel(run: Run) -> str:
    """Stop a run's job: scancel (SIGTERM -> the job checkpoints, KillWait later SIGKILL), or SIGTERM locally."""
    job_id = run.job_id
    if not job_id:
        raise UserError(f"run {run.name} has no job id in its manifest")
    if run.executor == "slurm":
        if shutil.which("scancel") is None:
            raise UserError(f"run {run.name} is a SLURM job ({job_id}), but scancel is not on PATH here")
        proc = subprocess.run(["scancel", job_id], check=False, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise UserError(f"scancel {job_id} failed: {proc.stderr.strip()}")
        return f"scancel {job_id}"
    info = local_state(run)
    if info is None:
        raise UserError(f"run {run.name} is a local job on {run.manifest.get('host')}; cancel it there")
    if info["state"] != "RUNNING":
        raise UserError(f"run {run.name}: its local job (pid {job_id}) is not running")
    os.kill(int(job_id), signal.SIGTERM)  # the controller forwards it to every task
    return f"kill -TERM {job_id}"
