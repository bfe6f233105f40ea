"""Cluster profiles -> validated settings, and the node/task arithmetic.

Profiles are YAML files found by name on the profile search path, first match wins: the directories in
``$CYCLEGAN_CLUSTER_PATH`` (``:``-separated), then ``./slurm/clusters``, then the profiles that ship inside the
code (``slurm/clusters/``: ``local``, ``testcluster``, ``example``; package data in a wheel), or given as a path.

A profile names every key in :data:`SLURM_KEYS` (``null`` where the cluster needs no value) or, for this
machine, every key in :data:`LOCAL_KEYS`; a missing or unknown key is a :class:`UserError`. Command-line
flags override profile values. ``--cluster auto`` means SLURM where ``sbatch`` exists (the profile named by
``$CYCLEGAN_CLUSTER``, else ``default``, else ``testcluster``), otherwise ``local``.

One process per GPU (docs/architecture.md, "How a request travels", steps 1 and 3): ``tasks_per_node = gpus_per_node``,
``nodes = ceil(gpus / gpus_per_node)``, and the GPUs must fill whole nodes. ``--gpus 0`` runs CPU ranks
(``--cpu-ranks``, default 1) on one node; on this machine a local run may use at most the GPUs it has.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from cyclegan_dist.config import read_yaml_mapping
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import check_text

# Every SLURM profile names all of these (null = leave it to the cluster's defaults).
SLURM_KEYS = ("executor", "partition", "account", "qos", "gpus_per_node", "cpus_per_task", "mem", "time",
              "constraint", "setup", "signal_delay_s", "max_requeues", "run_root")
LOCAL_KEYS = ("executor", "cpus_per_task", "time", "setup", "signal_delay_s", "max_requeues", "run_root")
OPTIONAL_KEYS = ("description", "sbatch_extra", "gpus_per_node", "partition", "account", "qos", "mem", "constraint")
NOT_NULL = ("executor", "gpus_per_node", "cpus_per_task", "time", "signal_delay_s", "max_requeues")


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    executor: str  # slurm | local
    time_min: int
    signal_delay_s: int
    max_requeues: int
    cpus_per_task: int
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    run_root: str | None = None
    sbatch_extra: dict[str, Any] = field(default_factory=dict)
    why: str = ""  # how --cluster resolved to this profile (printed before anything is submitted)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "executor": self.executor, "time_min": self.time_min,
                "signal_delay_s": self.signal_delay_s, "max_requeues": self.max_requeues,
                "cpus_per_task": self.cpus_per_task, "gpus_per_node": self.gpus_per_node,
                "partition": self.partition, "account": self.account, "qos": self.qos, "mem": self.mem,
                "constraint": self.constraint, "setup": list(self.setup), "run_root": self.run_root,
                "sbatch_extra": dict(self.sbatch_extra)}


def shipped_profiles() -> Path:
    """The profiles that ship with the code: ``slurm/clusters/`` of a checkout (editable installs too); an installed
    wheel carries the same files as package data in ``launcher/profiles`` (setup.py maps them)."""
    installed = Path(str(resources.files("launcher"))) / "profiles"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "slurm" / "clusters"


def profile_search_path() -> list[Path]:
    user = [Path(p).expanduser() for p in os.environ.get("CYCLEGAN_CLUSTER_PATH", "").split(os.pathsep) if p]
    return [p for p in dict.fromkeys([*user, Path("slurm") / "clusters", shipped_profiles()]) if p.is_dir()]


def known_profiles() -> dict[str, Path]:
    """Profile name -> its file (the first on the search path)."""
    found: dict[str, Path] = {}
    for folder in profile_search_path():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def partition_nodes(partition: str | None) -> int | None:
    """How many nodes ``sinfo`` reports (in ``partition``, or all), or None when it cannot be asked."""
    cmd = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return len(set(out.stdout.split())) if out.returncode == 0 else None


def have_sbatch() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("srun") is not None


def resolve_cluster(name: str = "auto", require_sbatch: bool = True) -> Profile:
    """``auto`` | ``slurm`` | ``local`` | a profile name | a YAML path -> a Profile. ``require_sbatch=False`` (dry
    runs) accepts a SLURM profile where sbatch is missing."""
    if name in ("auto", "slurm"):
        if not have_sbatch() and (require_sbatch or name == "auto"):
            if name == "slurm":
                raise UserError("--cluster slurm: sbatch/srun not found on PATH; this machine is no SLURM login "
                                "node (use --cluster local to run here)")
            return replace(load_profile("local"), why=f"--cluster {name}: no sbatch on PATH, so this machine")
        wanted = os.environ.get("CYCLEGAN_CLUSTER")
        found = f"--cluster {name}: sbatch found ({shutil.which('sbatch') or 'none: dry run'})"
        if wanted:
            return replace(load_profile(wanted), why=f"{found}; profile from $CYCLEGAN_CLUSTER={wanted}")
        if "default" in known_profiles():
            return replace(load_profile("default"), why=f"{found}; your profile 'default'")
        return replace(load_profile("testcluster"), why=f"{found}; no profile 'default' (put yours in "
                       "slurm/clusters/default.yaml or set $CYCLEGAN_CLUSTER), so the local test cluster's profile")
    profile = replace(load_profile(name), why=f"--cluster {name}")
    if profile.executor == "slurm" and require_sbatch and not have_sbatch():
        raise UserError(f"cluster profile {profile.name} submits to SLURM, but sbatch/srun are not on PATH here; "
                        "submit from a login node of that cluster, or use --cluster local")
    return profile


def load_profile(name: str | Path) -> Profile:
    path = Path(name).expanduser()
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        known = known_profiles()
        if str(name) not in known:
            where = ", ".join(map(str, profile_search_path()))
            raise UserError(f"unknown cluster profile '{name}'; known: {', '.join(known) or '(none)'} (searched "
                            f"{where}; or give a YAML path), or auto | slurm | local")
        path = known[str(name)]
    raw = read_yaml_mapping(path, f"a mapping of profile keys ({', '.join(SLURM_KEYS)})")
    return profile_from_dict(raw, path)


def profile_from_dict(raw: dict[str, Any], path: Path) -> Profile:
    executor = raw.get("executor")
    if executor not in ("slurm", "local"):
        raise UserError(f"{path}: 'executor' must be slurm or local, got {executor!r}")
    required = SLURM_KEYS if executor == "slurm" else LOCAL_KEYS
    missing = [k for k in required if k not in raw]
    if missing:
        raise UserError(f"{path}: cluster profile is missing key(s) {', '.join(missing)} "
                        f"(a {executor} profile names all of: {', '.join(required)}; use null for 'cluster default')")
    unknown = sorted(set(raw) - set(SLURM_KEYS) - set(LOCAL_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SLURM_KEYS)}, "
                        "description, sbatch_extra")
    for key in NOT_NULL:
        if key in required and raw.get(key) is None:
            raise UserError(f"{path}: '{key}' must have a value, not null")

    def count(key: str, minimum: int) -> int:
        value = raw.get(key, 0) if key not in required else raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{path}: '{key}' must be an integer >= {minimum}, got {value!r}")
        return value

    setup = raw.get("setup") or []
    if isinstance(setup, str) or not all(isinstance(s, str) for s in setup):
        raise UserError(f"{path}: 'setup' must be a list of shell lines, got {setup!r}")
    extra = raw.get("sbatch_extra") or {}
    if not isinstance(extra, dict):
        raise UserError(f"{path}: 'sbatch_extra' must be a mapping of sbatch options, got {extra!r}")
    for key, value in [*((k, raw.get(k)) for k in ("partition", "account", "qos", "constraint", "run_root")),
                       *(("setup", line) for line in setup), *((f"sbatch_extra.{k}", v) for k, v in extra.items())]:
        if value is not None:  # a newline would end its #SBATCH or shell line: the rest would run as a command
            check_text(f"{path}: '{key}'", str(value))
    mem = raw.get("mem")
    if mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(mem)):
        raise UserError(f"{path}: 'mem' must look like 64G or 4000M (memory per node), got {mem!r}")
    return Profile(
        name=path.stem, path=path.resolve(), executor=executor, time_min=parse_time(raw["time"], str(path)),
        signal_delay_s=count("signal_delay_s", 0), max_requeues=count("max_requeues", 0),
        cpus_per_task=count("cpus_per_task", 1), gpus_per_node=count("gpus_per_node", 1) if executor == "slurm" else 0,
        partition=_opt_str(raw.get("partition")), account=_opt_str(raw.get("account")), qos=_opt_str(raw.get("qos")),
        mem=_opt_str(mem), constraint=_opt_str(raw.get("constraint")), setup=tuple(setup),
        run_root=_opt_str(raw.get("run_root")), sbatch_extra=dict(extra),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_time(value: Any, where: str = "--time") -> int:
    """SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``, or int minutes)
    -> minutes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m or isinstance(value, bool):
        raise UserError(f"{where}: time {value!r} is not a SLURM time (e.g. 30, 04:00:00, 1-12:00:00)")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise UserError(f"{where}: time {value!r} must be positive")
    return math.ceil(seconds / 60)


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


# ------------------------------------------------------------------------------------------ resources


@dataclass(frozen=True)
class Resources:
    gpus: int  # total GPUs; 0 = CPU ranks
    nodes: int
    tasks_per_node: int  # = GPUs per node when gpus > 0
    cpus_per_task: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def gpus_per_node(self) -> int:
        return self.tasks_per_node if self.gpus else 0

    def describe(self) -> str:
        unit = "GPU" if self.gpus else "CPU rank"
        per = f"{self.tasks_per_node} {unit}{'s' if self.tasks_per_node != 1 else ''}"
        return f"{self.nodes} node{'s' if self.nodes != 1 else ''} x {per} (world size {self.world_size})"

    def to_dict(self) -> dict[str, int]:
        return {"gpus": self.gpus, "nodes": self.nodes, "tasks_per_node": self.tasks_per_node,
                "gpus_per_node": self.gpus_per_node, "cpus_per_task": self.cpus_per_task,
                "world_size": self.world_size}


def plan_resources(profile: Profile, gpus: int | None = None, gpus_per_node: int | None = None,
                   cpu_ranks: int | None = None, cpus_per_task: int | None = None,
                   local_gpus: int | None = None) -> Resources:
    """Nodes and tasks for ``gpus`` GPUs (one task per GPU); every impossible request is a UserError."""
    cpt = cpus_per_task if cpus_per_task is not None else profile.cpus_per_task
    if cpt < 1:
        raise UserError(f"--cpus-per-task must be >= 1, got {cpt}")
    if gpus is not None and gpus < 0:
        raise UserError(f"--gpus must be >= 0, got {gpus}")
    if cpu_ranks is not None and cpu_ranks < 1:
        raise UserError(f"--cpu-ranks must be >= 1, got {cpu_ranks}")
    if profile.executor == "local":
        have = local_gpu_count() if local_gpus is None else local_gpus
        if gpus_per_node is not None:
            raise UserError("--gpus-per-node applies to SLURM clusters; a local run uses one node (give --gpus)")
        if gpus is None:
            gpus = have if cpu_ranks is None else 0
        if gpus > have:
            raise UserError(
                f"--gpus {gpus}: this machine has {have} CUDA GPU{'s' if have != 1 else ''} "
                f"(local runs use at most the GPUs here; use --gpus 0 --cpu-ranks N for N CPU ranks, "
                "or submit to a SLURM cluster with --cluster NAME)")
    else:
        per_node = gpus_per_node if gpus_per_node is not None else profile.gpus_per_node
        if per_node < 1:
            raise UserError(f"--gpus-per-node must be >= 1, got {per_node}")
        if gpus is None:
            gpus = per_node if cpu_ranks is None else 0
    if gpus == 0:
        return Resources(gpus=0, nodes=1, tasks_per_node=cpu_ranks or 1, cpus_per_task=cpt)
    if cpu_ranks is not None:
        raise UserError(f"--cpu-ranks is for CPU runs (--gpus 0); with --gpus {gpus} there is one rank per GPU")
    if profile.executor == "local":
        return Resources(gpus=gpus, nodes=1, tasks_per_node=gpus, cpus_per_task=cpt)
    if gpus <= per_node:
        return Resources(gpus=gpus, nodes=1, tasks_per_node=gpus, cpus_per_task=cpt)
    if gpus % per_node:
        lower, upper = gpus // per_node * per_node, math.ceil(gpus / per_node) * per_node
        raise UserError(
            f"--gpus {gpus} does not fill whole nodes of {per_node} GPUs (profile {profile.name}); "
            f"use --gpus {lower} or {upper}, or --gpus-per-node N with N dividing {gpus}")
    return Resources(gpus=gpus, nodes=gpus // per_node, tasks_per_node=per_node, cpus_per_task=cpt)


def local_gpu_count() -> int:
    """CUDA GPUs usable here, without importing torch: ``nvidia-smi -L`` limited by CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if visible is not None:
        found = min(found, len([v for v in visible.split(",") if v.strip()]))
    return found
