"""``run(config) -> result``: the one way into training, for the CLI, torchrun and SLURM jobs alike."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from cyclegan_dist.config import Config, load_config
from cyclegan_dist.train.runtime import request_stop  # noqa: F401  (re-exported for the launcher's job)


def default_run_dir(config: Config) -> Path:
    return Path("runs") / config.experiment / "local"


def run(
    config: Config | str | Path,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    resume: str = "auto",
    run_name: str | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or continue training) one run. ``config`` is a Config, a YAML path or an experiment name.

    ``resume``: ``auto`` continues from the newest complete checkpoint in ``run_dir`` if there is one,
    ``never`` starts over, or a checkpoint directory. Returns a summary: status (completed | stopped),
    step, world_size, last metrics, checkpoint path, W&B id, and for the demo data set PSNR before/after.
    ``stop_after``: checkpoint and return (status ``stopped``) after this many steps of this call.
    """
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config file; pass them to load_config with a Config")
    _setup_logging()
    from cyclegan_dist.train.loop import train  # torch and friends load here, not at import of entry

    return train(config, Path(run_dir) if run_dir else default_run_dir(config), resume=resume, run_name=run_name,
                 stop_after=stop_after)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
