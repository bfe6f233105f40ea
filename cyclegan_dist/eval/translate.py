"""``translate``: photos of any size and format in, the generator's images out, names kept (one command).

:func:`translate_source` checks the options and the paths, loads the generator and runs the loop; each part has its
own module:

* **Sources** (:mod:`cyclegan_dist.eval.translate_inputs`): a folder (recursive), a ``.zip``, a glob of image files,
  one image file, or WebDataset shards. A file that does not decode is skipped, reported through ``on_skip`` and
  counted; the others are translated.
* **Sizes** (:mod:`cyclegan_dist.eval.translate_batches`): the shorter side is resized to ``size`` (bicubic, aspect
  kept; default the run's training size, ``data.crop_size`` of the checkpoint's config, else 256), or with
  ``full_res`` the image keeps its size and is translated in overlapping tiles (:mod:`cyclegan_dist.eval.tiles`).
  Sides the architecture does not take are reflect-padded and cropped back: an output has the size of its
  (resized) input.
* **Batches** (:mod:`cyclegan_dist.eval.translate_batches`): consecutive images of the same size share a forward
  pass (at most ``batch_size``); decoding and encoding run in a thread pool beside it.
* **Outputs** (:mod:`cyclegan_dist.eval.translate_outputs`): a folder (sub-folders kept; each file written to a
  temporary name, then renamed) or a ``.zip`` (written under a temporary name, renamed over ``dst`` once
  complete). ``fmt`` ``auto`` keeps JPEG for ``.jpg``/``.jpeg`` inputs and writes PNG otherwise; ``jpeg`` or
  ``png`` force one. A source file is never overwritten, and ``dst`` may not lie inside a source folder.

torch is imported only once the paths have been checked: a mistake in a path is reported in a fraction of a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.translate_batches import choose_sizing, translate_all
from cyclegan_dist.eval.translate_inputs import open_inputs, unreadable_reason
from cyclegan_dist.eval.translate_outputs import (
    FORMATS,
    FolderOutput,
    ZipOutput,
    check_destination,
    encode_as,
    output_name,
    plan_outputs,
)
from cyclegan_dist.images import JPEG_QUALITY

SkipHandler = Callable[[str, str], None]


@dataclass
class TranslateResult:
    checkpoint: str  # the weights file used
    generator: str
    out: str
    translated: int = 0
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    size: str = ""  # how images were sized, in words
    device: str = "cpu"
    seconds: float = 0.0


def training_size(checkpoint: str | os.PathLike, direction: str = "AtoB", raw_weights: bool = False) -> tuple[int, str]:
    """(the short side a generator was trained at, where that came from): ``data.crop_size`` of the
    ``config.yaml`` beside its weights (run and checkpoint directories), else the default crop size (exported
    generators, junyanz files)."""
    from cyclegan_dist.config import DataConfig, read_yaml_mapping
    from cyclegan_dist.models.io import generator_file
    from cyclegan_dist.rundir import CONFIG

    weights = generator_file(checkpoint, direction, raw_weights=raw_weights)
    config = weights.parent / CONFIG
    if config.is_file():
        data = read_yaml_mapping(config).get("data")
        crop = data.get("crop_size") if isinstance(data, dict) else None
        if isinstance(crop, int) and not isinstance(crop, bool) and crop > 0:
            return crop, f"data.crop_size of {config}"
    default = DataConfig().crop_size
    return default, f"the default {default}: no run config beside {weights.name}"


def check_options(*, size: int | None, full_res: bool, tile: int | None, overlap: int | None, batch_size: int,
                  fmt: str, quality: int) -> None:
    """The option mistakes, as one-line UserErrors, before anything is read."""
    for flag, value in (("--batch-size", batch_size), ("--size", size), ("--tile", tile)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if overlap is not None and overlap < 0:
        raise UserError(f"--overlap must be >= 0, got {overlap}")
    if full_res and size is not None:
        raise UserError("--size and --full-res exclude each other: --full-res keeps every image's own size")
    if not full_res and (tile is not None or overlap is not None):
        raise UserError("--tile and --overlap apply to --full-res only: add --full-res or drop them")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be within 1..100, got {quality}")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose from {', '.join(FORMATS)}")


def translate_source(checkpoint: str | os.PathLike, src: str | os.PathLike, dst: str | os.PathLike, *,
                     direction: str = "AtoB", size: int | None = None, full_res: bool = False,
                     tile: int | None = None, overlap: int | None = None, batch_size: int = 8, fmt: str = "auto",
                     quality: int = JPEG_QUALITY, device=None, bf16: bool = False, raw_weights: bool = False,
                     progress: bool = True, on_skip: SkipHandler | None = None, workers: int = 4) -> TranslateResult:
    """Translate every image of ``src`` into ``dst`` (the module docstring says how); a file that cannot be read
    is reported by ``on_skip(name, why)`` and counted in the result, the others are written."""
    start = time.perf_counter()
    check_options(size=size, full_res=full_res, tile=tile, overlap=overlap, batch_size=batch_size, fmt=fmt,
                  quality=quality)
    if not Path(checkpoint).expanduser().exists():
        raise UserError(f"--checkpoint {checkpoint}: not found (a run or checkpoint directory, an exported "
                        "generator directory, a .safetensors or a junyanz .pth file)")
    inputs = open_inputs(src)
    dst = Path(dst).expanduser()
    planned = plan_outputs(inputs.names, fmt) if inputs.names is not None else None
    kind = check_destination(inputs, dst, planned)

    import torch

    from cyclegan_dist.models.io import describe, generator_file, load_generator

    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    found = generator_file(checkpoint, direction, raw_weights=raw_weights)
    net, mc = load_generator(checkpoint, direction, device, raw_weights=raw_weights)
    sizing, how = choose_sizing(mc.generator, *training_size(checkpoint, direction, raw_weights), size, full_res,
                                tile, overlap)
    result = TranslateResult(checkpoint=str(found), generator=describe(mc), out=str(dst), size=how, device=str(device))

    def skip(name: str, err: BaseException | str, count: int = 1) -> None:
        why = err if isinstance(err, str) else unreadable_reason(err)
        result.skipped.append((name, why))
        result.n_skipped += count
        if on_skip is not None:
            on_skip(name, why)

    def encode(name: str, image: np.ndarray) -> tuple[str, bytes]:
        out_name = planned[name] if planned is not None else output_name(name, fmt)
        return out_name, encode_as(out_name, image, quality)

    writer = ZipOutput(dst) if kind == "zip" else FolderOutput(dst)
    ok = False
    try:
        result.translated = translate_all(inputs, net, sizing, writer, encode, skip, batch_size, bf16, progress,
                                          workers)
        ok = True
    finally:
        writer.close(ok)
    result.seconds = round(time.perf_counter() - start, 1)
    return result
