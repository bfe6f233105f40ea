"""What the user sees: progress lines, the summary, `launcher status` with an ETA and the last problem, `launcher
logs -f` across ranks, and `submit --dry-run` without sbatch. Each asserts content, not just that something printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_helpers import NEEDS_SLURM, job_ended, last_step

from launcher.runs import read_manifest

from helpers import ROOT, TINY, job_env, launcher, loss_records, read_metrics, run_cli, wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step (\d+)/(\d+) \([\d.]+%\) \| ([\d.]+) img/s \| G (\S+) D (\S+) "
                  r"cyc_A (\S+) cyc_B (\S+) \| lr (\S+) \| ETA (\S+)$")


def test_progress_lines_and_summary(tmp_path):
    """Not a terminal (as in a SLURM log): one timestamped line per logging period whose step, img/s and losses are
    those of metrics.jsonl, with an ETA; then the summary, whose paths exist."""
    run_dir = tmp_path / "run"
    out = run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "wandb.mode=offline",
                  "train.steps=6", "train.log_every=2", "train.sample_every=6", "train.checkpoint_every=3")
    lines = [m for m in map(LINE.match, out.stderr.splitlines()) if m]
    records = {r["step"]: r for r in loss_records(run_dir)}
    assert [int(m.group(1)) for m in lines] == [2, 4, 6] == sorted(records)
    for m in lines:
        record = records[int(m.group(1))]
        assert m.group(2) == "6" and float(m.group(3)) == round(record["img_per_s"], 1)
        assert float(m.group(4)) == pytest.approx(record["loss/G"], rel=5e-3)
        assert re.fullmatch(r"(\d+m)?\d+s|\d+h\d\dm\d\ds", m.group(9)), m.group(9)
    assert lines[-1].group(9) == "0s"
    summary = out.stdout
    assert summary.startswith("COMPLETED: steps 0 -> 6 on 1 rank(s)")
    names = ("run directory", "metrics", "events and warnings", "newest checkpoint", "sample grid")
    paths = {k: Path(v.strip().strip("`")) for k, v in re.findall(rf"^  ({'|'.join(names)}): (.+)$", summary, re.M)}
    assert set(paths) == set(names), summary
    assert paths["metrics"] == run_dir / "metrics.jsonl" and paths["events and warnings"] == run_dir / "events.jsonl"
    assert f"next: python -m cyclegan_dist export --checkpoint {run_dir} " in summary
    assert all(p.exists() for p in paths.values()), paths
    sync = re.search(r"upload with `wandb sync (\S+)`", summary)
    assert sync and Path(sync.group(1)).is_dir(), summary
    assert re.search(r"translation PSNR .* [\d.]+ dB before, [\d.]+ dB after; doing nothing scores [\d.]+ dB", summary)
    quiet = run_cli("train", "--quiet", "--config", "smoke", "--run-dir", tmp_path / "q", "--set", *TINY,
                    "train.steps=2", "train.log_every=1")
    assert not [line for line in quiet.stderr.splitlines() if LINE.match(line)]


def _normalize(script: str, root: Path) -> list[str]:
    text = script.replace(str(root), "<run_root>")
    text = re.sub(r"\.submitit/[\w-]+", ".submitit/<submission>", text)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_dry_run_without_sbatch_prints_the_plan_and_the_sbatch_script(tmp_path):
    """No sbatch, srun or squeue on PATH (a laptop): the plan and the exact sbatch script submitit would write,
    whose #SBATCH lines match the profile (compared with a saved reference, as submitit's own tests do)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")  # PATH holds nothing but python
    env = {**job_env(), "PATH": str(bin_dir)}
    out = subprocess.run([sys.executable, "-m", "launcher", "submit", "--exp", "smoke", "--cluster", "testcluster",
                          "--gpus", "4", "--name", "plan", "--dry-run"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "cluster testcluster (slurm), 2 nodes x 2 GPUs (world size 4)" in text
    assert "nodes x tasks: 2 x 2 (4 ranks, one per GPU); 1 CPU(s) per task; memory per node: 2G" in text
    assert "up to 3 requeues" in text and "dry run: nothing submitted" in text
    reference = (ROOT / "tests" / "data" / "dry_run_testcluster_4_gpus.sbatch").read_text().splitlines()
    assert _normalize(text, tmp_path / "runs") == reference
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


@NEEDS_SLURM
@pytest.mark.xdist_group("slurm")
def test_status_eta_and_logs_follow_on_slurm(tmp_path, slurm_cluster):
    """A running 2-task job: `status` shows img/s and an ETA; `logs -f`, started mid-run, prints lines both ranks
    write after it started, and ends when the job does."""
    out = launcher("submit", "--exp", "smoke", "--cluster", "testcluster", "--gpus", "2", "--name", "watch", "--set",
                   *TINY, "train.steps=60", "train.log_every=2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "smoke" / "watch"
    wait_for(lambda: last_step(run_dir) >= 8, "training to run", 240)

    def running_row():
        rows = json.loads(launcher("status", "--json", "watch", cwd=tmp_path).stdout)
        return rows[0] if rows[0]["eta_s"] is not None else None

    row = wait_for(running_row, "an ETA", 60)
    assert row["state"] == "RUNNING" and row["total_steps"] == 60 and 8 <= row["step"] < 60, row
    # img/s: a logged period's (not made up); ETA: the steps left at the measured step rate; GPU hours: 2 GPUs
    assert row["img_per_s"] in [r["img_per_s"] for r in read_metrics(run_dir) if "img_per_s" in r], row
    assert row["eta_s"] == pytest.approx((60 - row["step"]) / row["steps_per_s"], rel=1e-9), row
    assert row["gpu_hours"] == pytest.approx(row["wall_time_s"] * 2 / 3600, abs=2e-4) and row["wall_time_s"] > 0, row
    table = launcher("status", "watch", cwd=tmp_path).stdout.splitlines()
    assert table[0].split()[:8] == ["RUN", "EXP", "JOB", "STATE", "STEP", "IMG/S", "ETA", "GPU_H"]
    assert re.search(r"\b\d+m?\d*s\b", table[1]), table

    started_at = last_step(run_dir)
    follow = subprocess.Popen([sys.executable, "-m", "launcher", "logs", "watch", "-f"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=job_env(), cwd=tmp_path)
    try:
        stdout, stderr = follow.communicate(timeout=300)
    finally:
        follow.kill()
    assert follow.returncode == 0, stderr
    steps = [int(s) for s in re.findall(r"^\[rank 0\] \S+ \S+ step (\d+)/60", stdout, re.M)]
    assert steps and max(steps) == 60 and any(s > started_at for s in steps), steps
    assert re.search(r"^\[rank 1\] .*(Job completed successfully|Exiting after successful completion)", stdout, re.M)
    assert "==> following rank 0:" in stdout and "==> following rank 1:" in stdout
    assert job_ended(read_manifest(run_dir)["job"]["id"])
