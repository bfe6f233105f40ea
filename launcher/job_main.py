"""The task entry point for plain sbatch scripts (``slurm/templates/train.sbatch``): one srun task per GPU.

    srun python -u -m launcher.job_main --config resnet9 [--run-dir DIR] [--set KEY=VALUE ...]

Same behaviour as a ``launcher submit`` job: the torch.distributed env comes from SLURM's variables,
training goes through ``cyclegan_dist.entry.run`` (resume="auto"), USR2 -> checkpoint -> ``scontrol requeue``
(at most ``--max-requeues`` times), and the run directory gets a manifest so ``status``/``gather`` list it.
The default run directory ``runs/<exp>/<job name>-<job id>`` stays the same across requeues.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launcher.job_main", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment name (configs/*.yaml stem) or YAML path")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-dir", help="default: $CYCLEGAN_RUN_ROOT or ./runs, then <exp>/<job name>-<job id>")
    p.add_argument("--name", help="W&B run name (default: the run directory's name)")
    p.add_argument("--max-requeues", type=int, default=int(os.environ.get("CYCLEGAN_MAX_REQUEUES", "3")))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launcher import runs
    from launcher.distenv import export_torch_env, in_slurm_step
    from launcher.snapshot import code_root, git_info

    if not in_slurm_step():
        print("error: launcher.job_main runs inside SLURM tasks (srun); on this machine use "
              "`python -m launcher submit --cluster local` or `python -m cyclegan_dist train`", file=sys.stderr)
        return 2
    env = export_torch_env()
    try:
        from cyclegan_dist.config import load_config, resolve_config_path

        source = resolve_config_path(args.config)
        config = load_config(source, args.overrides)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job_id else os.environ["SLURM_JOB_ID"]
    job_name = os.environ.get("SLURM_JOB_NAME", "sbatch")
    run_dir = Path(args.run_dir) if args.run_dir else (
        runs.resolve_run_root(None) / config.experiment / f"{job_name}-{job_id}")
    run_dir = run_dir.absolute()
    run_name = args.name or run_dir.name
    if int(env["RANK"]) == 0 and not RunDir(run_dir).manifest_path.is_file():
        world = int(env["WORLD_SIZE"])
        nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
        gpus = world if int(os.environ.get("SLURM_GPUS_ON_NODE") or 0) else 0
        runs.write_manifest(run_dir, {
            "version": 1, "run": run_name, "experiment": config.experiment, "seed": config.seed,
            "run_dir": str(run_dir), "run_root": str(run_dir.parent.parent),
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv),
            **runs.who(), "git": git_info(code_root()), "code": {"snapshot": None, "source": str(code_root())},
            "job": {"id": job_id, "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                    "array_index": (int(os.environ["SLURM_ARRAY_TASK_ID"])
                                    if "SLURM_ARRAY_TASK_ID" in os.environ else None),
                    "name": job_name, "folder": None, "log": None, "via": "sbatch template"},
            "job_ids": [job_id],
            "cluster": {"name": os.environ.get("SLURM_CLUSTER_NAME", "slurm"), "executor": "slurm",
                        "partition": os.environ.get("SLURM_JOB_PARTITION"), "max_requeues": args.max_requeues},
            "resources": {"gpus": gpus, "nodes": nodes, "tasks_per_node": world // max(nodes, 1),
                          "gpus_per_node": gpus // max(nodes, 1), "world_size": world,
                          "cpus_per_task": int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))},
            "config_source": str(source), "overrides": list(args.overrides), "config": config.to_dict(),
            "wandb": {"project": config.wandb.project, "entity": config.wandb.entity,
                      "group": config.wandb.group or config.experiment,
                      "mode": os.environ.get("WANDB_MODE", config.wandb.mode), "name": run_name},
        })
    from submitit.core.utils import UncompletedJobError

    from launcher.job import run_job

    try:
        result = run_job(config.to_dict(), run_dir, run_name, args.max_requeues)
        code = 0
        if int(env["RANK"]) == 0:
            print(f"run {run_dir}: {result.get('status')} at step {result.get('step')}", flush=True)
    except UncompletedJobError as error:
        print(f"not requeued: {error}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # several ranks: skip interpreter teardown (gloo may abort there after a finished run)


if __name__ == "__main__":
    raise SystemExit(main())
