"""Sample grids people look at: labelled rows of real images, their translations and reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cyclegan_dist.data.transforms import to_uint8
from cyclegan_dist.rundir import atomic_write

LABEL_WIDTH = 150
PAD = 2
MIN_TILE = 96  # pixels: tiles smaller than this are enlarged by an integer factor


@torch.no_grad()
def translation_grid(generators: torch.nn.Module, real_A: torch.Tensor, real_B: torch.Tensor) -> list[torch.Tensor]:
    """Six rows in [-1, 1]: A, G_A(A), G_B(G_A(A)), B, G_B(B), G_A(G_B(B)). ``generators`` is unwrapped."""
    out = generators(real_A, real_B, identity=False)
    return [r.float().cpu() for r in (real_A, out["fake_B"], out["rec_A"], real_B, out["fake_A"], out["rec_B"])]


def row_labels(domains: tuple[str, str]) -> list[str]:
    a, b = domains
    return [f"{a} (input)", f"-> {b}", f"-> {a} (cycle)", f"{b} (input)", f"-> {a}", f"-> {b} (cycle)"]


def compose(rows: list[torch.Tensor], labels: list[str], title: str) -> Image.Image:
    """One picture: a title line, then each row of images with its label on the left."""
    arrays = [to_uint8(r) for r in rows]  # N x H x W x 3 each
    scale = max(1, MIN_TILE // arrays[0].shape[1])  # small crops (CPU runs) are enlarged, pixels kept sharp
    if scale > 1:
        arrays = [a.repeat(scale, axis=1).repeat(scale, axis=2) for a in arrays]
    n, h, w = arrays[0].shape[:3]
    top = 18
    font = ImageFont.load_default()
    label_width = max(LABEL_WIDTH, *(int(font.getlength(label)) + 2 * PAD for label in labels))  # never cut a label
    canvas = Image.new("RGB", (label_width + n * (w + PAD) + PAD, top + len(rows) * (h + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 3), title, fill=(0, 0, 0), font=font)
    for i, (row, label) in enumerate(zip(arrays, labels)):
        y = top + PAD + i * (h + PAD)
        draw.text((PAD, y + h // 2 - 6), label, fill=(0, 0, 0), font=font)
        for j in range(n):
            canvas.paste(Image.fromarray(np.ascontiguousarray(row[j])), (label_width + PAD + j * (w + PAD), y))
    return canvas


def save_grid(rows: list[torch.Tensor], path: Path, *, step: int, domains: tuple[str, str]) -> Path:
    """The labelled grid of :func:`translation_grid` as a PNG (written atomically)."""
    import io

    picture = compose(rows, row_labels(domains), f"step {step:,}: inputs, translations, reconstructions")
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, buf.getvalue())
