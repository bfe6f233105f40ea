"""The launcher against the real single-host test SLURM (slurm/testcluster: 2 fake GPUs, ranks on CPU/gloo).

Real sbatch, real submitit, no mocks. All jobs are queued at once by one module fixture and the tests wait on
them in turn, so SLURM works while the tests check:
  ref    2-task smoke job on 2 fake GPUs, uninterrupted
  rq     the same run, sent USR2 mid-run (checkpoint -> requeue -> resume), then killed with SIGKILL mid-run and
         requeued by hand (resume from the last periodic checkpoint): its final generators equal ref's, bit for bit
  arr    a job array of two experiments (the smoke run on a U-Net and on a ResNet), one fake GPU each
  sb     slurm/templates/train.sbatch (plain sbatch + srun + launcher.job_main)
Skipped only when sbatch is missing and CYCLEGAN_REQUIRE_SLURM is unset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_nodes import slurm_nodes
from slurm_helpers import (
    JOB_TIMEOUT,
    NEEDS_SLURM,
    job_ended,
    job_events,
    last_step,
    sacct_state,
    sh,
    squeue_ids,
    squeue_state,
    task_pids,
    wait_done,
)

from cyclegan_dist.config import load_config
from launcher import clusters
from launcher.runs import read_manifest

from helpers import ROOT, TINY_WANDB, assert_same_generator_files, job_env, launcher, loss_records, wait_for

pytestmark = [NEEDS_SLURM, pytest.mark.xdist_group("slurm")]  # one xdist worker runs every SLURM test
LOGGED = [*TINY_WANDB, "wandb.mode=offline", "train.log_every=2"]
LONG = ["train.steps=80", "train.checkpoint_every=10", *LOGGED]  # 0.1-0.3 s a step: room to signal mid-run
SHORT = ["train.steps=6", "train.checkpoint_every=3", *LOGGED]
SMOKE_GENERATOR = load_config("smoke").model.generator


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory):
    """Queue every job of this module at once; returns their run dirs, manifests and submit times."""
    work = tmp_path_factory.mktemp("launcher-slurm")
    root = work / "runs"
    other = work / "smoke_resnet.yaml"  # the smoke run with the other generator family
    other.write_text("extends: smoke.yaml\nexperiment: smoke_resnet\nmodel:\n"
                     f"  generator: {'resnet_6blocks' if SMOKE_GENERATOR.startswith('unet') else 'unet_32'}\n")
    submitted: dict = {"work": work, "root": root, "t0": {}}

    def submit(key: str, *args: str) -> None:
        submitted["t0"][key] = time.time()
        out = launcher("submit", "--run-root", str(root), "--cluster", "testcluster", *args, cwd=work)
        assert out.returncode == 0, out.stdout + out.stderr

    submit("ref", "--exp", "smoke", "--gpus", "2", "--name", "ref", "--set", *LONG)
    submit("rq", "--exp", "smoke", "--gpus", "2", "--name", "rq", "--set", *LONG)
    submit("arr", "--exp", f"smoke,{other}", "--gpus", "1", "--name", "arr", "--set", *SHORT)
    submitted["t0"]["sb"] = time.time()
    sb_dir = root / "smoke" / "sb"
    out = subprocess.run(["sbatch", "--parsable", f"--output={work}/sb-%j.out",
                          str(ROOT / "slurm" / "templates" / "train.sbatch"), "smoke", "--run-dir", str(sb_dir),
                          "--set", *SHORT], check=False, capture_output=True, text=True, env=job_env(),
                         cwd=work, timeout=60)
    assert out.returncode == 0, out.stderr
    submitted["sb_job"] = out.stdout.strip().split(";")[0]
    for name in ("ref", "rq"):
        submitted[name] = root / "smoke" / name
    submitted["arr"] = [root / "smoke" / "arr-smoke-s0", root / "smoke_resnet" / "arr-smoke_resnet-s0"]
    submitted["sb"] = sb_dir
    yield submitted
    leftover = [read_manifest(d)["job"]["id"]
                for d in [submitted["ref"], submitted["rq"], *submitted["arr"]] if (d / "manifest.json").is_file()]
    subprocess.run(["scancel", *leftover, submitted["sb_job"]], check=False, capture_output=True, timeout=60)


def test_bad_inputs_queue_nothing(jobs, tmp_path):
    """Every input mistake: one clear line, exit 2, no job in squeue, no run directory."""
    profile = tmp_path / "broken.yaml"
    profile.write_text(clusters.known_profiles()["testcluster"].read_text().replace("partition: debug\n", ""))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    cases = [
        (["--exp", "nope"], {}, "one of the experiments: "),
        (["--exp", "smoke", "--set", "data.root=/no/shards"], {}, "the shard root does not exist"),
        (["--exp", "smoke", "--gpus", "3"], {}, "--gpus 3 does not fill whole nodes of 2 GPUs"),
        (["--exp", "smoke", "--cluster", str(profile)], {}, "missing key(s) partition"),
        (["--exp", "smoke", "--cluster", "slurm"], {"PATH": str(bin_dir)}, "--cluster slurm: sbatch/srun not found"),
        (["--exp", "smoke", "--cluster", "local", "--gpus", "2"], {"CUDA_VISIBLE_DEVICES": ""},
         "this machine has 0 CUDA GPUs"),
        # valid arithmetic, but one node more than the test cluster has: sbatch itself refuses, nothing is queued
        (["--exp", "smoke", "--gpus", str(2 * (len(slurm_nodes(ready_only=False)) + 1))], {}, "sbatch refused the job"),
    ]
    before = squeue_ids(tmp_path)
    root = tmp_path / "runs"
    for args, env, message in cases:
        args = args if "--cluster" in args else [*args, "--cluster", "testcluster"]
        out = launcher("submit", "--run-root", str(root), *args, "--set", *SHORT, cwd=tmp_path, env=env)
        assert out.returncode == 2, f"{args}: {out.stdout}{out.stderr}"
        assert out.stderr.startswith("error: ") and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not squeue_ids(tmp_path) - before, "a bad input queued a job"
    assert not list(root.glob("*/*/manifest.json")), "a bad input left a run behind"


# First, while the 'rq' job is still early in its 80 steps (with two nodes it runs beside 'ref', not after it).
def test_usr2_requeue_and_sigkill_resume_end_bit_exact(jobs):
    run_dir, ref = jobs["rq"], jobs["ref"]
    m = read_manifest(run_dir)
    job = m["job"]["id"]
    # 1. preemption/time limit: USR2 to the tasks mid-run -> all ranks checkpoint -> rank 0 requeues
    wait_for(lambda: last_step(run_dir) >= 6, "the run to pass step 6", timeout=JOB_TIMEOUT)
    t_signal = time.time()
    sh("scancel", "--signal=USR2", job)
    wait_for(lambda: any(e["event"] == "requeued" for e in job_events(run_dir)), "the job to requeue itself", 120)
    stopped = next(e for e in job_events(run_dir) if e["event"] == "stopped")
    assert stopped["signals"] == ["SIGUSR2"] and 6 <= stopped["step"] < 80
    assert (run_dir / "checkpoints" / f"step-{stopped['step']:08d}" / "complete").is_file()
    wait_for(lambda: any(e["event"] == "start" and e["restart_count"] == 1 for e in job_events(run_dir)),
             "the requeued job to start again")
    t_restart = next(e["time"] for e in job_events(run_dir) if e["event"] == "start" and e["restart_count"] == 1)
    # 2. killed without warning (SIGKILL to every task), requeued by hand: resumes from the last periodic checkpoint
    # the resumed attempt itself (its records come after its start) past a periodic checkpoint of its own: the
    # USR2 stop may already lie beyond step 22 (the stop check runs every 10 steps), so attempt 1's records
    # cannot tell (seen on a loaded machine: the kill then hit attempt 2 before it had resumed)
    target = min(max(22, (stopped["step"] // 10 + 1) * 10 + 2), 78)
    wait_for(lambda: any(r["time"] > t_restart and r["step"] >= target for r in loss_records(run_dir)),
             f"the resumed run to pass step {target}")
    tasks = task_pids(job)  # rank -> pid of the job's two training processes
    assert sorted(tasks) == [0, 1], tasks
    for pid in tasks.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: squeue_state(job) not in ("RUNNING", "COMPLETING"), "the killed job to end", 60)
    sh("scontrol", "requeue", job)
    wait_done(run_dir)
    ev = job_events(run_dir)
    assert [e["event"] for e in ev] == ["start", "stopped", "requeued", "start", "start", "completed"], ev
    assert [e["restart_count"] for e in ev if e["event"] == "start"] == [0, 1, 2]
    log = Path(m["job"]["log"]).read_text()
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step-(\d{8}) at step", log)]
    assert resumed[0] == stopped["step"] and resumed[1] >= 20 and resumed[1] % 10 == 0, resumed  # a periodic one
    # same world size, same generators as the uninterrupted run: bit for bit
    wait_done(ref)
    assert_same_generator_files(ref / "checkpoints" / "step-00000080", run_dir / "checkpoints" / "step-00000080")
    print(f"\nrequeue cycle: USR2 -> requeued {stopped['time'] - t_signal:.1f} s, "
          f"USR2 -> running again {t_restart - t_signal:.1f} s")


def test_two_task_smoke_job_on_two_fake_gpus(jobs):
    run_dir = jobs["ref"]
    m = wait_done(run_dir)
    assert m["resources"] == {"gpus": 2, "nodes": 1, "tasks_per_node": 2, "gpus_per_node": 2, "cpus_per_task": 1,
                              "world_size": 2}
    assert m["cluster"]["name"] == "testcluster" and m["job"]["id"].isdigit()
    records = loss_records(run_dir)
    assert records[-1]["step"] == 80 and {r["world_size"] for r in records} == {2}
    ev = job_events(run_dir)
    assert [e["event"] for e in ev] == ["start", "completed"] and ev[0]["world_size"] == 2
    wait_for(lambda: sacct_state(m["job"]["id"]) == "COMPLETED", "sacct to say COMPLETED", 60)
    start, done = ev[0]["time"], ev[-1]["time"]
    submit_, begin, end = sh("sacct", "-n", "-X", "-P", "-j", m["job"]["id"], "-o", "Submit,Start,End").split("|")
    print(f"\nsmoke job (2 tasks, 80 steps): sacct submit {submit_} start {begin} end {end.strip()}; "
          f"launcher submit -> training process up {start - jobs['t0']['ref']:.1f} s, -> done {done - start:.1f} s")


def test_job_array_of_two_experiments(jobs):
    dirs = jobs["arr"]
    ms = [wait_done(d) for d in dirs]
    ids = [m["job"]["id"] for m in ms]
    array = ms[0]["job"]["array_job_id"]
    assert array and ids == [f"{array}_0", f"{array}_1"], ids  # one sbatch, one array
    assert [m["experiment"] for m in ms] == ["smoke", "smoke_resnet"]
    generators = [m["config"]["model"]["generator"] for m in ms]
    assert generators[0] == SMOKE_GENERATOR and {g.split("_")[0] for g in generators} == {"resnet", "unet"}
    for d in dirs:
        records = loss_records(d)
        assert records[-1]["step"] == 6 and {r["world_size"] for r in records} == {1}
    for job_id in ids:
        wait_for(lambda job_id=job_id: sacct_state(job_id) == "COMPLETED", f"sacct to say {job_id} COMPLETED", 60)


def test_sbatch_template_runs_two_tasks(jobs):
    run_dir = jobs["sb"]
    job = jobs["sb_job"]
    wait_for(lambda: job_ended(job) and (run_dir / "manifest.json").is_file(), f"template job {job} to end")
    out = (jobs["work"] / f"sb-{job}.out").read_text()
    assert any(e["event"] == "completed" for e in job_events(run_dir)), out[-4000:]
    records = loss_records(run_dir)
    assert records[-1]["step"] == 6 and {r["world_size"] for r in records} == {2}
    m = read_manifest(run_dir)
    assert m["job"]["id"] == job and m["resources"]["world_size"] == 2 and m["resources"]["gpus"] == 2


def test_status_and_gather_from_a_fresh_process(jobs, tmp_path):
    root = jobs["root"]
    for d in [jobs["ref"], jobs["rq"], *jobs["arr"]]:
        wait_done(d)
    wait_for(lambda: job_ended(jobs["sb_job"]), "the template job to end")
    status = launcher("status", "--run-root", str(root), cwd=tmp_path)  # another directory, a new process
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    header = ["RUN", "EXP", "JOB", "STATE", "STEP", "IMG/S", "ETA", "GPU_H", "REQUEUES", "LOSS_G", "LOSS_D", "LAST"]
    assert lines[0].split() == header
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"ref", "rq", "arr-smoke-s0", "arr-smoke_resnet-s0", "sb"}
    requeues = header.index("REQUEUES")
    assert rows["rq"][3:5] == ["COMPLETED", "80/80"] and rows["rq"][requeues] == "2"
    assert rows["ref"][3:5] == ["COMPLETED", "80/80"] and rows["ref"][requeues] == "0"
    rq_records = loss_records(jobs["rq"])
    # a finished run: no ETA, and the rate of its last logging period (as the table prints floats)
    assert rows["rq"][header.index("ETA")] == "-"
    assert rows["rq"][header.index("IMG/S")] == f"{rq_records[-1]['img_per_s']:.4g}", (rows["rq"], rq_records[-1])
    assert all(r[3] == "COMPLETED" for r in rows.values())

    out_dir = tmp_path / "out"
    gathered = launcher("gather", "--run-root", str(root), "--exp", "smoke", "--out", str(out_dir), cwd=tmp_path)
    assert gathered.returncode == 0, gathered.stderr
    assert "wandb sync " in gathered.stdout
    table = json.loads((out_dir / "gather-smoke.json").read_text())
    assert {r["run"] for r in table} == {"ref", "rq", "arr-smoke-s0", "sb"}
    rq = next(r for r in table if r["run"] == "rq")
    assert rq["requeues"] == 2 and rq["attempts"] == 3 and rq["step"] == 80 and rq["world_size"] == 2
    # the attempts' time, all of it since the submission (0.1 s: wall_time_s is rounded)
    assert 0 < rq["wall_time_s"] <= time.time() - jobs["t0"]["rq"] + 0.1, (rq["wall_time_s"], jobs["t0"]["rq"])
    assert rq["gpu_hours"] == pytest.approx(rq["wall_time_s"] * 2 / 3600, abs=1e-3)
    assert (rq["latest_checkpoint"].endswith("step-00000080")
            and Path(rq["latest_checkpoint"], "G_A.safetensors").is_file())
    # last and best (lowest, its first step) loss/G are those of metrics.jsonl; no eval ran: no best checkpoint
    lowest = min(rq_records, key=lambda r: r["loss/G"])
    assert rq["last"]["loss/G"] == rq_records[-1]["loss/G"] and rq["img_per_s"] == rq_records[-1]["img_per_s"]
    assert rq["best"]["loss/G"] == {"value": lowest["loss/G"], "step": lowest["step"]}, (rq["best"], lowest)
    assert rq["best_checkpoint"] is None and rq["best_by"] is None
    assert rq["wandb_mode"] == "offline" and len(rq["wandb_dirs"]) == 3  # one W&B run id, one offline dir per attempt
    assert all(Path(d).is_dir() and d.endswith(rq["wandb_id"]) for d in rq["wandb_dirs"])
    csv = (out_dir / "gather-smoke.csv").read_text().splitlines()
    assert len(csv) == 5 and "last.loss/G" in csv[0] and "gpu_hours" in csv[0]
