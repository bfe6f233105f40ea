"""The run directory: the one module that knows its layout (no torch here).

::

    <run_dir>/
        config.yaml          the resolved config of the run (training writes it at start)
        manifest.json        the launcher's record of the submission (job ids, commit, snapshot, cluster, W&B)
        metrics.jsonl        one JSON record per logging period (losses, lr, img/s, eval/*)
        events.jsonl         one JSON record per event: job start/stop/requeue/end, warnings of side services
        wandb-run.json       the W&B run id, mode and offline directory
        samples/step-N.png   labelled sample grids
        archive/<time>/      an earlier run moved aside (``--resume never --archive``)
        checkpoints/
            step-00001000/   a complete checkpoint (renamed into place once every rank has written)
                state.pt  rank-00000.pt ...  G_A.safetensors  G_B.safetensors  [G_A_ema.safetensors
                G_B_ema.safetensors]  config.yaml  digests.json (sha256 + size of every other file, written
                before complete)  complete
            .tmp-step-.../   being written; never read; removed by the next save
            latest           text: the name of the newest complete checkpoint
            best             text: the name of the checkpoint with the lowest MiFID;  best.json: its score

``complete`` is JSON ``{step, world_size, run_id, time}``, written last: a directory without it is not a
checkpoint. ``run_id`` tells this run's checkpoints from those of another run in the same directory.
Every writer here goes through :func:`atomic_write`: write a temp file, fsync it, rename, fsync the directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cyclegan_dist.errors import UserError

# ---- names that become path components (run, experiment) and values that reach a shell or an sbatch line

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(label: str, value: str) -> str:
    """``value`` if it is one safe path component (letters, digits, '.', '_', '-'; not '.'/'..', no '/'), else a
    UserError naming ``label``: run and experiment names become directories under the run root."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{label} {value!r} is not a valid name: use 1-100 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (it becomes one directory under the run root)")
    return value


def check_text(label: str, value: str) -> str:
    """``value`` if it holds no control character (a newline would end an sbatch or shell line), else a
    UserError."""
    if _CONTROL.search(str(value)):
        raise UserError(f"{label} {value!r} contains a control character (newline, tab, ...); remove it")
    return value


CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
WANDB = "wandb-run.json"
SAMPLES = "samples"
ARCHIVE = "archive"
DIGESTS = "digests.json"  # {"sha256": {file: hex digest}, "bytes": {file: size}} of every other file of a checkpoint
DAMAGED_PREFIX = "damaged-"  # a checkpoint resume found damaged, set aside (RunDir.set_aside_damaged)
WRITER_LOCK = ".writer.lock"  # held by the one process writing the run (cyclegan_dist/writer_lock.py)
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
COMPLETE = "complete"
STATE = "state.pt"
LATEST = "latest"
BEST = "best"
BEST_JSON = "best.json"
GENERATOR_FILES = {"G_A": "G_A.safetensors", "G_B": "G_B.safetensors"}
EMA_FILES = {"G_A": "G_A_ema.safetensors", "G_B": "G_B_ema.safetensors"}  # train.ema_decay > 0


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_of(checkpoint: Path) -> int:
    """The step of ``checkpoints/step-00001000`` (1000)."""
    return int(Path(checkpoint).name[len(STEP_PREFIX):])


# ------------------------------------------------------------------------------------------ durable writes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, also after a crash."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a line cut short by a kill is skipped; no file = no records."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """One line, flushed and fsynced (several processes may append: each line is written with one write)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------ the directory


class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG)
    manifest_path = property(lambda self: self.path / MANIFEST)
    metrics_path = property(lambda self: self.path / METRICS)
    events_path = property(lambda self: self.path / EVENTS)
    wandb_path = property(lambda self: self.path / WANDB)
    samples = property(lambda self: self.path / SAMPLES)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_dir_name(step)

    # ---- records
    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.events_path)

    def append_event(self, event: str, **fields: Any) -> dict[str, Any]:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"event": event, "time": time.time(), **fields}
        append_jsonl(self.events_path, record)
        return record

    def manifest(self) -> dict[str, Any] | None:
        return read_json(self.manifest_path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.manifest_path, manifest)

    def wandb_info(self) -> dict[str, Any] | None:
        return read_json(self.wandb_path)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past ``after_step`` (written after the checkpoint a resumed run restarts from)."""
        if self.metrics_path.is_file():
            kept = [r for r in self.metrics() if r.get("step", 0) <= after_step]
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- checkpoints
    def complete_checkpoints(self, run_id: str | None = None) -> list[Path]:
        """Complete checkpoints, oldest first; with ``run_id`` only those written by that run."""
        root = self.checkpoints
        if not root.is_dir():
            return []
        found = []
        for p in root.iterdir():
            if not (p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit()):
                continue
            marker = read_json(p / COMPLETE)
            if marker is None or (run_id is not None and marker.get("run_id") != run_id):
                continue
            found.append(p)
        return sorted(found, key=step_of)

    def latest(self) -> Path | None:
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def best(self) -> dict[str, Any] | None:
        """``{"checkpoint", "step", "eval/mifid"}`` of the best checkpoint, when it is still complete."""
        info = read_json(self.checkpoints / BEST_JSON)
        if not info or not (self.checkpoints / str(info.get("checkpoint")) / COMPLETE).is_file():
            return None
        return info

    def write_best(self, checkpoint_name: str, step: int, score: float) -> None:
        atomic_write_json(self.checkpoints / BEST_JSON,
                          {"checkpoint": checkpoint_name, "step": step, "eval/mifid": score})
        atomic_write(self.checkpoints / BEST, checkpoint_name + "\n")

    def set_aside_damaged(self, checkpoint: Path) -> Path:
        """Rename a damaged checkpoint to ``checkpoints/damaged-<name>``: no longer complete, newest or prunable
        (nothing picks it again), and kept for inspection."""
        target = self.checkpoints / f"{DAMAGED_PREFIX}{Path(checkpoint).name}"
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{DAMAGED_PREFIX}{Path(checkpoint).name}.{n}")
        os.rename(checkpoint, target)
        fsync_dir(self.checkpoints)
        return target

    def write_latest(self, checkpoint_name: str) -> None:
        atomic_write(self.checkpoints / LATEST, checkpoint_name + "\n")

    def best_or_latest(self) -> Path | None:
        best = self.best()
        return self.checkpoints / best["checkpoint"] if best else self.latest()

    def remove_if_unused(self, made: list[Path]) -> None:
        """After a start-up that failed before writing anything (called while holding the writer's lock): remove
        the directories in ``made`` (this one and the parents the start-up created) if they hold nothing but that
        lock."""
        if self.path.is_dir() and set(os.listdir(self.path)) <= {WRITER_LOCK}:
            (self.path / WRITER_LOCK).unlink(missing_ok=True)
        for path in made:
            try:
                path.rmdir()  # only when empty
            except OSError:
                return

    def archive(self) -> Path:
        """Move everything this directory holds (but the manifest, the archives and the writer's lock) into
        ``archive/<time>/``."""
        target = self.path / ARCHIVE / time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{target.name.split('.')[0]}.{n}")
        target.mkdir(parents=True)
        for item in self.path.iterdir():
            if item.name not in (ARCHIVE, MANIFEST, WRITER_LOCK):
                shutil.move(str(item), target / item.name)
        fsync_dir(self.path)
        return target


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A complete checkpoint directory from "a run or a checkpoint": the path itself when it is one, else the
    run's best checkpoint (``checkpoints/best.json``) or its newest complete one. Anything else is a UserError."""
    p = Path(run_or_checkpoint).expanduser()
    if is_checkpoint(p):
        return p
    if p.name == CHECKPOINTS and not (p / CHECKPOINTS).is_dir():
        p = p.parent
    run = RunDir(p)
    if not run.checkpoints.is_dir():
        raise UserError(f"{p} is not a run directory nor a checkpoint directory "
                        f"(no {CHECKPOINTS}/ and no '{COMPLETE}' marker)")
    found = run.best_or_latest()
    if found is None:
        raise UserError(f"run directory {p} has no complete checkpoint yet "
                        f"(nothing under {run.checkpoints} has a '{COMPLETE}' marker)")
    return found


def iter_run_dirs(run_root: Path) -> Iterator[Path]:
    """``<run_root>/<exp>/<run>/`` directories that hold a manifest (hidden folders skipped)."""
    if not run_root.is_dir():
        return
    for path in sorted(run_root.glob(f"*/*/{MANIFEST}")):
        if not path.parent.parent.name.startswith("."):
            yield path.parent
