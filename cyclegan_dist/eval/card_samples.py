"""The sample grid of a model card (``samples.png``): a few real photos and their translations at the training size.

The inputs are the first images of the run's input domain when its data is readable here, else scikit-image's
bundled photos (no download). A grid that fails never fails the card: :func:`write_samples` returns why it is
missing, and the card says so.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cyclegan_dist.config import DataConfig
from cyclegan_dist.data.demo import demo_root
from cyclegan_dist.data.streams import iter_domain
from cyclegan_dist.data.transforms import eval_image, normalize
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.samples import compose
from cyclegan_dist.rundir import atomic_write

SAMPLES_PNG = "samples.png"
N_SAMPLES = 4
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's bundled photos (no download)
MAX_TILE = 256  # pixels: the grid shows larger translations smaller


@torch.inference_mode()
def write_samples(out: Path, net: torch.nn.Module, facts: Mapping[str, Any], n: int = N_SAMPLES) -> dict[str, Any]:
    """``samples.png`` (inputs, then their translations at the training size); on any failure ``{"file": None,
    "missing": why}`` and no stale grid left behind."""
    path = out / SAMPLES_PNG
    try:
        size = snippet_size(facts)
        x, inputs = sample_inputs(facts, n, size)
        if facts["generator"]["input_nc"] == 1:
            x = x.mean(dim=1, keepdim=True)
        y = net(x).float().clamp(-1, 1)
        if y.shape[1] == 1:
            y = y.repeat(1, 3, 1, 1)
        shown = [_show(t) for t in (x.repeat(1, 3 // x.shape[1], 1, 1), y)]
        step = facts["training"]["steps"]
        title = (f"{facts['name']}" + (f", step {step:,}" if step is not None else "")
                 + f": real inputs and their translations at {size} px")
        data = facts["data"]
        labels = [f"{data['input_domain'] or 'input'} (input)", f"-> {data['output_domain'] or 'output'}"]
        buf = io.BytesIO()
        compose(shown, labels, title).save(buf, format="PNG")
        atomic_write(path, buf.getvalue())
    except Exception as exc:  # noqa: BLE001 - a grid never fails an export; the card says why it is missing
        if path.is_file():
            path.unlink()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return {"file": None, "missing": reason[:300]}
    return {"file": SAMPLES_PNG, "inputs": inputs, "size": size}


def sample_inputs(facts: Mapping[str, Any], n: int, size: int) -> tuple[torch.Tensor, str]:
    """``n`` real images in [-1, 1] (n x 3 x size x size) and where they come from: the first images of the run's
    input domain when its data is readable here, else scikit-image's photos."""
    data = facts["data"]
    why = ""
    if data["source"] is not None:
        domain = data["input_domain"]
        try:
            if data["source"] == "demo":
                demo = data["demo"]
                root = demo_root(DataConfig(demo_size=demo["size"], demo_style=demo["style"],
                                            demo_photos=demo["photos"], demo_paintings=demo["paintings"]))
                where = "the demo set"
            else:
                root = Path(os.path.expandvars(data["root"])).expanduser()
                where = str(root)
            images = [image for _, image in itertools.islice(iter_domain(root, domain, size=size), n)]
            if images:
                return normalize(torch.stack(images)), f"the first {len(images)} images of {domain} in {where}"
            why = f" ({domain} holds no image)"
        except UserError as exc:
            why = f" ({domain} is not readable here: {exc})"
    import skimage.data

    images = [eval_image(getattr(skimage.data, name)(), size) for name in SAMPLE_PHOTOS[:n]]
    return normalize(torch.stack(images)), f"scikit-image's photos {', '.join(SAMPLE_PHOTOS[:n])}{why}"


def _show(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] <= MAX_TILE:
        return x
    return torch.nn.functional.interpolate(x, size=(MAX_TILE, MAX_TILE), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(-1, 1)


def snippet_size(facts: Mapping[str, Any]) -> int:
    """The training size (else 256), rounded up to a size the generator takes."""
    unit = facts["generator"]["size_unit"]
    size = facts["data"]["training_size"] or 256
    return unit * -(-int(size) // unit)
