"""One logging period: the losses and counters the loop adds every step, reduced once when it logs (the one
host sync of a period), written to the metrics and the progress display, and judged: the divergence warnings and
the train.on_nonfinite policy's verdict (go, rollback, stop)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cyclegan_dist.config import Config
from cyclegan_dist.tracking import Tracker
from cyclegan_dist.train.guard import MIN_LOSS_SCALE, DivergenceMonitor, NonFiniteGuard
from cyclegan_dist.train.progress import Progress
from cyclegan_dist.train.runtime import Runtime, peak_memory_gb
from cyclegan_dist.train.state import TrainState


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


class LoggingPeriod:
    def __init__(self, config: Config, rt: Runtime, state: TrainState, guard: NonFiniteGuard, tracker: Tracker,
                 progress: Progress, result: dict[str, Any], last_good: Callable[[], Path | None]) -> None:
        self.config, self.rt, self.state, self.guard = config, rt, state, guard
        self.tracker, self.progress, self.result, self.last_good = tracker, progress, result, last_good
        self.window = Window(rt.device)
        self.divergence = DivergenceMonitor()

    def add(self, losses: dict[str, torch.Tensor], batch: dict) -> None:
        if self.divergence.baseline is None:
            self.divergence.first_step(losses)
        self.window.add(losses, batch["skipped"], batch["skipped_keys"])

    def reset(self) -> None:
        self.window.reset()

    def close(self, lr: float) -> str:
        """Reduce the period's losses and counters, log them; returns go | rollback | stop."""
        w, rt = self.window, self.rt
        names, local = w.names, w.total(rt.device)
        totals = rt.sum(torch.cat([local, torch.stack([self.guard.read().float(),
                                                      torch.tensor(float(w.skipped_samples), device=rt.device)])]))
        values = (totals[:-2] / (w.steps * rt.world)).tolist()
        skipped_steps, skipped_samples = round(totals[-2].item() / rt.world), int(totals[-1].item())
        elapsed = time.perf_counter() - w.start
        metrics = dict(zip(names, values))
        metrics.update({"lr": lr, "world_size": rt.world, "images_seen": self.state.samples,
                        "img_per_s": w.steps * self.state.global_batch / elapsed,
                        "step_time_s": elapsed / w.steps, "data/skipped": skipped_samples,
                        "mem/peak_gb": peak_memory_gb(rt.device)})
        bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
        scale, failures = self.guard.loss_scale(), skipped_steps  # failures: skips that count against the policy
        if scale is None:
            metrics["train/skipped_steps"] = skipped_steps
        else:  # fp16: overflow skips are the loss scaler's range-finding; a non-finite loss or a collapsed scale
            metrics.update({"amp/overflow_skips": skipped_steps, "amp/loss_scale": scale})  # are failures
            if scale <= MIN_LOSS_SCALE and skipped_steps:
                bad.append(f"gradients (fp16 loss scale {scale:.3g} <= {MIN_LOSS_SCALE:g}, {skipped_steps} overflow "
                           "skips in this period)")
            failures = skipped_steps if bad else 0
        c, step = self.state.counters, self.state.step
        c["skipped_steps"] += failures
        first_skips = skipped_samples and not c.get("skipped_samples")
        c["skipped_samples"] = c.get("skipped_samples", 0) + skipped_samples
        first_keys = sum(rt.gather_object(w.skipped_keys), [])[:5] if first_skips else []  # collective, rare
        self.result["metrics"] = metrics
        w.reset()
        self.tracker.log(step, metrics)
        self.progress.logged(step, metrics)
        for message in self.divergence(metrics):
            self.tracker.warn("divergence", message, step=step)
            self.progress.note(f"warning: {message}")
        if first_skips:
            self.tracker.warn("data", f"{skipped_samples} unreadable sample(s) skipped and redrawn by step {step} "
                              f"(over all workers and ranks); first: {', '.join(first_keys)}; later ones are counted "
                              "in data/skipped", keys=first_keys)
        if not (failures or bad):
            return "go"
        local_bad = [n for n, ok in zip(names, torch.isfinite(local).tolist()) if not ok]
        ranks = [r for r, mine in enumerate(rt.gather_object(local_bad)) if mine]  # only after a bad period
        return self._nonfinite(skipped_steps, bad, ranks)

    def _nonfinite(self, skipped_steps: int, bad: list[str], ranks: list[int]) -> str:
        """The train.on_nonfinite policy, with a message naming the losses, the steps and the ranks."""
        t, step, c = self.config.train, self.state.step, self.state.counters
        where = (f"on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}" if ranks
                 else "in the gradients (averaged over all ranks)")
        what = (f"non-finite {', '.join(bad) or 'gradients'} in the {t.log_every} steps up to step {step} {where}; "
                f"{skipped_steps} optimizer step(s) skipped, nothing non-finite was applied")
        last = self.last_good()
        if t.on_nonfinite == "skip" and c["skipped_steps"] <= t.nonfinite_max_skips:
            self.tracker.warn("nonfinite", f"{what} ({c['skipped_steps']} of train.nonfinite_max_skips="
                              f"{t.nonfinite_max_skips} so far)", step=step)
            return "go"
        if t.on_nonfinite == "rollback" and c["rollbacks"] < t.nonfinite_max_rollbacks and last is not None:
            self.tracker.warn("nonfinite", f"{what}; rolling back to {last.name} with half the LR (rollback "
                              f"{c['rollbacks'] + 1} of train.nonfinite_max_rollbacks={t.nonfinite_max_rollbacks})",
                              step=step)
            return "rollback"
        self.tracker.warn("nonfinite", f"{what}; stopping (train.on_nonfinite={t.on_nonfinite}); the last good "
                          f"checkpoint is {last or 'none (none was written yet)'}", step=step)
        self.result["error"] = what
        return "stop"
