"""Metrics: ``metrics.jsonl`` in the run directory (what gather reads), mirrored to W&B.

One W&B run per job, grouped by experiment, resumed by id after a requeue. The mode comes from the config
(``wandb.mode``) unless ``WANDB_MODE`` is set in the environment. Nothing secret is logged: the config holds
no key, and W&B reads ``WANDB_API_KEY`` from the environment or its netrc on its own.
Only rank 0 writes; other ranks get a tracker that does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

from cyclegan_dist.config import Config

log = logging.getLogger("cyclegan_dist.tracking")

METRICS_FILE = "metrics.jsonl"
WANDB_FILE = "wandb-run.json"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a line cut short by a kill is skipped; no file = no records."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def truncate_metrics(run_dir: str | Path, after_step: int) -> None:
    """Drop records past ``after_step`` (written after the checkpoint a resumed run restarts from)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def new_wandb_id() -> str:
    """An 8-character run id of W&B's alphabet (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def previous_wandb_id(run_dir: str | Path) -> str | None:
    """The W&B run id an earlier attempt of this run wrote (so a requeued job logs into the same run)."""
    path = Path(run_dir) / WANDB_FILE
    try:
        return json.loads(path.read_text()).get("id")
    except (OSError, ValueError):
        return None


class Tracker:
    def __init__(self, run_dir: Path, config: Config, wandb_id: str, enabled: bool, run_name: str) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.wandb_run = None
        self.mode = os.environ.get("WANDB_MODE", config.wandb.mode)
        if not enabled:
            return
        self._file = open(run_dir / METRICS_FILE, "a", buffering=1)
        if self.mode == "disabled":
            return
        import wandb

        self.wandb_run = wandb.init(
            project=config.wandb.project,
            entity=config.wandb.entity,
            group=config.wandb.group or config.experiment,
            job_type="train",
            name=run_name,
            id=wandb_id,
            resume="allow",
            dir=str(run_dir),
            mode=self.mode,
            config=config.to_dict(),
            tags=list(config.wandb.tags),
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.wandb_run.define_metric("step")
        self.wandb_run.define_metric("*", step_metric="step")  # our step, not W&B's: a resume may go back
        info = {"id": wandb_id, "mode": self.mode, "project": config.wandb.project, "entity": config.wandb.entity,
                "group": config.wandb.group or config.experiment, "dir": str(Path(self.wandb_run.dir).parent),
                "url": self.wandb_run.url if self.mode == "online" else None}
        (run_dir / WANDB_FILE).write_text(json.dumps(info, indent=1))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._wandb(lambda run: run.log({"step": step, **metrics}))

    def log_image(self, step: int, name: str, path: Path) -> None:
        if self.wandb_run is not None:
            import wandb

            self._wandb(lambda run: run.log({"step": step, name: wandb.Image(str(path))}))

    def summary(self, values: dict[str, Any]) -> None:
        self._wandb(lambda run: run.summary.update(values))

    def finish(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        self._wandb(lambda run: run.finish())

    def _wandb(self, call) -> None:
        """W&B is a mirror: if its service dies (SLURM's SIGTERM reaches every process of a job), training and
        metrics.jsonl carry on, and the checkpoint that the stop asks for is still written."""
        if self.wandb_run is None:
            return
        try:
            call(self.wandb_run)
        except Exception as exc:  # noqa: BLE001 - any failure of the mirror
            log.warning("W&B stopped answering (%s: %s); metrics continue in %s only", type(exc).__name__, exc, METRICS_FILE)
            self.wandb_run = None
