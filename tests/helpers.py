"""Running the project's commands as a user would: real subprocesses, real torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.setdefault("CYCLEGAN_DIST_CACHE", str(ROOT / ".cache" / "test"))
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: int = 600, module: str = "cyclegan_dist"):
    cmd = [sys.executable, "-m", module, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def run_torchrun(nproc: int, *args, env: dict | None = None, timeout: int = 600, check: bool = True):
    """``torchrun --standalone --nproc_per_node N -m cyclegan_dist ...`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cyclegan_dist", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out
