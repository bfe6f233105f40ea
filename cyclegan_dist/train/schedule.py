"""Learning rate: constant, then linear decay to zero, in images seen, stored with the run; world-size scaling.

The reference (junyanz ``--lr_policy linear``) keeps the LR for ``n_epochs`` and decays it linearly over
``n_epochs_decay``: ``1 - max(0, epoch - n_epochs) / (n_epochs_decay + 1)``. Here the same rule runs per step:
the factor is piecewise linear through the knots ``(0, 1), (C, 1), (C + D + 1, 0)`` with ``D`` decay steps and
``C = steps - D``, which gives exactly the reference value at every integer step. The knots are kept in images
seen (steps x the run's global batch), so a run resumed with another global batch (``train.keep_global_batch=false``)
has the LR its image count calls for; with an unchanged global batch this is the same curve, step for step.

The knots are saved in every checkpoint, so a resumed run follows the curve it started with. A run extended
with a larger ``train.steps`` is **re-planned** from the image count it resumes at, continuously: while the old curve
is still constant there and the new plan is too, the new plan applies; otherwise the LR decays linearly from
its current value to zero at the new end. The loop logs the re-plan as an event.

Scaling with world size (``train.lr_scaling``): the global batch is ``batch_size x world_size`` since
``batch_size`` is per rank. ``none`` keeps the reference LR; ``linear`` multiplies it by world_size (Goyal et
al.); ``sqrt`` by sqrt(world_size) (the usual choice for Adam). The session passes global batch / batch_size as
the world size, which stays the same when a resume on other ranks keeps the global batch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


def decay_steps(total_steps: int, decay_fraction: float) -> int:
    return int(round(total_steps * decay_fraction))


@dataclass(frozen=True)
class Schedule:
    knots: tuple[tuple[int, float], ...]  # (images seen, factor), increasing; constant beyond the last knot

    @classmethod
    def plan(cls, total_steps: int, decay_fraction: float, batch: int = 1) -> "Schedule":
        """The reference curve of ``total_steps`` steps of ``batch`` images (the global batch)."""
        decay = decay_steps(total_steps, decay_fraction)
        constant = total_steps - decay
        return cls(((0, 1.0), (constant * batch, 1.0), ((constant + decay + 1) * batch, 0.0)))

    def factor(self, step: int) -> float:
        """Multiplier of the base LR after ``step`` images (``step`` steps when planned with ``batch=1``)."""
        steps = [s for s, _ in self.knots]
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return self.knots[0][1]
        if i == len(self.knots):
            return self.knots[-1][1]
        (s0, f0), (s1, f1) = self.knots[i - 1], self.knots[i]
        return f0 + (f1 - f0) * (step - s0) / (s1 - s0)

    def replan(self, at_step: int, total_steps: int, decay_fraction: float, batch: int = 1) -> "Schedule":
        """The curve for a run that continues at ``at_step`` (images) towards ``total_steps`` steps of ``batch``,
        continuous at ``at_step``."""
        fresh = Schedule.plan(total_steps, decay_fraction, batch)
        if fresh == self:
            return self
        now = self.factor(at_step)
        if now == 1.0 and fresh.factor(at_step) == 1.0:
            return fresh
        past = tuple((s, f) for s, f in self.knots if s < at_step)
        return Schedule(past + ((at_step, now), ((total_steps + 1) * batch, 0.0)))

    def describe(self) -> str:
        return " -> ".join(f"{f:.3g}@{s}" for s, f in self.knots)

    def state_dict(self) -> dict:
        return {"knots": [list(k) for k in self.knots], "unit": "images"}

    @classmethod
    def from_state_dict(cls, state: dict, legacy_batch: int = 1) -> "Schedule":
        """``legacy_batch``: the global batch of a checkpoint whose knots are in steps (written before images)."""
        scale = 1 if state.get("unit") == "images" else legacy_batch
        return cls(tuple((int(s) * scale, float(f)) for s, f in state["knots"]))


def lr_factor(step: int, total_steps: int, decay_fraction: float) -> float:
    """The reference factor at ``step`` of a run of ``total_steps`` (the plan's curve)."""
    return Schedule.plan(total_steps, decay_fraction).factor(step)


def scaled_lr(base_lr: float, scaling: str, world_size: int) -> float:
    if scaling == "none":
        return base_lr
    if scaling == "linear":
        return base_lr * world_size
    if scaling == "sqrt":
        return base_lr * math.sqrt(world_size)
    raise ValueError(f"unknown lr scaling {scaling!r}")


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
