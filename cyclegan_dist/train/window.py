"""The loss sums of one logging period (what the loop adds every step and reduces when it logs)."""

from __future__ import annotations

import time

import torch


class Window:
    """Loss sums of the current logging period. On a GPU they stay on the device (one stack and one add per step,
    no host sync until the period ends); on the CPU, where reading a value costs nothing (there is no queue to
    drain), they are summed as Python floats (cheaper than the two ops: benchmarks/RESULTS.md, "Loss sums")."""

    def __init__(self, device: torch.device) -> None:
        self.on_host = device.type == "cpu"
        self.names: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.sums: list[float] | torch.Tensor | None = None
        self.steps, self.skipped_samples, self.start = 0, 0, time.perf_counter()
        self.skipped_keys: list[str] = []

    def add(self, losses: dict[str, torch.Tensor], skipped: torch.Tensor, keys: list[str] = ()) -> None:
        if not self.names:
            self.names = list(losses)
        values = list(map(losses.__getitem__, self.names))
        if self.on_host:
            sums = self.sums or [0.0] * len(values)
            self.sums = [total + value.item() for total, value in zip(sums, values)]
        else:
            stacked = torch.stack(values).float()
            self.sums = stacked if self.sums is None else self.sums.add_(stacked)
        self.steps += 1
        if any(keys):  # a batch with skipped samples names them (the loader's keys are never empty)
            self.skipped_samples += int(skipped.sum())
            self.skipped_keys += [k for ks in keys if ks for k in ks.split(",")][: max(0, 5 - len(self.skipped_keys))]

    def total(self, device: torch.device) -> torch.Tensor:
        """Per name, the sum over the period's steps (float32, on ``device``)."""
        if self.on_host:
            return torch.tensor(self.sums, dtype=torch.float32, device=device)
        return self.sums
