"""One writer per run directory: a second training there is refused naming the first; a killed one leaves no lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from cyclegan_dist.rundir import WRITER_LOCK

from helpers import ROOT, TINY, _env, latest_checkpoint, read_metrics, run_cli, wait_for

RUN = [*TINY, "train.log_every=1", "train.checkpoint_every=0"]
HANG_GUARD_S = 600  # a hang guard for a loaded 2-core machine, not a speed requirement


def start_training(run_dir, steps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cyclegan_dist", "train", "--config", "smoke", "--run-dir", str(run_dir), "--set",
           *RUN, f"train.steps={steps}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(proc: subprocess.Popen, run_dir, steps: int) -> None:
    """Until the training has logged ``steps`` steps (it holds the lock by then)."""
    wait_for(lambda: [r for r in read_metrics(run_dir) if r.get("step", 0) >= steps],
             f"the training to log step {steps}", HANG_GUARD_S, process=proc)


def test_a_second_training_in_the_same_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, steps=400)
    try:
        wait_for_steps(first, run_dir, 2)
        holder = json.loads((run_dir / WRITER_LOCK).read_text())
        assert holder["pid"] == first.pid
        out = run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN, "train.steps=400",
                      check=False)
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"is being written by another training (host {holder['host']}, pid {first.pid}" in out.stderr
        assert "Traceback" not in out.stderr
        assert first.poll() is None, "the refused training disturbed the first one"
    finally:
        first.send_signal(signal.SIGTERM)  # checkpoints and stops, as on SLURM
        first.communicate(timeout=HANG_GUARD_S)
    stopped_at = latest_checkpoint(run_dir).name
    # the first one ended: the directory is free again and a resume continues it
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN,
                  f"train.steps={int(stopped_at.split('-')[1]) + 2}")
    assert '"status": "completed"' in out.stdout


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, steps=400)
    wait_for_steps(first, run_dir, 1)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=HANG_GUARD_S)
    assert (run_dir / WRITER_LOCK).exists()  # the file stays; the lock died with the process
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN, "train.steps=2")
    assert '"status": "completed"' in out.stdout


def test_a_refused_training_leaves_the_holders_lock_alone(tmp_path):
    """The holder is still starting (its directory holds nothing but the lock): the refused training must not clean
    that directory up, or a third training would take a fresh lock beside the first."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cyclegan_dist.writer_lock import "
                               f"WriterLock\nWriterLock({str(run_dir)!r}).acquire()\nprint('held', flush=True)\n"
                               "time.sleep(600)"], cwd=ROOT, env=_env(None), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for _ in range(2):  # the second refusal proves the first left the lock in place
            out = run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN, "train.steps=2",
                          check=False)
            assert out.returncode == 2 and f"pid {holder.pid}" in out.stderr, out.stderr[-2000:]
            assert sorted(p.name for p in run_dir.iterdir()) == [WRITER_LOCK]
    finally:
        holder.kill()
        holder.wait(timeout=60)
