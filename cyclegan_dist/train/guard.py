"""The non-finite guard and the divergence monitor.

**Never apply a non-finite update.** Between each backward and its optimizer step, :meth:`NonFiniteGuard.check`
computes the total gradient norm of that optimizer's parameters; if it is not finite the step is skipped. With
fused Adam the skip happens on the device (the optimizer's ``found_inf``, the mechanism GradScaler uses), so
there is no host sync per step; otherwise (DeepSpeed's engine) it reads the flag. Under DDP the gradients are
averaged before the check, so every rank takes the same decision without any extra collective.

A finite gradient times an absurd LR can still overflow the weights themselves; the next checkpoint then refuses
to write them (``Session.save`` checks the weights, once per checkpoint) and the run stops with the last good
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

import torch

DIVERGENCE_FACTOR = 100.0


class NonFiniteGuard:
    def __init__(self, device, device_skip: bool) -> None:
        self.device_skip = device_skip
        self.skipped = torch.zeros((), device=device)  # optimizer steps skipped since the last read

    def check(self, name: str, loss: torch.Tensor, optimizer) -> bool:
        """StepParts.guard: False when the step must not run (host-side skip); with ``device_skip`` always True."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).to(torch.float32)
        self.skipped += bad
        if self.device_skip:
            getattr(optimizer, "optimizer", optimizer).found_inf = bad  # fused Adam skips on the device
            return True
        return not bool(bad.item())

    def read(self) -> torch.Tensor:
        """The skipped-step count since the last read, as a tensor to reduce with the losses (then reset)."""
        value, self.skipped = self.skipped, torch.zeros_like(self.skipped)
        return value


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
