"""``launcher submit --then collect,report`` (or ``resume RUN --then ...``): the steps that finish a sweep by
themselves.

On SLURM each step is a small CPU-only job (1 task, a few CPUs, a short time limit, the profile's partition)
queued at submission with ``--dependency=afterany:<ids>``: ``collect`` after every training job of the sweep
has ended (a failed seed does not block the others), ``report`` after ``collect``. A step runs
``python -m launcher collect|report --here`` inside its job for exactly the runs of the sweep (``--run``) with
``--missing-ok``: runs that did not complete are left out and named (``missing: <exp> seed N (<state>)``).
Each run's manifest gets ``then`` (the steps' job ids) and its events a ``chained`` event, so ``status`` shows
them. On the local executor the steps run here, in order, after the foreground training has ended.

A training job that is resubmitted (``launcher/recovery.py``: a lost node, or a requeue without scontrol) gets a new
job id; :func:`follow_resubmission` then moves the steps that waited on the old job onto the new one too
(``scontrol update JobId=<step> Dependency=<what it still waits on>,afterany:<new>``) before the old job ends, so
``collect`` cannot start while the new job trains. Each move is an event of the run (``chain_moved``); a step that
could not be moved (no scontrol on the batch host, the step no longer pending) is a ``chain_not_moved`` event that
says what to run by hand.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
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


# ------------------------------------------------------------------------------ a resubmitted training job


MOVED_EVENT, NOT_MOVED_EVENT = "chain_moved", "chain_not_moved"


def waiting_on(chain: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    """The steps of ``chain`` that wait on the training job ``job_id`` (``123``, or the array task ``123_4``: a
    step waits on the whole array ``123``)."""
    base = str(job_id).split("_")[0]
    return [step for step in chain if base in step.get("after", []) or str(job_id) in step.get("after", [])]


def pending_dependencies(job_ids: list[str]) -> dict[str, list[str]] | None:
    """Step job id -> what it still waits on (``afterany:123_*``, ...; squeue drops what is fulfilled), for those
    still PENDING, from one squeue call; None when squeue does not answer."""
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%E", "-j", ",".join(job_ids)], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 and not proc.stdout.strip():
        # squeue refuses a list holding an id it no longer knows: those steps have left the queue
        return {} if "Invalid job id" in proc.stderr else None
    out = {}
    for line in proc.stdout.splitlines():
        job, state, deps = (line.split("|", 2) + ["", ""])[:3]
        if state.strip() == "PENDING" and job.strip() in job_ids:
            entries = [re.sub(r"\(.*\)$", "", d.strip()) for d in deps.split(",")]
            out[job.strip()] = [d for d in entries if d and d != "(null)"]
    return out


def follow_resubmission(run_dir: Path, old_job: str, new_job: str) -> list[dict[str, Any]]:
    """The run's training job ``old_job`` was resubmitted as ``new_job``: its ``--then`` steps that wait on the old
    job wait on the new one too (``scontrol update``), while the old job still runs (its end would release them).
    Records ``chain_moved`` / ``chain_not_moved`` events and the steps' new ``after`` in the manifests of the
    sweep's runs. Returns the events written ([] when the run has no chain, or none of it waits on ``old_job``)."""
    manifest = runs.read_manifest(run_dir)
    chain = manifest.get("then") or []
    steps = waiting_on(chain, old_job)
    if not steps:
        return []
    ids = [step["job_id"] for step in steps]
    scontrol = shutil.which("scontrol")
    hint = " then ".join(f"`python -m launcher {shlex.join(s['argv'])}`" for s in chain if s.get("argv"))
    hint = f"{hint or 'the steps by hand'} once job {new_job} has ended"
    if scontrol is None:
        return [_not_moved(run_dir, ids, old_job, new_job, f"no scontrol on the batch host: the step(s) may start "
                                                           f"as soon as job {old_job} ends; run {hint}")]
    pending = pending_dependencies(ids)
    if pending is None:
        return [_not_moved(run_dir, ids, old_job, new_job, f"squeue did not answer; run {hint}")]
    written = []
    for step in steps:
        sid = step["job_id"]
        if sid not in pending:
            written.append(_not_moved(run_dir, [sid], old_job, new_job, f"{step['step']} job {sid} is no longer "
                                                                         f"pending; run {hint}"))
            continue
        dependency = ",".join([*pending[sid], f"afterany:{new_job}"])
        refused = _update_dependency(scontrol, sid, dependency)
        if refused:
            written.append(_not_moved(run_dir, [sid], old_job, new_job, f"scontrol update failed: {refused}; "
                                                                         f"run {hint}"))
            continue
        step["after"] = [*step.get("after", []), str(new_job)]
        written.append(runs.append_event(run_dir, MOVED_EVENT, step=step["step"], job=sid, old_job=old_job,
                                         new_job=str(new_job), dependency=dependency))
    if any(e["event"] == MOVED_EVENT for e in written):
        _record_after(run_dir, manifest, chain)
    return written


def _update_dependency(scontrol: str, job_id: str, dependency: str) -> str | None:
    """``scontrol update JobId=.. Dependency=..``: None when done, else why not (one line)."""
    try:
        proc = subprocess.run([scontrol, "update", f"JobId={job_id}", f"Dependency={dependency}"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _not_moved(run_dir: Path, ids: list[str], old_job: str, new_job: str, reason: str) -> dict[str, Any]:
    print(f"chain: step job(s) {','.join(ids)} still wait on job {old_job}, not on {new_job}: {reason}", flush=True)
    return runs.append_event(run_dir, NOT_MOVED_EVENT, jobs=ids, old_job=old_job, new_job=str(new_job),
                                             reason=reason)


def _record_after(run_dir: Path, manifest: dict[str, Any], chain: list[dict[str, Any]]) -> None:
    """The chain's new ``after`` in this run's manifest and in every run of the sweep that carries the same chain
    (``status`` shows it from any of them)."""
    ids = [step["job_id"] for step in chain]
    manifest["then"] = chain
    runs.write_manifest(run_dir, manifest)
    root = Path(manifest.get("run_root") or run_dir.parent.parent)
    for other in runs.iter_runs(root):
        if other.dir != run_dir and [s.get("job_id") for s in other.manifest.get("then") or []] == ids:
            other.manifest["then"] = chain
            runs.write_manifest(other.dir, other.manifest)
