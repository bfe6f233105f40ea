"""The launcher on a machine without SLURM: ``--cluster auto`` picks submitit's LocalExecutor, runs the smoke
experiment here with two CPU ranks (gloo), follows its log to the end, and ``status`` reads it back from a
fresh process. PATH holds python alone, so sbatch is out of sight even where SLURM is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from launcher.runs import JOB_EVENTS, read_manifest

from helpers import ROOT, TINY_WANDB, events, job_env, launcher, loss_records, read_metrics, wait_for

RUN = [*TINY_WANDB, "wandb.mode=offline", "train.steps=6", "train.log_every=2", "train.checkpoint_every=3"]


def test_local_executor_runs_smoke_end_to_end(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    git = shutil.which("git")
    if git:
        (bin_dir / "git").symlink_to(git)
    env = {"PATH": str(bin_dir), "CUDA_VISIBLE_DEVICES": ""}  # python (and git) alone: no sbatch in sight
    out = launcher("submit", "--exp", "smoke", "--gpus", "0", "--cpu-ranks", "2", "--name", "here",
                   "--set", *RUN, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "cluster local (local), 1 node x 2 CPU ranks (world size 2)" in out.stdout
    assert "Job completed successfully" in out.stdout  # the job's log, followed to its end
    run_dir = tmp_path / "runs" / "smoke" / "here"
    manifest = read_manifest(run_dir)
    assert manifest["cluster"]["executor"] == "local" and manifest["resources"]["world_size"] == 2
    assert manifest["config"]["train"]["steps"] == 6 and manifest["job"]["id"].isdigit()
    if git and (ROOT / ".git").exists():
        assert manifest["git"]["commit"] and isinstance(manifest["git"]["dirty"], bool)
    assert [r["step"] for r in loss_records(run_dir)] == [2, 4, 6]
    assert {r["world_size"] for r in read_metrics(run_dir) if "world_size" in r} == {2}
    assert (run_dir / "checkpoints" / "step-00000006" / "complete").is_file()
    kinds = [e["event"] for e in events(run_dir)]
    assert [e for e in kinds if e in JOB_EVENTS] == ["start", "completed"]
    assert kinds.index("train_start") < kinds.index("train_end") < kinds.index("completed")

    status = launcher("status", "--json", env=env, cwd=tmp_path, timeout=60)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert ((row["run"], row["state"], row["step"], row["total_steps"], row["requeues"])
            == ("here", "COMPLETED", 6, 6, 0))
    assert row["executor"] == "local" and row["wandb_mode"] == "offline" and row["wandb_sync"].startswith("wandb sync ")

    # a finished run has nothing to resume; asked to train longer, a new job continues its checkpoints, here on one
    # rank instead of two: the global batch (2 x 4) is kept, 8 images on the one rank (tests/test_world_change.py)
    again = launcher("resume", "here", env=env, cwd=tmp_path, timeout=60)
    assert again.returncode == 2 and "nothing to resume" in again.stderr, again.stderr
    more = launcher("resume", "here", "--cpu-ranks", "1", "--set", "train.steps=8", env=env, cwd=tmp_path,
                    timeout=600)
    assert more.returncode == 0, more.stdout[-4000:] + more.stderr[-4000:]
    assert f"resumed from {run_dir}/checkpoints/step-00000006 at step 6 (48 images seen)" in more.stdout
    assert [(r["step"], r["world_size"], r["images_seen"]) for r in loss_records(run_dir)] == [
        (2, 2, 16), (4, 2, 32), (6, 2, 48), (8, 1, 64)]
    (change,) = events(run_dir, "world_change")
    assert "8 images per rank keep the global batch of 8" in change["message"]
    manifest = read_manifest(run_dir)
    assert len(manifest["job_ids"]) == 2 and manifest["config"]["train"]["steps"] == 8


def test_cancelling_a_local_run_is_a_normal_end(tmp_path):
    """`launcher cancel RUN` on a local run followed in the foreground: the run checkpoints, the foreground submit
    ends with one line naming the checkpoint and how to continue, exit code 3 (cancelled), no traceback; status
    says CANCELLED with the step and checkpoint."""
    from launcher.localrun import EXIT_CANCELLED

    env = {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", "local", "--gpus", "0",
           "--cpu-ranks", "1", "--name", "here", "--set", *RUN, "train.steps=5000"]
    foreground = subprocess.Popen(cmd, cwd=tmp_path, env={**job_env(), **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "smoke" / "here"
    wait_for(lambda: loss_records(run_dir), "the first logged step", 600, 0.5, process=foreground)
    cancel = launcher("cancel", "here", env=env, cwd=tmp_path, timeout=120)
    assert cancel.returncode == 0 and "cancelled smoke/here" in cancel.stdout, cancel.stdout + cancel.stderr
    stdout, stderr = foreground.communicate(timeout=600)
    assert foreground.returncode == EXIT_CANCELLED, stdout[-3000:] + stderr[-3000:]
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("here: cancelled at step")]
    assert "checkpoint " in line and "python -m launcher resume here" in line
    assert "Traceback" not in stdout + stderr and "not requeued" not in stdout + stderr
    checkpoint = line.split("checkpoint ")[1].split(";")[0]
    assert (Path(checkpoint) / "complete").is_file()
    status = launcher("status", "--json", env=env, cwd=tmp_path, timeout=120)
    (row,) = json.loads(status.stdout)
    assert row["state"] == "CANCELLED" and row["last_problem"].startswith("cancelled at step"), row
