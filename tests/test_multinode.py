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
from conftest import slurm_nodes
from slurm_helpers import require_slurm, skip_or_fail_slurm

from cyclegan_dist.rundir import read_jsonl
from launcher.distenv import master_port
from launcher.runs import JOB_EVENTS

ROOT = Path(__file__).resolve().parent.parent
TINY = ["train.log_every=2", "train.sample_every=0", "model.ngf=8", "model.ndf=8", "data.num_workers=0",
        "wandb.mode=disabled"]
STEPS = 30
LONG = [f"train.steps={STEPS}", "train.checkpoint_every=10", *TINY]  # ~0.5 s a step; the stop check runs every 10 steps
SHORT = ["train.steps=6", "train.checkpoint_every=3", *TINY]
JOB_TIMEOUT = 400
FINAL = f"step-{STEPS:08d}"
# one xdist worker runs the module: one set of jobs (the module fixture), in parallel with the "slurm" group
pytestmark = [pytest.mark.xdist_group("multinode")]


def job_env() -> dict[str, str]:
    """The environment of the launcher: nothing of a surrounding job, but SLURM_CONF (which cluster) stays."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_")) or k == "SLURM_CONF"}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                "CYCLEGAN_DIST_CACHE": env.get("CYCLEGAN_DIST_CACHE", str(ROOT / ".cache" / "test"))})
    env.pop("CYCLEGAN_CLUSTER", None)
    return env


def launcher(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], check=False, capture_output=True, text=True,
                          env=job_env(), cwd=cwd, timeout=timeout)


def sh(*args: str, check: bool = True, timeout: int = 60) -> str:
    proc = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_for(predicate, what: str, timeout: float = JOB_TIMEOUT, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def events(run_dir: Path) -> list[dict]:
    """The launcher's job events (start, stopped, requeued, completed, failed), without training's own."""
    return [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] in JOB_EVENTS]


def losses(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss/G" in r]


def last_step(run_dir: Path) -> int:
    records = losses(run_dir)
    return records[-1]["step"] if records else 0


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def squeue_state(job: str) -> str:
    return sh("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()


def job_ended(job: str) -> bool:
    return job not in set(sh("squeue", "-h", "-r", "-o", "%i").split())


def task_log(m: dict, rank: int) -> str:
    path = Path(m["job"]["folder"]) / f"{m['job']['id']}_{rank}_log.out"
    return path.read_text(errors="replace") if path.is_file() else ""


def logs_of(m: dict, world: int) -> str:
    return "\n".join(f"---- rank {r} ----\n{task_log(m, r)[-3000:]}" for r in range(world))


def wait_done(run_dir: Path, timeout: float = JOB_TIMEOUT) -> dict:
    m = manifest(run_dir)
    try:
        wait_for(lambda: any(e["event"] == "completed" for e in events(run_dir)) and job_ended(m["job"]["id"]),
                 f"job {m['job']['id']} ({run_dir.name}) to complete", timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}\nevents: {events(run_dir)}\nlogs:\n"
                             f"{logs_of(m, m['resources']['world_size'])}") from None
    return m


def digests(checkpoint: Path, world: int) -> list[dict]:
    import torch

    return [torch.load(checkpoint / f"rank-{r:05d}.pt", map_location="cpu", weights_only=True)["digest"]
            for r in range(world)]


def same_generators(a: Path, b: Path) -> None:
    for name in ("G_A.safetensors", "G_B.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name}: {b} differs from {a}"


def check_against_ref(ref: Path, run_dir: Path, resumed: int) -> None:
    """The part before the interruption equals ref bit for bit, and so does the end: on 4 ranks exact resume needs
    DDP's gradient buckets kept fixed (``cyclegan_dist/train/runtime.py: _ddp_handlers``)."""
    same_generators(ref / "checkpoints" / f"step-{resumed:08d}", run_dir / "checkpoints" / f"step-{resumed:08d}")
    assert digests(ref / "checkpoints" / f"step-{resumed:08d}", 4) == digests(
        run_dir / "checkpoints" / f"step-{resumed:08d}", 4)
    same_generators(ref / "checkpoints" / FINAL, run_dir / "checkpoints" / FINAL)
    assert digests(ref / "checkpoints" / FINAL, 4) == digests(run_dir / "checkpoints" / FINAL, 4)


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


# ------------------------------------------------------------------------------------ processes and sockets


def task_pids(job: str, node: str) -> dict[int, int]:
    """global rank -> pid of job step 0's tasks on ``node`` (scontrol listpids asks that node's slurmd spool)."""
    out = {}
    for line in sh("scontrol", "listpids", job, node, check=False).splitlines()[1:]:
        cols = line.split()
        if len(cols) == 5 and cols[2] == "0" and cols[4].isdigit():
            out[int(cols[4])] = int(cols[0])
    return out


def _hex_addr(text: str) -> tuple[str, int]:
    ip, port = text.split(":")
    return socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)


def established(pid: int) -> list[tuple[str, str]]:
    """(local address, remote address) of the TCP connections this process holds (IPv4, /proc)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else []:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    conns = []
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]  # the table of the process's namespace
    except OSError:
        return []
    for row in rows:
        cols = row.split()
        if len(cols) > 9 and cols[3] == "01" and cols[9] in inodes:
            conns.append((_hex_addr(cols[1])[0], _hex_addr(cols[2])[0]))
    return conns


# ------------------------------------------------------------------------------------ the node set


def our_namespace(node: str) -> bool:
    """The node is a slurmd in a network namespace of slurm/testcluster (so this test may kill and revive it)."""
    return Path("/run/netns", node).exists()


def host_veth(node: str) -> str | None:
    """The root-namespace end of the node's veth pair (``ip -o link`` shows ``link-netns NODE`` for it)."""
    for line in sh("ip", "-o", "link", "show", check=False).splitlines():
        m = re.match(r"\d+: ([^:@]+)(?:@\S+)?: .* link-netns (\S+)", line)
        if m and m.group(2) == node:
            return m.group(1)
    return None


def kill_node(node: str) -> list[int]:
    """A node dies: its link goes down first (nothing it sends gets out, as with a power loss: no FIN/RST to the
    other node's ranks), then every process on it (slurmd, slurmstepd, the tasks) gets SIGKILL."""
    veth = host_veth(node)
    assert veth, f"no veth of namespace {node}"
    sh("ip", "link", "set", veth, "down")
    pids = [int(p) for p in sh("ip", "netns", "pids", node).split()]
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return pids


def revive_nodes(count: int) -> float:
    """start.sh --nodes COUNT (same environment): links up, the dead slurmd restarted. Returns its duration."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "testcluster" / "start.sh"), "--nodes", str(count)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"start.sh --nodes {count} failed:\n{proc.stdout}\n{proc.stderr}"
    return time.monotonic() - t0


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def nodes(request) -> list[str]:
    require_slurm()
    request.getfixturevalue("slurm_cluster")
    found = slurm_nodes()
    if len(found) < 2:
        skip_or_fail_slurm(f"the test SLURM has {len(found)} usable node(s) ({', '.join(found) or 'none'}); the "
                           "multi-node tests need 2: bash slurm/testcluster/start.sh --nodes 2")
    return found


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
    m = manifest(run_dir)
    job = m["job"]["id"]
    assert m["resources"] == {"gpus": 4, "nodes": 2, "tasks_per_node": 2, "gpus_per_node": 2, "cpus_per_task": 1,
                              "world_size": 4}
    # while it trains: every rank holds gloo connections from its own node's address to the other node's
    wait_for(lambda: losses(run_dir), "the first training step of the 4 ranks")
    t_training = losses(run_dir)[0]["time"]
    hosts = sh("scontrol", "show", "hostnames", sh("squeue", "-h", "-j", job, "-o", "%N").strip()).split()
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

    wait_done(run_dir)
    lines = distenv_lines(m, 4)
    assert sorted(lines) == [0, 1, 2, 3], logs_of(m, 4)
    assert [lines[r]["host"] for r in range(4)] == [hosts[0], hosts[0], hosts[1], hosts[1]]
    assert [lines[r]["addr"] for r in range(4)] == [addr[hosts[0]]] * 2 + [addr[hosts[1]]] * 2
    assert [lines[r]["local"] for r in range(4)] == [0, 1, 0, 1]
    assert {(v["master"], v["port"], v["world"], v["gloo"]) for v in lines.values()} == {
        (hosts[0], master_port(job), 4, "hostname")}
    records = losses(run_dir)
    assert records[-1]["step"] == STEPS and {r["world_size"] for r in records} == {4}
    ev = events(run_dir)
    assert [e["event"] for e in ev] == ["start", "completed"] and ev[0]["host"] == hosts[0], ev
    assert ev[0]["master"] == f"{hosts[0]}:{master_port(job)}"
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d  # one model on all 4 ranks: the all-reduce crossed the nodes
    print(f"\n4 ranks on {hosts}: submit -> 4 ranks training {t_training - jobs['t0']['ref']:.1f} s, "
          f"{STEPS} steps in {ev[-1]['time'] - t_training:.1f} s")


def test_job_array_on_both_nodes(jobs, nodes):
    ms = [wait_done(d) for d in jobs["arr"]]
    ids = [m["job"]["id"] for m in ms]
    array = ms[0]["job"]["array_job_id"]
    assert array and ids == [f"{array}_0", f"{array}_1"], ids
    assert [m["seed"] for m in ms] == [0, 1]
    hosts = [next(e["host"] for e in events(d) if e["event"] == "start") for d in jobs["arr"]]
    assert sorted(hosts) == sorted(nodes[:2]), hosts  # one task on each node
    for d in jobs["arr"]:
        records = losses(d)
        assert records[-1]["step"] == 6 and {r["world_size"] for r in records} == {2}
    ports = [int(next(e["master"] for e in events(d) if e["event"] == "start").rsplit(":", 1)[1])
             for d in jobs["arr"]]
    rows = dict(line.split("|") for line in sh("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,JobIDRaw").split())
    # each array task has its own SLURM_JOB_ID, hence its own port
    assert len(set(ports)) == 2 and ports == [master_port(rows[i]) for i in ids], (ports, rows)


def test_usr2_requeue_resumes_bit_exact_on_two_nodes(jobs, nodes):
    run_dir, ref = jobs["rq"], jobs["ref"]
    m = manifest(run_dir)
    job = m["job"]["id"]
    wait_for(lambda: last_step(run_dir) >= 4, "the 4-rank run to pass step 4")
    t_signal = time.time()
    sh("scancel", "--signal=USR2", job)  # every task of the job, on both nodes
    wait_for(lambda: any(e["event"] == "requeued" for e in events(run_dir)), "the job to requeue itself", 120)
    stopped = next(e for e in events(run_dir) if e["event"] == "stopped")
    assert stopped["signals"] == ["SIGUSR2"] and 4 <= stopped["step"] < STEPS, stopped
    ckpt = run_dir / "checkpoints" / f"step-{stopped['step']:08d}"
    assert (ckpt / "complete").is_file() and json.loads((ckpt / "complete").read_text())["world_size"] == 4
    assert sorted(p.name for p in ckpt.glob("rank-*.pt")) == [f"rank-{r:05d}.pt" for r in range(4)]  # both nodes
    wait_for(lambda: any(e["event"] == "start" and e["restart_count"] == 1 for e in events(run_dir)),
             "the requeued job to start again")
    t_restart = next(e["time"] for e in events(run_dir) if e["event"] == "start" and e["restart_count"] == 1)
    wait_for(lambda: any(r["time"] > t_restart for r in losses(run_dir)), "the requeued job to train again", 120)
    t_training = next(r["time"] for r in losses(run_dir) if r["time"] > t_restart)
    wait_done(run_dir)
    ev = events(run_dir)
    assert [e["event"] for e in ev] == ["start", "stopped", "requeued", "start", "completed"], ev
    resumed = re.findall(r"resumed from \S+/step-(\d{8}) at step", task_log(m, 0))
    assert [int(s) for s in resumed] == [stopped["step"]], resumed
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d
    jobs["resumed"]["rq"] = stopped["step"]
    print(f"\nUSR2 on 2 nodes: -> requeued {stopped['time'] - t_signal:.1f} s, -> running again "
          f"{t_restart - t_signal:.1f} s, -> training again {t_training - t_signal:.1f} s")
    wait_done(ref)
    check_against_ref(ref, run_dir, stopped["step"])


def test_node_loss_ends_the_job_and_it_resumes(jobs, nodes):
    if os.geteuid() != 0 or not all(our_namespace(n) for n in nodes[:2]) or shutil.which("ip") is None:
        pytest.skip("needs root and nodes in slurm/testcluster's network namespaces (start.sh --nodes 2)")
    all_nodes = slurm_nodes(ready_only=False)
    ref = jobs["ref"]
    jobs["submit"]("nl", "--exp", "smoke", "--gpus", "4", "--name", "nl", "--set", *LONG)
    run_dir = jobs["root"] / "smoke" / "nl"
    m = manifest(run_dir)
    job = m["job"]["id"]
    victim = nodes[1]
    try:
        wait_for(lambda: (last_step(run_dir) >= 12
                          and (run_dir / "checkpoints" / "step-00000010" / "complete").is_file()),
                 "the run to pass its checkpoint at step 10")
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
        down = sh("sinfo", "-h", "-N", "-n", victim, "-o", "%T").strip()
        assert down.startswith("down") or down.endswith("*"), down
        assert not any(e["event"] == "completed" for e in events(run_dir))
    finally:
        t_revive = time.time()
        revive_s = revive_nodes(len(all_nodes))
    wait_for(lambda: any(e["event"] == "start" and e["restart_count"] == 1 for e in events(run_dir)),
             "the requeued job to start again once the node is back")
    t_restart = next(e["time"] for e in events(run_dir) if e["event"] == "start" and e["restart_count"] == 1)
    wait_for(lambda: any(r["time"] > t_restart for r in losses(run_dir)), "the requeued job to train again", 120)
    t_training = next(r["time"] for r in losses(run_dir) if r["time"] > t_restart)
    wait_done(run_dir)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step-(\d{8}) at step", task_log(m, 0))]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0, resumed  # the last periodic checkpoint
    d = digests(run_dir / "checkpoints" / FINAL, 4)
    assert all(x == d[0] for x in d), d
    print(f"\nnode loss ({victim}): -> job ended and requeued {t_end - t_loss:.1f} s; node back (start.sh) "
          f"{revive_s:.1f} s; -> running again {t_restart - t_revive:.1f} s, -> training again "
          f"{t_training - t_revive:.1f} s (resumed from step {resumed[0]})")
    if jobs["resumed"].get("rq") == resumed[0]:  # two jobs resumed from the same step: the same end, bit for bit
        same_generators(jobs["rq"] / "checkpoints" / FINAL, run_dir / "checkpoints" / FINAL)
    wait_done(ref)
    check_against_ref(ref, run_dir, resumed[0])
