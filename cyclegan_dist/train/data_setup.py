"""What the loop needs from the data layer: the rank's share of the run's stream, fixed sample images, and for the
embedded demo data set the held-out pairs (x, T(x)) that measure translation quality as PSNR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from cyclegan_dist.config import DataConfig
from cyclegan_dist.data import demo, remote
from cyclegan_dist.data.streams import UnpairedShardDataset, make_loader
from cyclegan_dist.data.transforms import normalize, psnr
from cyclegan_dist.eval.samples import save_grid, translation_grid

DEMO_DOMAINS = ("photo", "painting")
GRID_IMAGES = 8


@dataclass
class DataSetup:
    root: Path
    domain_a: str
    domain_b: str
    dataset: UnpairedShardDataset
    num_workers: int
    eval_pairs: tuple[torch.Tensor, torch.Tensor] | None  # demo only: held-out photos x and T(x), [-1, 1]
    psnr_identity: float | None  # PSNR(x, T(x)): what doing nothing scores

    def loader(self, start_sample: int, *, batch_size: int, rank: int, world: int):
        """This rank's batches of the run's stream from global sample ``start_sample`` (``data/streams.py``)."""
        return make_loader(self.dataset, batch_size, start_sample=start_sample, num_workers=self.num_workers,
                           pin_memory=torch.cuda.is_available(), rank=rank, world=world)

    def fixed_batch(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The same few images at every sample step (indices far from the training stream's start), [-1, 1]."""
        items = [self.dataset[10**9 + i] for i in range(GRID_IMAGES)]
        return tuple(normalize(torch.stack([it[d] for it in items]).to(device)) for d in ("A", "B"))

    @torch.no_grad()
    def save_grid(self, generators, path: Path, step: int, device, autocast: Callable[[], ContextManager]) -> Path:
        real_A, real_B = self.fixed_batch(device)
        with autocast():
            grid = translation_grid(generators, real_A, real_B)
        return save_grid(grid, path, step=step, domains=(self.domain_a, self.domain_b))

    @torch.no_grad()
    def psnr(self, G_A: torch.nn.Module, device, autocast: Callable[[], ContextManager], batch: int = 32) -> float:
        x, target = self.eval_pairs
        outs = []
        for i in range(0, len(x), batch):
            with autocast():
                outs.append(G_A(x[i : i + batch].to(device)).float().cpu())
        return float(psnr(torch.cat(outs), target))


def setup_data(data: DataConfig, *, seed: int, local: Path | None = None) -> DataSetup:
    """The run's data; ``local``: where a remote ``data.root`` was already fetched on this node."""
    if data.root is None:
        root = demo.demo_root(data)
        domain_a, domain_b = DEMO_DOMAINS
        x, target = demo.demo_eval_pairs(root, size=data.crop_size)
        eval_pairs, psnr_identity = (x, target), float(psnr(x, target))
    else:
        root, domain_a, domain_b = local or remote.readable_root(data), data.domain_a, data.domain_b
        eval_pairs, psnr_identity = None, None
    dataset = UnpairedShardDataset(root, domain_a, domain_b, load_size=data.load_size, crop_size=data.crop_size,
                                   flip=data.flip, seed=seed)
    return DataSetup(root, domain_a, domain_b, dataset, data.num_workers, eval_pairs, psnr_identity)
