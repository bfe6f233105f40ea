"""The run registry: ``<run_root>/<exp>/<run>/`` holds everything about one run, readable days later
(its layout is ``cyclegan_dist.rundir``'s).

The launcher writes ``manifest.json`` at submission (job ids, resolved config, commit and dirty flag, code
snapshot, cluster, resources, W&B project/group, submit time, command line) and appends the job's events to
``events.jsonl``: start / stopped / requeued / completed / failed / refused, each with the job id,
SLURM_RESTART_COUNT, step, world size, host and time (training adds its own events there: warnings, rollbacks).
The run directory IS the ``run_dir`` given to ``entry.run``. submitit's own files (pickles, per-task logs) live
in ``<run_root>/.submitit/<submission>/``, named in the manifest.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import MANIFEST, RunDir, iter_run_dirs, read_json  # no torch at import

DEFAULT_RUN_ROOT = "runs"
JOB_EVENTS = ("start", "stopped", "requeued", "completed", "failed", "refused", "cancelled")


def resolve_run_root(flag: str | None, profile_root: str | None = None) -> Path:
    """``--run-root`` > $CYCLEGAN_RUN_ROOT > the profile's run_root > ./runs (absolute, so jobs see the same)."""
    chosen = flag or os.environ.get("CYCLEGAN_RUN_ROOT") or profile_root or DEFAULT_RUN_ROOT
    return Path(os.path.expandvars(chosen)).expanduser().absolute()


@dataclass
class Run:
    dir: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest.get("run", self.dir.name)

    @property
    def experiment(self) -> str:
        return self.manifest.get("experiment", self.dir.parent.name)

    @property
    def job_id(self) -> str | None:
        return self.manifest.get("job", {}).get("id")

    @property
    def executor(self) -> str:
        return self.manifest.get("cluster", {}).get("executor", "slurm")

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.dir)

    def events(self) -> list[dict[str, Any]]:
        return self.rundir.events()

    def job_events(self) -> list[dict[str, Any]]:
        """The launcher's own events (start, requeued, completed, ...), without training's warnings."""
        return [e for e in self.events() if e.get("event") in JOB_EVENTS]


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    RunDir(run_dir).write_manifest(manifest)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    manifest = read_json(Path(run_dir) / MANIFEST)
    if manifest is None:
        raise UserError(f"{Path(run_dir) / MANIFEST}: cannot read the run manifest (missing or not JSON)")
    return manifest


def iter_runs(run_root: Path, experiments: list[str] | None = None) -> Iterator[Run]:
    """Runs under ``run_root`` (optionally of some experiments), oldest submission first."""
    found = []
    for run_dir in iter_run_dirs(run_root):
        manifest = read_json(run_dir / MANIFEST)
        if manifest is None:
            continue
        run = Run(run_dir, manifest)
        if experiments and run.experiment not in experiments:
            continue
        found.append(run)
    yield from sorted(found, key=lambda r: (r.manifest.get("submitted_at", ""), r.name))


def find_run(run_root: Path, name: str) -> Run:
    """A run by name (``<exp>/<run>`` or ``<run>``) or by directory path."""
    path = Path(name)
    if (path / MANIFEST).is_file():
        return Run(path.absolute(), read_manifest(path))
    candidates = [r for r in iter_runs(run_root) if r.name == name or f"{r.experiment}/{r.name}" == name
                  or r.job_id == name or (r.manifest.get("job", {}).get("array_job_id") == name)]
    if not candidates:
        known = [r.name for r in iter_runs(run_root)]
        hint = f"; known runs: {', '.join(known[-10:])}" if known else " (no runs there)"
        raise UserError(f"no run named '{name}' under {run_root}{hint}")
    if len(candidates) > 1 and not all(c.manifest.get("job", {}).get("array_job_id") == name for c in candidates):
        raise UserError(f"'{name}' matches several runs: {', '.join(c.dir.name for c in candidates)}; give <exp>/<run>")
    return candidates[0]


def find_runs(run_root: Path, name: str) -> list[Run]:
    """Like find_run, but an array job id names all the runs of that array."""
    runs = [r for r in iter_runs(run_root) if r.manifest.get("job", {}).get("array_job_id") == name]
    return runs or [find_run(run_root, name)]


def new_run_name(run_root: Path, experiment: str, seed: int, stamp: str, name: str | None, sweep: bool) -> str:
    """``<exp>-s<seed>-<stamp>``, or ``--name`` (a prefix ``<name>-<exp>-s<seed>`` within a sweep)."""
    if name:
        base = f"{name}-{experiment}-s{seed}" if sweep else name
    else:
        base = f"{experiment}-s{seed}-{stamp}"
    candidate, n = base, 1
    while (run_root / experiment / candidate).exists():
        if name and not sweep:
            raise UserError(f"run {run_root / experiment / candidate} exists already; choose another --name")
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def who() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "cwd": os.getcwd()}


# ------------------------------------------------------------------------------------------ job events


def append_event(run_dir: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the run's events.jsonl; the record written (with its time)."""
    return RunDir(run_dir).append_event(event, **fields)


def end_step(events: list[dict[str, Any]], steps: int, at_step: int | None = None) -> int:
    """The step at which a run of ``train.steps=steps`` ends: ``steps``, unless a resume changed its global batch
    (``train.keep_global_batch=false``: the run then ends after the same number of images). From the last
    ``train_start`` event; ``at_step``: a later step of that attempt (a checkpoint's)."""
    start = next((e for e in reversed(events) if e.get("event") == "train_start" and e.get("global_batch")), None)
    if start is None or start["global_batch"] == start.get("plan_batch", start["global_batch"]):
        return steps
    batch, plan, step = start["global_batch"], start["plan_batch"], start["step"] if at_step is None else at_step
    seen = start["images_seen"] + (step - start["step"]) * batch
    return step + math.ceil(max(0, steps * plan - seen) / batch)


def requeue_count(events: list[dict[str, Any]]) -> int:
    """Requeues seen by the run: the highest SLURM_RESTART_COUNT of any start, or the requeue events."""
    restarts = max((int(e.get("restart_count") or 0) for e in events if e.get("event") == "start"), default=0)
    return max(restarts, sum(1 for e in events if e.get("event") == "requeued"))


def attempts(events: list[dict[str, Any]], metric_times: list[float], now: float | None = None
             ) -> list[tuple[float, float]]:
    """(start, end) of each job attempt. An attempt killed without an end event ends at its last metrics
    record (or ``now`` when it is the running one)."""
    out: list[tuple[float, float]] = []
    starts = [e for e in events if e.get("event") == "start"]
    ends = [e for e in events if e.get("event") in ("requeued", "completed", "failed", "refused", "stopped")]
    for i, begin in enumerate(starts):
        t0 = begin["time"]
        t_next = starts[i + 1]["time"] if i + 1 < len(starts) else float("inf")
        closing = [e["time"] for e in ends if t0 <= e["time"] < t_next]
        if closing:
            out.append((t0, max(closing)))
        elif now is not None and t_next == float("inf"):
            out.append((t0, now))
        else:
            seen = [t for t in metric_times if t0 <= t < t_next]
            out.append((t0, max(seen) if seen else t0))
    return out
