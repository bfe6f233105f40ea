"""A training session: everything the loop of ``train/loop.py`` works with, built once per run (or rank).

Start-up: the data, the networks and optimizers, where the run starts (``train/resume.py``), ``prepare``, the
tracker, the in-training evaluator, the progress display. Then one method per thing the loop does: a step, a
logging period (with the non-finite guard's verdict), sample grids, checkpoints, evaluations, a rollback, the end.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.augment import DiffAugment
from cyclegan_dist.config import Config
from cyclegan_dist.data import remote
from cyclegan_dist.data.transforms import normalize
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import EMA_FILES, GENERATOR_FILES, RunDir, step_dir_name
from cyclegan_dist.tracking import Tracker
from cyclegan_dist.train import resume as resuming
from cyclegan_dist.train.build import build_networks
from cyclegan_dist.train.data_setup import setup_data
from cyclegan_dist.train.ema import GeneratorEMA
from cyclegan_dist.train.evaluation import EvaluationFailed, TrainingEvaluator
from cyclegan_dist.train.guard import MIN_LOSS_SCALE, DivergenceMonitor
from cyclegan_dist.train.parts import prepare_step
from cyclegan_dist.train.progress import Progress
from cyclegan_dist.train.runtime import Runtime, peak_memory_gb
from cyclegan_dist.train.schedule import Schedule, set_lr
from cyclegan_dist.train.state import TrainState, new_id
from cyclegan_dist.train.window import Window

log = logging.getLogger("cyclegan_dist.train")


class Session:
    def __init__(self, config: Config, run: RunDir, rt: Runtime, *, resume: str, archive: bool,
                 run_name: str | None, progress: bool) -> None:
        self.config, self.run, self.rt = config, run, rt
        self.tracker: Tracker | None = None
        self.progress = Progress(0, config.train.steps, enabled=False)
        t = config.train
        # A remote root is fetched by every rank before any collective: the first rank of each node downloads, the
        # others wait on the cache's file lock (a barrier could time out during a long download).
        local = remote.readable_root(config.data) if remote.is_remote(config.data.root) else None
        with rt.main_process_first():  # rank 0 builds the demo data set once; the others then read it
            self.data = setup_data(config.data, batch_size=t.batch_size, seed=config.seed, rank=rt.rank, local=local)
        nets = build_networks(config.model, t, pool_size=config.loss.pool_size, seed=config.seed, rank=rt.rank,
                              world=rt.world, device_type=rt.device.type)
        self.base_lr, self.memory = nets.base_lr, nets.memory_format
        self.state = TrainState(step=0, run_id=new_id(), wandb_id=new_id(),
                                schedule=Schedule.plan(t.steps, t.lr_decay_fraction), pool_A=nets.pool_A,
                                pool_B=nets.pool_B)
        self.source = resuming.choose_start(run, resume, archive=archive, is_main=rt.is_main, barrier=rt.barrier,
                                            rank=rt.rank, gather=rt.gather_object)
        if self.source is None:
            previous = (run.wandb_info() or {}).get("id") if resume != "never" else None
            self.state.wandb_id = previous or self.state.wandb_id  # killed before its first checkpoint: same W&B run
            loaded = None
        else:
            loaded = resuming.load(self.source, rt.rank)
            resuming.check_compatible(loaded[0]["config"], config, self.source)
            nets.gens.load_state_dict(loaded[0]["generators"])
            nets.discs.load_state_dict(loaded[0]["discriminators"])
        if config.loss.diffaugment:  # its own RNG per rank, checkpointed: exact resume holds
            self.state.augment = DiffAugment(config.loss.diffaugment, config.loss.diffaugment_domains,
                                             seed=config.seed * 1000 + rt.rank + 7919)
        self.prepared = prepare_step(rt, config, nets, augment=self.state.augment,
                                     after_G=(lambda: self.state.ema.update(self.gens_plain)) if t.ema_decay else None)
        self.gens, self.discs, self.opt_G, self.opt_D = (self.prepared.gens, self.prepared.discs, self.prepared.opt_G,
                                                         self.prepared.opt_D)
        self.gens_plain, self.discs_plain, self.guard = (self.prepared.gens_plain, self.prepared.discs_plain,
                                                         self.prepared.guard)
        if t.ema_decay > 0:
            self.state.ema = GeneratorEMA(self.gens_plain, t.ema_decay, t.ema_rampup)
        notes = self._restore(*loaded) if loaded else []
        self.tracker = Tracker(run, config.wandb, experiment=config.experiment, config=config.to_dict(),
                               wandb_id=self.state.wandb_id, enabled=rt.is_main, run_name=run_name or run.path.name)
        for note in notes:
            self.tracker.event("schedule", message=note)
        self.divergence = DivergenceMonitor()
        self.evaluator = self._evaluator()
        self.window = Window(rt.device)
        self.lr = None
        self.result: dict[str, Any] = {"run_dir": str(run.path), "world_size": rt.world, "start_step": self.state.step,
                                       "wandb_id": self.state.wandb_id, "warnings": self.tracker.warnings}
        self.tracker.event("train_start", step=self.state.step, world_size=rt.world, host=socket.gethostname(),
                           resumed_from=str(self.source) if self.source else None, run_id=self.state.run_id,
                           cpu_threads=torch.get_num_threads() if rt.device.type == "cpu" else None)
        self.progress = Progress(self.state.step, t.steps, enabled=progress and rt.is_main)

    # ---------------------------------------------------------------------------------------- start-up
    def _restore(self, shared: dict, mine: dict | None) -> list[str]:
        """Optimizers, scaler and TrainState of the checkpoint; a re-planned LR curve if train.steps changed."""
        rt, t = self.rt, self.config.train
        resuming.restore_optimizers(shared, mine, self.opt_G, self.opt_D, rt.scaler, sharded=rt.deepspeed,
                                    world=rt.world, rank=rt.rank, source=self.source)
        self.state.load_state_dict(shared, mine, rt.device)
        notes = []
        if rt.device.type == "cpu" and shared.get("cpu_threads") and not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(shared["cpu_threads"])  # as before: other threads, other sums (bit-exact resume)
        replanned = self.state.schedule.replan(self.state.step, t.steps, t.lr_decay_fraction)
        if replanned != self.state.schedule:
            notes.append(f"train.steps is now {t.steps}: the LR curve continues from factor "
                         f"{self.state.schedule.factor(self.state.step):.3g} at step {self.state.step} "
                         f"({self.state.schedule.describe()} -> {replanned.describe()})")
            self.state.schedule = replanned
        if rt.is_main:
            self.run.truncate_metrics(self.state.step)
            log.info("resumed from %s at step %d", self.source, self.state.step)
            if shared["world_size"] != rt.world:
                log.warning("checkpoint was written by %d ranks, resuming on %d: the per-rank data streams%s change",
                            shared["world_size"], rt.world, " and the scaled LR" if t.lr_scaling != "none" else "")
            for note in notes:
                log.warning("%s", note)
        return notes

    def _evaluator(self) -> TrainingEvaluator | None:
        e = self.config.eval
        if not (e.every or e.at_end):
            return None
        evaluator, error = None, ""
        try:
            evaluator = TrainingEvaluator(e, root=self.data.root, domain_a=self.data.domain_a,
                                          domain_b=self.data.domain_b, size=self.config.data.crop_size,
                                          rank=self.rt.rank, world=self.rt.world, device=self.rt.device)
        except Exception as exc:  # noqa: BLE001 - the metrics extra, the Inception file: a side service
            error = f"{type(exc).__name__}: {exc}"
        failed = self.rt.sum(torch.tensor([0.0 if evaluator else 1.0])).item() > 0  # every rank decides alike
        if failed:
            why = error or "it failed on another rank"
            self.tracker.warn("eval", f"in-training FID/MiFID is off for this run: {why}")
            return None
        return evaluator

    @property
    def inference_generators(self) -> torch.nn.Module:
        """What samples, PSNR and in-training FID use: the generators' EMA when the run keeps one."""
        return self.state.ema.generators if self.state.ema is not None else self.gens_plain

    def loader(self):
        return iter(self.data.loader(start_sample=self.state.step * self.config.train.batch_size))

    def before_training(self) -> None:
        if self.rt.is_main and self.state.step == 0 and self.data.eval_pairs is not None:
            self.result["psnr_before"] = self.data.psnr(self.inference_generators.G_A, self.rt.device,
                                                        self.rt.autocast)
            self.tracker.log(0, {"eval/psnr": self.result["psnr_before"],
                                 "eval/psnr_identity": self.data.psnr_identity})

    # ---------------------------------------------------------------------------------------- every step
    def due(self, every: int) -> bool:
        step = self.state.step
        return bool(every) and (step % every == 0 or step == self.config.train.steps)

    def set_lr(self) -> None:
        halvings = self.state.counters.get("lr_halvings", 0)  # one per rollback
        lr = self.base_lr * self.state.schedule.factor(self.state.step) * 0.5 ** halvings
        if lr != self.lr:  # only when it changes: no Python work per step that is not needed
            set_lr(self.opt_G, lr)
            set_lr(self.opt_D, lr)
            self.lr = lr

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        losses = self.prepared(self._input(batch, "A"), self._input(batch, "B"))
        if self.divergence.baseline is None:
            self.divergence.first_step(losses)
        return losses

    def _input(self, batch: dict, domain: str) -> torch.Tensor:
        x = normalize(batch[domain].to(self.rt.device, non_blocking=True), batch[domain + "_flip"])
        return x if self.memory is torch.contiguous_format else x.contiguous(memory_format=self.memory)

    # ---------------------------------------------------------------------------------------- periodic
    def log(self) -> str:
        """Reduce the period's losses and counters (the one host sync), log them; returns go | rollback | stop."""
        w, rt, t = self.window, self.rt, self.config.train
        names, local = w.names, w.total(rt.device)
        totals = rt.sum(torch.cat([local, torch.stack([self.guard.read().float(),
                                                      torch.tensor(float(w.skipped_samples), device=rt.device)])]))
        values = (totals[:-2] / (w.steps * rt.world)).tolist()
        skipped_steps, skipped_samples = round(totals[-2].item() / rt.world), int(totals[-1].item())
        elapsed = time.perf_counter() - w.start
        metrics = dict(zip(names, values))
        metrics.update({"lr": self.lr, "world_size": rt.world, "img_per_s": w.steps * t.batch_size * rt.world / elapsed,
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
        c = self.state.counters
        c["skipped_steps"] += failures
        first_skips = skipped_samples and not c.get("skipped_samples")
        c["skipped_samples"] = c.get("skipped_samples", 0) + skipped_samples
        first_keys = sum(rt.gather_object(w.skipped_keys), [])[:5] if first_skips else []  # collective, rare
        self.result["metrics"] = metrics
        w.reset()
        self.tracker.log(self.state.step, metrics)
        self.progress.logged(self.state.step, metrics)
        for message in self.divergence(metrics):
            self.tracker.warn("divergence", message, step=self.state.step)
            self.progress.note(f"warning: {message}")
        if first_skips:
            self.tracker.warn("data", f"{skipped_samples} unreadable sample(s) skipped and redrawn by step "
                              f"{self.state.step} (over all workers and ranks); first: {', '.join(first_keys)}; "
                              "later ones are counted in data/skipped", keys=first_keys)
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
        policy = t.on_nonfinite
        last = self._last_good()
        if policy == "skip" and c["skipped_steps"] <= t.nonfinite_max_skips:
            self.tracker.warn("nonfinite", f"{what} ({c['skipped_steps']} of train.nonfinite_max_skips="
                              f"{t.nonfinite_max_skips} so far)", step=step)
            return "go"
        if policy == "rollback" and c["rollbacks"] < t.nonfinite_max_rollbacks and last is not None:
            self.tracker.warn("nonfinite", f"{what}; rolling back to {last.name} with half the LR (rollback "
                              f"{c['rollbacks'] + 1} of train.nonfinite_max_rollbacks={t.nonfinite_max_rollbacks})",
                              step=step)
            return "rollback"
        self.tracker.warn("nonfinite", f"{what}; stopping (train.on_nonfinite={t.on_nonfinite}); the last good "
                          f"checkpoint is {last or 'none (none was written yet)'}", step=step)
        self.result["error"] = what
        return "stop"

    def _last_good(self) -> Path | None:
        mine = self.run.complete_checkpoints(run_id=self.state.run_id)
        return mine[-1] if mine else None

    def rollback(self):
        """Reload the newest checkpoint of this run, halve the LR, restart the data stream there."""
        source = self._last_good()
        counters = dict(self.state.counters)
        shared, mine = resuming.load(source, self.rt.rank)
        self.gens_plain.load_state_dict(shared["generators"])
        self.discs_plain.load_state_dict(shared["discriminators"])
        self.source = source
        self._restore(shared, mine)
        self.state.counters.update(rollbacks=counters["rollbacks"] + 1, lr_halvings=counters.get("lr_halvings", 0) + 1,
                                   skipped_steps=counters["skipped_steps"])
        self.lr = None
        self.window.reset()
        self.tracker.event("rollback", step=self.state.step, checkpoint=str(source))
        return self.loader()

    def samples(self) -> None:
        if not self.rt.is_main:
            return
        path = self.run.samples / f"{step_dir_name(self.state.step)}.png"
        with self.tracker.side_service("samples", step=self.state.step):
            self.data.save_grid(self.inference_generators, path, self.state.step, self.rt.device, self.rt.autocast)
            self.result["samples"] = str(path)
            self.tracker.log_image(self.state.step, "samples", path)
        if self.data.eval_pairs is not None:  # demo data: translation quality against the known transform
            with self.tracker.side_service("psnr", step=self.state.step):
                self.tracker.log(self.state.step, {"eval/psnr": self.data.psnr(self.inference_generators.G_A,
                                                                                self.rt.device,
                                                                                self.rt.autocast)})

    def evaluation_due(self) -> bool:
        e, step = self.config.eval, self.state.step
        return self.evaluator is not None and bool((e.every and step % e.every == 0) or
                                                   (e.at_end and step == self.config.train.steps))

    def weights_finite(self) -> bool:
        """Every weight of both pairs finite (one host sync, at checkpoint time only)."""
        params = [*self.gens_plain.parameters(), *self.discs_plain.parameters()]
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(params)).item())

    def save(self) -> Path | None:
        """A checkpoint of every rank; never of non-finite weights (then None, and the run stops)."""
        rt, t, state = self.rt, self.config.train, self.state
        if not self.weights_finite():
            self.tracker.warn("nonfinite", f"the weights are not finite at step {state.step}: no checkpoint written; "
                              f"the last good one is {self._last_good()}", step=state.step)
            self.result["error"] = f"non-finite weights at step {state.step}"
            return None
        best = self.run.best() if rt.is_main else None
        sharded = rt.deepspeed

        def shared() -> dict:
            return {**state.shared_state(), "config": self.config.to_dict(), "world_size": rt.world,
                    "generators": self.gens_plain.state_dict(), "discriminators": self.discs_plain.state_dict(),
                    **({} if sharded else {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()}),
                    "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
                    "cpu_threads": torch.get_num_threads() if rt.device.type == "cpu" else None}

        rank_state = {**state.rank_state(), "samples_seen": state.step * t.batch_size,
                      "digest": {"generators": ckpt.weights_digest(self.gens_plain),
                                 "discriminators": ckpt.weights_digest(self.discs_plain)},
                      **({"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()} if sharded else {})}
        generators = {GENERATOR_FILES[n]: getattr(self.gens_plain, n).state_dict() for n in ("G_A", "G_B")}
        if state.ema is not None:  # export and collect pick these unless --raw-weights
            generators |= {EMA_FILES[n]: getattr(state.ema.generators, n).state_dict() for n in ("G_A", "G_B")}
        try:
            path = ckpt.save_checkpoint(self.run, state.step, rank=rt.rank, world_size=rt.world, run_id=state.run_id,
                                        barrier=rt.barrier, shared_state=shared if rt.is_main else None,
                                        rank_state=rank_state, generators=generators if rt.is_main else None,
                                        config_yaml=self.run.config.read_text() if rt.is_main else None,
                                        keep_last=t.keep_last, protect=(best["checkpoint"],) if best else (),
                                        gather=rt.gather_object)
        except UserError as exc:  # e.g. a full disk: the partial checkpoint is removed, the previous one intact
            self.result["error"] = str(exc)
            self.tracker.event("train_end", status="failed", step=state.step, error=str(exc))
            raise
        self.result["checkpoint"] = str(path)
        return path

    def evaluate(self) -> None:
        rt, step = self.rt, self.state.step
        try:
            scores = self.evaluator.evaluate(self.inference_generators.G_A, rt.autocast, rt.gather_object)
        except EvaluationFailed as exc:
            self.tracker.warn("eval", f"in-training FID/MiFID failed at step {step} ({exc}); logged as missing, "
                              "training goes on", step=step)
            self.tracker.log(step, {"eval/fid": None, "eval/mifid": None})
            return
        if not rt.is_main:
            return
        self.tracker.log(step, scores)
        self.progress.note(f"step {step}: FID {scores['eval/fid']:.2f}, MiFID {scores['eval/mifid']:.2f}")
        if not self.result.get("eval"):  # once per run: what these numbers measured
            weights = "EMA" if self.state.ema is not None else "trained (raw)"
            self.progress.note(f"  (in-training FID: {self.evaluator.describe(scores, weights)})")
        self.result["eval"] = scores
        best = self.run.best()
        if best is None or scores["eval/mifid"] < best["eval/mifid"]:
            with self.tracker.side_service("best"):
                self.run.write_best(Path(self.result["checkpoint"]).name, step, scores["eval/mifid"])

    # ---------------------------------------------------------------------------------------- the end
    def finish(self, status: str, started: float) -> dict[str, Any]:
        rt, state, r = self.rt, self.state, self.result
        self.progress.close()
        r.update({"status": status, "step": state.step, "wall_time_s": time.perf_counter() - started})
        r.setdefault("metrics", {})
        if rt.is_main and self.data.eval_pairs is not None and status == "completed":
            r["psnr_after"] = self.data.psnr(self.inference_generators.G_A, rt.device, rt.autocast)
            r["psnr_identity"] = self.data.psnr_identity
            self.tracker.log(state.step, {"eval/psnr": r["psnr_after"], "eval/psnr_identity": self.data.psnr_identity})
        if rt.is_main:
            best = self.run.best()
            r.update(best=best, wandb=self.run.wandb_info(), counters=dict(state.counters))
            self.tracker.event("train_end", status=status, step=state.step, error=r.get("error"))
        self.tracker.summary({k: v for k, v in r.items() if isinstance(v, (int, float, str))})
        rt.barrier()
        return r

    def close(self) -> None:
        self.progress.close()
        if self.tracker is not None:
            self.tracker.finish()
