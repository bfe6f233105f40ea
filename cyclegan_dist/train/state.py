"""TrainState: what the loop carries besides the networks and optimizers, with ``state_dict``/``load_state_dict``.

A checkpoint holds the networks, optimizers and scaler (``checkpoint.py``) plus this state: the step, the images
seen, the global batch, the run's identity (run id, W&B id), the LR curve, the guard's counters and the generators'
EMA (the same on every rank), and per rank the image pools, DiffAugment's and the global RNG streams. The data
stream needs no state: sample g of the run is a pure function of (seed, g), and the run continues at g = images
seen, on any number of ranks.

Progress is counted in images: ``samples`` (images seen), and the LR curve is in images. ``train.steps`` counts
steps of the global batch the run started with (``plan_batch``); a run resumed with another global batch
(``train.keep_global_batch=false``) ends after the same number of images (:meth:`TrainState.end_step`).
"""

from __future__ import annotations

import math
import secrets
import string
from dataclasses import dataclass, field

from cyclegan_dist.augment import DiffAugment
from cyclegan_dist.image_pool import ImagePool
from cyclegan_dist.train import runtime
from cyclegan_dist.train.ema import GeneratorEMA
from cyclegan_dist.train.schedule import Schedule


def new_id() -> str:
    """An 8-character id of W&B's alphabet (lowercase letters and digits), for the run and its W&B run."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclass
class TrainState:
    step: int
    global_batch: int  # images per step over all ranks, now
    run_id: str  # tells this run's checkpoints from another run's in the same directory
    wandb_id: str
    schedule: Schedule
    pool_A: ImagePool
    pool_B: ImagePool
    augment: DiffAugment | None = None  # per rank: its own RNG
    ema: GeneratorEMA | None = None  # the same on every rank (updated from the same weights)
    counters: dict[str, int] = field(default_factory=lambda: {"skipped_steps": 0, "rollbacks": 0})
    samples: int = 0  # images seen (over all ranks): where the run's stream continues
    plan_batch: int = 0  # the global batch of the run's first step: train.steps counts steps of it

    def __post_init__(self) -> None:
        self.plan_batch = self.plan_batch or self.global_batch

    def advance(self) -> None:
        """One step done: every rank's share of the global batch consumed."""
        self.step += 1
        self.samples += self.global_batch

    def end_step(self, total_steps: int) -> int:
        """The step at which the run has seen ``total_steps`` x ``plan_batch`` images."""
        left = max(0, total_steps * self.plan_batch - self.samples)
        return self.step + math.ceil(left / self.global_batch)

    def lr(self, base_lr: float) -> float:
        """The LR at this step: the schedule's factor of ``base_lr``, halved once per rollback."""
        return base_lr * self.schedule.factor(self.samples) * 0.5 ** self.counters.get("lr_halvings", 0)

    def shared_state(self) -> dict:
        """The part every rank agrees on (saved once, by rank 0)."""
        return {"step": self.step, "samples": self.samples, "global_batch": self.global_batch,
                "plan_batch": self.plan_batch, "run_id": self.run_id, "wandb_id": self.wandb_id,
                "schedule": self.schedule.state_dict(), "counters": dict(self.counters),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def rank_state(self) -> dict:
        """This rank's part: its pools and RNG streams."""
        return {"step": self.step, "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(),
                "rng": runtime.rng_state(),
                **({"augment": self.augment.state_dict()} if self.augment is not None else {})}

    def load_state_dict(self, shared: dict, mine: dict | None, device, *, legacy_batch: int) -> None:
        """``legacy_batch``: the global batch of a checkpoint written before progress was kept in images."""
        self.step = int(shared["step"])
        self.global_batch = int(shared.get("global_batch", legacy_batch))
        self.plan_batch = int(shared.get("plan_batch", self.global_batch))
        self.samples = int(shared.get("samples", self.step * self.global_batch))
        self.run_id = str(shared.get("run_id") or self.run_id)
        self.wandb_id = str(shared.get("wandb_id") or self.wandb_id)
        if "schedule" in shared:
            self.schedule = Schedule.from_state_dict(shared["schedule"], legacy_batch=self.plan_batch)
        self.counters.update({k: int(v) for k, v in shared.get("counters", {}).items()})
        if self.ema is not None and "ema" in shared:  # a checkpoint without one: the average starts here
            self.ema.load_state_dict(shared["ema"])
        if mine is not None:  # None: the world size changed, this rank starts fresh pools and RNG
            self.pool_A.load_state_dict(mine["pool_A"], device)
            self.pool_B.load_state_dict(mine["pool_B"], device)
            runtime.set_rng_state(mine["rng"])
            if self.augment is not None and "augment" in mine:
                self.augment.load_state_dict(mine["augment"])
