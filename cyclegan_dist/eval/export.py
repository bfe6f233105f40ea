"""Translate photos with a generator into a Kaggle ``images.zip``, checked before it takes its final name.

Preprocessing is the reference test mode: bicubic resize to ``size`` x ``size`` (aspect not kept), scale to
[-1, 1] on the device; the output is ``(y + 1) x 127.5`` rounded and clamped, encoded as an RGB JPEG
(``cyclegan_dist.images``: quality 95, 4:4:4) and stored flat by
:class:`~cyclegan_dist.eval.submission.SubmissionWriter`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cyclegan_dist.data.transforms import eval_image, normalize, to_uint8
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.submission import (
    KAGGLE_MAX,
    KAGGLE_MIN,
    KAGGLE_NAME,
    KAGGLE_SIZE,
    SubmissionWriter,
    check_submission,
)
from cyclegan_dist.images import JPEG_QUALITY, encode_jpeg, from_array


def photo_tensor(image: Any, size: int = KAGGLE_SIZE) -> torch.Tensor:
    """One photo -> uint8 ``3 x size x size``. A photo is a uint8 ``H x W x 3`` array (or grey/RGBA, by the RGB
    policy of ``cyclegan_dist.images``), a PIL image, or a uint8 ``3 x H x W`` tensor."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise UserError(f"a photo tensor must be uint8 3xHxW, got {image.dtype} {tuple(image.shape)}")
        image = image.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = from_array(image)
    if not isinstance(image, Image.Image):
        raise UserError(f"cannot export a photo of type {type(image).__name__}")
    return eval_image(image.convert("RGB"), size)


@torch.inference_mode()
def translate(generator: nn.Module, photos: torch.Tensor, bf16: bool = False) -> np.ndarray:
    """uint8 ``N x 3 x H x W`` (any device) -> the generator's uint8 ``N x H x W x 3`` output."""
    device = next(generator.parameters()).device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        y = generator(normalize(photos.to(device, non_blocking=True)))
    return to_uint8(y.float())


def export_zip(generator: nn.Module, photos: Iterable[tuple[str, Any]], out_zip: str | os.PathLike,
               batch_size: int = 16, size: int = KAGGLE_SIZE, quality: int = JPEG_QUALITY, device=None,
               progress: bool = True, limit: int | None = None, *, bf16: bool = False, total: int | None = None,
               workers: int = 4) -> int:
    """Write ``generator(photo)`` for every ``(name, photo)`` (at most ``limit``) into ``out_zip``; returns the count.

    JPEG encoding and photo decoding overlap the forward passes in a thread pool of ``workers``."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    if not 1 <= quality <= 100:
        raise UserError(f"JPEG quality must be within 1..100, got {quality}")
    if device is not None:
        generator = generator.to(device)
    was_training = generator.training
    generator.eval()
    if total is None and hasattr(photos, "__len__"):
        total = len(photos)  # type: ignore[arg-type]
    if total is not None and limit is not None:
        total = min(total, limit)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="export", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        with SubmissionWriter(out_zip) as zip_out:
            for batch in _batches(photos, batch_size, limit):
                x = torch.stack(list(pool.map(lambda item: photo_tensor(item[1], size), batch)))
                encoded = pool.map(lambda a: encode_jpeg(a, quality), list(translate(generator, x, bf16)))
                for (name, _), data in zip(batch, encoded):
                    zip_out.add(name, data)
                bar.update(len(batch))
        return zip_out.count
    finally:
        bar.close()
        pool.shutdown(wait=True)
        generator.train(was_training)


def _batches(photos: Iterable[tuple[str, Any]], batch_size: int, limit: int | None) -> Iterator[list]:
    it = iter(photos if limit is None else itertools.islice(photos, limit))  # stop before decoding photo limit+1
    while batch := list(itertools.islice(it, batch_size)):
        yield batch


# ------------------------------------------------------------------------------------------ one call


@dataclass
class ExportResult:
    checkpoint: str
    generator: str
    images: int
    path: str | None  # None when the zip was not kept (errors)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def export_submission(checkpoint: str | os.PathLike, photos: str | os.PathLike, out: str | os.PathLike, *,
                      direction: str = "AtoB", batch_size: int = 16, size: int = KAGGLE_SIZE,
                      quality: int = JPEG_QUALITY, device=None, limit: int | None = None, bf16: bool = False,
                      progress: bool = True, strict: bool = False, raw_weights: bool = False,
                      arch: dict[str, Any] | None = None) -> ExportResult:
    """A run / checkpoint / generator file + photos -> a checked submission zip at ``out``.

    The zip is written and checked under a temporary name and renamed to ``out`` only when its entries are valid;
    fewer than 7,000 images (a ``limit``, a small photo set) is a warning unless ``strict``, more than 10,000 an
    error. ``raw_weights`` picks the trained generator over its EMA copy when the run kept one."""
    from cyclegan_dist.images import ImageSource
    from cyclegan_dist.models.io import describe, generator_file, load_generator

    start = time.perf_counter()
    source = ImageSource(photos)  # path mistakes fail before the network is loaded
    device = (torch.device(device) if device is not None
              else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    found = generator_file(checkpoint, direction, raw_weights=raw_weights)
    net, mc = load_generator(checkpoint, direction, device, raw_weights=raw_weights, **(arch or {}))
    out = Path(out).expanduser()
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial.zip")
    try:
        count = export_zip(net, source, tmp, batch_size=batch_size, size=size, quality=quality, progress=progress,
                           limit=limit, bf16=bf16, total=source.count)
        report = check_submission(tmp, 0, 2**62, size=(size, size))  # the entries; the count rule follows
        errors, warnings = list(report.problems), []
        if out.name != KAGGLE_NAME:
            warnings.append(f"Kaggle expects the notebook output to be named {KAGGLE_NAME} (this is {out.name})")
        if count > KAGGLE_MAX:
            errors.append(f"{count} images; Kaggle wants {KAGGLE_MIN}-{KAGGLE_MAX} (use --limit {KAGGLE_MAX})")
        elif count < KAGGLE_MIN:
            (errors if strict else warnings).append(
                f"{count} images; Kaggle wants {KAGGLE_MIN}-{KAGGLE_MAX} (fine for a test; the full Kaggle photo "
                "set, 7,038 photos, gives a valid count)")
        if size != KAGGLE_SIZE:
            warnings.append(f"{size}x{size} images; Kaggle wants {KAGGLE_SIZE}x{KAGGLE_SIZE}")
        if not errors:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(checkpoint=str(found), generator=describe(mc), images=count,
                        path=None if errors else str(out), errors=errors, warnings=warnings, device=str(device),
                        seconds=round(time.perf_counter() - start, 1))
