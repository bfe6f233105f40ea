"""The training loop under Accelerate: build, resume, step, log, sample, checkpoint, evaluate.

Works the same in one process and under ``torchrun`` / ``accelerate launch --multi_gpu`` / SLURM tasks (one
process per GPU). Data never passes through ``prepare``: every rank reads its share of the run's one stream (sample
g a pure function of (seed, g)), so resume needs only the images seen, on any number of ranks. :func:`train` is
the algorithm; :class:`Session` holds the pieces it works with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cyclegan_dist.config import Config, write_config
from cyclegan_dist.rundir import RunDir
from cyclegan_dist.train import runtime
from cyclegan_dist.train.session import Session
from cyclegan_dist.writer_lock import WriterLock


def train(config: Config, run_dir: Path, *, resume: str = "auto", archive: bool = False, run_name: str | None = None,
          stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train until ``train.steps``, or until ``stop_after`` more steps / a stop request (then checkpoint and
    return). The result says how it ended: ``completed``, ``stopped`` (resumable) or ``diverged``."""
    rt = runtime.Runtime(config.train)
    run = RunDir(run_dir)
    made = [p for p in (run.path, *run.path.parents) if not p.exists()]  # what a failed start-up removes again
    run.path.mkdir(parents=True, exist_ok=True)
    runtime.seed_everything(config.seed, rt.rank)
    session, lock = None, WriterLock(run.path)
    try:
        rt.collective_check(lambda: lock.acquire() if rt.is_main else None, "rank 0 could not hold the run directory")
        session = Session(config, run, rt, resume=resume, archive=archive, run_name=run_name, progress=progress)
        if rt.is_main:
            write_config(config, run.config)
        return loop(session, config, stop_after)
    except BaseException:
        if session is None and lock.held:  # only the holder cleans up, and while it still holds the lock
            run.remove_if_unused(made)
        raise
    finally:
        if session is not None:
            session.close()
        lock.release()
        rt.shutdown()


def loop(s: Session, config: Config, stop_after: int | None) -> dict[str, Any]:
    t, state = config.train, s.state
    start, started = state.step, time.perf_counter()
    s.evaluation.before_training()
    loader = s.loader()
    while state.step < s.end_step:
        s.set_lr()
        batch = next(loader)
        s.period.add(s.train_step(batch), batch)
        state.advance()
        s.progress.step()
        if s.due(t.log_every):
            verdict = s.period.close(s.lr)  # the guard's decision on non-finite steps, read at this sync point
            if verdict == "rollback":
                loader = s.rollback()
                continue
            if verdict == "stop":
                return s.finish("diverged", started)
        if s.due(t.sample_every):
            s.evaluation.samples()
        stop = s.rt.stop_requested(state.step) or (stop_after is not None and state.step - start >= stop_after)
        evaluate = s.evaluation.due()
        if (s.due(t.checkpoint_every) or state.step == s.end_step or stop or evaluate) and s.checkpoints.save() is None:
            return s.finish("diverged", started)
        if evaluate:
            s.evaluation.evaluate()
        if stop:
            return s.finish("stopped", started)
    return s.finish("completed", started)
