"""A training session: the wiring of everything the loop of ``train/loop.py`` works with, built once per run
(or rank).

It builds, in this order: the data, the networks and optimizers, where the run starts (``train/resume.py``), the
prepared step (``train/step.py``), the tracker, and the three things around the step: the logging period
(``train/period.py``), the checkpoints (``train/checkpointing.py``) and what the run shows of its generators
(``train/evaluation.py``). What it does itself: the LR of each step, the data stream from the run's position, a
rollback, the end.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import torch

from cyclegan_dist.augment import DiffAugment
from cyclegan_dist.config import Config
from cyclegan_dist.data import remote
from cyclegan_dist.rundir import RunDir
from cyclegan_dist.tracking import Tracker
from cyclegan_dist.train import resume as resuming
from cyclegan_dist.train import sample_keys
from cyclegan_dist.train.build import build_networks
from cyclegan_dist.train.checkpointing import Checkpointer
from cyclegan_dist.train.data_setup import setup_data
from cyclegan_dist.train.ema import GeneratorEMA
from cyclegan_dist.train.evaluation import RunEvaluation
from cyclegan_dist.train.period import LoggingPeriod
from cyclegan_dist.train.progress import Progress
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.sample_keys import SampleKeyLog
from cyclegan_dist.train.schedule import Schedule, scaled_lr, set_lr
from cyclegan_dist.train.state import TrainState, new_id
from cyclegan_dist.train.step import prepare_step


class Session:
    def __init__(self, config: Config, run: RunDir, rt: Runtime, *, resume: str, archive: bool,
                 run_name: str | None, progress: bool) -> None:
        self.config, self.run, self.rt = config, run, rt
        self.tracker: Tracker | None = None
        self.progress = Progress(0, config.train.steps, enabled=False)
        t = config.train
        # A remote root is fetched by every rank before any collective: the first rank of each node downloads, the
        # others wait on the cache's file lock (a barrier could time out during a long download).
        local = remote.readable_root(config.data) if remote.is_remote(config.data.root) else None
        with rt.main_process_first():  # rank 0 builds the demo data set once; the others then read it
            self.data = setup_data(config.data, seed=config.seed, local=local)
        nets = build_networks(config.model, t, pool_size=config.loss.pool_size, seed=config.seed, rank=rt.rank,
                              world=rt.world, device_type=rt.device.type)
        batch = rt.world * t.batch_size  # the global batch of a fresh run
        self.state = state = TrainState(step=0, global_batch=batch, run_id=new_id(), wandb_id=new_id(),
                                        schedule=Schedule.plan(t.steps, t.lr_decay_fraction, batch),
                                        pool_A=nets.pool_A, pool_B=nets.pool_B)
        self.source = resuming.choose_start(run, resume, archive=archive, is_main=rt.is_main, barrier=rt.barrier,
                                            rank=rt.rank, gather=rt.gather_object, all_ranks=rt.deepspeed)
        loaded = None
        if self.source is None:
            previous = (run.wandb_info() or {}).get("id") if resume != "never" else None
            state.wandb_id = previous or state.wandb_id  # killed before its first checkpoint: same W&B run
        else:
            loaded = resuming.load(self.source, rt.rank)
            resuming.check_compatible(loaded[0]["config"], config, self.source)
            nets.gens.load_state_dict(loaded[0]["generators"])
            nets.discs.load_state_dict(loaded[0]["discriminators"])
        if config.loss.diffaugment:  # its own RNG per rank, checkpointed: exact resume holds
            state.augment = DiffAugment(config.loss.diffaugment, config.loss.diffaugment_domains,
                                        seed=config.seed * 1000 + rt.rank + 7919)
        self.step = prepare_step(rt, config, nets, augment=state.augment,
                                 after_G=(lambda: state.ema.update(self.step.gens_plain)) if t.ema_decay else None)
        if t.ema_decay > 0:
            state.ema = GeneratorEMA(self.step.gens_plain, t.ema_decay, t.ema_rampup)
        notes = self._restore(loaded) if loaded else []
        self.tracker = Tracker(run, config.wandb, experiment=config.experiment, config=config.to_dict(),
                               wandb_id=state.wandb_id, enabled=rt.is_main, run_name=run_name or run.path.name)
        for kind, note in notes:
            self.tracker.event(kind, message=note)
        # the LR scaled for the global batch (train.lr_scaling; on a fresh run: for the world size)
        self.base_lr = scaled_lr(t.lr, t.lr_scaling, state.global_batch // t.batch_size)
        self.end_step = state.end_step(t.steps)  # train.steps, unless the global batch changed on resume
        self.lr = None
        self.result: dict[str, Any] = {"run_dir": str(run.path), "world_size": rt.world, "start_step": state.step,
                                       "wandb_id": state.wandb_id, "warnings": self.tracker.warnings}
        self.progress = Progress(state.step, self.end_step, enabled=progress and rt.is_main)
        self.checkpoints = Checkpointer(config, run, rt, state, self.step, self.tracker, self.result)
        self.period = LoggingPeriod(config, rt, state, self.step.guard, self.tracker, self.progress, self.result,
                                    last_good=self.checkpoints.last_good)
        self.evaluation = RunEvaluation(config, run, rt, self.data, state, self.step.gens_plain, self.tracker,
                                        self.progress, self.result, end_step=self.end_step)
        self.sample_keys = self._sample_keys() if t.log_sample_keys else None
        self.tracker.event("train_start", step=state.step, world_size=rt.world, host=socket.gethostname(),
                           images_seen=state.samples, global_batch=state.global_batch, plan_batch=state.plan_batch,
                           end_step=self.end_step,
                           resumed_from=str(self.source) if self.source else None, run_id=state.run_id,
                           cpu_threads=torch.get_num_threads() if rt.device.type == "cpu" else None)

    def _sample_keys(self) -> SampleKeyLog:
        if self.rt.is_main:
            sample_keys.truncate(self.run, self.state.step)
        self.rt.barrier()
        return SampleKeyLog(self.run, self.rt.rank, self.rt.world)

    def _restore(self, loaded: tuple[dict, dict | None]) -> list[tuple[str, str]]:
        return resuming.restore(loaded, self.source, state=self.state, opt_G=self.step.opt_G, opt_D=self.step.opt_D,
                                rt=self.rt, config=self.config, run=self.run)

    def loader(self):
        """This rank's share of the run's stream, from the images seen so far."""
        state, rt = self.state, self.rt
        return iter(self.data.loader(state.samples, batch_size=state.global_batch // rt.world, rank=rt.rank,
                                     world=rt.world))

    def due(self, every: int) -> bool:
        step = self.state.step
        return bool(every) and (step % every == 0 or step == self.end_step)

    def set_lr(self) -> None:
        lr = self.state.lr(self.base_lr)
        if lr != self.lr:  # only when it changes: no Python work per step that is not needed
            set_lr(self.step.opt_G, lr)
            set_lr(self.step.opt_D, lr)
            self.lr = lr

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.sample_keys is not None:
            self.sample_keys.write(self.state.step, batch)
        return self.step(*self.step.inputs(batch))

    def rollback(self):
        """Reload the newest checkpoint of this run, halve the LR, restart the data stream there."""
        source = self.checkpoints.last_good()
        counters = dict(self.state.counters)
        shared, mine = resuming.load(source, self.rt.rank)
        self.step.gens_plain.load_state_dict(shared["generators"])
        self.step.discs_plain.load_state_dict(shared["discriminators"])
        self.source = source
        self._restore((shared, mine))
        self.state.counters.update(rollbacks=counters["rollbacks"] + 1, lr_halvings=counters.get("lr_halvings", 0) + 1,
                                   skipped_steps=counters["skipped_steps"])
        self.lr = None
        self.period.reset()
        if self.sample_keys is not None:  # the steps after the checkpoint are trained again
            self.sample_keys.close()
            self.sample_keys = self._sample_keys()
        self.tracker.event("rollback", step=self.state.step, checkpoint=str(source))
        return self.loader()

    def finish(self, status: str, started: float) -> dict[str, Any]:
        rt, state, r = self.rt, self.state, self.result
        self.progress.close()
        r.update({"status": status, "step": state.step, "wall_time_s": time.perf_counter() - started})
        r.setdefault("metrics", {})
        if status == "completed":
            self.evaluation.at_end()
        if rt.is_main:
            r.update(best=self.run.best(), wandb=self.run.wandb_info(), counters=dict(state.counters))
            self.tracker.event("train_end", status=status, step=state.step, error=r.get("error"))
        self.tracker.summary({k: v for k, v in r.items() if isinstance(v, (int, float, str))})
        rt.barrier()
        return r

    def close(self) -> None:
        self.progress.close()
        if getattr(self, "sample_keys", None) is not None:
            self.sample_keys.close()
        if self.tracker is not None:
            self.tracker.finish()
