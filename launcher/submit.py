"""``launcher submit``: validate everything, then queue one job (or one job array for a sweep) via submitit.

Nothing is queued unless every check passes: experiment names, config overrides, shard roots, the cluster
profile, sbatch's presence, the node/GPU arithmetic. The jobs run a snapshot of the code taken now
(``launcher/snapshot.py``). Each run gets ``<run_root>/<exp>/<run>/manifest.json``. On the local executor a
single submission runs here and its log is followed until it ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import step_of
from launcher import clusters, runs
from launcher.clusters import Profile, Resources
from launcher.executors import make_executor
from launcher.localrun import std_fds_to
from launcher.snapshot import live_code, take_snapshot
from launcher.submitit_adapter import sbatch_message, submission_env


@dataclass
class PlannedRun:
    experiment: str
    seed: int
    name: str
    run_dir: Path
    config: dict[str, Any]
    config_source: str
    overrides: list[str]


@dataclass
class Plan:
    profile: Profile
    resources: Resources
    run_root: Path
    runs: list[PlannedRun]
    time_min: int
    partition: str | None
    job_name: str
    folder: Path
    command: list[str] = field(default_factory=list)
    resume_of: dict[str, Any] | None = None  # the manifest of the run a `resume` continues
    snapshot: bool = True  # jobs run a copy of the code taken at submission (--no-snapshot: the live code)


def split_list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def parse_seeds(values: list[str] | None) -> list[int] | None:
    items = split_list(values)
    if not items:
        return None
    seeds = []
    for item in items:
        try:
            seeds.append(int(item))
        except ValueError:
            raise UserError(f"--seeds: '{item}' is not an integer (e.g. --seeds 0,1,2)") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {items}")
    return seeds


def plan(args) -> Plan:
    """Every check, no side effect: the runs, their configs, the profile, the resources."""
    from cyclegan_dist.config import known_experiments, load_config, resolve_config_path
    from cyclegan_dist.rundir import check_name, check_text

    experiments = split_list(args.exp)
    if args.name is not None:
        check_name("--name", args.name)
    for partition in (args.partition or "").split(",") if args.partition else []:  # SLURM takes a list: a,b
        check_name("--partition", partition)
    for label, value in (("--run-root", args.run_root), ("--time", args.time), *(("--set", o) for o in
                                                                                  args.overrides or [])):
        if value is not None:
            check_text(label, value)
    if not experiments:
        known = ", ".join(known_experiments())
        raise UserError(f"--exp: give one or more experiments, comma-separated; known: {known}")
    if len(set(experiments)) != len(experiments):
        raise UserError(f"--exp lists an experiment twice: {experiments}")
    seeds = parse_seeds(args.seeds)
    profile = clusters.resolve_cluster(args.cluster, require_sbatch=not getattr(args, "dry_run", False))
    resources = clusters.plan_resources(profile, gpus=args.gpus, gpus_per_node=args.gpus_per_node,
                                        cpu_ranks=args.cpu_ranks, cpus_per_task=args.cpus_per_task)
    if profile.executor == "local" and args.partition:
        raise UserError("--partition applies to SLURM clusters, not to a local run")
    time_min = clusters.parse_time(args.time) if args.time else profile.time_min
    run_root = runs.resolve_run_root(args.run_root, profile.run_root)
    overrides = list(args.overrides or [])
    stamp = runs.timestamp()
    sweep = len(experiments) * len(seeds or [None]) > 1
    planned: list[PlannedRun] = []
    taken: set[str] = set()
    for exp in experiments:
        source = resolve_config_path(exp)
        base = load_config(source, overrides)  # unknown keys / bad values: UserError naming the key
        for seed in seeds if seeds is not None else [base.seed]:
            extra = [f"seed={seed}"] + _absolute_data_root(base.data.root)
            config = load_config(source, overrides + extra)
            name = runs.new_run_name(run_root, config.experiment, seed, stamp, args.name, sweep)
            while f"{config.experiment}/{name}" in taken:
                name = f"{name}-b"
            taken.add(f"{config.experiment}/{name}")
            planned.append(PlannedRun(config.experiment, seed, name, run_root / config.experiment / name,
                                      config.to_dict(), str(source), overrides + extra))
    job_name = planned[0].name if not sweep else (args.name or f"sweep-{stamp}")
    folder = run_root / ".submitit" / f"{stamp}-{secrets.token_hex(3)}"
    return Plan(profile, resources, run_root, planned, time_min, args.partition, job_name, folder,
                command=[Path(sys.executable).name, "-m", "launcher", *sys.argv[1:]],
                snapshot=not getattr(args, "no_snapshot", False))


def plan_resume(args, run_root: Path, from_job: bool = False) -> Plan:
    """Another job for an existing run (stopped after its requeues, failed, cancelled): same run directory,
    same config (plus ``--set``), so training continues from its newest complete checkpoint and W&B run.
    ``from_job``: asked by the run's own job, which is still running (``launcher/recovery.py``)."""
    import tempfile

    import yaml

    from cyclegan_dist.config import load_config
    from launcher import gather, scheduler

    run = runs.find_run(run_root, args.run)
    state = gather.run_state(scheduler.states([run]).get(str(run.dir), {}), run.job_events())
    if state in scheduler.ACTIVE and not from_job:
        raise UserError(f"run {run.name} is {state} (job {run.job_id}); cancel it first or wait for it to end")
    old = run.manifest
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(old["config"]))
        config = load_config(path, list(args.overrides or []))
    latest = run.rundir.latest()
    done = step_of(latest) if latest else 0
    end = runs.end_step(run.events(), config.train.steps, at_step=done) if latest else config.train.steps
    if done >= end:
        raise UserError(f"run {run.name} has a checkpoint at step {done} of {end}: nothing to resume "
                        "(train longer with --set train.steps=N)")
    cluster = args.cluster if args.cluster != "auto" else (old.get("cluster", {}).get("path") or "auto")
    if cluster != "auto" and not Path(cluster).is_file():
        cluster = old.get("cluster", {}).get("name", "auto")
    profile = clusters.resolve_cluster(cluster, require_sbatch=not getattr(args, "dry_run", False))
    was = old.get("resources", {})
    gpus = args.gpus if args.gpus is not None or args.cpu_ranks is not None else was.get("gpus")
    cpu_ranks = args.cpu_ranks if args.cpu_ranks is not None else (was.get("world_size") if gpus == 0 else None)
    per_node = args.gpus_per_node if args.gpus_per_node is not None else (
        was.get("gpus_per_node") if profile.executor == "slurm" and gpus else None)
    resources = clusters.plan_resources(profile, gpus=gpus, gpus_per_node=per_node or None, cpu_ranks=cpu_ranks,
                                        cpus_per_task=args.cpus_per_task)
    planned = PlannedRun(run.experiment, int(old.get("seed", config.seed)), run.name, run.dir, config.to_dict(),
                         old.get("config_source", ""), [*old.get("overrides", []), *(args.overrides or [])])
    folder = run_root / ".submitit" / f"{runs.timestamp()}-{secrets.token_hex(3)}"
    return Plan(profile, resources, run_root, [planned], clusters.parse_time(args.time) if args.time else
                profile.time_min, args.partition, run.name, folder,
                command=[Path(sys.executable).name, "-m", "launcher", *sys.argv[1:]], resume_of=old,
                snapshot=not getattr(args, "no_snapshot", False))


def _absolute_data_root(root: str | None) -> list[str]:
    """A shard root must hold index.json; jobs get its absolute path (their cwd may differ)."""
    if root is None:
        return []  # the embedded demo data set
    if "://" in root:  # s3:// or https://: each node fetches it into its cache; its index must be readable now
        from cyclegan_dist.data.remote import read_remote_index

        read_remote_index(root)
        return [f"data.root={root}"]
    path = Path(os.path.expandvars(root)).expanduser()
    if not (path / "index.json").is_file():
        what = "does not exist" if not path.exists() else "has no index.json"
        raise UserError(f"data.root={root}: the shard root {what}; write shards with "
                        "`python -m cyclegan_dist prepare ...`, or use data.root=null for the demo data set")
    return [f"data.root={path.absolute()}"]


def describe(p: Plan) -> str:
    r, prof = p.resources, p.profile
    lines = [(f"cluster {prof.name} ({prof.executor}), {r.describe()}, "
              f"time {clusters.format_minutes(p.time_min)}, max requeues {prof.max_requeues}")]
    if prof.why:
        lines.append(f"  why this cluster: {prof.why}")
    if prof.executor == "slurm":
        available = clusters.partition_nodes(p.partition or prof.partition)
        if available is not None and r.nodes > available:
            lines.append(f"  warning: the plan needs {r.nodes} nodes, sinfo reports {available} in partition "
                         f"{p.partition or prof.partition or '(default)'}: the job would wait in the queue forever")
    for run in p.runs:
        lines.append(f"  {run.experiment:<10} seed {run.seed:<3} -> {run.run_dir}")
    return "\n".join(lines)


def plan_details(p: Plan) -> str:
    """What ``--dry-run`` prints besides :func:`describe`: the resources per task, the budget, the estimate."""
    r, prof = p.resources, p.profile
    unit = "GPU" if r.gpus else "CPU rank"
    lines = [f"nodes x tasks: {r.nodes} x {r.tasks_per_node} ({plural(r.world_size, 'rank')}, one per {unit}); "
             f"{r.cpus_per_task} CPU(s) per task; memory per node: {prof.mem or 'the partition default'}",
             f"time limit {clusters.format_minutes(p.time_min)} per attempt; up to {prof.max_requeues} requeues "
             f"(USR2 {prof.signal_delay_s} s before the limit: checkpoint, requeue, resume)",
             "code: " + (f"a snapshot of the packages taken at submission, in {p.folder / 'code'}" if p.snapshot
                         else "the live packages (--no-snapshot)")]
    for run in p.runs:
        lines.append(f"{run.experiment}: {estimate(p, run)}")
    return "\n".join(lines)


def estimate(p: Plan, run: PlannedRun) -> str:
    """GPU-hours for the run's steps from the step time measured by earlier runs of the experiment at this world
    size (the median of their last logging periods), or why there is none."""
    steps = int(run.config["train"]["steps"])
    world = p.resources.world_size
    records = [rec for old in runs.iter_runs(p.run_root, [run.experiment]) for rec in old.rundir.metrics()[-3:]
               if rec.get("world_size") == world and rec.get("step_time_s")]
    if not records:
        return f"{steps:,} steps; no measured step time for it at {plural(world, 'rank')} yet (no estimate)"
    step_s = sorted(r["step_time_s"] for r in records)[len(records) // 2]
    hours = steps * step_s / 3600
    devices = p.resources.gpus or world
    peaks = [r["mem/peak_gb"] for r in records if r.get("mem/peak_gb")]
    memory = f"; peak memory {max(peaks):.1f} GB per rank" if peaks else ""
    return (f"{steps:,} steps x {step_s * 1000:.0f} ms/step measured by earlier runs = {hours:.2f} h wall, "
            f"{hours * devices:.2f} {'GPU' if p.resources.gpus else 'rank'}-hours{memory}")


def sbatch_preview(p: Plan) -> str | None:
    """The batch script submitit would write for this plan (SLURM profiles only)."""
    if p.profile.executor != "slurm":
        return None
    from launcher.executors import job_setup_lines, slurm_parameters, with_recovery
    from launcher.submitit_adapter import sbatch_script

    code = str(p.folder / "code") if p.snapshot else live_code()["path"]
    params = slurm_parameters(p.profile, p.resources, p.job_name, time_min=p.time_min, partition=p.partition,
                              lines=job_setup_lines(p.profile, job_env(code)), workdir=code if p.snapshot else None)
    params = with_recovery(params, p.folder)
    if len(p.runs) > 1:
        params["map_count"] = len(p.runs)  # a job array: submitit writes --array=0-(N-1)
    return sbatch_script(p.folder, params, sys.executable)


def submit(p: Plan) -> tuple[list[runs.Run], list[Any]]:
    """Queue the plan (one job, or a job array) and write each run's manifest."""
    from launcher.job import TrainJob

    created = []
    for r in p.runs:
        if not r.run_dir.exists():
            r.run_dir.mkdir(parents=True)
            created.append(r.run_dir)
    captured = io.StringIO()  # submitit prints sbatch's stderr itself before raising: keep the one-line error
    try:  # whatever fails from here on (the snapshot, sbatch) leaves nothing of this submission behind
        code = take_snapshot(p.folder) if p.snapshot else live_code()
        env = job_env(code["path"])
        executor = make_executor(p.profile, p.resources, p.folder, p.job_name, time_min=p.time_min,
                                 partition=p.partition, env=env, workdir=code["path"] if p.snapshot else None)
        local = p.profile.executor == "local"
        with submission_env(env), contextlib.redirect_stderr(captured), chdir(code["path"] if p.snapshot else None), \
                (std_fds_to(p.folder / "controller.log") if local else contextlib.nullcontext()):
            if len(p.runs) == 1:
                r = p.runs[0]
                jobs = [executor.submit(TrainJob(r.config, str(r.run_dir), r.name, p.profile.max_requeues))]
            else:
                with executor.batch():
                    jobs = [executor.submit(TrainJob(r.config, str(r.run_dir), r.name, p.profile.max_requeues))
                            for r in p.runs]
    except Exception as exc:
        sys.stderr.write("".join(ln for ln in captured.getvalue().splitlines(True) if "sbatch: error" not in ln))
        for d in created:
            for path in (d, d.parent):
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty
        shutil.rmtree(p.folder, ignore_errors=True)
        for path in (p.folder.parent, p.run_root):
            with contextlib.suppress(OSError):
                path.rmdir()
        from submitit.core.utils import FailedJobError

        if isinstance(exc, FailedJobError):
            raise UserError(f"sbatch refused the job: {sbatch_message(exc)}") from None
        raise
    sys.stderr.write(captured.getvalue())
    submitted_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = []
    for r, job in zip(p.runs, jobs):
        array_id, _, index = job.job_id.partition("_")
        manifest = {
            "version": 1, "run": r.name, "experiment": r.experiment, "seed": r.seed, "run_dir": str(r.run_dir),
            "run_root": str(p.run_root), "submitted_at": submitted_at, "command": shlex.join(p.command),
            **runs.who(), "git": {k: code.get(k) for k in ("commit", "dirty", "repo", "version")},
            "code": {"snapshot": code["path"] if p.snapshot else None, "source": code["source"]},
            "job": {"id": job.job_id, "array_job_id": array_id if index else None,
                    "array_index": int(index) if index else None, "name": p.job_name,
                    "folder": str(p.folder), "log": str(p.folder / f"{job.job_id}_0_log.out")},
            "job_ids": [job.job_id],
            "cluster": {**p.profile.to_dict(), "time_min": p.time_min,
                        "partition": p.partition or p.profile.partition},
            "resources": p.resources.to_dict(),
            "config_source": r.config_source, "overrides": r.overrides, "config": r.config,
            "wandb": {"project": r.config["wandb"]["project"], "entity": r.config["wandb"]["entity"],
                      "group": r.config["wandb"]["group"] or r.experiment,
                      "mode": os.environ.get("WANDB_MODE", r.config["wandb"]["mode"]), "name": r.name},
        }
        if p.resume_of is not None:  # same run, one more job: keep its history
            old = p.resume_of
            manifest.update({"submitted_at": old.get("submitted_at"), "command": old.get("command"),
                             "job_ids": [*old.get("job_ids", []), job.job_id],
                             "resumes": [*old.get("resumes", []), {"time": submitted_at, "job_id": job.job_id,
                                                                   "command": shlex.join(p.command)}]})
        runs.write_manifest(r.run_dir, manifest)
        out.append(runs.Run(r.run_dir, manifest))
    return out, jobs


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def job_env(code_path: str) -> dict[str, str]:
    """What every task of a job gets: the code it imports first (the snapshot, or the live packages)."""
    parts = [code_path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}


@contextlib.contextmanager
def chdir(path: str | None):
    """The local executor's tasks inherit our working directory: make it the snapshot, so that ``python -m``'s
    first sys.path entry is the snapshot too (and not a checkout the user is editing)."""
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
