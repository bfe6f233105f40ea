"""``run(config) -> result``: the one way into training, for the CLI, torchrun, accelerate and SLURM jobs alike.

Nothing heavy is imported here: torch and the training code load inside :func:`run`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from cyclegan_dist.config import Config, load_config


def request_stop() -> None:
    """Ask the running training loop to checkpoint and return at the next agreed step (signal-handler safe)."""
    from cyclegan_dist.train.runtime import request_stop as stop

    stop()


def default_run_dir(config: Config) -> Path:
    return Path("runs") / config.experiment / "local"


def run(config: Config | str | Path, overrides: Sequence[str] = (), *, run_dir: str | Path | None = None,
        resume: str = "auto", archive: bool = False, run_name: str | None = None, stop_after: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train (or continue training) one run. ``config`` is a Config, a YAML path or an experiment name.

    ``resume``: ``auto`` continues from the newest complete checkpoint in ``run_dir`` if there is one, ``never``
    starts over (``archive`` moves an earlier run found there aside), or a checkpoint directory. ``stop_after``:
    checkpoint and return (status ``stopped``) after this many steps of this call. Returns a summary: status
    (completed | stopped | diverged), step, world size, last metrics, checkpoint, W&B id, samples, warnings,
    and for the demo data set the translation PSNR before/after and of the identity.
    """
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config file; pass them to load_config with a Config")
    _setup_logging()
    from cyclegan_dist.train.loop import train

    return train(config, Path(run_dir) if run_dir else default_run_dir(config), resume=resume, archive=archive,
                 run_name=run_name, stop_after=stop_after, progress=progress)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
