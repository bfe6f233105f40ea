"""The code a job runs: a snapshot of the packages taken at submission, so that editing the checkout (or
upgrading the install) while a job waits in the queue or is requeued never changes the experiment.

``take_snapshot(folder)`` copies ``cyclegan_dist/`` and ``launcher/``, with the experiments and cluster profiles
placed as a wheel has them (``cyclegan_dist/configs``, ``launcher/profiles``), from wherever this process imports
them, a source checkout or a wheel's site-packages, into ``folder/code/`` and records their commit and dirty flag.
Jobs run with ``PYTHONPATH`` and their working directory set to that folder, so every attempt, requeues included,
imports the same code. ``--no-snapshot`` (development) runs the live code instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import cyclegan_dist
from cyclegan_dist.config import shipped_configs
from cyclegan_dist.rundir import atomic_write_json, read_json
from launcher.clusters import shipped_profiles

PACKAGES = ("cyclegan_dist", "launcher")
SHIPPED = ("configs", "slurm/clusters")  # in a checkout: the experiments and cluster profiles beside the packages
SNAPSHOT_FILE = "SNAPSHOT.json"


def code_root() -> Path:
    """The directory that holds the packages this process runs (a checkout's root or site-packages)."""
    return Path(cyclegan_dist.__file__).resolve().parent.parent


def git_info(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``path`` (None when it is no git checkout)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=path, check=False, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", *PACKAGES, *SHIPPED) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "repo": str(path),
            "version": cyclegan_dist.__version__}


def take_snapshot(folder: Path) -> dict[str, Any]:
    """Copy the packages into ``folder/code``; returns {path, commit, dirty, source}."""
    source = code_root()
    dest = folder / "code"
    for package in PACKAGES:
        shutil.copytree(source / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for shipped, inside in ((shipped_configs(), "cyclegan_dist/configs"), (shipped_profiles(), "launcher/profiles")):
        if not (dest / inside).is_dir():  # a checkout keeps them at its top: in the snapshot they sit as in a wheel
            shutil.copytree(shipped, dest / inside)
    info = {"path": str(dest), "source": str(source), **git_info(source)}
    atomic_write_json(dest / SNAPSHOT_FILE, info)
    return info


def running_code() -> dict[str, Any]:
    """What this process runs: its snapshot's record, or the live packages' commit (for job start events)."""
    record = read_json(code_root() / SNAPSHOT_FILE)
    return record if record is not None else live_code()


def live_code() -> dict[str, Any]:
    """What a ``--no-snapshot`` job runs: the live packages."""
    source = code_root()
    return {"path": str(source), "source": str(source), "live": True, **git_info(source)}
