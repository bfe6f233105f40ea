"""`accelerate launch --multi_gpu` / the DeepSpeed launch config, on 2 CPU ranks (world size checked).

On a CPU-only machine `accelerate launch --cpu --num_processes 2` silently starts ONE process, so the tests
use the GPU configs with ACCELERATE_USE_CPU=true (DDP on gloo), as documented in configs/accelerate/.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from helpers import ROOT, TINY, _env, latest_checkpoint, loss_records, require_extra

RUN = [*TINY, "train.steps=2", "train.log_every=1"]


def accelerate_launch(config: str, run_dir, env: dict | None = None):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           f"configs/accelerate/{config}",
           "--num_processes", "2", "-m", "cyclegan_dist", "train", "--config", "smoke", "--run-dir", str(run_dir),
           "--set", *RUN]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env), timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    return out


def test_multi_gpu_config_runs_two_ranks(tmp_path):
    accelerate_launch("multi_gpu.yaml", tmp_path / "ddp", env={"ACCELERATE_USE_CPU": "true"})
    records = loss_records(tmp_path / "ddp")
    assert [r["world_size"] for r in records] == [2, 2]


def test_deepspeed_config_runs_two_zero_ranks(tmp_path):
    require_extra("deepspeed")
    accelerate_launch("deepspeed_zero2.yaml", tmp_path / "ds")
    records = loss_records(tmp_path / "ds")
    assert [r["world_size"] for r in records] == [2, 2]
    rank1 = torch.load(latest_checkpoint(tmp_path / "ds") / "rank-00001.pt", weights_only=False)
    assert "opt_D" in rank1, "DeepSpeed was not used: rank 1 holds no ZeRO optimizer slice"
