"""TrainState: what the loop carries besides the networks and optimizers, with ``state_dict``/``load_state_dict``.

A checkpoint holds the networks, optimizers and scaler (``checkpoint.py``) plus this state: the step, the run's
identity (run id, W&B id), the LR curve, the guard's counters and the generators' EMA (the same on every rank),
and per rank the image pools, DiffAugment's and the global RNG streams. The data stream needs no state: item k of
rank r is a pure function of (seed, r, k).
"""

from __future__ import annotations

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
    run_id: str  # tells this run's checkpoints from another run's in the same directory
    wandb_id: str
    schedule: Schedule
    pool_A: ImagePool
    pool_B: ImagePool
    augment: DiffAugment | None = None  # per rank: its own RNG
    ema: GeneratorEMA | None = None  # the same on every rank (updated from the same weights)
    counters: dict[str, int] = field(default_factory=lambda: {"skipped_steps": 0, "rollbacks": 0})

    def lr(self, base_lr: float) -> float:
        """The LR at this step: the schedule's factor of ``base_lr``, halved once per rollback."""
        return base_lr * self.schedule.factor(self.step) * 0.5 ** self.counters.get("lr_halvings", 0)

    def shared_state(self) -> dict:
        """The part every rank agrees on (saved once, by rank 0)."""
        return {"step": self.step, "run_id": self.run_id, "wandb_id": self.wandb_id,
                "schedule": self.schedule.state_dict(), "counters": dict(self.counters),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def rank_state(self) -> dict:
        """This rank's part: its pools and RNG streams."""
        return {"step": self.step, "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(),
                "rng": runtime.rng_state(),
                **({"augment": self.augment.state_dict()} if self.augment is not None else {})}

    def load_state_dict(self, shared: dict, mine: dict | None, device) -> None:
        self.step = int(shared["step"])
        self.run_id = str(shared.get("run_id") or self.run_id)
        self.wandb_id = str(shared.get("wandb_id") or self.wandb_id)
        if "schedule" in shared:
            self.schedule = Schedule.from_state_dict(shared["schedule"])
        self.counters.update({k: int(v) for k, v in shared.get("counters", {}).items()})
        if self.ema is not None and "ema" in shared:  # a checkpoint without one: the average starts here
            self.ema.load_state_dict(shared["ema"])
        if mine is not None:  # None: the world size changed, this rank starts fresh pools and RNG
            self.pool_A.load_state_dict(mine["pool_A"], device)
            self.pool_B.load_state_dict(mine["pool_B"], device)
            runtime.set_rng_state(mine["rng"])
            if self.augment is not None and "augment" in mine:
                self.augment.load_state_dict(mine["augment"])
