"""What the loop needs from the data layer: the rank's stream, fixed sample images, and for the embedded demo
data set the held-out pairs (x, T(x)) that measure translation quality as PSNR."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from cyclegan_dist.config import Config
from cyclegan_dist.data import demo
from cyclegan_dist.data.streams import UnpairedShardDataset, make_loader
from cyclegan_dist.eval.samples import save_grid, translation_grid

log = logging.getLogger("cyclegan_dist.data")

DEMO_DOMAINS = ("photo", "painting")
GRID_IMAGES = 8


@dataclass
class DataSetup:
    root: Path
    domain_a: str
    domain_b: str
    dataset: UnpairedShardDataset
    batch_size: int
    num_workers: int
    eval_pairs: tuple[torch.Tensor, torch.Tensor] | None  # demo only: held-out photos x and T(x)
    psnr_identity: float | None  # PSNR(x, T(x)): what doing nothing scores

    def loader(self, start_sample: int):
        return make_loader(self.dataset, self.batch_size, start_sample=start_sample, num_workers=self.num_workers,
                           pin_memory=torch.cuda.is_available())

    def skipped(self) -> int:
        return int(getattr(self.dataset, "skipped", 0))

    def fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same few images at every sample step (indices far from the training stream's start)."""
        items = [self.dataset[10**9 + i] for i in range(GRID_IMAGES)]
        return torch.stack([it["A"] for it in items]), torch.stack([it["B"] for it in items])

    @torch.no_grad()
    def save_grid(self, generators, path: Path, device, autocast: Callable[[], ContextManager]) -> Path:
        real_A, real_B = self.fixed_batch()
        with autocast():
            grid = translation_grid(generators, real_A.to(device), real_B.to(device))
        return save_grid(grid, path)

    @torch.no_grad()
    def psnr(self, G_A: torch.nn.Module, device, autocast: Callable[[], ContextManager], batch: int = 32) -> float:
        x, target = self.eval_pairs
        outs = []
        for i in range(0, len(x), batch):
            with autocast():
                outs.append(G_A(x[i : i + batch].to(device)).float().cpu())
        return float(demo.psnr(torch.cat(outs), target))


def setup_data(config: Config, rank: int) -> DataSetup:
    d = config.data
    if d.root is None:
        root = demo.ensure_demo_shards(size=d.demo_size)
        domain_a, domain_b = DEMO_DOMAINS
        x, target = demo.demo_eval_pairs(root)
        x, target = _resize(x, d.crop_size), _resize(target, d.crop_size)
        eval_pairs, psnr_identity = (x, target), float(demo.psnr(x, target))
    else:
        root, domain_a, domain_b = Path(d.root), d.domain_a, d.domain_b
        eval_pairs, psnr_identity = None, None
    dataset = UnpairedShardDataset(root, domain_a, domain_b, load_size=d.load_size, crop_size=d.crop_size,
                                   flip=d.flip, seed=config.seed, rank=rank)
    return DataSetup(root, domain_a, domain_b, dataset, config.train.batch_size, d.num_workers, eval_pairs, psnr_identity)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
