"""The batched translation of ``translate``: how images meet the generator (:class:`Sizing`: the shorter side
resized, or full resolution in overlapping tiles, :mod:`cyclegan_dist.eval.tiles`) and the loop that reads, decodes,
translates and writes (:func:`translate_all`).

Consecutive images of the same size share a forward pass (at most ``batch_size``); decoding and encoding run in a
thread pool beside it. torch (through the tiles) and tqdm are imported only when used, after the paths
have been checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import ImageFile

from cyclegan_dist.eval.translate_inputs import Inputs
from cyclegan_dist.eval.translate_outputs import FolderOutput, ZipOutput
from cyclegan_dist.images import decode, from_array, resize_shorter

DEFAULT_OVERLAP_FRACTION = 4  # --overlap default: a quarter of the tile


@dataclass(frozen=True)
class Sizing:
    """How images meet the generator: shorter side resized to ``size``, or (``size`` None) full resolution in
    ``tile`` x ``tile`` tiles overlapping by ``overlap``; sides padded to multiples of ``unit`` either way."""

    unit: int
    size: int | None
    tile: int = 0
    overlap: int = 0

    def prepare(self, payload: bytes | np.ndarray) -> np.ndarray:
        img = decode(payload) if isinstance(payload, bytes) else from_array(payload)
        return np.asarray(img if self.size is None else resize_shorter(img, self.size), dtype=np.uint8)

    def translate(self, net, images: list[np.ndarray], batch_size: int, bf16: bool) -> list[np.ndarray]:
        """Images of one shape -> the generator's images of that shape."""
        from cyclegan_dist.eval.tiles import translate_padded, translate_tiled

        if self.size is None:
            return [translate_tiled(net, a, self.tile, self.overlap, self.unit, batch_size, bf16) for a in images]
        return list(translate_padded(net, images, self.unit, bf16))


def choose_sizing(generator: str, trained: int, origin: str, size: int | None, full_res: bool, tile: int | None,
                  overlap: int | None) -> tuple[Sizing, str]:
    """(the Sizing, how it was chosen in words) for a generator trained at ``trained`` px (said by ``origin``)."""
    from cyclegan_dist.eval.formats import size_unit
    from cyclegan_dist.eval.tiles import check_tiling, round_up

    unit = size_unit(generator)
    if not full_res:
        how = f"shorter side {size}" if size is not None else f"shorter side {trained} ({origin})"
        return Sizing(unit, size or trained), how
    tile = round_up(tile or trained, unit)
    overlap = tile // DEFAULT_OVERLAP_FRACTION if overlap is None else overlap
    check_tiling(tile, overlap)
    return Sizing(unit, None, tile, overlap), f"full resolution, {tile}x{tile} tiles overlapping by {overlap} px"


def translate_all(inputs: Inputs, net, sizing: Sizing, writer: FolderOutput | ZipOutput,
                  encode: Callable[[str, np.ndarray], tuple[str, bytes]], skip: Callable[..., None],
                  batch_size: int, bf16: bool, progress: bool, workers: int) -> int:
    """The loop: read in order, decode and resize in threads, translate runs of one shape, encode in threads
    (``encode(name, image) -> (output name, bytes)``), write; an unreadable image goes to ``skip(name, error)``
    (``skip(what, why, count=n)`` for the shard samples the source skipped). Returns the number written."""
    from tqdm.auto import tqdm

    def prepare(item: tuple[str, bytes | np.ndarray | Exception]) -> tuple[str, np.ndarray | Exception]:
        name, payload = item
        try:
            return name, payload if isinstance(payload, Exception) else sizing.prepare(payload)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            return name, e

    # full resolution: a few images decoded at a time (each may be large; its tiles fill the batches)
    per_chunk = batch_size if sizing.size is not None else max(1, workers)
    bar = tqdm(total=inputs.count, desc="translate", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max(1, workers))
    # images.decode sets PIL's global LOAD_TRUNCATED_IMAGES to False around each call and restores it after: with
    # several decoding threads the restores could interleave, so it is False for the whole loop instead.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        items = iter(inputs)
        while chunk := list(itertools.islice(items, per_chunk)):
            good = []
            for name, image in pool.map(prepare, chunk):
                if isinstance(image, Exception):
                    skip(name, image)
                else:
                    good.append((name, image))
            for _, same_shape in itertools.groupby(good, key=lambda pair: pair[1].shape):
                names, images = zip(*same_shape)
                outs = sizing.translate(net, list(images), batch_size, bf16)
                for out_name, data in pool.map(encode, names, outs):
                    writer.add(out_name, data)
            bar.update(len(chunk))
        if inputs.kind == "shards" and inputs.source.n_skipped:
            n = inputs.source.n_skipped
            skip(f"{n} shard sample(s)", "unreadable (the warning above names the first)", count=n)
    finally:
        pool.shutdown(wait=True)
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
        bar.close()
    return writer.count
