"""Sample grids: rows of real photos, their translations and reconstructions (and the same for paintings)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


@torch.no_grad()
def translation_grid(generators: torch.nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
    """A 6-row grid in [0, 1]: A, G_A(A), G_B(G_A(A)), B, G_B(B), G_A(G_B(B)). ``generators`` is unwrapped."""
    out = generators(real_A, real_B, identity=False)
    rows = [real_A, out["fake_B"], out["rec_A"], real_B, out["fake_A"], out["rec_B"]]
    images = torch.cat([r.float().cpu() for r in rows], 0)
    return make_grid(images, nrow=real_A.shape[0], normalize=True, value_range=(-1, 1), padding=2)


def save_grid(grid: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path
