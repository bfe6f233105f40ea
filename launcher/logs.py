"""``launcher logs RUN``: every rank's log of a run's job (submitit writes one per task,
``<folder>/<job id>_<task>_log.out``, the task being the global rank), the last lines of each, or followed live
(``-f``) while the job runs, here or on SLURM, until it ends."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from cyclegan_dist.errors import UserError
from launcher import scheduler
from launcher.runs import Run


def task_logs(run: Run, rank: int | None = None) -> list[tuple[int, Path]]:
    """(rank, log file) of the run's current job, ranks ascending; only ``rank`` when given."""
    job = run.manifest.get("job", {})
    folder, job_id = Path(job.get("folder") or ""), str(job.get("id") or "")
    if not job.get("folder") or not folder.is_dir():
        raise UserError(f"run {run.name}: its job folder {folder or '(none)'} is missing (a plain sbatch job logs "
                        "where its --output says)")
    pattern = re.compile(rf"^{re.escape(job_id)}_(\d+)_log\.out$")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if rank is not None:
        found = [(r, p) for r, p in found if r == rank]
        if not found:
            raise UserError(f"run {run.name}: no log of rank {rank} in {folder} (yet?)")
    return found


def show(run: Run, lines: int, rank: int | None = None, out=sys.stdout) -> None:
    logs = task_logs(run, rank)
    if not logs:
        raise UserError(f"run {run.name}: no log yet in {run.manifest['job']['folder']} (the job has not started)")
    for r, path in logs:
        print(f"==> rank {r}: {path} <==", file=out)
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]), file=out)


def follow(run: Run, rank: int | None = None, out=sys.stdout, poll_s: float = 0.5, idle_exit_s: float = 5.0) -> int:
    """Print every new line of the ranks' logs (prefixed by the rank when there are several) until the job has
    ended and nothing new arrived for ``idle_exit_s``; Ctrl-C stops following (not the job)."""
    offsets: dict[Path, int] = {}
    announced: set[Path] = set()
    quiet_since = None
    try:
        while True:
            try:
                logs = task_logs(run, rank)
            except UserError:
                logs = []
            wrote = False
            for r, path in logs:
                if path not in announced:
                    announced.add(path)
                    print(f"==> following rank {r}: {path} <==", file=out, flush=True)
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offsets[path] = offsets.get(path, 0) + len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    print(f"[rank {r}] {line}" if rank is None else line, file=out, flush=True)
                    wrote = True
            if wrote or scheduler.is_active(run):
                quiet_since = None
            else:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= idle_exit_s:
                    return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 130
