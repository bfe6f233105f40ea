"""A profile + resources -> a submitit executor: SlurmExecutor (sbatch + srun, one task per GPU, USR2 before the
time limit, ``--requeue``, the recovery lines of ``launcher/recovery.py`` around srun) or LocalExecutor (this
machine: one process per GPU or CPU rank)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from launcher.clusters import Profile, Resources


def make_executor(profile: Profile, resources: Resources, folder: Path, job_name: str, *,
                  time_min: int | None = None, partition: str | None = None, setup: tuple[str, ...] = (),
                  env: dict[str, str] | None = None, workdir: str | None = None):
    """A submitit SlurmExecutor / LocalExecutor with the profile's settings (flags already merged in).

    ``workdir``: the tasks' working directory (the code snapshot). ``srun --kill-on-bad-exit=1``: a task that dies
    ends the whole step at once, instead of leaving the other ranks waiting in a collective."""
    minutes = time_min or profile.time_min
    lines = job_setup_lines(profile, env, setup)
    if profile.executor == "local":
        from submitit.local.local import LocalExecutor

        executor = LocalExecutor(folder, max_num_timeout=profile.max_requeues)
        executor.update_parameters(timeout_min=minutes, tasks_per_node=resources.tasks_per_node, nodes=1,
                                   gpus_per_node=resources.gpus, signal_delay_s=profile.signal_delay_s,
                                   stderr_to_stdout=True, setup=list(profile.setup) + list(setup))
        return executor
    from submitit.slurm.slurm import SlurmExecutor

    executor = SlurmExecutor(folder, max_num_timeout=profile.max_requeues)
    executor.update_parameters(**with_recovery(slurm_parameters(profile, resources, job_name, time_min=minutes,
                                                                partition=partition, lines=lines, workdir=workdir),
                                               folder))
    return executor


def with_recovery(params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A training job's parameters plus the recovery lines around its srun (``launcher/recovery.py``)."""
    from launcher.recovery import setup_lines, teardown_lines

    return {**params, "setup": [*params["setup"], *setup_lines(folder)], "teardown": teardown_lines(folder)}


def slurm_parameters(profile: Profile, resources: Resources, job_name: str, *, time_min: int,
                     partition: str | None, lines: list[str], workdir: str | None) -> dict[str, Any]:
    """The SlurmExecutor parameters of a job (what its sbatch script says)."""
    params: dict[str, Any] = {
        "job_name": job_name, "time": time_min, "nodes": resources.nodes, "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task, "signal_delay_s": profile.signal_delay_s, "stderr_to_stdout": True,
        "setup": lines, "srun_args": ["--kill-on-bad-exit=1"],
        "additional_parameters": {"requeue": True, **({"chdir": workdir} if workdir else {}), **profile.sbatch_extra},
    }
    if resources.gpus:
        params["gpus_per_node"] = resources.gpus_per_node
    for key, value in (("partition", partition or profile.partition), ("account", profile.account),
                       ("qos", profile.qos), ("mem", profile.mem), ("constraint", profile.constraint)):
        if value is not None:
            params[key] = value
    return params


def job_setup_lines(profile: Profile, env: dict[str, str] | None, setup: tuple[str, ...] = ()) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()] + list(profile.setup) + list(setup)
