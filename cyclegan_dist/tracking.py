"""Metrics and events: ``metrics.jsonl`` and ``events.jsonl`` in the run directory (what the launcher reads),
mirrored to W&B; and the containment of side services.

One W&B run per run, grouped by experiment, resumed by id after a requeue. The mode comes from the config
(``wandb.mode``) unless ``WANDB_MODE`` is set in the environment. If W&B cannot start (no API key, no network)
the run falls back to offline mode (syncable later with ``wandb sync``), then to metrics.jsonl alone; a W&B
failure later on only stops the mirror. The online attempt waits at most :data:`INIT_TIMEOUT_S` for W&B's server
(``WANDB_INIT_TIMEOUT`` overrides it), and a failed attempt is torn down before the retry, which keeps the run id.
Nothing secret is logged: the config holds no key, and W&B reads ``WANDB_API_KEY`` from the environment or its
netrc on its own.

:meth:`Tracker.side_service` runs anything that must never stop training (sample grids, in-training FID, W&B
calls): a failure becomes one named warning in the log and an event, and training goes on.
Only rank 0 writes; other ranks get a tracker that does nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from cyclegan_dist.config import WandbConfig
from cyclegan_dist.rundir import RunDir, atomic_write_json

log = logging.getLogger("cyclegan_dist.tracking")

# How long wandb.init waits for W&B's server in online mode before failing (then the run falls back to offline).
# W&B's own default, 90 s, holds every run without network that long at its start (a closed port is retried until
# the deadline, it does not fail fast); WANDB_INIT_TIMEOUT in the environment (W&B's own variable) wins over this.
INIT_TIMEOUT_S = 30.0


class Tracker:
    def __init__(self, run: RunDir, wandb: WandbConfig, *, experiment: str, config: dict[str, Any], wandb_id: str,
                 enabled: bool, run_name: str) -> None:
        self.run = run
        self.enabled = enabled
        self.wandb_run = None
        self.mode = os.environ.get("WANDB_MODE", wandb.mode)
        self.warnings: list[dict[str, Any]] = []
        if not enabled:
            return
        self._file = open(run.metrics_path, "a", buffering=1)
        if self.mode != "disabled":
            self._start_wandb(wandb, experiment, config, wandb_id, run_name)

    # ---- W&B
    def _start_wandb(self, wandb_cfg: WandbConfig, experiment: str, config: dict, wandb_id: str, name: str) -> None:
        group = wandb_cfg.group or experiment
        modes = [self.mode] + (["offline"] if self.mode == "online" else [])
        settings: dict[str, Any] = {"console": "off", "quiet": True}
        if "WANDB_INIT_TIMEOUT" not in os.environ:  # settings given to wandb.init win over W&B's environment
            settings["init_timeout"] = INIT_TIMEOUT_S  # bounds the online attempt's wait; see INIT_TIMEOUT_S
        for mode in modes:
            try:
                import wandb

                run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, group=group, job_type="train",
                                 name=name, id=wandb_id, resume="allow", dir=str(self.run.path), mode=mode,
                                 config=config, tags=list(wandb_cfg.tags), settings=wandb.Settings(**settings))
                run.define_metric("step")
                run.define_metric("*", step_metric="step")  # our step, not W&B's: a resume may go back
            except Exception as exc:  # noqa: BLE001 - no key, no network, a broken install: never a stop
                after = "falling back to offline mode" if mode != modes[-1] else "metrics go to metrics.jsonl only"
                self.warn("wandb", f"W&B could not start in {mode} mode ({type(exc).__name__}: {exc}); {after}")
                _teardown_failed_init()
                continue
            self.wandb_run, self.mode = run, mode
            atomic_write_json(self.run.wandb_path, {
                "id": wandb_id, "mode": mode, "project": wandb_cfg.project, "entity": wandb_cfg.entity,
                "group": group, "dir": str(Path(run.dir).parent), "url": run.url if mode == "online" else None})
            return
        self.mode = "disabled"

    def _wandb(self, call) -> None:
        if self.wandb_run is None:
            return
        try:
            call(self.wandb_run)
        except Exception as exc:  # noqa: BLE001 - SLURM's SIGTERM reaches W&B's service too; training goes on
            self.warn("wandb", f"W&B stopped answering ({type(exc).__name__}: {exc}); metrics continue in "
                      f"{self.run.metrics_path.name} only")
            self.wandb_run = None

    # ---- records
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with contextlib.suppress(OSError):  # a full disk must not stop training; the event log says so
            self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._wandb(lambda run: run.log({"step": step, **metrics}))

    def log_image(self, step: int, name: str, path: Path) -> None:
        if self.wandb_run is not None:
            import wandb

            self._wandb(lambda run: run.log({"step": step, name: wandb.Image(str(path))}))

    def event(self, event: str, **fields: Any) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):
                self.run.append_event(event, **fields)

    def warn(self, service: str, message: str, **fields: Any) -> None:
        """One named warning: the log, events.jsonl, W&B's summary (rank 0)."""
        log.warning("%s: %s", service, message)
        record = {"service": service, "message": message, **fields}
        self.warnings.append(record)
        self.event("warning", **record)

    @contextlib.contextmanager
    def side_service(self, service: str, **fields: Any):
        """``with tracker.side_service("samples"): ...``: any exception becomes a warning; training goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - by definition: a side service never stops training
            self.warn(service, f"failed ({type(exc).__name__}: {exc}); training goes on", **fields)

    def summary(self, values: dict[str, Any]) -> None:
        self._wandb(lambda run: run.summary.update(values))

    def finish(self) -> None:
        if not self.enabled:
            return
        with contextlib.suppress(OSError):
            self._file.close()
        self._wandb(lambda run: run.finish())


def _teardown_failed_init() -> None:
    """Release what a failed ``wandb.init`` left behind, so that a retry can use the same run id.

    wandb.init declares the run to W&B's service process (wandb-core) under its id *before* it asks the server for
    it (``service.inform_init(..., run_id=...)`` in ``wandb/sdk/wandb_init.py``); when that request fails (no
    network: "context deadline exceeded") init raises without releasing the declaration, and the service refuses
    any later run with the same id: ``run ID ... is in use``. ``wandb.teardown()`` (public) stops that service and
    resets W&B's process state; the next ``wandb.init`` starts a fresh service. The run id must stay the same (a
    resume continues the same W&B run, and ``wandb sync`` uploads the offline run under it), so a new id is no
    way out. The Tracker is this process's only W&B user, so nothing else is torn down with it.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None:  # W&B never imported (a broken install): nothing to release
        return
    try:
        wandb.teardown()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - teardown sys.exit()s when wandb-core exits non-zero
        log.warning("wandb: could not tear down the failed W&B start (%s: %s)", type(exc).__name__, exc)
