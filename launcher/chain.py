"""``launcher submit --then collect,report``: the steps that finish a sweep by themselves.

On SLURM each step is a small CPU-only job (1 task, a few CPUs, a short time limit, the profile's partition)
queued at submission with ``--dependency=afterany:<ids>``: ``collect`` after every training job of the sweep
has ended (a failed seed does not block the others), ``report`` after ``collect``. A step runs
``python -m launcher collect|report --here`` inside its job for exactly the runs of the sweep (``--run``) with
``--missing-ok``: runs that did not complete are left out and named (``missing: <exp> seed N (<state>)``).
Each run's manifest gets ``then`` (the steps' job ids) and its events a ``chained`` event, so ``status`` shows
them. On the local executor the steps run here, in order, after the foreground training has ended.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from cyclegan_dist.errors import UserError
from launcher import clusters, runs

STEPS = ("collect", "report")
CHAINED_EVENT = "chained"
STEP_TIME_MIN = {"collect": 120, "report": 30}  # time limits of the step jobs (CPU export of a full photo set)
STEP_CPUS = 4  # at most this many CPUs per step job (fewer when the profile's cpus_per_task is smaller)


def parse_then(values: list[str] | None) -> list[str]:
    """``--then collect,report`` -> the steps, in the order they run (collect before report)."""
    from launcher.submit import split_list

    items = split_list(values)
    unknown = [s for s in items if s not in STEPS]
    if unknown:
        raise UserError(f"--then: unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)} (e.g. --then "
                        "collect,report)")
    if len(set(items)) != len(items):
        raise UserError(f"--then lists a step twice: {items}")
    return [s for s in STEPS if s in items]


def step_argv(step: str, run_root: Path, planned: list[Any], out_dir: Path, name: str,
              limit: int | None) -> list[str]:
    """The ``python -m launcher`` arguments of a step: exactly the sweep's runs, outputs under ``out_dir``."""
    argv = [step, "--run-root", str(run_root), "--run", *[f"{r.experiment}/{r.name}" for r in planned],
            "--missing-ok"]
    if step == "collect":
        argv += ["--here", "--out", str(out_dir / "submissions")] + (["--limit", str(limit)] if limit else [])
    else:
        argv += ["--out", str(out_dir / "reports"), "--name", name]
    return argv


def run_step(argv: list[str]) -> int:
    """A step job's entry point (pickled by submitit): the launcher command in this process; a non-zero exit
    fails the job (SLURM records FAILED)."""
    from launcher.cli import main

    sys.argv = ["launcher", *argv]  # the report records its command line
    code = main(argv)
    if code:
        raise RuntimeError(f"python -m launcher {argv[0]} exited {code}")
    return code


def step_executor(profile: clusters.Profile, step: str, folder: Path, job_name: str, partition: str | None,
                  env: dict[str, str], workdir: str | None, dependency: str):
    """A SlurmExecutor for one step: 1 task, no GPU, few CPUs, no requeue, the training's partition."""
    from submitit.slurm.slurm import SlurmExecutor

    from launcher.executors import job_setup_lines, slurm_parameters

    small = dataclasses.replace(profile, mem=None, constraint=None)
    resources = clusters.Resources(gpus=0, nodes=1, tasks_per_node=1,
                                   cpus_per_task=max(1, min(STEP_CPUS, profile.cpus_per_task)))
    params = slurm_parameters(small, resources, f"{step}-{job_name}", time_min=STEP_TIME_MIN[step],
                              partition=partition, lines=job_setup_lines(small, env), workdir=workdir)
    params["additional_parameters"].pop("requeue", None)
    params["dependency"] = dependency
    executor = SlurmExecutor(folder, max_num_timeout=0)
    executor.update_parameters(**params)
    return executor


def submit_chain(plan: Any, submitted: list[runs.Run], jobs: list[Any], steps: list[str], out_dir: Path,
                 limit: int | None) -> list[dict[str, Any]]:
    """Queue the steps after the plan's training jobs; record them in every run (manifest ``then``, event
    ``chained``). Returns [{step, job_id, after, argv}]."""
    from submitit.core.utils import FailedJobError

    from launcher.snapshot import live_code
    from launcher.submit import job_env
    from launcher.submitit_adapter import sbatch_message, submission_env

    code = submitted[0].manifest.get("code", {}).get("snapshot")
    env = job_env(code or live_code()["path"])
    partition = plan.partition or plan.profile.partition
    after = sorted({str(job.job_id).split("_")[0] for job in jobs}, key=lambda i: (len(i), i))
    chain: list[dict[str, Any]] = []
    for step in steps:
        argv = step_argv(step, plan.run_root, plan.runs, out_dir, plan.job_name, limit)
        executor = step_executor(plan.profile, step, plan.folder, plan.job_name, partition, env, code,
                                 "afterany:" + ":".join(after))
        try:
            with submission_env(env):
                job = executor.submit(run_step, argv)
        except FailedJobError as exc:
            queued = ", ".join(str(j.job_id) for j in jobs)
            raise UserError(f"the training jobs are queued ({queued}) but sbatch refused the {step} job: "
                            f"{sbatch_message(exc)}; run `python -m launcher {step}` by hand later") from None
        chain.append({"step": step, "job_id": str(job.job_id), "after": after, "argv": argv,
                      "log": str(plan.folder / f"{job.job_id}_0_log.out")})
        after = [str(job.job_id)]
    record_chain(submitted, chain)
    return chain


def record_chain(submitted: list[runs.Run], chain: list[dict[str, Any]]) -> None:
    ids = {c["step"]: c["job_id"] for c in chain}
    for run in submitted:
        run.manifest["then"] = chain
        runs.write_manifest(run.dir, run.manifest)
        runs.append_event(run.dir, CHAINED_EVENT, **ids)


def run_local(plan: Any, steps: list[str], out_dir: Path, limit: int | None) -> int:
    """The steps here, in order, after the local training has ended: 0 when every step succeeded."""
    from launcher.cli import main

    code = 0
    for step in steps:
        argv = step_argv(step, plan.run_root, plan.runs, out_dir, plan.job_name, limit)
        print(f"then: python -m launcher {' '.join(argv)}", flush=True)
        code = main(argv) or code
    return code


def describe_chain(chain: list[dict[str, Any]], states: dict[str, str], unknown: str = "UNKNOWN") -> str:
    """``then: collect 125 (PENDING, after 123), report 126 (PENDING, after 125)``."""
    parts = [f"{c['step']} {c['job_id']} ({states.get(c['job_id'], unknown)}, after {','.join(c['after'])})"
             for c in chain]
    return "then: " + ", ".join(parts)


def outputs_dir() -> Path:
    """Where a chain writes submissions/ and reports/: the directory ``submit`` ran in (absolute: a job's
    working directory is the code snapshot)."""
    return Path(os.getcwd()).absolute()
