"""How an optimizer step is taken so that a non-finite gradient is never applied; the divergence monitor.

**Never apply a non-finite update.** :meth:`NonFiniteGuard.step` takes each optimizer step of a training step,
in one of four ways (:func:`guard_mode` picks it from the config, so every way runs on the CPU in tests too):

* ``scaler`` (fp16): torch's ``GradScaler`` does the skipping: ``unscale_``, ``step`` (skipped when it found an
  inf/NaN), ``update`` (the scale halves on an overflow, doubles after ``growth_interval`` clean steps). One
  scaler serves both optimizers, each stepping and updating before the other model's backward, so an overflow in
  D's step skips only D's update (and the scale, updated after each optimizer, grows after ``growth_interval``
  clean optimizer steps: 2000 = 1000 training steps). The guard counts what the scaler skipped (the same
  finiteness test on the unscaled gradients, a device flag: no host sync). Overflow skips are fp16's normal
  range-finding, not errors; they count as failures when a loss is non-finite or the scale has fallen to
  :data:`MIN_LOSS_SCALE` (the gradients overflow even unscaled; DeepSpeed's scaler stops there).
* ``device`` (fused Adam, default on CUDA): the optimizer skips on the device, through the contract torch's own
  ``GradScaler.step`` uses with optimizers that set ``_step_supports_amp_scaling`` (fused Adam): it sets
  ``optimizer.grad_scale`` (None: nothing to unscale) and ``optimizer.found_inf`` (a 0-d float tensor, 1.0 to
  skip) before ``step()`` and removes them after. Fused Adam then leaves the weights and its moments as they were
  and takes the step counter back. No host sync per step.
* ``host`` (default on the CPU, where there is no device queue to drain): the flag is read and the step skipped
  in Python.
* ``deepspeed``: the engine steps inside ``backward`` (Accelerate) and its ZeRO-1/2 optimizer skips a step whose
  gradient norm is not finite (its ``overflow`` check; ZeRO-2 frees ``p.grad``, so nothing else can see the
  gradients); the guard counts the engines' ``skipped_steps``.

The finiteness test is the infinity norm of the gradients (``torch.nn.utils.get_total_norm``: one max per tensor,
so no finite value can overflow it, and NaN propagates). Under DDP the gradients are averaged before the test, so
every rank takes the same decision without an extra collective.

A finite gradient times an absurd LR can still overflow the weights themselves; the next checkpoint then refuses
to write them (``Checkpointer.save`` checks the weights, once per checkpoint) and the run stops with the last good
checkpoint as it was.

**Act at the logging step** (whose reduction syncs anyway): the loop reads the count of skipped steps and the
finiteness of each loss term there, and ``train.on_nonfinite`` decides: ``stop`` (end the run; the last good
checkpoint stays as it is), ``skip`` (go on, at most ``train.nonfinite_max_skips`` skipped steps in all), or
``rollback`` (reload the newest checkpoint of this run with half the LR, at most ``train.nonfinite_max_rollbacks``
times). The message names the loss terms, the steps and the ranks.

**Divergence** (finite but exploding losses): a warning when ``loss/G`` or ``loss/D`` of a logging period is
``DIVERGENCE_FACTOR`` times its value at the first step.
"""

from __future__ import annotations

from typing import Literal

import torch

DIVERGENCE_FACTOR = 100.0
MIN_LOSS_SCALE = 1.0  # fp16: at or below this the gradients overflow even unscaled: divergence, not fp16's range

GuardMode = Literal["scaler", "device", "host", "deepspeed"]


def guard_mode(*, device_type: str, setting: str, fused_adam: bool, scaler: bool, deepspeed: bool) -> GuardMode:
    """Which way a step is skipped: DeepSpeed's engine and fp16's scaler decide themselves; otherwise
    ``train.nonfinite_skip`` (auto: on the device with fused Adam on CUDA, else on the host; ``device`` without
    fused Adam is refused where the config is validated)."""
    if deepspeed:
        return "deepspeed"
    if scaler:
        return "scaler"
    if setting == "auto":
        return "device" if fused_adam and device_type == "cuda" else "host"
    return setting  # type: ignore[return-value]


def nonfinite(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """A 0-d float tensor on the gradients' device: 1.0 when any gradient of ``optimizer`` holds an inf or a NaN,
    else 0.0 (None when no parameter has a gradient). No host sync."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    return (~torch.nn.utils.get_total_norm(grads, norm_type=float("inf")).isfinite()).float()


class NonFiniteGuard:
    def __init__(self, mode: GuardMode, device, *, scaler: torch.amp.GradScaler | None = None,
                 engines: tuple = ()) -> None:
        if (mode == "scaler") != (scaler is not None):
            raise ValueError("a GradScaler goes with mode 'scaler', and only with it")
        self.mode, self.scaler, self.engines = mode, scaler, engines
        self.skipped = torch.zeros((), device=device)  # device-side count since the last read
        self.skipped_host = 0  # host-side count since the last read
        self._engine_skips = self._engines_skipped()

    def step(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """``StepParts.optimizer_step``: one optimizer step (or its skip), then ``zero_grad``."""
        if self.mode == "scaler":
            self.scaler.unscale_(optimizer)
            found = nonfinite(optimizer)
            if found is not None:
                self.skipped += found  # what scaler.step is about to skip
            self.scaler.step(optimizer)
            self.scaler.update()
        elif self.mode == "device":
            found = nonfinite(optimizer)
            if found is None:
                optimizer.step()
            else:
                optimizer.grad_scale, optimizer.found_inf = None, found  # GradScaler.step's contract
                try:
                    optimizer.step()
                finally:
                    del optimizer.grad_scale, optimizer.found_inf
                self.skipped += found
        elif self.mode == "host":
            found = nonfinite(optimizer)
            if found is not None and found.item():
                self.skipped_host += 1
            else:
                optimizer.step()
        else:  # deepspeed: the engine already stepped (or skipped) in backward; Accelerate's wrapper is a no-op
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def read(self) -> torch.Tensor:
        """The skipped-step count since the last read, as a tensor to reduce with the losses (then reset)."""
        engine_skips = self._engines_skipped()
        value = self.skipped + (self.skipped_host + engine_skips - self._engine_skips)
        self.skipped.zero_()
        self.skipped_host, self._engine_skips = 0, engine_skips
        return value

    def loss_scale(self) -> float | None:
        """fp16: the current loss scale (the GradScaler's: a host sync, read at logging steps only; or DeepSpeed's
        fp16 optimizer's); None without loss scaling."""
        if self.scaler is not None:
            return self.scaler.get_scale()
        scales = [float(e.optimizer.loss_scale) for e in self.engines if e.fp16_enabled()]  # DeepSpeed's fp16 (GPU
        return min(scales) if scales else None  # only): each engine's optimizer scales its own loss; the lowest

    def _engines_skipped(self) -> int:
        return sum(int(getattr(engine, "skipped_steps", 0)) for engine in self.engines)


class DivergenceMonitor:
    """Judges each logging period's mean against the losses of the first step of this process (read once: the
    only extra host sync), which an explosion cannot have contaminated yet."""

    def __init__(self, keys: tuple[str, ...] = ("loss/G", "loss/D")) -> None:
        self.keys = keys
        self.baseline: dict[str, float] | None = None
        self.alarmed: set[str] = set()

    def first_step(self, losses: dict) -> None:
        if self.baseline is None:
            self.baseline = {k: float(losses[k]) for k in self.keys if k in losses}

    def __call__(self, metrics: dict[str, float]) -> list[str]:
        """Messages for the loss terms that just started diverging (edge-triggered)."""
        out = []
        for key, base in (self.baseline or {}).items():
            value = metrics.get(key)
            if value is None or not base > 0:
                continue
            if value > DIVERGENCE_FACTOR * base:
                if key not in self.alarmed:
                    self.alarmed.add(key)
                    out.append(f"{key} = {value:.3g} is {value / base:.0f}x its first-step value {base:.3g}: the run "
                               "is diverging (lower train.lr?)")
            else:
                self.alarmed.discard(key)
        return out
