"""The run's checkpoints as the loop writes them: what goes in (networks, optimizers, scaler, TrainState, per rank
its pools, RNG streams and a digest of its weights), never non-finite weights, the best checkpoint protected from
pruning, and which of this run's checkpoints is the last good one (for a rollback). The files themselves:
``checkpoint.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.config import Config
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import EMA_FILES, GENERATOR_FILES, RunDir
from cyclegan_dist.tracking import Tracker
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.state import TrainState
from cyclegan_dist.train.step import PreparedStep


class Checkpointer:
    def __init__(self, config: Config, run: RunDir, rt: Runtime, state: TrainState, step: PreparedStep,
                 tracker: Tracker, result: dict[str, Any]) -> None:
        self.config, self.run, self.rt, self.state, self.step = config, run, rt, state, step
        self.tracker, self.result = tracker, result

    def last_good(self) -> Path | None:
        """The newest complete checkpoint of this run (not of an earlier run in the same directory)."""
        mine = self.run.complete_checkpoints(run_id=self.state.run_id)
        return mine[-1] if mine else None

    def weights_finite(self) -> bool:
        """Every weight of both pairs finite (one host sync, at checkpoint time only)."""
        params = [*self.step.gens_plain.parameters(), *self.step.discs_plain.parameters()]
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(params)).item())

    def save(self) -> Path | None:
        """A checkpoint of every rank; never of non-finite weights (then None, and the run stops)."""
        rt, t, state = self.rt, self.config.train, self.state
        if not self.weights_finite():
            self.tracker.warn("nonfinite", f"the weights are not finite at step {state.step}: no checkpoint written; "
                              f"the last good one is {self.last_good()}", step=state.step)
            self.result["error"] = f"non-finite weights at step {state.step}"
            return None
        best = self.run.best() if rt.is_main else None
        try:
            path = ckpt.save_checkpoint(self.run, state.step, rank=rt.rank, world_size=rt.world, run_id=state.run_id,
                                        barrier=rt.barrier, shared_state=self._shared if rt.is_main else None,
                                        rank_state=self._rank_state(),
                                        generators=self._generators() if rt.is_main else None,
                                        config_yaml=self.run.config.read_text() if rt.is_main else None,
                                        keep_last=t.keep_last, protect=(best["checkpoint"],) if best else (),
                                        gather=rt.gather_object)
        except UserError as exc:  # e.g. a full disk: the partial checkpoint is removed, the previous one intact
            self.result["error"] = str(exc)
            self.tracker.event("train_end", status="failed", step=state.step, error=str(exc))
            raise
        self.result["checkpoint"] = str(path)
        return path

    def _shared(self) -> dict:
        """What every rank agrees on (written once, by rank 0). Under ZeRO the optimizers are per rank."""
        rt, s = self.rt, self.step
        return {**self.state.shared_state(), "config": self.config.to_dict(), "world_size": rt.world,
                "generators": s.gens_plain.state_dict(), "discriminators": s.discs_plain.state_dict(),
                **({} if rt.deepspeed else {"opt_G": s.opt_G.state_dict(), "opt_D": s.opt_D.state_dict()}),
                "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
                "cpu_threads": torch.get_num_threads() if rt.device.type == "cpu" else None}

    def _rank_state(self) -> dict:
        s = self.step
        return {**self.state.rank_state(), "digest": {"generators": ckpt.weights_digest(s.gens_plain),
                           "discriminators": ckpt.weights_digest(s.discs_plain)},
                **({"opt_G": s.opt_G.state_dict(), "opt_D": s.opt_D.state_dict()} if self.rt.deepspeed else {})}

    def _generators(self) -> dict[str, dict]:
        """The generator files beside the checkpoint (and the EMA's: export and collect pick these unless
        --raw-weights)."""
        gens = self.step.gens_plain
        files = {GENERATOR_FILES[n]: getattr(gens, n).state_dict() for n in ("G_A", "G_B")}
        if self.state.ema is not None:
            files |= {EMA_FILES[n]: getattr(self.state.ema.generators, n).state_dict() for n in ("G_A", "G_B")}
        return files
