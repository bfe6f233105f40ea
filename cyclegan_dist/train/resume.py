"""Where a run starts: which checkpoint (if any) it continues from, and restoring it.

``--resume auto`` continues from the newest complete checkpoint of the run directory; ``never`` starts over,
but refuses a directory that holds checkpoints of an earlier run (it would mix the two runs' checkpoints and
metrics) unless ``--archive`` moves that run aside into ``archive/<time>/``; a checkpoint directory continues
from that checkpoint. A checkpoint made with an incompatible config is refused with the differences named.

A damaged checkpoint (a file that does not load, or differs from its recorded sha256) is passed over by ``auto``:
the run continues from the newest checkpoint that loads on *every* rank, and the damaged one is named (a warning in
the log and events.jsonl, and :attr:`Start.damaged`). Every rank tries the same candidates in the same order (rank
0's list) and, after each, all ranks exchange their verdicts: a ``rank-R.pt`` may be damaged alone, and a rank
that moved on by itself would train from another step than the others. If none loads: one UserError naming each
damaged file. The states read while choosing are kept for :func:`load` (no second read).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.config import Config, TrainConfig, diff_configs
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import DAMAGED_PREFIX, RunDir, is_checkpoint, rank_file
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.state import TrainState

log = logging.getLogger("cyclegan_dist.train")

# Keys whose change makes a checkpoint unusable (the networks, the objective, the data stream, the optimizer).
# The LR may change on resume (train.lr, train.lr_scaling: the new value applies from the resumed step on).
INCOMPATIBLE = ("model", "loss", "seed", "data.domain_a", "data.domain_b", "data.crop_size", "data.load_size",
                "train.batch_size", "train.beta1", "train.beta2", "train.deepspeed")


@dataclass
class Start:
    """Where a run starts: ``source`` (None: step 0), the states read from it, and the damaged files passed over
    (``{"checkpoint", "file", "reason"}``; the same list on every rank)."""

    source: Path | None
    loaded: tuple[dict[str, Any], dict[str, Any] | None] | None = None
    damaged: list[dict[str, str]] = field(default_factory=list)


_CHOSEN: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any] | None]] = {}  # choose_start -> load


def choose_start(run: RunDir, resume: str, *, archive: bool, is_main: bool, barrier, rank: int | None = None,
                 gather: Callable[[Any], list[Any]] | None = None, all_ranks: bool = False) -> Path | None:
    """The checkpoint to continue from (None: start at step 0). Collective (every rank calls it): the checkpoint
    must load on every rank; ``archive`` moves files. ``rank``/``gather`` default to torch.distributed's.
    ``all_ranks``: the restore reads every saved rank's file (ZeRO slices), so rank 0 also checks the files of
    saved ranks that no rank of this run reads itself (a resume on fewer ranks)."""
    if resume == "never":
        _start_over(run, archive=archive, is_main=is_main, barrier=barrier)
        return None
    rank = _rank() if rank is None else rank
    start = find_start(run, resume, rank=rank, gather=gather or ckpt.all_gather, all_ranks=all_ranks)
    if start.damaged:
        if is_main:
            record_damaged(run, start)
            for checkpoint in dict.fromkeys(d["checkpoint"] for d in start.damaged):
                if Path(checkpoint).parent == run.checkpoints:  # this run's: never picked, pruned or rolled to again
                    run.set_aside_damaged(Path(checkpoint))
        barrier()
    if start.source is not None:
        _CHOSEN[(str(start.source), rank)] = start.loaded
    return start.source


def find_start(run: RunDir, resume: str, *, rank: int, gather: Callable[[Any], list[Any]],
               all_ranks: bool = False) -> Start:
    """``--resume auto`` or a checkpoint directory -> the Start every rank agrees on (a collective)."""
    if resume == "auto":
        candidates = [str(p) for p in reversed(run.complete_checkpoints())]
        candidates = gather(candidates)[0]  # rank 0's list: one order on every rank
    else:
        path = Path(resume)
        if not is_checkpoint(path):
            raise UserError(f"--resume {resume}: not a complete checkpoint directory (no 'complete' marker); "
                            f"use --resume auto or one of {[str(p) for p in run.complete_checkpoints()]}")
        candidates = [str(path)]
    damaged: list[dict[str, str]] = []
    for candidate in map(Path, candidates):
        loaded, problem = None, None
        try:
            loaded = (ckpt.load_shared(candidate), ckpt.load_rank(candidate, rank))
            if all_ranks and rank == 0:
                _check_rank_files(candidate, loaded[0]["world_size"])
        except ckpt.DamagedCheckpoint as exc:
            problem = {"checkpoint": str(candidate), "file": str(exc.path), "reason": exc.reason}
        problems = [p for p in gather(problem) if p]
        if not problems:
            return Start(candidate, loaded, damaged)
        for p in problems:  # state.pt is read by every rank: one entry per file
            if all(p["file"] != d["file"] for d in damaged):
                damaged.append(p)
    if not damaged:
        return Start(None)  # no checkpoint yet
    files = "; ".join(f"{d['file']} ({d['reason']})" for d in damaged)
    if resume == "auto":
        raise UserError(f"--resume auto: no checkpoint in {run.checkpoints} loads: {files}. Restore the files from "
                        "a copy, or start over with --resume never --archive (moves them aside)")
    raise UserError(f"--resume {resume}: the checkpoint is damaged: {files}. Use --resume auto (the newest "
                    "checkpoint that loads), another checkpoint directory, or restore the file from a copy")


def _check_rank_files(checkpoint: Path, saved: int) -> None:
    """Every saved rank's file against its recorded digest (a DamagedCheckpoint names the first that differs)."""
    for r in range(1, saved):
        file = checkpoint / rank_file(r)
        problem = ckpt.digest_problem(file)
        if problem:
            raise ckpt.DamagedCheckpoint(file, problem)


def record_damaged(run: RunDir, start: Start) -> list[str]:
    """One warning per damaged checkpoint passed over: the log and events.jsonl (rank 0). Returns the messages."""
    by_checkpoint: dict[str, list[dict[str, str]]] = {}
    for d in start.damaged:
        by_checkpoint.setdefault(d["checkpoint"], []).append(d)
    messages = []
    for checkpoint, found in by_checkpoint.items():
        message = (f"checkpoint {checkpoint} is damaged and was passed over (renamed to "
                   f"{DAMAGED_PREFIX}{Path(checkpoint).name}): "
                   + "; ".join(f"{d['file']}: {d['reason']}" for d in found)
                   + f"; resuming from {start.source or 'step 0'} instead")
        log.warning("checkpoint: %s", message)
        try:
            run.append_event("warning", service="checkpoint", message=message, checkpoint=checkpoint,
                             files={d["file"]: d["reason"] for d in found})
        except OSError:
            pass  # the log says it; a full disk must not stop the resume
        messages.append(message)
    return messages


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _start_over(run: RunDir, *, archive: bool, is_main: bool, barrier) -> None:
    earlier = run.complete_checkpoints()
    if earlier and not archive:
        names = ", ".join(p.name for p in earlier[-3:]) + (f" (+{len(earlier) - 3} more)" if len(earlier) > 3 else "")
        raise UserError(f"--resume never: {run.path} holds checkpoints of an earlier run ({names}); starting over "
                        "there would mix the two runs. Use a new --run-dir, or add --archive to move the earlier run "
                        f"aside into {run.path / 'archive'}/, or --resume auto to continue it")
    if (earlier or run.metrics_path.exists()) and archive:
        if is_main:
            moved = run.archive()
            log.warning("moved the earlier run in %s aside into %s", run.path, moved)
        barrier()


def check_compatible(saved: dict[str, Any], config: Config, source: Path) -> None:
    differences = [d for d in diff_configs(saved, config.to_dict())
                   if any(d == key or d.startswith((key + ".", key + ":")) for key in INCOMPATIBLE)]
    if differences:
        raise UserError(f"checkpoint {source} was made with a different config: {'; '.join(differences)}. Use the "
                        "original config, a new --run-dir, or --resume never --archive to start over here.")


def load(source: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(rank 0's shared state, this rank's state or None when the world size changed): what :func:`choose_start`
    read, else read now (a damaged file is a UserError naming it)."""
    chosen = _CHOSEN.pop((str(source), rank), None)
    return chosen if chosen is not None else (ckpt.load_shared(source), ckpt.load_rank(source, rank))


def restore(loaded: tuple[dict, dict | None], source: Path, *, state: TrainState, opt_G, opt_D, rt: Runtime,
            config: Config, run: RunDir) -> list[tuple[str, str]]:
    """After ``prepare``: the optimizers, scaler and TrainState of a checkpoint (the networks are loaded before
    ``prepare``), the CPU thread count it ran with, the global batch on this number of ranks, a re-planned LR curve
    if train.steps changed. Returns (event kind, message) for the run's events."""
    shared, mine = loaded
    t = config.train
    restore_optimizers(shared, mine, opt_G, opt_D, rt.scaler, sharded=rt.deepspeed, world=rt.world, rank=rt.rank,
                       source=source)
    state.load_state_dict(shared, mine, rt.device, legacy_batch=shared["world_size"] * t.batch_size)
    if rt.device.type == "cpu" and shared.get("cpu_threads") and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(shared["cpu_threads"])  # as before: other threads, other sums (bit-exact resume)
    notes = fit_global_batch(state, t, world=rt.world, saved_world=shared["world_size"], source=source)
    replanned = state.schedule.replan(state.samples, t.steps, t.lr_decay_fraction, state.plan_batch)
    if replanned != state.schedule:
        notes.append(("schedule", f"train.steps is now {t.steps}: the LR curve continues from factor "
                      f"{state.schedule.factor(state.samples):.3g} at image {state.samples} (step {state.step}) "
                      f"(images@factor: {state.schedule.describe()} -> {replanned.describe()})"))
        state.schedule = replanned
    if rt.is_main:
        run.truncate_metrics(state.step)
        log.info("resumed from %s at step %d (%d images seen)", source, state.step, state.samples)
        for _, note in notes:
            log.warning("%s", note)
    return notes


def fit_global_batch(state: TrainState, t: TrainConfig, *, world: int, saved_world: int,
                     source: Path) -> list[tuple[str, str]]:
    """The global batch on ``world`` ranks: kept (each rank takes its share) unless ``train.keep_global_batch`` is
    off, then ``world`` x ``train.batch_size``. A global batch the ranks cannot share evenly is a UserError."""
    G = state.global_batch
    if not t.keep_global_batch:
        new = world * t.batch_size
        if new == G:
            return []
        state.global_batch = new
        return [("global_batch_change", f"the global batch changes from {G} to {new} images per step "
                 f"(train.keep_global_batch=false: {world} ranks x train.batch_size={t.batch_size}); the stream "
                 f"continues at image {state.samples} and the LR is that of this image count; the run ends after "
                 f"{t.steps * state.plan_batch} images, at step {state.end_step(t.steps)}")]
    if G % world:
        raise UserError(f"{source}: the run's global batch is {G} images per step ({saved_world} ranks x "
                        f"{G // saved_world}), which {world} ranks cannot share evenly; resume on a number of ranks "
                        f"that divides {G}, or add --set train.keep_global_batch=false to go on with {world} x "
                        f"train.batch_size={t.batch_size} images per step")
    if world == saved_world:
        return []
    return [("world_change", f"resumed on {world} ranks (the checkpoint was written by {saved_world}): {G // world} "
             f"images per rank keep the global batch of {G}, so the samples and the LR at each image count continue "
             "as before; ranks that existed before keep their image pools and RNG streams, new ones start them fresh")]


def restore_optimizers(shared: dict, mine: dict | None, opt_G, opt_D, scaler, *, sharded: bool, world: int,
                       rank: int, source: Path) -> None:
    """Optimizer (and fp16 scaler) state, after ``prepare``. ZeRO: every saved rank's slice, merged and re-sliced
    by DeepSpeed for this number of ranks (``elastic_checkpoint``, set by ``runtime``)."""
    if sharded:
        slices = zero_slices(source, shared["world_size"], mine, rank=rank, world=world)
        for opt, name in ((opt_G, "opt_G"), (opt_D, "opt_D")):
            # the fp32 master weights re-sliced from the saved ones too: exact on the same ranks, no bf16 rounding
            # on others
            opt.optimizer.load_state_dict(SavedSlices(s[name] for s in slices), load_from_fp32_weights=True)
            for state in opt.optimizer.optimizer.state.values():  # DeepSpeed restores torch Adam's step as (1,)
                step = state.get("step")
                if torch.is_tensor(step) and step.dim() and step.numel() == 1:
                    state["step"] = step.reshape(())
    else:
        opt_G.load_state_dict(shared["opt_G"])
        opt_D.load_state_dict(shared["opt_D"])
    if scaler is not None and shared.get("scaler") is not None:
        scaler.load_state_dict(shared["scaler"])


def zero_slices(source: Path, saved: int, mine: dict | None, *, rank: int, world: int) -> list[dict]:
    """The ZeRO optimizer slices of every saved rank (only those: a rank file also holds pools and RNG streams),
    with the step DeepSpeed's elastic merge expects beside the states (its own Adams keep it in the param groups,
    torch's Adam in each state)."""
    from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE, BASE_OPTIMIZER_STATE_STEP

    names = ("opt_G", "opt_D")
    own = mine if mine is not None else None
    if own is not None and saved == world and isinstance(own["opt_G"].get(BASE_OPTIMIZER_STATE), dict):
        return [{n: own[n] for n in names}] * world  # written before elastic checkpoints: its own slice is enough
    slices = []
    for r in range(saved):
        f = own if (r == rank and own is not None) else ckpt.load_rank(source, r)
        slices.append({n: f[n] for n in names})
        del f
    if saved != world and any(isinstance(sl["opt_G"].get(BASE_OPTIMIZER_STATE), dict) for sl in slices):
        raise UserError(f"{source} holds ZeRO optimizer slices of {saved} ranks in the form that cannot be "
                        f"re-sliced (written before elastic checkpoints); resume it with {saved} ranks")
    for sl in slices:
        for name in names:
            if BASE_OPTIMIZER_STATE_STEP in sl[name]:
                continue
            group = sl[name][BASE_OPTIMIZER_STATE]
            step = group[0].get("step") if isinstance(group, list) and group else None
            if torch.is_tensor(step):
                step = step.reshape(-1)[0].item() if step.numel() else None
            sl[name][BASE_OPTIMIZER_STATE_STEP] = int(step) if step is not None else None
    return slices


class SavedSlices(list):
    """The ZeRO slices of every saved rank, for ``DeepSpeedZeroOptimizer.load_state_dict``. It merges all of them
    (iterating), and reads its own rank's entry only for what every slice holds alike (the loss scaler, the format);
    on more ranks than were saved, a new rank reads the first entry for that."""

    def __getitem__(self, i):
        return super().__getitem__(i if isinstance(i, slice) or i < len(self) else 0)
