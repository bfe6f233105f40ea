"""What the run shows of its generators while it trains: sample grids, the demo set's PSNR, and FID / MiFID
(:class:`RunEvaluation`, what the loop calls), which also keeps ``best.json`` (the checkpoint of the lowest MiFID).
Samples, PSNR and FID use the generators' EMA when the run keeps one.

FID / MiFID (:class:`TrainingEvaluator`): a fixed photo subset translated by G_A, against all paintings of the
training set.

Every rank translates and featurizes its share of the subset (photo j goes to rank j % world_size); rank 0
gathers the features and scores them against the real statistics of every painting (cached on disk, keyed by
the shard index, the resolution and the Inception file). MiFID's memorization term uses those same training
paintings, as Kaggle does.

A failure is contained: a rank whose share fails contributes ``None`` to the gather (so no rank waits alone),
rank 0 then reports the evaluation as failed (a missing value, never a "best" checkpoint), and training goes on.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from cyclegan_dist.cache import fid_stats_dir
from cyclegan_dist.config import Config, EvalConfig
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.data.transforms import normalize
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import RunDir, step_dir_name
from cyclegan_dist.tracking import Tracker
from cyclegan_dist.train.data_setup import DataSetup
from cyclegan_dist.train.progress import Progress
from cyclegan_dist.train.runtime import Runtime
from cyclegan_dist.train.state import TrainState

log = logging.getLogger("cyclegan_dist.eval")


class EvaluationFailed(Exception):
    """The evaluation of this step failed on some rank; the message says where and why."""


class TrainingEvaluator:
    def __init__(self, cfg: EvalConfig, *, root: Path, domain_a: str, domain_b: str, size: int, rank: int,
                 world: int, device) -> None:
        try:
            from cyclegan_dist.eval.fid import RealStatsCache
            from cyclegan_dist.eval.inception import InceptionFeatures
        except ImportError as exc:
            raise UserError(f"eval.every / eval.at_end need the metrics extra ({exc.name} is missing): "
                            'pip install "cyclegan-dist[metrics]", or set eval.every=0 eval.at_end=false') from None
        self.rank, self.world, self.device, self.size = rank, world, device, size
        self.batch_size = cfg.batch_size
        self.inception = InceptionFeatures(cfg.inception, device=device, batch_size=cfg.batch_size)
        subset = itertools.islice(iter_domain(root, domain_a, 0, 1, size=size), cfg.num_photos)
        self.photos = [image for j, (_, image) in enumerate(subset) if j % world == rank]
        self.root, self.domain_a, self.domain_b = root, domain_a, domain_b
        self.cache = RealStatsCache(fid_stats_dir())
        self._real = None

    def real(self):
        """(mu, sigma, features) of every painting, from the cache or computed once (rank 0 only)."""
        if self._real is None:
            from cyclegan_dist.eval.scoring import real_statistics

            index = (self.root / "index.json").read_bytes()
            dataset_id = f"{self.root.name}-{self.domain_b}-{hashlib.sha1(index).hexdigest()[:16]}"
            paintings = (image for _, image in iter_domain(self.root, self.domain_b, 0, 1, size=self.size))
            mu, sigma, features, hit = real_statistics(self.cache, dataset_id, self.size, self.inception.sha1,
                                                       lambda: self._features(paintings))
            log.info("real FID statistics of %d paintings %s", len(features), "from the cache" if hit else "computed")
            self._real = (mu, sigma, features)
        return self._real

    @torch.no_grad()
    def _features(self, images, generator: torch.nn.Module | None = None,
                  autocast: Callable[[], ContextManager] | None = None) -> np.ndarray:
        out = []
        it = iter(images)
        while batch := list(itertools.islice(it, self.batch_size)):
            x = torch.stack(batch).to(self.device)  # uint8
            if generator is not None:
                with autocast():
                    y = generator(normalize(x)).float()
                # Kaggle scores 8-bit JPEGs: quantize like the exported images before featurizing
                x = ((y.clamp(-1, 1) + 1) * 127.5).round()
            out.append(self.inception.features_of_batch(x, value_range=(0, 255)))
        return np.concatenate(out) if out else np.zeros((0, 2048))

    def evaluate(self, G_A: torch.nn.Module, autocast: Callable[[], ContextManager], gather) -> dict | None:
        """Collective: every rank calls it. The scores on rank 0 (None elsewhere); EvaluationFailed on rank 0
        when any part failed (the other ranks never wait for a rank that failed)."""
        was_training = G_A.training
        G_A.eval()
        try:
            mine = self._features(self.photos, G_A, autocast)
        except Exception as exc:  # noqa: BLE001 - contained: reported by rank 0 below
            log.warning("rank %d: in-training evaluation failed (%s: %s)", self.rank, type(exc).__name__, exc)
            mine = f"rank {self.rank}: {type(exc).__name__}: {exc}"
        finally:
            G_A.train(was_training)
        shares = gather(mine)
        if self.rank != 0:
            return None
        failed = [s for s in shares if not isinstance(s, np.ndarray)]
        if failed:
            raise EvaluationFailed("; ".join(map(str, failed)))
        from cyclegan_dist.eval.fid import compute_fid_mifid

        try:
            mu, sigma, paintings = self.real()
            scores = compute_fid_mifid(np.concatenate(shares), train_features=paintings, real_stats=(mu, sigma))
        except Exception as exc:  # noqa: BLE001 - e.g. sqrtm's large imaginary component with few images
            raise EvaluationFailed(f"rank 0: {type(exc).__name__}: {exc}") from exc
        if not all(np.isfinite([scores["fid"], scores["mifid"]])):
            raise EvaluationFailed(f"non-finite scores: FID {scores['fid']}, MiFID {scores['mifid']}")
        return {"eval/fid": scores["fid"], "eval/mifid": scores["mifid"],
                "eval/memorization_distance": scores["memorization_distance"],
                "eval/n_generated": scores["n_generated"], "eval/n_real": len(paintings), "eval/size": self.size}

    def describe(self, scores: dict, weights: str) -> str:
        """What a score measured, so that it can be told apart from ``python -m cyclegan_dist fid`` on an export:
        how many photos, at which size, which weights, against which paintings."""
        return (f"{scores['eval/n_generated']} photos (the first eval.num_photos of domain {self.domain_a}) "
                f"translated at {self.size} px by the {weights} weights, against all {scores['eval/n_real']} "
                f"{self.domain_b} images of the training shards at {self.size} px; `fid` on an export scores every "
                "exported photo (256 px JPEGs) against the folder you give it")


class RunEvaluation:
    def __init__(self, config: Config, run: RunDir, rt: Runtime, data: DataSetup, state: TrainState,
                 gens_plain: torch.nn.Module, tracker: Tracker, progress: Progress, result: dict[str, Any], *,
                 end_step: int) -> None:
        self.config, self.run, self.rt, self.data, self.state = config, run, rt, data, state
        self.gens_plain, self.tracker, self.progress, self.result = gens_plain, tracker, progress, result
        self.end_step = end_step
        self.evaluator = self._evaluator()

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
    def generators(self) -> torch.nn.Module:
        """What samples, PSNR and in-training FID use: the generators' EMA when the run keeps one."""
        return self.state.ema.generators if self.state.ema is not None else self.gens_plain

    def _psnr(self) -> float:
        return self.data.psnr(self.generators.G_A, self.rt.device, self.rt.autocast)

    def before_training(self) -> None:
        """The demo set's PSNR before the first step (what the untrained generator scores)."""
        if self.rt.is_main and self.state.step == 0 and self.data.eval_pairs is not None:
            self.result["psnr_before"] = self._psnr()
            self.tracker.log(0, {"eval/psnr": self.result["psnr_before"],
                                 "eval/psnr_identity": self.data.psnr_identity})

    def samples(self) -> None:
        """A sample grid (rank 0), and on the demo set the PSNR against the known transform."""
        if not self.rt.is_main:
            return
        step = self.state.step
        path = self.run.samples / f"{step_dir_name(step)}.png"
        with self.tracker.side_service("samples", step=step):
            self.data.save_grid(self.generators, path, step, self.rt.device, self.rt.autocast)
            self.result["samples"] = str(path)
            self.tracker.log_image(step, "samples", path)
        if self.data.eval_pairs is not None:
            with self.tracker.side_service("psnr", step=step):
                self.tracker.log(step, {"eval/psnr": self._psnr()})

    def due(self) -> bool:
        e, step = self.config.eval, self.state.step
        return self.evaluator is not None and bool((e.every and step % e.every == 0) or
                                                   (e.at_end and step == self.end_step))

    def evaluate(self) -> None:
        """FID / MiFID of this step (collective); a failure is a warning and a missing value. After the step's
        checkpoint: a lower MiFID makes it the best."""
        rt, step = self.rt, self.state.step
        try:
            scores = self.evaluator.evaluate(self.generators.G_A, rt.autocast, rt.gather_object)
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

    def at_end(self) -> None:
        """The demo set's PSNR after a completed run (rank 0)."""
        if self.rt.is_main and self.data.eval_pairs is not None:
            r = self.result
            r["psnr_after"], r["psnr_identity"] = self._psnr(), self.data.psnr_identity
            self.tracker.log(self.state.step, {"eval/psnr": r["psnr_after"], "eval/psnr_identity": r["psnr_identity"]})
