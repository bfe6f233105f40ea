"""A run goes on after a lost node or a requeue the job cannot do itself: a new job for the same run directory,
queued from the job's own batch script, so that nothing has to watch from a login node.

Who resubmits (no daemon): the batch script of the training job itself, on its batch host, outside the tasks
(which may be in a container without SLURM's commands). :func:`setup_lines` and :func:`teardown_lines` go into
every SLURM training job's script, around the ``srun`` of the tasks:

* **after a node failure** (before ``srun``, only when ``SLURM_RESTART_COUNT`` > 0): SLURM has requeued the job
  itself (``--requeue``: NODE_FAIL, or a node that stopped answering). ``restarted`` looks up the previous
  attempt (``sacct --duplicates``): if it ended NODE_FAIL, or one of its nodes is now down or not responding, the
  run records ``node_failed {node, attempt}``, queues a new job for the run with
  ``--exclude=<every failed node so far>`` (manifest ``exclude``), records ``resubmitted {job, exclude,
  attempt}``, and this attempt ends without training (exit 0). The new job resumes from the newest complete
  checkpoint. Not when the resubmissions would pass the profile's ``max_requeues``, nor when the partition would
  have too few nodes left (the attempt then trains where SLURM placed it).
* **a requeue without scontrol** (after ``srun``): rank 0 checkpointed on USR2 but found no ``scontrol``
  (``submitit_adapter.NoScontrol``): it recorded ``requeue_wanted`` and left a marker
  (``<submitit folder>/requeue-<SLURM_JOB_ID>.json``). ``requeue-wanted`` then runs ``scontrol requeue`` if the
  batch host has it, else queues a new job for the run (no exclusion: the node is fine).

Either resubmission moves the run's ``--then`` steps (collect, report) that waited on the old job onto the new one
(``launcher/chain.py: follow_resubmission``, ``scontrol update ... Dependency=``) while the old job still runs;
without scontrol on the batch host they stay where they were and a ``chain_not_moved`` event says so.

A job that ends because of a Python error leaves no marker and no NODE_FAIL: nothing is resubmitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher import runs

FOLDER_ENV = "CYCLEGAN_SUBMITIT_FOLDER"  # the job's submitit folder (where the requeue marker goes)
RESUBMITTED_EXIT = 75  # `restarted`: a new job was queued, this attempt must not train
NOT_READY = ("down", "drained", "draining", "fail", "failing", "not_responding", "unknown", "future")


# ------------------------------------------------------------------------------ the batch script's lines


def setup_lines(folder: Path, python: str = sys.executable) -> list[str]:
    """Before srun: the marker folder for the tasks, and the node-failure check of a restarted attempt."""
    check = (f"{shlex.quote(python)} -m launcher.recovery restarted {shlex.quote(str(folder))}; "
             f"if [ $? -eq {RESUBMITTED_EXIT} ]; then exit 0; fi")
    return [f"export {FOLDER_ENV}={shlex.quote(str(folder))}",
            f'if [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ]; then {check}; fi']


def teardown_lines(folder: Path, python: str = sys.executable) -> list[str]:
    """After srun: a requeue the tasks could not do themselves."""
    marker = shlex.quote(str(folder)) + '/requeue-"$SLURM_JOB_ID".json'
    return [f"if [ -f {marker} ]; then {shlex.quote(python)} -m launcher.recovery requeue-wanted {marker}; fi"]


# ------------------------------------------------------------------------------ inside the tasks (rank 0)


def want_requeue(run_dir: Path, job_id: str, **fields: Any) -> Path:
    """Rank 0 could not requeue (no scontrol): the marker the batch script looks for after srun."""
    folder = Path(os.environ.get(FOLDER_ENV) or run_dir)
    path = folder / f"requeue-{os.environ.get('SLURM_JOB_ID', job_id)}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"run_dir": str(run_dir), "job_id": job_id, **fields}))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------ the decisions


def attempt_of(events: list[dict[str, Any]]) -> int:
    """The run's attempt number so far: SLURM's restarts of the current job plus the jobs resubmitted for it."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) + resubmissions(events)


def resubmissions(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e.get("event") == "resubmitted")


def node_down(node: str) -> bool:
    """sinfo says the node cannot run jobs: down, drained, failing, or not responding (a trailing *)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                             timeout=30, check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s.endswith("*") or s.rstrip("*~#$@^-").lower() in NOT_READY for s in out)


def hostnames(nodelist: str) -> list[str]:
    if not nodelist or nodelist in ("None assigned", "(null)"):
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30,
                         check=False)
    return out.stdout.split() if out.returncode == 0 else [nodelist]


def previous_attempt(raw_job_id: str, job_id: str, events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job's attempt before the running one: {state, nodes} from sacct --duplicates; without accounting, the
    nodes of the job's last ``start`` event when that attempt ended with no word (state LOST); else None."""
    cmd = ["sacct", "-n", "-X", "-P", "-D", "-j", raw_job_id, "-o", "JobIDRaw,State,NodeList"]
    try:
        lines = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    ended = [ln.split("|") for ln in lines if ln.count("|") == 2]
    ended = [c for c in ended if c[0] == raw_job_id and c[1].split() and
             c[1].split()[0] not in ("RUNNING", "PENDING", "REQUEUE")]
    if ended:
        _, state, nodelist = ended[-1]
        return {"state": state.split()[0], "nodes": hostnames(nodelist)}
    mine = [e for e in events if e.get("job_id") == job_id and e.get("event") in runs.JOB_EVENTS]
    if mine and mine[-1]["event"] == "start" and mine[-1].get("nodes"):
        return {"state": "LOST", "nodes": hostnames(mine[-1]["nodes"])}
    return None


def failed_nodes(attempt: dict[str, Any] | None) -> list[str]:
    """The nodes that failed the attempt: those now down or not responding; a 1-node NODE_FAIL: its node."""
    if not attempt:
        return []
    down = [n for n in attempt["nodes"] if node_down(n)]
    if not down and attempt["state"] == "NODE_FAIL" and len(attempt["nodes"]) == 1:
        return list(attempt["nodes"])
    return down


# ------------------------------------------------------------------------------ the resubmission


def resubmit(run_dir: Path, exclude: list[str]) -> str:
    """A new job for the run (its manifest's cluster, resources, time, partition; the code it already runs),
    with ``--exclude`` when nodes failed. Returns the new job's id; the manifest keeps ``exclude``."""
    from launcher import submit

    manifest = runs.read_manifest(run_dir)
    cluster = manifest.get("cluster", {})
    args = argparse.Namespace(run=str(run_dir), overrides=[],
                              cluster=cluster.get("path") or cluster.get("name") or "auto", gpus=None,
                              cpu_ranks=None, gpus_per_node=None, cpus_per_task=None, time=None,
                              partition=cluster.get("partition"), no_snapshot=True, dry_run=False)
    plan = submit.plan_resume(args, Path(manifest.get("run_root") or run_dir.parent.parent), from_job=True)
    plan.time_min = int(cluster.get("time_min") or plan.time_min)
    if exclude:
        extra = {**plan.profile.sbatch_extra, "exclude": ",".join(exclude)}
        plan.profile = dataclasses.replace(plan.profile, sbatch_extra=extra)
    with _cwd(Path(manifest.get("cwd") or run_dir)):
        submitted, jobs = submit.submit(plan)
    new = runs.read_manifest(run_dir)
    new["exclude"] = list(exclude)
    if manifest.get("then"):  # the run's --then steps: follow_chain moves them onto the new job
        new["then"] = manifest["then"]
    runs.write_manifest(run_dir, new)
    return str(jobs[0].job_id)


def follow_chain(run_dir: Path, old_job: str, new_job: str) -> None:
    """The run's ``--then`` steps wait on the new job too (``launcher/chain.py``); never fails the caller: the new
    job is queued either way, and what was not moved is an event that says what to run by hand."""
    from launcher import chain

    try:
        chain.follow_resubmission(run_dir, old_job, new_job)
    except Exception as exc:  # noqa: BLE001 - the resubmission stands; say what is left to do
        runs.append_event(run_dir, chain.NOT_MOVED_EVENT, old_job=old_job, new_job=new_job,
                          reason=f"{type(exc).__name__}: {exc}"[:1000])


class _cwd:
    """The new job's working directory (the submitit log folder is absolute; this is where a live-code job runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path if path.is_dir() else Path.cwd()

    def __enter__(self) -> None:
        self.before = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc: Any) -> None:
        os.chdir(self.before)


def run_dir_of(folder: Path, job_id: str) -> Path:
    """The run directory of a submitit job, from the job's own pickle (``<folder>/<job>_submitted.pkl``)."""
    from submitit.core.utils import DelayedSubmission, JobPaths

    return Path(DelayedSubmission.load(JobPaths(folder, job_id=job_id).submitted_pickle).function.run_dir)


# ------------------------------------------------------------------------------ the commands


def cmd_restarted(folder: Path) -> int:
    """A restarted attempt: after a node failure, resubmit excluding the failed node(s) (exit 75), else 0."""
    from launcher import clusters
    from launcher.submitit_adapter import slurm_job_id

    job_id = slurm_job_id()
    run_dir = run_dir_of(folder, job_id)
    manifest = runs.read_manifest(run_dir)
    events = runs.Run(run_dir, manifest).events()
    failed = failed_nodes(previous_attempt(os.environ["SLURM_JOB_ID"], job_id, events))
    if not failed:
        return 0
    attempt = attempt_of(events)
    exclude = sorted(set(manifest.get("exclude", [])) | set(failed))
    for node in failed:
        runs.append_event(run_dir, "node_failed", node=node, attempt=attempt, job_id=job_id)
    max_requeues = int(manifest.get("cluster", {}).get("max_requeues", 0))
    total = clusters.partition_nodes(manifest.get("cluster", {}).get("partition"))
    needed = int(manifest.get("resources", {}).get("nodes", 1))
    why = None
    if resubmissions(events) + 1 > max_requeues:
        why = f"{resubmissions(events)} resubmissions already (max_requeues {max_requeues})"
    elif total is not None and total - len(exclude) < needed:
        why = f"excluding {','.join(exclude)} would leave {total - len(exclude)} of the {needed} node(s) it needs"
    if why:
        runs.append_event(run_dir, "not_resubmitted", job_id=job_id, attempt=attempt, reason=why)
        print(f"recovery: node(s) {','.join(failed)} failed; not resubmitted ({why}): training here", flush=True)
        return 0
    new = resubmit(run_dir, exclude)
    runs.append_event(run_dir, "resubmitted", job=new, exclude=exclude, attempt=attempt, job_id=job_id,
                      reason="node_failed")
    follow_chain(run_dir, job_id, new)
    print(f"recovery: node(s) {','.join(failed)} failed; resubmitted as job {new} --exclude={','.join(exclude)}",
          flush=True)
    return RESUBMITTED_EXIT


def cmd_requeue_wanted(marker: Path) -> int:
    """After srun: the tasks asked for a requeue they could not do: scontrol here, else a new job."""
    wanted = json.loads(marker.read_text())
    marker.unlink()
    run_dir = Path(wanted["run_dir"])
    manifest = runs.read_manifest(run_dir)
    events = runs.Run(run_dir, manifest).events()
    scontrol = shutil.which("scontrol")
    if scontrol:
        runs.append_event(run_dir, "requeued", job_id=wanted["job_id"], step=wanted.get("step"),
                          checkpoint=wanted.get("checkpoint"), via="batch script")
        subprocess.check_call([scontrol, "requeue", wanted["job_id"]], timeout=60)
        return 0
    exclude = list(manifest.get("exclude", []))
    try:
        new = resubmit(run_dir, exclude)
    except Exception as exc:  # the run keeps its checkpoint: `launcher resume` continues it
        runs.append_event(run_dir, "refused", job_id=wanted["job_id"], step=wanted.get("step"),
                          reason=f"no scontrol and the resubmission failed: {exc}"[:1000])
        raise
    runs.append_event(run_dir, "resubmitted", job=new, exclude=exclude, attempt=attempt_of(events) + 1,
                      job_id=wanted["job_id"], reason="requeue_wanted")
    follow_chain(run_dir, wanted["job_id"], new)
    print(f"recovery: no scontrol; resubmitted the run as job {new}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.recovery", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("restarted").add_argument("folder", type=Path)
    sub.add_parser("requeue-wanted").add_argument("marker", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "restarted":
            return cmd_restarted(args.folder)
        return cmd_requeue_wanted(args.marker)
    except Exception as exc:  # noqa: BLE001 - the batch script goes on (a restart trains where it is placed)
        print(f"recovery: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
