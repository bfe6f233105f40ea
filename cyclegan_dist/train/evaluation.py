"""FID / MiFID during training: a fixed photo subset translated by G_A, against all paintings.

Every rank translates and featurizes its share of the subset (photo j goes to rank j % world_size), rank 0
gathers the features and scores them against the real statistics of every painting of the training set
(cached on disk, keyed by the shard index, the resolution and the Inception file). MiFID's memorization term
uses those same training paintings, as Kaggle does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from cyclegan_dist.config import Config
from cyclegan_dist.data.demo import demo_cache_root
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.errors import UserError

log = logging.getLogger("cyclegan_dist.eval")


class TrainingEvaluator:
    def __init__(self, config: Config, root: Path, domain_a: str, domain_b: str, rank: int, world: int, device):
        try:
            from cyclegan_dist.eval.fid import RealStatsCache
            from cyclegan_dist.eval.inception import InceptionFeatures
        except ImportError as exc:
            raise UserError(f"eval.every / eval.at_end need the metrics extra ({exc.name} is missing): "
                            'pip install -e ".[metrics]", or set eval.every=0 eval.at_end=false') from None

        self.rank, self.world, self.device = rank, world, device
        self.size = config.data.crop_size
        self.batch_size = config.eval.batch_size
        self.inception = InceptionFeatures(config.eval.inception, device=device, batch_size=self.batch_size)
        subset = itertools.islice(iter_domain(root, domain_a, 0, 1, size=self.size), config.eval.num_photos)
        self.photos = [image for j, (_, image) in enumerate(subset) if j % world == rank]
        self.root, self.domain_b = root, domain_b
        self.cache = RealStatsCache(demo_cache_root() / "fid-stats")
        self._real = None

    def real(self):
        """(mu, sigma, features) of every painting, from the cache or computed once (rank 0 only)."""
        if self._real is None:
            index = (self.root / "index.json").read_bytes()
            dataset_id = f"{self.root.name}-{self.domain_b}-{hashlib.sha1(index).hexdigest()[:16]}"
            key = self.cache.make_key(dataset_id, self.size, self.inception.sha1)

            def paintings() -> np.ndarray:
                images = (image for _, image in iter_domain(self.root, self.domain_b, 0, 1, size=self.size))
                return self._features(images)

            mu, sigma, features, hit = self.cache.get_or_compute(key, paintings)
            log.info("real FID statistics of %d paintings %s", len(features), "from the cache" if hit else "computed")
            self._real = (mu, sigma, features)
        return self._real

    @torch.no_grad()
    def _features(self, images, generator: torch.nn.Module | None = None,
                  autocast: Callable[[], ContextManager] | None = None) -> np.ndarray:
        out = []
        for batch in _batches(images, self.batch_size):
            x = torch.stack(batch).to(self.device)
            if generator is not None:
                with autocast():
                    x = generator(x)
            # Kaggle scores 8-bit JPEGs: quantize to uint8 like the exported images before featurizing
            pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
            out.append(self.inception.features_of_batch(pixels, value_range=(0, 255)))
        return np.concatenate(out) if out else np.zeros((0, 2048))

    def evaluate(self, G_A: torch.nn.Module, autocast: Callable[[], ContextManager], gather) -> dict | None:
        """Collective: every rank calls it. Returns the scores on rank 0, None elsewhere."""
        from cyclegan_dist.eval.fid import compute_fid_mifid

        was_training = G_A.training
        G_A.eval()
        mine = self._features(self.photos, G_A, autocast)
        G_A.train(was_training)
        shares = gather(mine)
        if self.rank != 0:
            return None
        mu, sigma, paintings = self.real()
        scores = compute_fid_mifid(np.concatenate(shares), train_features=paintings, real_stats=(mu, sigma))
        return {"eval/fid": scores["fid"], "eval/mifid": scores["mifid"],
                "eval/memorization_distance": scores["memorization_distance"]}


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_best(run_dir: Path, checkpoint_name: str, step: int, metric: float) -> None:
    """checkpoints/best names the checkpoint with the lowest MiFID; best.json holds its score."""
    root = Path(run_dir) / "checkpoints"
    (root / ".best.tmp").write_text(checkpoint_name + "\n")
    (root / ".best.tmp").replace(root / "best")
    (root / ".best.json.tmp").write_text(json.dumps({"checkpoint": checkpoint_name, "step": step, "eval/mifid": metric}))
    (root / ".best.json.tmp").replace(root / "best.json")


def read_best(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "checkpoints" / "best.json").read_text())
    except (OSError, ValueError):
        return None
