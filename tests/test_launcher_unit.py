"""The launcher without a scheduler: no torch at import, node/task arithmetic, profiles, the distributed env a
task exports (synthetic SLURM and submitit-local environments, in subprocesses), run registry helpers, and the
input mistakes that are caught before any scheduler is asked (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cyclegan_dist.errors import UserError
from launcher import clusters, gather, runs
from launcher.clusters import Profile, parse_time, plan_resources
from launcher.distenv import select_device

from helpers import ROOT, launcher


def py(code: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=full,
                          cwd=cwd or ROOT, timeout=120)


def test_launcher_imports_no_torch_and_prints_help():
    """The launcher's modules and its --help load none of the heavy packages (what keeps `--help` and `status`
    fast; the time itself is a benchmark's business, not a test's)."""
    out = py("import sys\n"
             "import launcher.cli, launcher.submit, launcher.gather, launcher.scheduler, launcher.job, "
             "launcher.job_main\n"
             "launcher.cli.build_parser().format_help()\n"
             "print(sorted(m for m in ('torch', 'accelerate', 'cyclegan_dist.train', 'cyclegan_dist.entry', 'wandb')"
             " if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"launcher imported {out.stdout.strip()}"
    help_ = launcher("--help")
    assert help_.returncode == 0 and "submit" in help_.stdout and "gather" in help_.stdout


SLURM8 = Profile(name="p8", path=Path("p8.yaml"), executor="slurm", time_min=60, signal_delay_s=60, max_requeues=3,
                 cpus_per_task=4, gpus_per_node=8)
SLURM4 = Profile(name="p4", path=Path("p4.yaml"), executor="slurm", time_min=60, signal_delay_s=60, max_requeues=3,
                 cpus_per_task=4, gpus_per_node=4)
LOCAL = Profile(name="local", path=Path("local.yaml"), executor="local", time_min=60, signal_delay_s=60,
                max_requeues=3, cpus_per_task=1)


@pytest.mark.parametrize("profile, gpus, per_node, nodes, tasks", [
    (SLURM8, 8, None, 1, 8), (SLURM8, 16, None, 2, 8), (SLURM8, 64, None, 8, 8), (SLURM8, 4, None, 1, 4),
    (SLURM8, 1, None, 1, 1), (SLURM4, 8, None, 2, 4), (SLURM8, 8, 4, 2, 4), (SLURM8, None, None, 1, 8),
    (SLURM8, 12, 6, 2, 6),
])
def test_one_task_per_gpu_nodes_filled(profile, gpus, per_node, nodes, tasks):
    r = plan_resources(profile, gpus=gpus, gpus_per_node=per_node)
    assert (r.nodes, r.tasks_per_node, r.gpus_per_node) == (nodes, tasks, tasks)
    assert r.world_size == r.gpus == nodes * tasks


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": 12}, "does not fill whole nodes of 8 GPUs"),
    ({"gpus": 9}, "use --gpus 8 or 16"),
    ({"gpus": -1}, "must be >= 0"),
    ({"gpus": 8, "cpu_ranks": 2}, "--cpu-ranks is for CPU runs"),
    ({"gpus": 8, "gpus_per_node": 0}, "--gpus-per-node must be >= 1"),
])
def test_impossible_gpu_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        plan_resources(SLURM8, **kwargs)


def test_cpu_ranks_and_local_gpu_limits():
    assert plan_resources(SLURM8, gpus=0, cpu_ranks=3).to_dict() == {
        "gpus": 0, "nodes": 1, "tasks_per_node": 3, "gpus_per_node": 0, "cpus_per_task": 4, "world_size": 3}
    # this machine without GPUs: default one CPU rank; --gpus N > GPUs here is refused
    assert plan_resources(LOCAL, local_gpus=0).world_size == 1
    assert plan_resources(LOCAL, gpus=0, cpu_ranks=2, local_gpus=0).world_size == 2
    with pytest.raises(UserError, match="this machine has 0 CUDA GPUs"):
        plan_resources(LOCAL, gpus=1, local_gpus=0)
    with pytest.raises(UserError, match="this machine has 2 CUDA GPUs"):
        plan_resources(LOCAL, gpus=8, local_gpus=2)
    r = plan_resources(LOCAL, local_gpus=2)  # default: all local GPUs, one rank each
    assert (r.gpus, r.nodes, r.tasks_per_node) == (2, 1, 2)
    with pytest.raises(UserError, match="--gpus-per-node applies to SLURM"):
        plan_resources(LOCAL, gpus=1, gpus_per_node=1, local_gpus=2)


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), (45, 45), ("90:30", 91), ("24:00:00", 1440), ("1-00", 1440), ("1-12:30", 2190),
    ("2-00:00:01", 2881), ("00:00:30", 1),
])
def test_slurm_time_syntax(text, minutes):
    assert parse_time(text) == minutes
    assert clusters.parse_time(clusters.format_minutes(minutes)) == minutes


@pytest.mark.parametrize("text", ["abc", "0", "1:2:3:4", "", "-5", True])
def test_bad_times(text):
    with pytest.raises(UserError, match="time"):
        parse_time(text)


def test_shipped_profiles_load():
    assert {"testcluster", "local", "example"} <= set(clusters.known_profiles())
    test = clusters.load_profile("testcluster")
    assert (test.executor, test.partition, test.gpus_per_node) == ("slurm", "debug", 2)
    assert clusters.load_profile("local").executor == "local"
    example = clusters.load_profile("example")
    assert example.gpus_per_node == 8 and example.setup and example.account


def test_profile_keys_are_checked(tmp_path):
    full = yaml.safe_load((clusters.known_profiles()["testcluster"]).read_text())
    for key in ("partition", "time", "max_requeues", "signal_delay_s"):
        path = tmp_path / f"no-{key}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in full.items() if k != key}))
        with pytest.raises(UserError, match=f"missing key.*{key}"):
            clusters.load_profile(path)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**full, "gpu_per_node": 4}))
    with pytest.raises(UserError, match="unknown key.*gpu_per_node"):
        clusters.load_profile(path)
    path.write_text(yaml.safe_dump({**full, "gpus_per_node": None}))
    with pytest.raises(UserError, match="'gpus_per_node' must have a value"):
        clusters.load_profile(path)
    with pytest.raises(UserError, match="unknown cluster profile 'nope'.*testcluster"):
        clusters.load_profile("nope")


# ---------------------------------------------------------------------------------------- env export

EXPORT_ALL_RANKS = """
import json, os, sys
from launcher.distenv import export_torch_env
base = dict(os.environ)
out = []
for rank in range(int(os.environ["N"])):
    os.environ.clear(); os.environ.update(base)
    os.environ.update({k: v.format(rank=rank, node=rank // 8, local=rank % 8) for k, v in """ \
"""json.loads(os.environ["PER_RANK"]).items()})
    out.append(export_torch_env())
print(json.dumps(out))
"""


def test_env_export_from_a_2_node_x_8_gpu_slurm_job():
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_NNODES": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
           "RANK": "99", "WORLD_SIZE": "99",  # stale values from the submitting shell are overwritten
           "N": "16", "PER_RANK": json.dumps({"SLURM_PROCID": "{rank}", "SLURM_NODEID": "{node}",
                                              "SLURM_LOCALID": "{local}"})}
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.startswith("SUBMITIT_") and k != "MASTER_PORT"}
    out = subprocess.run([sys.executable, "-c", EXPORT_ALL_RANKS], check=False, capture_output=True, text=True,
                         timeout=60,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    tasks = json.loads(out.stdout)
    assert [t["RANK"] for t in tasks] == [str(r) for r in range(16)]
    assert {t["WORLD_SIZE"] for t in tasks} == {"16"} and {t["LOCAL_WORLD_SIZE"] for t in tasks} == {"8"}
    assert [t["LOCAL_RANK"] for t in tasks] == [str(r % 8) for r in range(16)]
    assert [t["CUDA_VISIBLE_DEVICES"] for t in tasks] == [str(r % 8) for r in range(16)]  # one GPU per task
    assert {t["MASTER_ADDR"] for t in tasks} == {"gpu017"}  # the first node of the job
    ports = {t["MASTER_PORT"] for t in tasks}
    assert len(ports) == 1 and 20000 <= int(ports.pop()) <= 60000  # the same port on every task, from the job id


def test_env_export_in_a_submitit_local_task():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.update({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
                "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0", "CUDA_VISIBLE_DEVICES": "",
                "N": "2", "PER_RANK": json.dumps({"SUBMITIT_LOCAL_GLOBALID": "{rank}",
                                                  "SUBMITIT_LOCAL_LOCALID": "{rank}"}),
                "PYTHONPATH": str(ROOT)})
    out = subprocess.run([sys.executable, "-c", EXPORT_ALL_RANKS], check=False, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    tasks = json.loads(out.stdout)
    assert [(t["RANK"], t["LOCAL_RANK"], t["WORLD_SIZE"]) for t in tasks] == [("0", "0", "2"), ("1", "1", "2")]
    assert {t["CUDA_VISIBLE_DEVICES"] for t in tasks} == {""}  # CPU ranks stay on the CPU
    assert len({(t["MASTER_ADDR"], t["MASTER_PORT"]) for t in tasks}) == 1


def test_device_selection():
    assert select_device("4,5,6,7", 2, 4) == "6"  # SLURM's ids need not start at 0
    assert select_device("3", 0, 1) is None  # SLURM bound one GPU to the task already
    assert select_device("", 1, 2) is None and select_device(None, 0, 1) is None
    with pytest.raises(RuntimeError, match="only 2 GPUs are visible"):
        select_device("0,1", 3, 4)


# ---------------------------------------------------------------------------------------- registry / gather


def test_requeues_attempts_and_states():
    events = [{"event": "start", "time": 0.0, "restart_count": 0}, {"event": "stopped", "time": 50.0},
              {"event": "requeued", "time": 50.0}, {"event": "start", "time": 70.0, "restart_count": 1},
              {"event": "start", "time": 200.0, "restart_count": 2}, {"event": "completed", "time": 260.0}]
    assert runs.requeue_count(events) == 2
    # the second attempt was killed without an end event: it ends at its last metrics record (150)
    assert runs.attempts(events, [10.0, 150.0, 250.0]) == [(0.0, 50.0), (70.0, 150.0), (200.0, 260.0)]
    assert runs.attempts(events[:4], [80.0], now=100.0) == [(0.0, 50.0), (70.0, 100.0)]
    assert gather.run_state({"state": "RUNNING"}, events) == "RUNNING"
    assert gather.run_state({"state": "COMPLETED"}, events) == "COMPLETED"
    assert gather.run_state({}, events) == "COMPLETED"
    assert gather.run_state({"state": "CANCELLED"}, events[:4]) == "CANCELLED"
    assert gather.run_state({}, events[:2]) == "INTERRUPTED"
    assert gather.run_state({"state": "FAILED"}, [*events[:2], {"event": "refused", "time": 50.0}]) == "INTERRUPTED"
    assert gather.run_state({"state": "ENDED"}, events[:1]) == "LOST"
    assert gather.run_state({}, []) == "SUBMITTED"


def test_metric_summary_last_and_best():
    records = [{"step": 2, "time": 1, "loss/G": 5.0, "loss/D": 1.0, "lr": 1e-3},
               {"step": 4, "time": 2, "loss/G": 3.0, "loss/D": 2.0, "eval/fid": 80.0, "eval/psnr": 12.0},
               {"step": 6, "time": 3, "loss/G": 4.0, "loss/D": 0.5, "eval/fid": 90.0, "eval/psnr": 11.0}]
    last, best = gather.metric_summary(records)
    assert last == {"loss/G": 4.0, "loss/D": 0.5, "lr": 1e-3, "eval/fid": 90.0, "eval/psnr": 11.0}
    assert best["loss/G"] == {"value": 3.0, "step": 4} and best["eval/fid"] == {"value": 80.0, "step": 4}
    assert best["eval/psnr"] == {"value": 12.0, "step": 4} and "lr" not in best


# ---------------------------------------------------------------------------------------- bad input, no scheduler


def no_sbatch_path(tmp_path: Path) -> str:
    """A PATH holding python alone: no sbatch/srun (on Debian /bin is /usr/bin, so strip everything)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.parametrize("args, message", [
    (["--exp", "nope"], "one of the experiments: "),
    (["--exp", "smoke", "--set", "data.root=/no/such/shards"],
     "data.root=/no/such/shards: the shard root does not exist"),
    (["--exp", "smoke", "--set", "train.stepz=3"], "unknown key 'train.stepz'"),
    (["--exp", "smoke", "--cluster", "slurm"], "--cluster slurm: sbatch/srun not found"),
    (["--exp", "smoke", "--cluster", "testcluster"], "submits to SLURM, but sbatch/srun are not on PATH"),
    (["--exp", "smoke", "--cluster", "local", "--gpus", "2"], "this machine has 0 CUDA GPUs"),
    (["--exp", "smoke", "--seeds", "0,x"], "--seeds: 'x' is not an integer"),
    (["--exp", "smoke", "--time", "soon"], "not a SLURM time"),
    (["--exp", "smoke", "--cluster", "{profile}"], "missing key(s) time"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    profile = tmp_path / "broken.yaml"
    profile.write_text(yaml.safe_dump({"executor": "local", "cpus_per_task": 1, "setup": [], "signal_delay_s": 10,
                                       "max_requeues": 1, "run_root": None}))
    args = [a.replace("{profile}", str(profile)) for a in args]
    run_root = tmp_path / "runs"
    out = launcher("submit", *args, "--run-root", str(run_root), cwd=tmp_path,
                   env={"PATH": no_sbatch_path(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not run_root.exists()


@pytest.mark.parametrize("args, label", [
    (["--name", "demo\ntouch /tmp/x #"], "--name"),
    (["--name", "../../../escape"], "--name"),
    (["--name", ".."], "--name"),
    (["--name", "/abs/path"], "--name"),
    (["--partition", "gpu\nhostile"], "--partition"),
    (["--set", "experiment=../x"], "experiment"),
    (["--set", "data.root=/a\nb"], "--set"),
    (["--run-root", "runs\nx"], "--run-root"),
])
def test_hostile_names_and_values_are_refused_before_anything_is_written(tmp_path, args, label):
    """Names become one directory under the run root and values reach an sbatch script: a newline, a '/' or '..'
    is one clear line and exit 2, and the run root stays empty."""
    root = tmp_path / "runs"
    cmd = ["submit", "--exp", "smoke", "--cluster", "testcluster", "--gpus", "2", "--dry-run", *args]
    if "--run-root" not in args:
        cmd += ["--run-root", root]
    out = launcher(*map(str, cmd), cwd=tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert label in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not root.exists() and not (tmp_path / "escape").exists()
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_cluster_profiles_are_listed_where_configs_points():
    configs = subprocess.run([sys.executable, "-m", "cyclegan_dist", "configs"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
    assert configs.returncode == 0 and "python -m launcher clusters" in configs.stdout
    out = launcher("clusters")
    assert out.returncode == 0
    listed = dict(line.split() for line in out.stdout.splitlines()[1:])
    assert {"local", "testcluster", "example"} <= set(listed) and all(Path(p).is_file() for p in listed.values())


def test_one_rank_is_not_plural(tmp_path):
    out = launcher("submit", "--exp", "smoke", "--cluster", "local", "--gpus", "0", "--cpu-ranks", "1", "--dry-run",
                   "--run-root", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    assert "(1 rank, one per CPU rank)" in out.stdout and "1 ranks" not in out.stdout


def test_submit_says_which_cluster_and_why_and_warns_beyond_sinfo(tmp_path):
    """Where an sbatch exists, `--cluster auto` names the profile it picked and why; a plan for more nodes than
    sinfo reports is warned about (stub sbatch/srun/sinfo: a login node of a 2-node cluster)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in (("sbatch", "exit 1"), ("srun", "exit 0"), ("sinfo", "printf 'n1\\nn2\\nn1\\n'")):
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "CYCLEGAN_CLUSTER": ""}
    out = launcher("submit", "--exp", "smoke", "--gpus", "16", "--dry-run", "--run-root", str(tmp_path / "r"),
                   env=env)
    assert out.returncode == 0, out.stderr
    assert f"why this cluster: --cluster auto: sbatch found ({stubs / 'sbatch'})" in out.stdout
    assert "so the local test cluster's profile" in out.stdout
    assert "warning: the plan needs 8 nodes, sinfo reports 2 in partition debug" in out.stdout
    fits = launcher("submit", "--exp", "smoke", "--gpus", "4", "--dry-run", "--run-root", str(tmp_path / "r"),
                    env=env)
    assert fits.returncode == 0 and "warning" not in fits.stdout


def test_end_step_follows_a_changed_global_batch():
    """status's total and resume's "nothing to resume" use the step at which the run has seen train.steps x its first
    global batch: train.steps, unless a resume changed the global batch (train.keep_global_batch=false)."""
    from launcher.runs import end_step

    start = {"event": "train_start", "step": 0, "images_seen": 0, "global_batch": 8, "plan_batch": 8}
    assert end_step([], 6) == 6 and end_step([start], 6) == 6
    halved = {"event": "train_start", "step": 2, "images_seen": 16, "global_batch": 4, "plan_batch": 8}
    assert end_step([start, halved], 6) == 10  # 16 of 48 images after 2 steps, then 4 per step
    assert end_step([start, halved], 6, at_step=7) == 10 and end_step([start, halved], 8, at_step=7) == 14
    doubled = {"event": "train_start", "step": 2, "images_seen": 8, "global_batch": 8, "plan_batch": 4}
    assert end_step([doubled], 6) == 4  # 8 of 24 images after 2 steps, then 8 per step
