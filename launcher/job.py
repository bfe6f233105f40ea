"""What runs in every task of a job: export the distributed env, train through ``entry.run``, requeue.

Preemption and time limits (how it fits submitit): submitit installs, on every task, a USR2 handler that on
global rank 0 calls the job's ``checkpoint()`` *inside the signal handler*, requeues and exits at once; the
other ranks do nothing. A training loop cannot save from inside a signal handler (the handler interrupts the
loop itself, and every rank must take part in the save). So once training starts, :func:`run_job` replaces
that handler on every rank with one that only calls ``request_stop()``:

1. SLURM sends USR2 ``signal_delay_s`` before the time limit (``--signal=USR2@N``), or someone sends it
   (``scancel --signal=USR2 JOB``); on the local executor submitit's controller sends it before its timeout.
2. The loop agrees across ranks at the next step (all-reduce), writes a complete checkpoint from every rank,
   and ``entry.run`` returns ``status == "stopped"`` on every rank after a final barrier.
3. Only then rank 0 requeues as submitit's job environments do (``scontrol requeue JOB`` on SLURM, exit code
   144 for the local controller; ``submitit_adapter.requeue``), unless the run was requeued ``max_requeues`` times
   already (SLURM_RESTART_COUNT plus the jobs resubmitted for it), and exits. The requeued job resumes from the
   newest complete checkpoint and the same W&B run (``resume="auto"``). Nothing races the save: the requeue
   happens after the checkpoint is complete. No ``scontrol`` in the tasks' PATH (a container): rank 0 records
   ``requeue_wanted``, leaves a marker and exits 1; the job's batch script then requeues it or queues a new job
   for the run (``launcher/recovery.py``).

SIGTERM alone (``scancel``, ``scontrol requeue``, SLURM's own preemption, the hard time limit) also asks for a
checkpoint but never requeues: SLURM decides what happens next. SIGTERM followed by USR2 (submitit's model of a
preemption) requeues, as submitit's handler would. A job killed without any signal resumes from its last periodic
checkpoint.
Before training starts, submitit's own handler is in place; it calls :meth:`TrainJob.checkpoint`, which
resubmits the same job (there is nothing to save yet).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from cyclegan_dist.rundir import RunDir
from launcher import runs
from launcher.distenv import export_torch_env
from launcher.recovery import FOLDER_ENV, want_requeue
from launcher.snapshot import running_code
from launcher.submitit_adapter import can_requeue, requeue


class TrainJob(Checkpointable):
    """A picklable training job: resolved config (a plain dict), run directory, W&B run name, requeue budget."""

    def __init__(self, config: dict[str, Any], run_dir: str, run_name: str, max_requeues: int) -> None:
        self.config = config
        self.run_dir = run_dir
        self.run_name = run_name
        self.max_requeues = max_requeues

    def __call__(self) -> dict[str, Any]:
        return run_job(self.config, Path(self.run_dir), self.run_name, self.max_requeues)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # Called by submitit's handler on rank 0 only if USR2 came before training installed ours.
        return DelayedSubmission(TrainJob(self.config, self.run_dir, self.run_name, self.max_requeues))


class StopSignals:
    """USR2 and SIGTERM -> ``request_stop()`` in the task's main process; remembers what came."""

    def __init__(self, request_stop) -> None:
        self.request_stop = request_stop
        self.received: list[str] = []
        self.pid = os.getpid()
        signal.signal(signal.SIGUSR2, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker inherited this handler
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.received.append(signal.Signals(signum).name)
        self.request_stop()


def restart_count(run_dir: Path, job_id: str) -> int:
    """Requeues of this run so far: SLURM_RESTART_COUNT (else the requeues recorded for this job id) plus the jobs
    resubmitted for the run after a lost node or a requeue without scontrol (``launcher/recovery.py``)."""
    events = RunDir(run_dir).events()
    resubmitted = sum(1 for e in events if e.get("event") == "resubmitted")
    if "SLURM_RESTART_COUNT" in os.environ:
        return int(os.environ["SLURM_RESTART_COUNT"] or 0) + resubmitted
    return sum(1 for e in events if e.get("event") == "requeued" and e.get("job_id") == job_id) + resubmitted


def run_job(config: dict[str, Any], run_dir: Path, run_name: str, max_requeues: int) -> dict[str, Any]:
    env = export_torch_env()
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    job_id = current_job_id()
    restarts = restart_count(run_dir, job_id)

    from cyclegan_dist.config import from_dict, validate

    cfg = from_dict(config, where=f"{run_dir}/manifest.json")
    validate(cfg)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:  # one thread per CPU the task was given, not per core
        os.environ["OMP_NUM_THREADS"] = cpus  # oversubscribed: many times slower (benchmarks/RESULTS.md, top)
    from cyclegan_dist.entry import request_stop, run  # torch loads here

    if cpus and os.environ["OMP_NUM_THREADS"] == cpus:
        import torch

        torch.set_num_threads(int(cpus))

    signals = StopSignals(request_stop)
    run_dir.mkdir(parents=True, exist_ok=True)

    def event(name: str, every_rank: bool = False, **fields: Any) -> None:
        if rank == 0 or every_rank:
            runs.append_event(run_dir, name, job_id=job_id, restart_count=restarts, world_size=world, rank=rank,
                              host=socket.gethostname(), **fields)

    event("start", master=f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}", code=running_code(),
          nodes=os.environ.get("SLURM_JOB_NODELIST"))
    try:
        result = run(cfg, run_dir=run_dir, resume="auto", run_name=run_name)
    except BaseException as exc:  # every rank says why it ended: the one that died first names the cause
        event("failed", every_rank=True, error=f"{type(exc).__name__}: {exc}"[:1000], signals=signals.received)
        raise
    if result.get("status") == "completed":
        event("completed", step=result.get("step"), checkpoint=result.get("checkpoint"))
        return result
    if result.get("status") == "diverged":
        event("failed", step=result.get("step"), error=f"diverged: {result.get('error')}")
        raise _uncompleted(f"stopped at step {result.get('step')}: {result.get('error')}; not requeued "
                           "(train.on_nonfinite); the last good checkpoint is kept")

    if "SIGTERM" in signals.received and "SIGUSR2" not in signals.received:
        # `launcher cancel`, scancel, or a preemption without requeue: a normal end with a checkpoint, no traceback
        event("cancelled", step=result.get("step"), checkpoint=result.get("checkpoint"), signals=signals.received)
        return {**result, "status": "cancelled"}
    event("stopped", step=result.get("step"), checkpoint=result.get("checkpoint"), signals=signals.received)
    if rank != 0:
        return result  # like submitit's handler: the other ranks leave the requeue to rank 0
    if restarts >= max_requeues:
        event("refused", step=result.get("step"), reason=f"requeued {restarts} times (max_requeues {max_requeues})")
        raise _uncompleted(f"stopped at step {result.get('step')} after {restarts} requeues (max_requeues "
                           f"{max_requeues}); continue with: python -m launcher resume {run_dir}")
    if not can_requeue() and not os.environ.get(FOLDER_ENV):  # a plain sbatch script (job_main): nobody after srun
        event("refused", step=result.get("step"), reason="no scontrol in the job's PATH")
        raise _uncompleted(f"stopped at step {result.get('step')}; no scontrol to requeue the job; continue with: "
                           f"python -m launcher resume {run_dir}")
    if not can_requeue():  # no scontrol: the batch script requeues or resubmits after srun (launcher/recovery.py)
        event("requeue_wanted", step=result.get("step"), checkpoint=result.get("checkpoint"),
              reason="no scontrol in the job's PATH")
        want_requeue(run_dir, job_id, step=result.get("step"), checkpoint=result.get("checkpoint"))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    event("requeued", step=result.get("step"), checkpoint=result.get("checkpoint"))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        requeue(max_requeues - restarts - 1)  # scontrol requeue (SLURM) / exit 144 (local)
    except subprocess.SubprocessError as exc:
        event("refused", step=result.get("step"), reason=f"requeue failed: {exc}")
        raise _uncompleted(f"stopped at step {result.get('step')} but the requeue failed ({exc}); "
                           f"continue with: python -m launcher resume {run_dir}") from exc
    # Like submitit's handler: exit without a result pickle; SLURM restarts the job from its submission.
    os._exit(255)


def current_job_id() -> str:
    from submitit import JobEnvironment

    try:
        return JobEnvironment().job_id
    except Exception:  # noqa: BLE001 - no submitit env (e.g. run by hand)
        return os.environ.get("SLURM_JOB_ID", "manual")


def _uncompleted(message: str) -> Exception:
    from submitit.core.utils import UncompletedJobError

    return UncompletedJobError(message)
