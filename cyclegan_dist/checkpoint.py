"""Checkpoints: everything needed to continue a run, written durably by every rank, loaded with
``weights_only=True``. The layout is ``cyclegan_dist.rundir``'s.

Order of a save: rank 0 makes ``.tmp-step-N/``; every rank writes and fsyncs its ``rank-R.pt``; rank 0 writes and
fsyncs ``state.pt``, the generators (safetensors) and ``config.yaml``; each rank reads back the sha256 of its
files; rank 0 writes ``digests.json``, then the ``complete`` marker (both atomically), the rename to ``step-N/``,
an fsync of ``checkpoints/``, ``latest``, and pruning. A crash at any point leaves either no checkpoint
``step-N`` or a complete one. Pruning keeps the newest ``keep_last`` checkpoints of *this*
run (same run id) and the ones named in ``protect`` (the best); it never deletes another run's checkpoints.

``digests.json`` (written before the marker) records the sha256 of every other file of the checkpoint: loading
checks a file against it, so a damaged file (truncated, a flipped bit) is a :class:`DamagedCheckpoint` naming it,
never a wrong model. Older checkpoints have none and load unchecked. Every rank reports whether its part of a save
worked (a gather), so a rank that fails never leaves the others waiting: the partial ``.tmp-step-N/`` is removed,
and a full disk is one UserError (the free space, the size needed, the intact previous checkpoint, what to do).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import (
    COMPLETE,
    CONFIG,
    DIGESTS,
    STATE,
    RunDir,
    atomic_write,
    fsync_dir,
    fsync_file,
    rank_file,
    step_dir_name,
)

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


class DamagedCheckpoint(UserError):
    """A checkpoint file that does not load or differs from the digest its checkpoint recorded."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint file {path} is damaged: {reason}. Use another checkpoint (--resume auto picks "
                         "the newest that loads), or restore the file from a copy")


def save_checkpoint(run: RunDir, step: int, *, rank: int, world_size: int, run_id: str,
                    barrier: Callable[[], None], shared_state: Callable[[], dict[str, Any]] | None,
                    rank_state: dict[str, Any], generators: dict[str, dict[str, torch.Tensor]] | None = None,
                    config_yaml: str | None = None, keep_last: int = 3, protect: tuple[str, ...] = (),
                    gather: Callable[[Any], list[Any]] | None = None) -> Path:
    """Write checkpoint ``step`` coherently from every rank (a collective); returns its final path.

    ``shared_state`` is called on rank 0 only (pass None elsewhere); ``generators`` maps a file name
    (``G_A.safetensors`` ...) to weights, written by rank 0. ``gather`` (default: torch.distributed's
    ``all_gather_object`` when initialised) tells every rank how the others fared. A failure on any rank is raised
    on every rank, after the partial checkpoint is removed; no space left is a :class:`UserError`."""
    save = _Save(run, step, rank, barrier, gather or all_gather, rank_bytes=_tensor_bytes(rank_state))
    save.together(save.make_tmp if rank == 0 else None)
    reports = save.together(lambda: save.verify(save.write(rank_state, shared_state, generators, config_yaml)))
    digests = {name: digest for r in reports for name, digest in (r["value"] or {}).items()}

    def publish_and_prune() -> None:
        save.publish(digests, world_size, run_id)
        prune(run, keep_last, run_id, protect)

    save.together(publish_and_prune if rank == 0 else None)
    return save.final


class _Save:
    """One rank's part of one :func:`save_checkpoint`, step by step: make ``.tmp-step-N/`` (rank 0), write this
    rank's files, verify them (read back their sha256), publish (rank 0: digests, marker, rename, ``latest``).
    :meth:`together` runs each step and tells every rank how the others fared."""

    def __init__(self, run: RunDir, step: int, rank: int, barrier: Callable[[], None],
                 gather: Callable[[Any], list[Any]], rank_bytes: int) -> None:
        self.run, self.step, self.rank, self.barrier, self.gather = run, step, rank, barrier, gather
        self.root = run.checkpoints
        self.final, self.tmp = self.root / step_dir_name(step), self.root / f".tmp-{step_dir_name(step)}"
        self.doing = ""  # what this rank is writing: named when it fails
        self.bytes = rank_bytes  # the tensors this rank writes: the size estimate when no checkpoint can be measured

    def make_tmp(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    def write(self, rank_state: dict[str, Any], shared_state: Callable[[], dict[str, Any]] | None,
              generators: dict[str, dict[str, torch.Tensor]] | None, config_yaml: str | None) -> list[str]:
        """Write and fsync this rank's ``rank-R.pt`` (rank 0: also ``state.pt``, the generators and
        ``config.yaml``); returns the names written."""
        names = [rank_file(self.rank)]
        self.doing = names[0]
        _save(rank_state, self.tmp / names[0])
        if self.rank != 0:
            return names
        self.doing = STATE
        shared = shared_state()
        self.bytes += _tensor_bytes(shared) + _tensor_bytes(generators or {})
        _save(shared, self.tmp / STATE)
        del shared
        names.append(STATE)
        for name, weights in (generators or {}).items():
            self.doing = name
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(self.tmp / name))
            fsync_file(self.tmp / name)
            names.append(name)
        if config_yaml is not None:
            self.doing = CONFIG
            atomic_write(self.tmp / CONFIG, config_yaml)
            names.append(CONFIG)
        return names

    def verify(self, names: list[str]) -> dict[str, tuple[str, int]]:
        """Read the files back from the disk: name -> (sha256, bytes), for ``digests.json``."""
        digests = {}
        for name in names:
            self.doing = f"the sha256 of {name}"
            digests[name] = (file_sha256(self.tmp / name), (self.tmp / name).stat().st_size)
        return digests

    def publish(self, digests: dict[str, tuple[str, int]], world_size: int, run_id: str) -> None:
        """``digests.json``, then the ``complete`` marker (both atomically), the rename to ``step-N/`` (replacing a
        step saved again), an fsync of ``checkpoints/``, ``latest``."""
        self.doing = DIGESTS
        record = {"sha256": {n: d for n, (d, _) in sorted(digests.items())},
                  "bytes": {n: b for n, (_, b) in sorted(digests.items())}}
        atomic_write(self.tmp / DIGESTS, json.dumps(record, indent=1) + "\n")
        self.doing = COMPLETE
        atomic_write(self.tmp / COMPLETE, json.dumps({"step": self.step, "world_size": world_size, "run_id": run_id,
                                                      "time": time.time()}))
        self.doing = f"the rename to {self.final.name}"
        if self.final.exists():  # the same step saved again (e.g. the final step after a stop): replace it
            old = self.root / f".old-{self.final.name}"
            shutil.rmtree(old, ignore_errors=True)
            self.final.rename(old)
            shutil.rmtree(old)
        self.tmp.rename(self.final)
        fsync_dir(self.root)
        self.doing = "checkpoints/latest"
        self.run.write_latest(self.final.name)

    def together(self, action: Callable[[], Any] | None) -> list[dict[str, Any]]:
        """Run ``action`` here (None: nothing to do on this rank), then learn how every rank fared (a gather; each
        report's ``value`` is what its action returned). If one failed, the partial checkpoint is removed and every
        rank raises: a UserError when a device is full, else the rank's own error or a RuntimeError naming the
        rank that failed."""
        self.doing, value, error, report = "", None, None, None
        if action is not None:
            try:
                value = action()
            except Exception as exc:  # noqa: BLE001 - reported to every rank, then raised again below
                error = exc
                no_space = is_no_space(exc, self.tmp if self.tmp.exists() else self.root)
                report = {"rank": self.rank, "file": self.doing, "no_space": bool(no_space),
                          "error": _first_line(no_space if isinstance(no_space, BaseException) else exc)}
        reports = self.gather({"rank": self.rank, "failed": report, "bytes": self.bytes,
                               "value": value if error is None else None})
        failed = [r["failed"] for r in reports if r["failed"]]
        if not failed:
            return reports
        if self.rank == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)  # nothing half-written remains
        self.barrier()
        if any(f["no_space"] for f in failed):
            message = _no_space_message(self.run, self.step, failed, sum(r["bytes"] for r in reports))
            raise UserError(message) from error
        if error is not None:
            raise error
        raise RuntimeError(f"checkpoint {self.final.name} was not written: on rank {failed[0]['rank']}, writing "
                           f"{failed[0]['file']} failed ({failed[0]['error']})")


def all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order, on every rank (torch.distributed when initialised; else ``[obj]``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_no_space(exc: BaseException, where: Path | None = None) -> BaseException | None:
    """The exception in ``exc``'s chain that says the device is full (an OSError ENOSPC/EDQUOT, safetensors'
    text; torch's ``inline_container.cc`` failure, which hides the OSError in its context or drops it, while
    ``where`` has under 1 MiB free), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in NO_SPACE_ERRNOS or any(t in str(cur) for t in _NO_SPACE_TEXT):
            return cur
        cur = cur.__cause__ or cur.__context__
    if "inline_container" in str(exc) and where is not None and 0 <= _free_bytes(where) < 2**20:
        return exc
    return None


def _no_space_message(run: RunDir, step: int, failed: list[dict[str, Any]], estimate: int) -> str:
    first, name = failed[0], step_dir_name(step)
    previous = run.latest()  # after the clean-up: the newest complete checkpoint
    if previous is not None:
        needed = f"about {_size(dir_bytes(previous))}, the size of {previous.name}"
        intact = (f"{name} itself was completed" if previous.name == name
                  else f"the previous checkpoint {previous} is intact, and nothing of {name} was kept")
    else:
        needed = f"about {_size(estimate)}, an estimate from its tensors (no earlier checkpoint to measure)"
        intact = f"no earlier checkpoint exists (the run would start over at step 0); nothing of {name} was kept"
    free = _free_bytes(run.path)
    return (f"no space left on the device holding the run directory {run.path} (free now: "
            f"{'unknown' if free < 0 else _size(free)}) while writing checkpoint {step_dir_name(step)} "
            f"({first['file']} on rank {first['rank']}: {first['error']}); a checkpoint needs {needed}; {intact}. "
            "Free space on that device (or move the run directory to a larger one), then continue with --resume auto")


def _free_bytes(path: Path) -> int:
    for p in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return -1


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB = {n} bytes"


def dir_bytes(path: Path) -> int:
    """The bytes of the files in ``path`` (one level: a checkpoint directory)."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def prune(run: RunDir, keep_last: int, run_id: str, protect: tuple[str, ...] = ()) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints of run ``run_id`` (``protect`` is kept)."""
    mine = run.complete_checkpoints(run_id=run_id)
    for path in mine[: max(0, len(mine) - keep_last)]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def load_shared(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``state.pt`` of checkpoint ``path``, checked against its digest; a damaged file is a DamagedCheckpoint."""
    return _load(Path(path) / STATE, map_location)


def load_rank(path: Path, rank: int, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    file = Path(path) / rank_file(rank)
    if not file.is_file():
        problem = digest_problem(file)  # listed in digests.json: it was written, and is gone
        if problem:
            raise DamagedCheckpoint(file, problem)
        return None  # world size changed: this rank starts fresh pools and RNG
    with torch.serialization.safe_globals(_deepspeed_globals()):
        return _load(file, map_location)


def _load(file: Path, map_location: str | torch.device) -> dict[str, Any]:
    problem = digest_problem(file)
    if problem:
        raise DamagedCheckpoint(file, problem)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a cut file: zip, pickle, EOF, OSError; whatever torch raises
        raise DamagedCheckpoint(file, f"torch.load fails: {type(exc).__name__}: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------------------ digests


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_digest(path: Path) -> tuple[str, int | None] | None:
    """(sha256, size) that the checkpoint holding ``path`` recorded for it; None for an older checkpoint (no
    digests.json) or a file it does not list. An unreadable digests.json is a ValueError."""
    path = Path(path)
    record = path.parent / DIGESTS
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        files, sizes = data.get("sha256"), data.get("bytes") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"its {record} is unreadable ({_first_line(exc)})") from None
    if not isinstance(files, dict) or not isinstance(sizes, dict):
        raise ValueError(f"its {record} holds no 'sha256' mapping")
    return (files[path.name], sizes.get(path.name)) if path.name in files else None


def digest_problem(path: Path) -> str | None:
    """Why ``path`` is not the file its checkpoint wrote (missing, cut short, another sha256), or None: intact,
    or nothing recorded to check against (an older checkpoint)."""
    try:
        recorded = recorded_digest(path)
    except ValueError as exc:
        return str(exc)
    if recorded is None:
        return None
    expected, size = recorded
    path = Path(path)
    if not path.is_file():
        return f"it is missing (its checkpoint's {DIGESTS} lists it)"
    actual = file_sha256(path)
    if actual == expected:
        return None
    now = path.stat().st_size
    cut = (f"it is {now} bytes, {size} were written{' (cut short)' if now < size else ''}; "
           if size is not None and now != size else "")
    return f"{cut}its sha256 is {actual}, but {DIGESTS} recorded {expected} when the checkpoint was written"


def _deepspeed_globals() -> list:
    """DeepSpeed's ZeRO optimizer state holds its loss-scaler object and stage enum: allow exactly those."""
    if "deepspeed" not in sys.modules:  # only a DeepSpeed run writes them, and it has imported deepspeed
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state_dict order: equal across ranks iff weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
