"""Multi-node training on the real 2-node test SLURM (slurm/testcluster/start.sh --nodes 2; ranks on CPU/gloo).

Each node is a real slurmd in its own network and UTS namespace, with its own hostname and address, so a
4-rank job really spans two hosts: gloo's sockets go from one node's address to the other's. Real sbatch, real
submitit, real `python -m launcher submit`, no mocks. Jobs (each 4-rank job takes both nodes, so they run in turn):
  ref   `--gpus 4`: 2 nodes x 2 tasks, uninterrupted; ranks on both hostnames, cross-node connections, equal digests
  arr   `--seeds 0,1 --gpus 2`: a job array, one task per node, both nodes at once
  rq    `--gpus 4`, USR2 mid-run -> every rank checkpoints -> requeue -> resume: final weights bit-equal to ref
  nl    `--gpus 4`, a node dies mid-run (its link goes down, every process on it is SIGKILLed): the job ends
        within SlurmdTimeout (+ KillWait), SLURM requeues it, it resumes from the last complete checkpoint once the
        node is back (start.sh), and ends bit-equal to ref
Skipped when the cluster has fewer than 2 nodes, unless CYCLEGAN_REQUIRE_SLURM=1 (CI), where that is a failure
(the two distenv unit tests at the top need no cluster).
The measured times are printed (pytest -s): submit -> 4 ranks training, USR2 -> training again, node loss -> job end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_nodes import established, kill_node, node_state, our_namespace, revive_nodes, slurm_nodes, two_nodes
from slurm_helpers import (
    job_ended,
    job_events,
    job_nodes,
    last_step,
    logs_of,
    sh,
    squeue_state,
    task_log,
    task_pids,
    wait_done,
)

from launcher.distenv import master_port
from launcher.runs import read_manifest

from helpers import TINY, assert_same_generator_files, launcher, loss_records, wait_for

STEPS = 30
# ~0.5 s a step; the stop check runs every 10 steps
LONG = [f"train.steps={STEPS}", "train.checkpoint_every=10", "train.log_every=2", *TINY]
SHORT = ["train.steps=6", "train.checkpoint_every=3", "train.log_every=2", *TINY]
JOB_TIMEOUT = 400  # s: a 4-rank job takes both nodes, so the jobs run in turn
FINAL = f"step-{STEPS:08d}"
# one xdist worker runs the module: one set of jobs (the module fixture), in parallel with the "slurm" group
pytestmark = [pytest.mark.xdist_group("multinode")]


def digests(checkpoint: Path, world: int) -> list[dict]:
    import torch

    return [torch.load(checkpoint / f"rank-{r:05d}.pt", map_location="cpu", weights_only=True)["digest"]
            for r in range(world)]


def check_against_ref(ref: Path, run_dir: Path, resumed: int) -> None:
    """The part before the interruption equals ref bit for bit, and so does the end: on 4 ranks exact resume needs
    DDP's gradient buckets kept fixed (``cyclegan_dist/train/runtime.py: _ddp_handlers``)."""
    for step_dir in (f"step-{resumed:08d}", FINAL):
        assert_same_generator_files(ref / "checkpoints" / step_dir, run_dir / "checkpoints" / step_dir)
        assert digests(ref / "checkpoints" / step_dir, 4) == digests(run_dir / "checkpoints" / step_dir, 4)


def distenv_lines(m: dict, world: int) -> dict[int, dict]:
    """rank -> what its [distenv] line says (host, address, master, how gloo binds)."""
    out = {}
    pattern = re.compile(r"\[distenv\] rank (\d+)/(\d+) local (\d+)/(\d+) on (\S+) \((\S+)\) "
                         r"master (\S+):(\d+) gloo=(.*)")
    for r in range(world):
        found = pattern.findall(task_log(m, r))
        if found:
            rank, size, local, lsize, host, addr, maddr, mport, gloo = found[0]
            out[int(rank)] = {"world": int(size), "local": int(local), "local_world": int(lsize), "host": host,
                              "addr": addr, "master": maddr, "port": int(mport), "gloo": gloo.strip()}
    return out


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def nodes(request) -> list[str]:
    return two_nodes(request)


@pytest.fixture(scope="module")
def jobs(nodes, tmp_path_factory):
    """Queue ref, arr, rq at once (they run in this order); nl is submitted by its test."""
    work = tmp_path_factory.mktemp("multinode")
    submitted: dict = {"work": work, "root": work / "runs", "t0": {}, "ids": [], "resumed": {}}

    def submit(key: str, *args: str) -> None:
        submitted["t0"][key] = time.time()
        out = launcher("submit", "--run-root", str(submitted["root"]), "--cluster", "testcluster", *args, cwd=work)
        assert out.returncode == 0, out.stdout + out.stderr
        submitted["ids"] += re.findall(r"job (\d+(?:_\d+)?)", out.stdout)

    submitted["submit"] = submit
    submit("ref", "--exp", "smoke", "--gpus", "4", "--name", "ref", "--set", *LONG)
    submit("arr", "--exp", "smoke", "--seeds", "0,1", "--gpus", "2", "--name", "arr", "--set", *SHORT)
    submit("rq", "--exp", "smoke", "--gpus", "4", "--name", "rq", "--set", *LONG)
    for key in ("ref", "rq"):
        submitted[key] = submitted["root"] / "smoke" / key
    submitted["arr"] = [submitted["root"] / "smoke" / f"arr-smoke-s{s}" for s in (0, 1)]
    yield submitted
    ids = {i.split("_")[0] for i in submitted["ids"]}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False, capture_output=True, timeout=60)


# ------------------------------------------------------------------------------------ distenv (no cluster)


def test_master_port_comes_from_the_job_id(monkeypatch):
    from launcher.distenv import export_torch_env

    assert master_port("4242") == master_port(4242) == 24242
    assert len({master_port(i) for i in range(700000, 700000 + 12768)}) == 12768  # no two jobs in a span share
    assert all(20000 <= master_port(i) < 32768 for i in (1, 12767, 12768, 999999))  # below the ephemeral ports
    exported = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "GLOO_SOCKET_IFNAME",
                "SUBMITIT_EXECUTOR", "CYCLEGAN_MASTER_PORT"]
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))] + exported:
        monkeypatch.setenv(key, "")  # so that monkeypatch removes what export_torch_env sets, after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_PORT", "29500")  # stale, from the submitting shell
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    slurm = {"SLURM_JOB_ID": "700123", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "localhost,localhost", "SLURM_NODEID": "0", "SLURM_LOCALID": "0"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    env = export_torch_env()  # the same on every rank and in every requeue of job 700123
    assert env["MASTER_PORT"] == str(master_port(700123)) and env["MASTER_ADDR"] == "localhost"
    monkeypatch.setenv("SLURM_JOB_ID", "700124")  # e.g. the next array task: its own job id, its own port
    assert export_torch_env()["MASTER_PORT"] == str(master_port(700124)) != str(master_port(700123))
    monkeypatch.setenv("CYCLEGAN_MASTER_PORT", "23456")
    assert export_torch_env()["MASTER_PORT"] == "23456"


def test_gloo_interface_when_the_hostname_is_loopback(monkeypatch):
    import launcher.distenv as distenv

    assert distenv.interface_of("127.0.0.1") is not None  # lo (its name varies)
    mine = [(n, a) for n in (name for _, name in socket.if_nameindex()) for a in [_ipv4_of(n)]
            if a and not a.startswith("127.")]
    if not mine:
        pytest.skip("this machine has no non-loopback IPv4 address")
    name, addr = mine[0]
    assert distenv.interface_of(addr) == name
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")  # resolves to 127.0.0.1
    assert distenv.gloo_interface(addr) == name  # the interface towards the master (a UDP connect sends nothing)
    assert distenv.gloo_interface("localhost") is None  # a loopback master: one node, nothing to choose
    monkeypatch.setattr(distenv, "_resolve", lambda host: addr)  # the hostname resolves to a real address
    assert distenv.gloo_interface(addr) is None  # gloo binds there by itself


def _ipv4_of(ifname: str) -> str | None:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))[20:24])
        except OSError:
            return None


# ------------------------------------------------------------------------------------ tests on the cluster

PROBE = r"""
import json, os, socket, sys, time
host = socket.gethostname()
rank, port = int(os.environ["SLURM_PROCID"]), int(sys.argv[1])
nodes = os.environ["SLURM_JOB_NODELIST"]
out = {"rank": rank, "host": host, "node": os.environ["SLURMD_NODENAME"], "addr": socket.gethostbyname(host),
       "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "local": int(os.environ["SLURM_LOCALID"])}
lo = socket.socket(); lo.bind(("127.0.0.1", 0)); lo.listen()  # this node's own loopback works
c = socket.create_connection(lo.getsockname(), timeout=5); c.close(); lo.close()
master = sys.argv[2]
if rank == 0:  # rank 0 listens on its node's address; the other node's ranks connect by name
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((out["addr"], port)); srv.listen(); srv.settimeout(30)
    peers = []
    for _ in range(int(sys.argv[3])):
        conn, peer = srv.accept(); peers.append(peer[0]); conn.sendall(host.encode()); conn.close()
    out["peers"] = sorted(peers)
elif out["node"] != master:
    for _ in range(200):
        try:
            conn = socket.create_connection((master, port), timeout=5); break
        except OSError:
            time.sleep(0.1)
    out["from"] = conn.getsockname()[0]; out["to"] = conn.getpeername()[0]; out["said"] = conn.recv(100).decode()
print(json.dumps(out), flush=True)
"""


def test_tasks_on_two_nodes_have_their_own_names_and_addresses(nodes, tmp_path):
    """Plain sbatch + srun, 2 nodes x 2 tasks: each task's hostname is its node's name and resolves to the node's
    own address (not loopback), loopback works on every node, and the nodes reach each other by name."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "probe-%j.out"
    port = 20000 + os.getpid() % 10000
    job = sh("sbatch", "--parsable", "-N2", "--ntasks-per-node=2", "--gpus-per-node=2", "--time=5", "-o", str(out),
             "--wrap", f"srun {sys.executable} {probe} {port} {nodes[0]} 2").strip().split(";")[0]
    try:
        wait_for(lambda: job_ended(job), f"probe job {job} to end", 120)
    finally:
        subprocess.run(["scancel", job], check=False, capture_output=True, timeout=60)
    text = Path(str(out).replace("%j", job)).read_text()
    rows = sorted((json.loads(line) for line in text.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1, 2, 3], text
    addr = {n: socket.gethostbyname(n) for n in nodes[:2]}  # the names resolve here (root namespace) too
    assert [r["host"] for r in rows] == [r["node"] for r in rows] == [nodes[0]] * 2 + [nodes[1]] * 2, rows
    assert [r["addr"] for r in rows] == [addr[r["host"]] for r in rows] and not any(
        a.startswith("127.") for a in addr.values()), rows
    assert [r["local"] for r in rows] == [0, 1, 0, 1] and {r["cvd"] for r in rows} == {"0,1"}, rows
    assert rows[0]["peers"] == [addr[nodes[1]]] * 2, rows  # the other node's tasks came from their own address
    assert [(r["from"], r["to"], r["said"]) for r in rows[2:]] == [(addr[nodes[1]], addr[nodes[0]], nodes[0])] * 2




def test_four_ranks_on_two_nodes(jobs, nodes):
    run_dir = jobs["ref"]
    m = read_manifest(run_dir)
    job = m["job"]["id"]
    assert m["resources"] == {"gpus": 4, "nodes": 2, "tasks_per_node": 2, "gpus_per_node": 2, "cpus_per_task": 1,
                              "world_size": 4}
    # while it trains: every rank holds gloo connections from its own node's address to the other node's
    wait_for(lambda: loss_records(run_dir), "the first training step of the 4 ranks", JOB_TIMEOUT)
    t_training = loss_records(run_dir)[0]["time"]
    hosts = job_nodes(job)
    assert hosts == nodes[:2], hosts
    addr = {n: socket.gethostbyname(n) for n in hosts}
    assert not any(a.startswith("127.") for a in addr.values()), addr

    def cross_node_connections():
        found = {}
        for node in hosts:
            other = addr[hosts[1 - hosts.index(node)]]
            for rank, pid in task_pids(job, node).items():
                conns = established(pid)
                found[rank] = (node, conns)
                if not any(local == addr[node] and remote == other for local, remote in conns):
                    return None
        return found if sorted(found) == [0, 1, 2, 3] else None

    found = wait_for(cross_node_connections, "every rank to hold a gloo connection to the other node", 60, 0.5)
    assert {found[r][0] for r in (0, 1)} == {hosts[0]} and {found[r][0] for r in (2, 3)} == {hosts[1]}, found
    for rank, (node, conns) in found.items():
        assert all(local in (addr[node], "127.0.0.1") for local, _ in conns), (rank, conns)  # never another address

    wait_done(run_dir, JOB_TIMEOUT)
    lines = distenv_lines(m, 4)
    assert sorted(lines) == [0, 1, 2, 3], logs_of(m)
    assert [lines[r]["host"] for r in range(4)] == [hosts[0], hosts[0], hosts[1], hosts[1]]
    assert [lines[r]["addr"] for r in range(4)] == [addr[hosts[0]]] * 2 + [addr[hosts[1]]] * 2
    assert [lines[r]["local"] for r in range(4)] == [0, 1, 0, 1]
    assert {(v["master"], v["port"], v["world"], v["gloo"]) for v in lines.values()} == {
        (hosts[0], master_port(job), 4, "hostname")}
    records = loss_records(run_dir)
    assert records[-1]["step"] == STEPS and {r["world_size"] for r in records} == {4}
    ev = job_events(run_dir)
    assert [e["event"] for e in ev] == ["start", "completed"] and ev[0]["host"] == hosts[0], ev
    assert ev[0]["master"] == f"{hosts[0]}:{master_port(job)}"
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d  # one model on all 4 ranks: the all-reduce crossed the nodes
    print(f"\n4 ranks on {hosts}: submit -> 4 ranks training {t_training - jobs['t0']['ref']:.1f} s, "
          f"{STEPS} steps in {ev[-1]['time'] - t_training:.1f} s")


def test_job_array_on_both_nodes(jobs, nodes):
    ms = [wait_done(d, JOB_TIMEOUT) for d in jobs["arr"]]
    ids = [m["job"]["id"] for m in ms]
    array = ms[0]["job"]["array_job_id"]
    assert array and ids == [f"{array}_0", f"{array}_1"], ids
    assert [m["seed"] for m in ms] == [0, 1]
    hosts = [next(e["host"] for e in job_events(d) if e["event"] == "start") for d in jobs["arr"]]
    assert sorted(hosts) == sorted(nodes[:2]), hosts  # one task on each node
    for d in jobs["arr"]:
        records = loss_records(d)
        assert records[-1]["step"] == 6 and {r["world_size"] for r in records} == {2}
    ports = [int(next(e["master"] for e in job_events(d) if e["event"] == "start").rsplit(":", 1)[1])
             for d in jobs["arr"]]
    rows = dict(line.split("|") for line in sh("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,JobIDRaw").split())
    # each array task has its own SLURM_JOB_ID, hence its own port
    assert len(set(ports)) == 2 and ports == [master_port(rows[i]) for i in ids], (ports, rows)


def test_usr2_requeue_resumes_bit_exact_on_two_nodes(jobs, nodes):
    run_dir, ref = jobs["rq"], jobs["ref"]
    m = read_manifest(run_dir)
    job = m["job"]["id"]
    wait_for(lambda: last_step(run_dir) >= 4, "the 4-rank run to pass step 4", JOB_TIMEOUT)
    t_signal = time.time()
    sh("scancel", "--signal=USR2", job)  # every task of the job, on both nodes
    wait_for(lambda: any(e["event"] == "requeued" for e in job_events(run_dir)), "the job to requeue itself", 120)
    stopped = next(e for e in job_events(run_dir) if e["event"] == "stopped")
    assert stopped["signals"] == ["SIGUSR2"] and 4 <= stopped["step"] < STEPS, stopped
    ckpt = run_dir / "checkpoints" / f"step-{stopped['step']:08d}"
    assert (ckpt / "complete").is_file() and json.loads((ckpt / "complete").read_text())["world_size"] == 4
    assert sorted(p.name for p in ckpt.glob("rank-*.pt")) == [f"rank-{r:05d}.pt" for r in range(4)]  # both nodes
    wait_for(lambda: any(e["event"] == "start" and e["restart_count"] == 1 for e in job_events(run_dir)),
             "the requeued job to start again", JOB_TIMEOUT)
    t_restart = next(e["time"] for e in job_events(run_dir) if e["event"] == "start" and e["restart_count"] == 1)
    wait_for(lambda: any(r["time"] > t_restart for r in loss_records(run_dir)), "the requeued job to train again", 120)
    t_training = next(r["time"] for r in loss_records(run_dir) if r["time"] > t_restart)
    wait_done(run_dir, JOB_TIMEOUT)
    ev = job_events(run_dir)
    assert [e["event"] for e in ev] == ["start", "stopped", "requeued", "start", "completed"], ev
    resumed = re.findall(r"resumed from \S+/step-(\d{8}) at step", task_log(m, 0))
    assert [int(s) for s in resumed] == [stopped["step"]], resumed
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d
    jobs["resumed"]["rq"] = stopped["step"]
    print(f"\nUSR2 on 2 nodes: -> requeued {stopped['time'] - t_signal:.1f} s, -> running again "
          f"{t_restart - t_signal:.1f} s, -> training again {t_training - t_signal:.1f} s")
    wait_done(ref, JOB_TIMEOUT)
    check_against_ref(ref, run_dir, stopped["step"])


def test_node_loss_ends_the_job_and_it_resumes(jobs, nodes):
    if os.geteuid() != 0 or not all(our_namespace(n) for n in nodes[:2]) or shutil.which("ip") is None:
        pytest.skip("needs root and nodes in slurm/testcluster's network namespaces (start.sh --nodes 2)")
    all_nodes = slurm_nodes(ready_only=False)
    ref = jobs["ref"]
    jobs["submit"]("nl", "--exp", "smoke", "--gpus", "4", "--name", "nl", "--set", *LONG)
    run_dir = jobs["root"] / "smoke" / "nl"
    m = read_manifest(run_dir)
    job = m["job"]["id"]
    victim = nodes[1]
    try:
        wait_for(lambda: (last_step(run_dir) >= 12
                          and (run_dir / "checkpoints" / "step-00000010" / "complete").is_file()),
                 "the run to pass its checkpoint at step 10", JOB_TIMEOUT)
        t_loss = time.time()
        killed = kill_node(victim)
        assert killed, f"nothing ran on {victim}"
        # SLURM notices (SlurmdTimeout), sets the node DOWN, kills what is left of the job (KillWait) and requeues it
        wait_for(lambda: squeue_state(job) not in ("RUNNING", "COMPLETING"), "the job to end after the node loss", 120,
                 0.5)
        t_end = time.time()
        state = squeue_state(job)
        assert state == "PENDING", f"the job was not requeued after the node loss: {state!r}"
        # srun --kill-on-bad-exit usually ends the job before SlurmdTimeout has marked the node DOWN: by then
        # it is at least "not responding" (a trailing *)
        down = node_state(victim)
        assert down.startswith("down") or down.endswith("*"), down
        assert not any(e["event"] == "completed" for e in job_events(run_dir))
    finally:
        t_revive = time.time()
        revive_s = revive_nodes(len(all_nodes))
    wait_for(lambda: any(e["event"] == "start" and e["restart_count"] == 1 for e in job_events(run_dir)),
             "the requeued job to start again once the node is back", JOB_TIMEOUT)
    t_restart = next(e["time"] for e in job_events(run_dir) if e["event"] == "start" and e["restart_count"] == 1)
    wait_for(lambda: any(r["time"] > t_restart for r in loss_records(run_dir)), "the requeued job to train again", 120)
    t_training = next(r["time"] for r in loss_records(run_dir) if r["time"] > t_restart)
    wait_done(run_dir, JOB_TIMEOUT)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step-(\d{8}) at step", task_log(m, 0))]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0, resumed  # the last periodic checkpoint
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d
    print(f"\nnode loss ({victim}): -> job ended and requeued {t_end - t_loss:.1f} s; node back (start.sh) "
          f"{revive_s:.1f} s; -> running again {t_restart - t_revive:.1f} s, -> training again "
          f"{t_training - t_revive:.1f} s (resumed from step {resumed[0]})")
    if jobs["resumed"].get("rq") == resumed[0]:  # two jobs resumed from the same step: the same end, bit for bit
        assert_same_generator_files(jobs["rq"] / "checkpoints" / FINAL, run_dir / "checkpoints" / FINAL)
    wait_done(ref, JOB_TIMEOUT)
    check_against_ref(ref, run_dir, resumed[0])
