"""torch.distributed's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from the job's.

Inside a SLURM task or a submitit local task, :func:`export_torch_env` uses submitit's
``TorchDistributedEnvironment`` (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_JOB_NODELIST, or
submitit's SUBMITIT_LOCAL_* variables) so that ``Accelerator()`` joins the process group from the env alone,
on one node or many. No torchrun. Each task then sees one GPU: the ``LOCAL_RANK``-th of the GPUs SLURM gave
the node (unless SLURM already bound exactly one GPU to the task).

Several nodes (one process group across them):

- ``MASTER_ADDR`` is the job's first node (SLURM's node name, where rank 0 runs); every node must resolve it
  to an address the others reach (the cluster's DNS or /etc/hosts; never ``localhost``).
- ``MASTER_PORT`` comes from the numeric SLURM job id, or a local job's controller pid (:func:`master_port`): the
  same on every task and across requeues of a job, different for jobs running at the same time (array tasks
  included, each has its own SLURM_JOB_ID), and below Linux's ephemeral range. submitit's own choice,
  ``random.Random(job_id)`` over 20000-60000, can give two running jobs the same port, or one an outgoing
  connection holds (EADDRINUSE).
  ``CYCLEGAN_MASTER_PORT`` overrides it (e.g. where only some ports are open between nodes).
- gloo binds each rank's sockets to the address its hostname resolves to. Where the hostname resolves to a
  loopback address (a common /etc/hosts line) that would be unreachable from the other nodes, so in a
  multi-node job :func:`gloo_interface` picks the interface that routes to MASTER_ADDR and exports
  ``GLOO_SOCKET_IFNAME`` (unless it is set already). NCCL picks its interfaces itself (``NCCL_SOCKET_IFNAME``).

Every task prints one line to stderr, e.g.
``[distenv] rank 2/4 local 0/2 on cg-node2 (10.199.0.12) master cg-node1:20123 gloo=hostname``.

``python -m launcher.distenv`` prints what a task would export, as JSON (a debugging aid in sbatch scripts).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys

EXPORTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "CUDA_VISIBLE_DEVICES", "GLOO_SOCKET_IFNAME")

# 20000-32767: above SLURM's and most services' ports, below Linux's ephemeral range (32768-60999), so an
# outgoing connection on the master node cannot hold the port. Two running jobs share a port only if their
# ids differ by a multiple of MASTER_PORT_SPAN and rank 0 of both runs on the same node.
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 12768


def in_slurm_step() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ


def master_port(job_id: str | int) -> int:
    """The rendezvous port of SLURM job ``job_id`` (its numeric SLURM_JOB_ID)."""
    return MASTER_PORT_BASE + int(job_id) % MASTER_PORT_SPAN


def export_torch_env() -> dict[str, str]:
    """Export the torch.distributed variables for this task; returns them."""
    if "SUBMITIT_EXECUTOR" not in os.environ and in_slurm_step():
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # a plain sbatch/srun task (slurm/templates/train.sbatch)
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if os.environ.get("CYCLEGAN_MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(int(os.environ["CYCLEGAN_MASTER_PORT"]))
    elif in_slurm_step() and os.environ["SLURM_JOB_ID"].isdigit():
        os.environ["MASTER_PORT"] = str(master_port(os.environ["SLURM_JOB_ID"]))
    elif os.environ.get("SUBMITIT_LOCAL_JOB_ID", "").isdigit():  # the local controller's pid: the same rule
        os.environ["MASTER_PORT"] = str(master_port(os.environ["SUBMITIT_LOCAL_JOB_ID"]))
    devices = select_device(os.environ.get("CUDA_VISIBLE_DEVICES"), dist.local_rank, dist.local_world_size)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES") or 1) if in_slurm_step() else 1
    how = "hostname"
    if nodes > 1 and dist.world_size > 1:
        if os.environ.get("GLOO_SOCKET_IFNAME"):
            how = f"GLOO_SOCKET_IFNAME={os.environ['GLOO_SOCKET_IFNAME']}"
        else:
            ifname = gloo_interface(dist.master_addr)
            if ifname:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
                how = f"GLOO_SOCKET_IFNAME={ifname} (the hostname resolves to loopback)"
    if dist.world_size > 1:
        host = socket.gethostname()
        print(f"[distenv] rank {dist.rank}/{dist.world_size} local {dist.local_rank}/{dist.local_world_size} "
              f"on {host} ({_resolve(host) or 'unresolved'}) master {dist.master_addr}:{os.environ['MASTER_PORT']} "
              f"gloo={how}", file=sys.stderr, flush=True)
    return {k: os.environ[k] for k in EXPORTED if k in os.environ}


def select_device(visible: str | None, local_rank: int, local_world_size: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for this task (None: leave it as it is).

    Unset or empty stays as it is (no GPU: CPU ranks). One device: SLURM bound it to this task already.
    Several: take the ``local_rank``-th (SLURM's ids, which need not be 0..n-1).
    """
    if visible is None or not visible.strip():
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if len(ids) <= 1:
        return None
    if local_rank >= len(ids):
        raise RuntimeError(f"local rank {local_rank} of {local_world_size} tasks, but only {len(ids)} GPUs are "
                           f"visible (CUDA_VISIBLE_DEVICES={visible}): request one GPU per task")
    return ids[local_rank]


def gloo_interface(master_addr: str) -> str | None:
    """None when this host's name resolves to a non-loopback address (gloo binds there, as it should);
    else the name of the interface whose address routes to ``master_addr`` (None if there is none)."""
    own = _resolve(socket.gethostname())
    if own is not None and not ipaddress.ip_address(own).is_loopback:
        return None
    master = _resolve(master_addr)
    if master is None or ipaddress.ip_address(master).is_loopback:
        return None
    try:  # the source address the kernel would use towards the master (a UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master, 9))
            local = s.getsockname()[0]
    except OSError:
        return None
    return interface_of(local)


def interface_of(address: str) -> str | None:
    """The interface holding IPv4 ``address`` (Linux: SIOCGIFADDR on each interface)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    return None


def _resolve(name: str) -> str | None:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None


if __name__ == "__main__":
    print(json.dumps(export_torch_env(), sort_keys=True))
