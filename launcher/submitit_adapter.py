"""The few things the launcher needs from submitit beyond its public API, in one place, each with why.

* :func:`requeue`: submitit requeues a job only from inside its own USR2 handler, which calls the job's
  ``checkpoint()`` in the signal handler itself; our ranks must first agree on a step and write a checkpoint
  together, so rank 0 requeues afterwards itself, as submitit's job environments do: ``scontrol requeue JOB``
  on SLURM (JOB as submitit names it: ``<array job>_<task>`` for an array task), exit code 144 (submitit's
  ``LOCAL_REQUEUE_RETURN_CODE``) for the local controller. No scontrol in the job's PATH (a container):
  :class:`NoScontrol`, and the caller asks for a resubmission instead (``launcher/recovery.py``).
* :func:`terminate_local` / :func:`wait_local`: a LocalExecutor job exposes no public way to signal or wait for
  its controller process (``job._process``), which a Ctrl-C in ``launcher submit`` needs.
* :func:`submission_env`: submitit's public ``clean_env`` plus the job's own variables.
* :func:`sbatch_message`: the one useful line of the FailedJobError sbatch's refusal becomes.
* :func:`sbatch_script`: the batch script a SlurmExecutor would write, without sbatch or srun here (dry runs).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


class NoScontrol(RuntimeError):
    """The job cannot requeue itself: no ``scontrol`` in its PATH."""


def requeue(remaining: int) -> None:
    """Requeue the running job (``remaining``: requeues left after this one, for the log line)."""
    import shutil
    import subprocess
    import sys

    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

        print(f"requeue: exit {LOCAL_REQUEUE_RETURN_CODE} for the local controller ({remaining} requeues left)",
              flush=True)
        sys.exit(LOCAL_REQUEUE_RETURN_CODE)
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise NoScontrol("no scontrol in the job's PATH")
    job = slurm_job_id()
    subprocess.check_call([scontrol, "requeue", job], timeout=60)
    print(f"requeue: scontrol requeue {job} ({remaining} requeues left)", flush=True)


def can_requeue() -> bool:
    """The job can requeue itself: the local controller, or scontrol in the PATH."""
    import shutil

    return os.environ.get("SUBMITIT_EXECUTOR") == "local" or shutil.which("scontrol") is not None


def slurm_job_id() -> str:
    """The running job as submitit and scontrol name it: ``<array job>_<task>`` for an array task."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


def terminate_local(job: Any) -> None:
    job._process.terminate()


def wait_local(job: Any, timeout: float) -> None:
    job._process.wait(timeout=timeout)


@contextlib.contextmanager
def submission_env(env: dict[str, str]):
    """submitit's clean_env (no SLURM_*/RANK/MASTER_* leak into the job) plus the job's own variables.
    SLURM_CONF stays: it says which cluster sbatch submits to (clean_env would drop it with every SLURM_*)."""
    from submitit.helpers import clean_env

    conf = os.environ.get("SLURM_CONF")
    with clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def sbatch_message(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    return "; ".join(lines) or text or repr(exc)


def sbatch_script(folder, parameters: dict[str, Any], python: str) -> str:
    """The batch script submitit's SlurmExecutor would write for a job with these parameters: its own generator
    (``_make_sbatch_string``, no public call), so a dry run shows exactly what would be submitted, with no
    sbatch or srun on this machine."""
    import shlex

    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **parameters)
