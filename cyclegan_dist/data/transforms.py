"""The reference image pipeline (junyanz ``--preprocess resize_and_crop``), with explicit randomness.

Train: resize to ``load_size`` x ``load_size`` (bicubic, aspect not kept, as
``transforms.Resize([load_size, load_size], BICUBIC)``) -> random ``crop_size`` crop -> horizontal flip
with p=0.5 -> ToTensor -> Normalize(0.5, 0.5), i.e. values in [-1, 1].
Eval: resize to ``crop_size`` square, no crop, no flip.

All randomness comes from the ``numpy.random.Generator`` the caller passes (the stream seeds it from
(seed, rank, sample index)); the torch and numpy global RNGs are never touched. The draw order mirrors
the reference ``get_params``: crop x, crop y, then flip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor 3xHxW in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    # same float32 operations as torchvision (ToTensor: /255, Normalize: (x - 0.5) / 0.5), bit-identical,
    # done in numpy on HWC then made contiguous CHW (torch ops on the permuted view are much slower)
    f = (a.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))


def train_transform(
    img: Image.Image, rng: np.random.Generator, load_size: int = 286, crop_size: int = 256, flip: bool = True
) -> torch.Tensor:
    if crop_size > load_size:
        raise ValueError(f"crop_size {crop_size} > load_size {load_size}")
    if img.size != (load_size, load_size):
        img = img.resize((load_size, load_size), Image.BICUBIC)
    x = int(rng.integers(0, load_size - crop_size + 1))
    y = int(rng.integers(0, load_size - crop_size + 1))
    do_flip = bool(rng.random() < 0.5)
    if crop_size != load_size:
        img = img.crop((x, y, x + crop_size, y + crop_size))
    if flip and do_flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return pil_to_tensor(img)


def eval_transform(img: Image.Image, size: int = 256) -> torch.Tensor:
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return pil_to_tensor(img)


def to_uint8_image(t: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor 3xHxW (or Nx3xHxW) -> uint8 HxWx3 (or NxHxWx3) array, for saving."""
    t = t.detach().to("cpu", torch.float32)
    if t.dim() not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected 3xHxW or Nx3xHxW, got {tuple(t.shape)}")
    a = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a.movedim(-3, -1).contiguous().numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB over all elements (tensors in [-1, 1] by default: data_range 2)."""
    mse = torch.mean((a.detach().double() - b.detach().double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
