"""The non-finite guard and the divergence monitor.

**Never apply a non-finite update.** Between each backward and its optimizer step, :meth:`NonFiniteGuard.check`
looks for a non-finite value in that optimizer's gradients with the op GradScaler's ``unscale_`` uses
(``torch._amp_foreach_non_finite_check_and_unscale_`` at scale 1, which leaves finite values bit-identical): one
multi-tensor op on the CPU and one kernel on CUDA (a total norm is one op per tensor on the CPU, plus a stack).
If it finds one the step is skipped. On CUDA, with fused Adam, the skip happens on the device (the optimizer's
``found_inf``, again GradScaler's mechanism), so there is no host sync per step. On the CPU the flag is read on
the host: with no device queue to drain that costs nothing, while the device-side skip's correction of the step
counters would be one op per parameter tensor there (torch's ``_foreach_sub_`` loops on the CPU). DeepSpeed's
engine also reads it on the host. Under DDP the gradients are averaged before the check, so every rank takes the
same decision without any extra collective.

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

from operator import attrgetter

import torch

DIVERGENCE_FACTOR = 100.0


class NonFiniteGuard:
    def __init__(self, device, device_skip: bool) -> None:
        self.device_skip = device_skip
        self.skipped = torch.zeros((), device=device)  # device-side skips since the last read
        self.skipped_host = 0  # host-side skips since the last read
        self.params: dict[str, list[torch.nn.Parameter]] = {}  # per optimizer ("G", "D"): its parameters
        self.found: dict[str, torch.Tensor] = {}  # per optimizer: 1.0 once a non-finite gradient was seen
        self.one = torch.ones((), device=device)

    def check(self, name: str, loss: torch.Tensor, optimizer) -> bool:
        """StepParts.guard: False when the step must not run (host-side skip); with ``device_skip`` always True."""
        params = self.params.get(name)
        if params is None:
            params = self.params[name] = [p for group in optimizer.param_groups for p in group["params"]]
            self.found[name] = torch.zeros((), device=params[0].device if params else self.one.device)
        found = self.found[name]
        if self.device_skip:
            found.zero_()  # the optimizer reads it in this step
        grads = list(map(_GRAD, params))
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self.one)
        except TypeError:  # a parameter without a gradient in this step (or none at all)
            grads = [g for g in grads if g is not None]
            if not grads:
                return True
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self.one)
        if self.device_skip:
            self.skipped += found
            getattr(optimizer, "optimizer", optimizer).found_inf = found  # fused Adam skips on the device
            return True
        if found.item():
            found.zero_()
            self.skipped_host += 1
            return False
        return True

    def read(self) -> torch.Tensor:
        """The skipped-step count since the last read, as a tensor to reduce with the losses (then reset)."""
        value = self.skipped + self.skipped_host
        self.skipped.zero_()
        self.skipped_host = 0
        return value


_GRAD = attrgetter("grad")


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
