"""A profile + resources -> a submitit executor: SlurmExecutor (sbatch + srun, one task per GPU, USR2 before the
time limit, ``--requeue``) or LocalExecutor (this machine: one process per GPU or CPU rank)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from launcher.clusters import Profile, Resources


def make_executor(profile: Profile, resources: Resources, folder: Path, job_name: str, *,
                  time_min: int | None = None, partition: str | None = None, setup: tuple[str, ...] = (),
                  env: dict[str, str] | None = None):
    """A submitit SlurmExecutor / LocalExecutor with the profile's settings (flags already merged in)."""
    minutes = time_min or profile.time_min
    lines = [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()] + list(profile.setup) + list(setup)
    if profile.executor == "local":
        from submitit.local.local import LocalExecutor

        executor = LocalExecutor(folder, max_num_timeout=profile.max_requeues)
        executor.update_parameters(timeout_min=minutes, tasks_per_node=resources.tasks_per_node, nodes=1,
                                   gpus_per_node=resources.gpus, signal_delay_s=profile.signal_delay_s,
                                   stderr_to_stdout=True, setup=list(profile.setup) + list(setup))
        return executor
    from submitit.slurm.slurm import SlurmExecutor

    executor = SlurmExecutor(folder, max_num_timeout=profile.max_requeues)
    params: dict[str, Any] = {
        "job_name": job_name, "time": minutes, "nodes": resources.nodes, "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task, "signal_delay_s": profile.signal_delay_s, "stderr_to_stdout": True,
        "setup": lines, "additional_parameters": {"requeue": True, **profile.sbatch_extra},
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    if resources.gpus:
        params["gpus_per_node"] = resources.gpus_per_node
    for key, value in (("partition", partition or profile.partition), ("account", profile.account),
                       ("qos", profile.qos), ("mem", profile.mem), ("constraint", profile.constraint)):
        if value is not None:
            params[key] = value
    executor.update_parameters(**params)
    return executor
