"""The nodes of the test SLURM (slurm/testcluster), for the tests that need several or take one down: listing them
(sinfo), their state, a process's TCP connections, and a node's death and revival.

With ``start.sh --nodes N`` each node is a real slurmd in its own network and UTS namespace (``/run/netns/NODE``),
reached from the root namespace through a veth pair: taking that link down and killing every process in the
namespace is a node lost as in a power failure; ``start.sh`` again brings it back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

from slurm_helpers import require_slurm, sh, skip_or_fail_slurm

ROOT = Path(__file__).resolve().parent.parent
START = ROOT / "slurm" / "testcluster" / "start.sh"
READY = ("idle", "mixed", "allocated", "completing")


def slurm_nodes(ready_only: bool = True) -> list[str]:
    """The cluster's node names (sinfo), in SLURM's order; only those that can run jobs unless ready_only=False."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    nodes: list[str] = []
    for line in proc.stdout.splitlines():
        name, _, state = line.partition(" ")
        if name and name not in nodes and (not ready_only or state.strip().rstrip("*~#") in READY):
            nodes.append(name)
    return nodes


def node_state(node: str) -> str:
    """The node's state as sinfo prints it: ``idle``, ``down*``, ``allocated*`` (a trailing * = not responding)."""
    return sh("sinfo", "-h", "-N", "-n", node, "-o", "%T").strip()


# ---- a process's TCP connections


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


# ---- a node's death and revival


def our_namespace(node: str) -> bool:
    """The node is a slurmd in a network namespace of slurm/testcluster (so a test may kill and revive it)."""
    return Path("/run/netns", node).exists()


def host_veth(node: str) -> str | None:
    """The root-namespace end of the node's veth pair (``ip -o link`` shows ``link-netns NODE`` for it)."""
    for line in sh("ip", "-o", "link", "show", check=False).splitlines():
        m = re.match(r"\d+: ([^:@]+)(?:@\S+)?: .* link-netns (\S+)", line)
        if m and m.group(2) == node:
            return m.group(1)
    return None


def bridge_address(nodes: list[str]) -> str | None:
    """The root namespace's address on the bridge that the nodes' veths are joined to (``start.sh``'s
    ``<prefix>-br``, e.g. 10.199.0.1): the one address of this machine every node reaches, and nothing outside.
    None unless every node is a namespace of slurm/testcluster on one bridge with an IPv4 address."""
    bridges = set()
    for node in nodes:
        veth = host_veth(node) if our_namespace(node) else None
        found = re.search(r" master (\S+) ", sh("ip", "-o", "link", "show", veth, check=False)) if veth else None
        if not found:
            return None
        bridges.add(found.group(1))
    if len(bridges) != 1:
        return None
    found = re.search(r" inet (\d+\.\d+\.\d+\.\d+)/", sh("ip", "-o", "-4", "addr", "show", "dev", bridges.pop(),
                                                          check=False))
    return found.group(1) if found else None


def kill_node(node: str) -> list[int]:
    """A node dies: its link goes down first (nothing it sends gets out, as with a power loss: no FIN/RST to the
    other node's ranks), then every process on it (slurmd, slurmstepd, the tasks) gets SIGKILL. The pids killed."""
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
    proc = subprocess.run(["bash", str(START), "--nodes", str(count)], check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"start.sh --nodes {count} failed:\n{proc.stdout}\n{proc.stderr}"
    return time.monotonic() - t0


def two_nodes(request) -> list[str]:
    """The body of a module's ``nodes`` fixture: the running test SLURM's nodes, at least two of them (else a skip,
    or a failure under CYCLEGAN_REQUIRE_SLURM=1)."""
    require_slurm()
    request.getfixturevalue("slurm_cluster")
    found = slurm_nodes()
    if len(found) < 2:
        skip_or_fail_slurm(f"the test SLURM has {len(found)} usable node(s) ({', '.join(found) or 'none'}); these "
                           "tests need 2: bash slurm/testcluster/start.sh --nodes 2")
    return found
