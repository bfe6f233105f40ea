"""Local runs (submitit's LocalExecutor): keep the controller off our terminal, follow the job's log to its end."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from launcher import runs
from launcher.submitit_adapter import terminate_local, wait_local

EXIT_CANCELLED = 3  # the foreground `submit` of a local run that `launcher cancel` (SIGTERM) stopped


@contextlib.contextmanager
def std_fds_to(log: Path):
    """The local controller inherits fds 0-2: give it /dev/null and a log, so that a pipe or a terminal
    reading this process's output is not held open until the job ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    try:
        with open(os.devnull) as nothing, open(log, "a") as out:
            os.dup2(nothing.fileno(), 0)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        yield
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def follow_local(submitted: list[runs.Run], jobs: list[Any], out=sys.stdout, poll_s: float = 0.5) -> int:
    """Print the jobs' logs (task 0) as they grow until every local job has ended; 0 if all completed,
    EXIT_CANCELLED if one was cancelled (and none failed), else 1."""
    logs = {r.name: Path(r.manifest["job"]["log"]) for r in submitted}
    offsets = dict.fromkeys(logs, 0)
    prefix = len(submitted) > 1

    def pump() -> None:
        for name, path in logs.items():
            if not path.is_file():
                continue
            with open(path, "rb") as f:
                f.seek(offsets[name])
                chunk = f.read()
            if not chunk:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offsets[name] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                print(f"[{name}] {line}" if prefix else line, file=out, flush=True)

    try:
        while not all(job.done() for job in jobs):
            pump()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the local job(s) with a checkpoint (SIGTERM)", file=sys.stderr)
        for job in jobs:
            with contextlib.suppress(Exception):
                terminate_local(job)
        for job in jobs:
            with contextlib.suppress(Exception):
                wait_local(job, timeout=60)
        pump()
        return 130
    pump()
    code = 0
    for r in submitted:
        events = r.job_events()
        last = events[-1] if events else {"event": "no events"}
        if last["event"] == "cancelled":
            print(f"{r.name}: cancelled at step {last.get('step')}; checkpoint {last.get('checkpoint')}; continue "
                  f"with: python -m launcher resume {r.name}", file=out, flush=True)
            code = code or EXIT_CANCELLED
        elif last["event"] != "completed":
            code = 1
    return code
