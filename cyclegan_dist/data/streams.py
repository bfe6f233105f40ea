"""Unpaired, resampled training streams over a shard root: one global stream per run, with exact resume on any
number of ranks.

Why sample g is a pure function of (seed, g)
--------------------------------------------
``UnpairedShardDataset[g]`` for the g-th sample of the run draws

* ``index_a`` uniformly over domain A's count from ``SeedSequence([seed, g, 0, PICK, attempt])``,
* ``index_b`` independently over domain B's count from ``SeedSequence([seed, g, 1, PICK, attempt])``
  (unpaired, resampled with replacement: the domains have very different sizes, 7,038 vs 300),
* crop offsets and flip of each image from ``SeedSequence([seed, g, 0|1, AUG])``,

and reads the two images by index through ``data.tar_samples.TarSamples`` (random access into the tars; raw
PPM members need no decoding, JPEG ones are decoded by ``transforms.decode_chw``).
Nothing depends on what was read before, or on which rank reads it, so:

* **one stream for the whole run**: a step of W ranks x B images consumes the next W*B samples; rank r takes
  the r-th block of B (:class:`StreamSampler`). After ``n`` images the run continues at g = n, on any number
  of ranks: 4 ranks x 2 and 2 ranks x 4 consume the same samples, step for step;
* **exact resume in O(1)**: no replay, no RNG state to save (``make_loader(..., start_sample=n)``);
* **independent of the worker count**: ``g`` itself is the split between DataLoader workers (the sampler
  hands out this rank's g in order; the DataLoader keeps batch order), so 0, 2 or 8 workers give the
  same batches and workers need no seeding.

A sample whose bytes do not decode is skipped by re-drawing with ``attempt + 1`` (still a pure
function of g) and counted: ``item["skipped"]`` and ``item["skipped_keys"]`` (in every batch, so the loop
counts them exactly with any number of workers and ranks) and ``dataset.skipped`` (this process). One warning
per process. A domain where ``max_tries`` draws in a row fail is a UserError. The torch/numpy/python global RNGs
are never used.

``iter_domain`` is the sequential counterpart for evaluation/export: every image of a domain exactly
once across ranks, in shard order.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cyclegan_dist.data.batches import TensorBatches, collate_arrays
from cyclegan_dist.data.shards import PREPARE_HINT, read_index, shard_list, verify_shard
from cyclegan_dist.data.tar_samples import TarSamples
from cyclegan_dist.data.transforms import decode_chw, eval_image, train_crop
from cyclegan_dist.errors import UserError
from cyclegan_dist.images import decode, iter_tar_samples, sample_image_bytes

log = logging.getLogger(__name__)
_PICK, _AUG = 0, 1


def item_rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(e) for e in entropy])))


class ShardReader:
    """Random access by global index into one domain's tars (``TarSamples``: an index of the members per tar,
    opened on first use, read with ``os.pread``; no lock files)."""

    def __init__(self, shards: list[dict]):
        self.urls = [s["url"] for s in shards]
        self.starts = np.cumsum([0] + [s["nsamples"] for s in shards])
        self._open: dict[int, object] = {}

    def __getitem__(self, index: int) -> dict:
        i = int(np.searchsorted(self.starts, index, side="right")) - 1
        if i not in self._open:
            try:
                self._open[i] = TarSamples(self.urls[i])
            except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError) as e:  # a damaged tar
                raise UserError(f"cannot open shard {self.urls[i]} ({type(e).__name__}: {e}); {PREPARE_HINT}") from None
        sample = dict(self._open[i][int(index - self.starts[i])])
        sample["__shard__"] = self.urls[i]
        return sample

    def close(self) -> None:
        for tar in self._open.values():
            tar.close()
        self._open = {}


class UnpairedShardDataset(Dataset):
    """Map-style: ``ds[k] -> {"A", "B": uint8 3xCxC, "A_flip", "B_flip": bool, "A_key", "B_key": str,
    "skipped": int}`` for any k >= 0 (``transforms.normalize`` flips and scales a batch to [-1, 1] on the device).

    ``len(ds)`` is max(count A, count B), the reference's notion of an epoch; any k >= 0 is valid.
    """

    def __init__(self, root, domain_a="photo", domain_b="monet", load_size=286, crop_size=256, flip=True,
                 seed=0, *, max_tries: int = 50, verify: bool = True):
        if int(crop_size) > int(load_size):
            raise UserError(f"data.crop_size ({crop_size}) must be <= data.load_size ({load_size})")
        if int(seed) < 0:
            raise UserError(f"seed ({seed}) must be >= 0")
        index = read_index(root)
        self.root = Path(root).expanduser().resolve()
        self.domains = (domain_a, domain_b)
        self.shards = [shard_list(self.root, index, d) for d in self.domains]
        if verify:
            for s in itertools.chain(*self.shards):
                verify_shard(s["url"], s["nsamples"])
        self.counts = [sum(s["nsamples"] for s in shards) for shards in self.shards]
        self.load_size, self.crop_size, self.flip = int(load_size), int(crop_size), bool(flip)
        self.seed, self.max_tries = int(seed), int(max_tries)
        self.skipped = 0
        self._readers = None
        self._warned = False

    def __len__(self) -> int:
        return max(self.counts)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = None  # open mmaps don't travel to workers; each process opens its own
        return state

    def close(self) -> None:
        """Close the open shard files of this process (they reopen on the next access)."""
        readers, self._readers = self._readers, None
        for r in readers or ():
            r.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _reader(self, which: int):
        if self._readers is None:
            self._readers = [ShardReader(s) for s in self.shards]
        return self._readers[which]

    def _draw(self, which: int, k: int):
        last, bad = None, []
        for attempt in range(self.max_tries):
            idx = int(item_rng(self.seed, k, which, _PICK, attempt).integers(self.counts[which]))
            sample = self._reader(which)[idx]  # UserError if the shard cannot be opened
            try:
                return decode_chw(sample_image_bytes(sample)), sample["__key__"], bad
            except Exception as e:
                bad.append(str(sample.get("__key__")))
                last = f"{sample.get('__key__')} in {sample.get('__shard__')} ({type(e).__name__}: {e})"
                self.skipped += 1
                if not self._warned:
                    self._warned = True
                    log.warning("skipping unreadable sample %s; further ones in this process are only counted "
                                "(batch['skipped'])", last)
        raise UserError(
            f"domain {self.domains[which]!r} of shard root {self.root}: {self.max_tries} random samples in a row "
            f"were unreadable (last: {last}); the shards are damaged: {PREPARE_HINT} again with --overwrite"
        )

    def __getitem__(self, k) -> dict:
        k = int(k)
        if k < 0:
            raise IndexError(f"sample index must be >= 0, got {k}")
        out, skipped = {}, []
        for which, name in ((0, "A"), (1, "B")):
            img, key, bad = self._draw(which, k)
            rng = item_rng(self.seed, k, which, _AUG)
            out[name], out[name + "_flip"] = train_crop(img, rng, self.load_size, self.crop_size, self.flip)
            out[name + "_key"] = key
            skipped += bad
        out["skipped"] = len(skipped)
        out["skipped_keys"] = ",".join(skipped)  # a string: batches of them collate into a list
        return out


class StreamSampler(Sampler):
    """This rank's share of the run's stream, from global sample ``start``: in each step rank r of ``world`` takes
    ``batch`` consecutive samples, the r-th block of the step's ``world * batch``; the next step starts after all
    of them. One rank: start, start + 1, ... forever."""

    def __init__(self, start: int = 0, *, rank: int = 0, world: int = 1, batch: int = 1):
        if int(start) < 0 or not 0 <= int(rank) < int(world) or int(batch) < 1:
            raise ValueError(f"need start >= 0, 0 <= rank < world, batch >= 1; got start={start} rank={rank} "
                             f"world={world} batch={batch}")
        self.start, self.rank, self.world, self.batch = int(start), int(rank), int(world), int(batch)

    def __iter__(self):
        step_start = self.start
        while True:
            first = step_start + self.rank * self.batch
            yield from range(first, first + self.batch)
            step_start += self.world * self.batch


def make_loader(dataset, batch_size: int, start_sample: int = 0, num_workers: int = 0,
                pin_memory: bool = False, *, rank: int = 0, world: int = 1) -> Iterable[dict]:
    """Infinite stream of this rank's collated batches from global sample ``start_sample``; identical batches for
    any ``num_workers`` (dicts of tensors, as ``default_collate`` makes them).

    Batch i of rank r holds samples start + (i*world + r)*B ... start + (i*world + r + 1)*B - 1. Uses its own
    torch.Generator so creating an iterator does not consume the global torch RNG. Workers send their batches
    as numpy arrays (:mod:`cyclegan_dist.data.batches`: a tensor's shared-memory hand-over costs more than the
    decoding at small batches).
    """
    gen = torch.Generator()
    gen.manual_seed(int(getattr(dataset, "seed", 0)))
    workers = int(num_workers)
    loader = DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=StreamSampler(start_sample, rank=rank, world=world, batch=batch_size),
        num_workers=workers,
        collate_fn=collate_arrays if workers > 0 else None,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=gen,
    )
    return TensorBatches(loader) if workers > 0 else loader


# ------------------------------------------------------------------------------- sequential, for eval


def iter_domain(root, domain: str, rank: int = 0, world_size: int = 1, size: int = 256):
    """Yield ``(key, uint8 3xSxS tensor)`` for this rank's share of ``domain``, in shard order.

    Every image is yielded exactly once across ranks 0..world_size-1: shards are split by rank
    (shard i -> rank i % world_size); with fewer shards than ranks, samples are split instead
    (sample j -> rank j % world_size). Unreadable samples are skipped (one warning with the count).
    Iterate in the main process (no DataLoader workers: that would duplicate samples).
    A missing/damaged root raises UserError at the call, before iterating.
    """
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    index = read_index(root)
    shards = shard_list(root, index, domain)
    by_shard = len(shards) >= world_size
    for s in shards[rank::world_size] if by_shard else shards:
        verify_shard(s["url"], s["nsamples"])
    where = f"domain {domain!r} in {Path(root).expanduser()}"
    return _iter_samples(shards, rank, world_size, size, by_shard, where)  # checks above run at call time


def _iter_samples(shards, rank, world_size, size, by_shard, where):
    def on_error(exn: Exception) -> bool:
        raise UserError(f"cannot read the shards of {where} ({type(exn).__name__}: {exn}); {PREPARE_HINT} again")

    skipped = []
    samples = iter_tar_samples([s["url"] for s in shards], on_error, *((rank, world_size) if by_shard else (0, 1)))
    for j, sample in enumerate(samples):
        if not by_shard and j % world_size != rank:
            continue
        try:
            img = decode(sample_image_bytes(sample))
        except Exception:  # noqa: BLE001 - undecodable: skipped and counted
            skipped.append(sample.get("__key__"))
            continue
        yield sample["__key__"], eval_image(img, size)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", where, len(skipped),
                    ", ".join(map(str, skipped[:5])))
