"""The reference image pipeline (junyanz ``--preprocess resize_and_crop``) with explicit randomness, and the
conversions between uint8 images and the networks' [-1, 1] tensors.

Workers ship uint8 (4x fewer bytes than float32 through the DataLoader's IPC); :func:`normalize` turns a batch
into the networks' input on the device, flipping the images whose flag is set.

Train: resize to ``load_size`` x ``load_size`` (bicubic, aspect not kept, as
``transforms.Resize([load_size, load_size], BICUBIC)``) -> random ``crop_size`` crop -> horizontal flip with
p=0.5 -> ToTensor -> Normalize(0.5, 0.5), i.e. values in [-1, 1]. Eval: resize to ``size`` square, no crop/flip.

All randomness comes from the ``numpy.random.Generator`` the caller passes (the stream seeds it from
(seed, the run's sample index)); the torch and numpy global RNGs are never touched. The draw order mirrors the
reference ``get_params``: crop x, crop y, then flip.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
from PIL import Image

from cyclegan_dist.images import JPEG_MAGIC, decode, raw_rgb, resize

log = logging.getLogger(__name__)


def uint8_chw(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> uint8 tensor 3 x H x W."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


@functools.cache
def _jpeg_decoder():
    """torchcodec's libjpeg-turbo ``decode_jpeg`` (bytes -> CHW tensor), or None where it cannot load (a torch it
    was not built for): then PIL decodes everything."""
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError/RuntimeError from its native library
        log.warning("torchcodec did not load (%s: %s): JPEG shards are decoded by PIL, 2-3x slower (raw shards "
                    "need no decoder)", type(e).__name__, e)
        return None
    return decode_jpeg


def decode_chw(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> upright RGB uint8 tensor 3 x H x W, by the RGB policy of :func:`images.decode`.

    A 3-channel JPEG (what ``prepare`` writes) is decoded by torchcodec's libjpeg-turbo straight into a CHW tensor:
    the same pixels as PIL's decoder (tested; EXIF orientation applied), without PIL's HWC image and the
    transposing copy; it raises on truncated data as the strict PIL path does. A raw PPM (the shards' default) is
    a CHW view of a copy of its bytes. Anything else (grey, CMYK, PNG, WebP, or no torchcodec) goes through
    :func:`images.decode`."""
    pixels = raw_rgb(data)
    if pixels is not None:
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # copy: writable memory for torch, no warning
    decoder = _jpeg_decoder() if data.startswith(JPEG_MAGIC) else None
    if decoder is not None:
        try:
            out = decoder(data, mode="UNCHANGED")
        except RuntimeError:
            out = None  # damaged, or a flavour libjpeg-turbo refuses: PIL decides (and raises if damaged)
        if out is not None and out.shape[0] == 3:
            return out
    return uint8_chw(decode(data))


def train_crop(img: Image.Image | torch.Tensor, rng: np.random.Generator, load_size: int = 286,
               crop_size: int = 256, flip: bool = True) -> tuple[torch.Tensor, bool]:
    """(uint8 3 x crop x crop, whether to flip it) from an RGB PIL image or a uint8 3 x H x W tensor; the flip
    itself happens in :func:`normalize`. An image not already ``load_size`` square is resized by PIL's bicubic
    (the reference's ``Resize``); a square one is only cropped (one copy)."""
    if crop_size > load_size:
        raise ValueError(f"crop_size {crop_size} > load_size {load_size}")
    if isinstance(img, Image.Image):
        img = uint8_chw(resize(img, load_size))
    elif tuple(img.shape[1:]) != (load_size, load_size):
        img = uint8_chw(resize(Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB"), load_size))
    x = int(rng.integers(0, load_size - crop_size + 1))
    y = int(rng.integers(0, load_size - crop_size + 1))
    do_flip = bool(rng.random() < 0.5)
    if crop_size != load_size or not img.is_contiguous():  # numpy's copy: faster than torch's for a CHW view of HWC
        img = torch.from_numpy(np.ascontiguousarray(img.numpy()[:, y:y + crop_size, x:x + crop_size]))
    return img, flip and do_flip


def eval_image(img: Image.Image | np.ndarray, size: int = 256) -> torch.Tensor:
    """One photo (RGB PIL or uint8 H x W x 3) -> uint8 3 x size x size (bicubic)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img), "RGB")
    return uint8_chw(resize(img, size))


def normalize(x: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 N x 3 x H x W (any device) -> float32 in [-1, 1] as ToTensor + Normalize(0.5, 0.5) compute it
    ((x / 255 - 0.5) / 0.5, bit-identical); rows whose ``flip`` is true are mirrored left-right."""
    out = x.to(torch.float32).div_(255.0).sub_(0.5).div_(0.5)
    if flip is not None and bool(flip.any()):
        out = torch.where(flip.to(out.device).view(-1, 1, 1, 1), out.flip(-1), out)
    return out


def to_uint8(y: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor 3 x H x W (or N x 3 x H x W) -> uint8 H x W x 3 (or N x H x W x 3): (y + 1) x 127.5, rounded."""
    y = y.detach().to("cpu", torch.float32)
    if y.dim() not in (3, 4) or y.shape[-3] != 3:
        raise ValueError(f"expected 3xHxW or Nx3xHxW, got {tuple(y.shape)}")
    a = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a.movedim(-3, -1).contiguous().numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB over all elements (tensors in [-1, 1] by default: data_range 2)."""
    mse = torch.mean((a.detach().double() - b.detach().double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
