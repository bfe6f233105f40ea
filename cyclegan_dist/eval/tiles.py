"""A generator on images of any size: padding to the sizes its architecture takes, and overlapping tiles blended
without seams (``translate --full-res``).

* **Valid sizes** (:func:`translate_padded`): a ResNet takes sides that are multiples of 4, ``unet_N`` multiples of
  N (:func:`cyclegan_dist.eval.formats.size_unit`). Other sizes are reflect-padded (symmetrically) up to the next
  multiple, translated, and cropped back: the output has the input's size.
* **Tiles** (:func:`translate_tiled`): tiles of ``tile`` x ``tile`` pixels (the training size by default: the scale
  the generator's receptive field and its InstanceNorm statistics were trained at) start every ``tile - overlap``
  pixels; the last one ends at the image's edge. Each tile's output is weighted by a separable window that is 1
  in its middle and rises as a raised cosine (sin^2) over ``overlap`` pixels on each side that faces another
  tile; the image is the weighted sum divided by the summed weights. Across an overlap the two weights sum to 1
  (sin^2 + cos^2), so one tile fades into the next over ``overlap`` pixels instead of switching at a border, and
  a tile's edge pixels (where its convolutions saw padding, not the image) weigh almost nothing wherever another
  tile covers them. The windows are separable and the tiles form a grid, so the summed weight is the outer
  product of two 1-D sums.

InstanceNorm normalises each tile by its own statistics: neighbouring tiles of different content can differ in
colour. The blend hides the border, not that difference (a larger overlap spreads it over more pixels).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.export import translate


def round_up(n: int, unit: int) -> int:
    return unit * math.ceil(n / unit)


def pad_to_unit(image: np.ndarray, unit: int) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 ``H x W x 3`` -> (reflect-padded to multiples of ``unit`` on both sides, (top, left) offset of the
    image in it). numpy's reflect mode repeats the reflection when the padding is wider than the image."""
    h, w = image.shape[:2]
    ph, pw = round_up(h, unit) - h, round_up(w, unit) - w
    if not ph and not pw:
        return image, (0, 0)
    top, left = ph // 2, pw // 2
    return np.pad(image, ((top, ph - top), (left, pw - left), (0, 0)), mode="reflect"), (top, left)


def translate_padded(generator: nn.Module, images: list[np.ndarray], unit: int, bf16: bool = False) -> np.ndarray:
    """Images of one size (uint8 ``H x W x 3`` each) -> the generator's uint8 ``N x H x W x 3``, whatever H and W:
    padded to multiples of ``unit``, one forward pass (:func:`cyclegan_dist.eval.export.translate`), cropped."""
    h, w = images[0].shape[:2]
    padded = [pad_to_unit(a, unit) for a in images]
    top, left = padded[0][1]
    x = torch.from_numpy(np.stack([p for p, _ in padded])).permute(0, 3, 1, 2)
    return translate(generator, x, bf16)[:, top:top + h, left:left + w]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles of one axis start: every ``tile - overlap`` pixels, the last one ending at ``length``."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def tile_window(length: int, start: int, extent: int, overlap: int) -> np.ndarray:
    """1-D weights of the tile ``[start, start + extent)``: sin^2 ramps over ``overlap`` pixels on the sides that
    face another tile (not at the image's edges), 1 elsewhere; never 0."""
    weights = np.ones(extent, np.float64)
    if overlap <= 0:
        return weights
    ramp = np.sin(np.pi / 2 * (np.arange(min(overlap, extent)) + 0.5) / overlap) ** 2
    if start > 0:
        weights[:len(ramp)] = np.minimum(weights[:len(ramp)], ramp)
    if start + extent < length:
        weights[extent - len(ramp):] = np.minimum(weights[extent - len(ramp):], ramp[::-1])
    return weights


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 1:
        raise UserError(f"--tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise UserError(f"--overlap must be within 0..{tile - 1} (less than the tile, {tile}), got {overlap}")


def translate_tiled(generator: nn.Module, image: np.ndarray, tile: int, overlap: int, unit: int,
                    batch_size: int = 8, bf16: bool = False) -> np.ndarray:
    """uint8 ``H x W x 3`` of any size -> the generator's uint8 ``H x W x 3``, translated in overlapping
    ``tile`` x ``tile`` tiles (``batch_size`` tiles per forward pass) blended as the module docstring says.
    ``tile`` should be a multiple of ``unit``; a side shorter than ``tile`` is one tile, padded to ``unit``."""
    check_tiling(tile, overlap)
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy = {y: tile_window(h, y, th, overlap) for y in ys}
    wx = {x: tile_window(w, x, tw, overlap) for x in xs}
    total = np.zeros((h, w, 3), np.float64)
    norm_y, norm_x = np.zeros(h), np.zeros(w)
    for y in ys:
        norm_y[y:y + th] += wy[y]
    for x in xs:
        norm_x[x:x + tw] += wx[x]
    boxes = iter([(y, x) for y in ys for x in xs])
    while chunk := list(itertools.islice(boxes, batch_size)):
        out = translate_padded(generator, [image[y:y + th, x:x + tw] for y, x in chunk], unit, bf16)
        for (y, x), tile_out in zip(chunk, out):
            total[y:y + th, x:x + tw] += tile_out * np.outer(wy[y], wx[x])[:, :, None]
    total /= np.outer(norm_y, norm_x)[:, :, None]
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)
