"""What rank 0 shows while training: a tqdm bar in a terminal, one plain line per logging period elsewhere
(SLURM logs, CI), both with step/total, img/s, the main losses, the LR and the time left.

It only shows what the loop's logging reduction computed (no host sync of its own); per step it advances a
counter, and tqdm redraws at most every half second.
"""

from __future__ import annotations

import sys
import time

from cyclegan_dist.summary import format_duration

SHOWN = (("loss/G", "G"), ("loss/D", "D"), ("loss/cycle_A", "cyc_A"), ("loss/cycle_B", "cyc_B"))


def progress_line(step: int, total: int, metrics: dict, eta_s: float | None) -> str:
    """``step 40/600 (6.7%) | 78.5 img/s | G 4.12 D 0.51 cyc_A 0.83 cyc_B 0.91 | lr 2e-04 | ETA 52s``."""
    losses = " ".join(f"{short} {metrics[k]:.3g}" for k, short in SHOWN if k in metrics)
    return (f"step {step}/{total} ({100 * step / max(total, 1):.1f}%) | {metrics.get('img_per_s', 0):.1f} img/s | "
            f"{losses} | lr {metrics.get('lr', 0):.2g} | ETA {format_duration(eta_s)}")


class Progress:
    def __init__(self, start: int, total: int, *, enabled: bool, stream=None) -> None:
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=0.5,
                            file=self.stream, desc="train")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def logged(self, step: int, metrics: dict) -> None:
        """After a logging period: the postfix of the bar, or one plain timestamped line."""
        if not self.enabled:
            return
        steps_per_s = 1.0 / metrics["step_time_s"] if metrics.get("step_time_s") else None
        eta = (self.total - step) / steps_per_s if steps_per_s else None
        if self.bar is not None:
            shown = {short: f"{metrics[k]:.3g}" for k, short in SHOWN if k in metrics}
            speed = {"img/s": f"{metrics.get('img_per_s', 0):.1f}", "lr": f"{metrics.get('lr', 0):.1e}"}
            self.bar.set_postfix(shown | speed, refresh=False)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} {progress_line(step, self.total, metrics, eta)}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """A line that must not be overwritten by the bar (a warning, a checkpoint, an evaluation)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
