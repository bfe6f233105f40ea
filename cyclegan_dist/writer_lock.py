"""One writer per run directory: an OS file lock that dies with its process.

Two trainings in one run directory (two ``--resume auto`` at once, a requeued job racing a manual resume) would
both report COMPLETED while one silently loses the other's metrics and checkpoints. The process that trains
(rank 0) holds ``<run>/.writer.lock`` with ``fcntl.lockf`` (POSIX record locks: honoured across NFS clients
through the lock manager, and by Lustre mounted with ``flock``/``localflock``), so a SIGKILL or a node loss never
leaves it stuck: the kernel (or the NFS lock manager) releases it with the process. The file holds who has it
(host, pid, SLURM job, since when), so the second writer's message can name the holder. Where the file system
does not support locks at all, training goes on with a warning saying the directory is not protected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import WRITER_LOCK

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

log = logging.getLogger("cyclegan_dist")


def holder_info() -> dict:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and (f"{os.environ['SLURM_ARRAY_JOB_ID']}_"
                                                    f"{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job or os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


class WriterLock:
    """``with WriterLock(run_dir):`` holds the run directory for this process (acquire once: POSIX locks are per
    process, so a second acquire/release pair in the same process would drop the first)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / WRITER_LOCK
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> WriterLock:
        if self.fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(f"run directory {self.path.parent} is being written by another training "
                                f"({_describe(holder)}); wait for it to end or cancel it (launcher cancel RUN), or "
                                "use another --run-dir") from None
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                log.warning("file locks are not supported where %s lives (%s): nothing stops a second training "
                            "from writing into it at the same time", self.path.parent, exc.strerror)
                return self
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing any descriptor of the file drops the process's lockf locks
            self.fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    job = f", SLURM job {holder['job']}" if holder.get("job") else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{job}, since {holder.get('since', '?')}"
