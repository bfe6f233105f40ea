"""Unpaired, rank-distinct, resampled training streams over a shard root, with exact resume.

Why item k is a pure function of (seed, rank, k)
------------------------------------------------
``UnpairedShardDataset[k]`` for the k-th sample of rank r draws

* ``index_a`` uniformly over domain A's count from ``SeedSequence([seed, r, k, 0, PICK, attempt])``,
* ``index_b`` independently over domain B's count from ``SeedSequence([seed, r, k, 1, PICK, attempt])``
  (unpaired, resampled with replacement: the domains have very different sizes, 7,038 vs 300),
* crop offsets and flip of each image from ``SeedSequence([seed, r, k, 0|1, AUG])``,

and reads the two JPEGs by index through ``wids.ShardListDataset`` (random access into the tars).
Nothing depends on what was read before, so:

* **exact resume in O(1)**: after ``step`` steps of batch size B the stream continues at
  ``k = step * B`` (``make_loader(..., start_sample=step * B)``); no replay, no RNG state to save;
* **independent of the worker count**: ``k`` itself is the split between DataLoader workers (the sampler
  hands out k = start, start+1, ...; the DataLoader keeps batch order), so 0, 2 or 8 workers give the
  same batches and workers need no seeding;
* **different ranks see different streams**: the rank is in every seed.

A sample whose bytes do not decode is skipped by re-drawing with ``attempt + 1`` (still a pure
function of k) and counted: ``item["skipped"]`` (summed per batch, so it is exact with any number of
workers) and ``dataset.skipped`` (this process). One warning per process. A domain where
``max_tries`` draws in a row fail is a UserError. The torch/numpy/python global RNGs are never used.

``iter_domain`` is the sequential counterpart for evaluation/export: every image of a domain exactly
once across ranks, in shard order.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cyclegan_dist.data.shards import PREPARE_HINT, decode_rgb, read_index, shard_list, verify_shard
from cyclegan_dist.data.transforms import eval_transform, train_transform
from cyclegan_dist.errors import UserError

log = logging.getLogger(__name__)
_PICK, _AUG = 0, 1


def item_rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(e) for e in entropy])))


def image_bytes(sample: dict) -> bytes:
    """The encoded image of a sample (wids names members ``.jpg``, webdataset ``jpg``; png/webp accepted)."""
    for ext in ("jpg", "jpeg", "png", "webp"):
        for k in (ext, "." + ext):
            if k in sample:
                v = sample[k]
                return v.getvalue() if hasattr(v, "getvalue") else bytes(v)
    raise KeyError(f"sample {sample.get('__key__')!r} has no jpg/jpeg/png/webp member")


def _open_reader(shards: list[dict]):
    """A ``wids.ShardListDataset`` over local tars: no decoding, no copy into a cache dir, no lock files."""
    from wids import ShardListDataset
    from wids.wids import IndexedTarSamples, LRUShards

    class LocalShards(LRUShards):
        def get_shard(self, url):
            self.accesses += 1
            if url not in self.lru:
                try:
                    itf = IndexedTarSamples(path=url)
                except Exception as e:
                    raise UserError(f"cannot open shard {url} ({type(e).__name__}: {e}); {PREPARE_HINT}") from None
                self.lru[url] = itf
                self.misses += 1
            return self.lru[url]

    lru = max(1, min(len(shards), 128))
    with contextlib.redirect_stderr(io.StringIO()):  # wids prints a summary line on construction
        ds = ShardListDataset(shards, transformations=[], localname=str, lru_size=lru)
    ds.cache = LocalShards(lru, localname=str)
    return ds


class UnpairedShardDataset(Dataset):
    """Map-style: ``ds[k] -> {"A", "B": 3xCxC in [-1, 1], "A_key", "B_key": str, "skipped": int}`` for any k >= 0.

    ``len(ds)`` is max(count A, count B), the reference's notion of an epoch; any k >= 0 is valid.
    """

    def __init__(self, root, domain_a="photo", domain_b="monet", load_size=286, crop_size=256, flip=True,
                 seed=0, rank=0, *, max_tries: int = 50, verify: bool = True):
        if int(crop_size) > int(load_size):
            raise UserError(f"data.crop_size ({crop_size}) must be <= data.load_size ({load_size})")
        if int(seed) < 0 or int(rank) < 0:
            raise UserError(f"seed ({seed}) and rank ({rank}) must be >= 0")
        index = read_index(root)
        self.root = Path(root).expanduser().resolve()
        self.domains = (domain_a, domain_b)
        self.shards = [shard_list(self.root, index, d) for d in self.domains]
        if verify:
            for s in itertools.chain(*self.shards):
                verify_shard(s["url"], s["nsamples"])
        self.counts = [sum(s["nsamples"] for s in shards) for shards in self.shards]
        self.load_size, self.crop_size, self.flip = int(load_size), int(crop_size), bool(flip)
        self.seed, self.rank, self.max_tries = int(seed), int(rank), int(max_tries)
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
            self._readers = [_open_reader(s) for s in self.shards]
        return self._readers[which]

    def _draw(self, which: int, k: int):
        last = None
        for attempt in range(self.max_tries):
            idx = int(item_rng(self.seed, self.rank, k, which, _PICK, attempt).integers(self.counts[which]))
            sample = self._reader(which)[idx]  # UserError if the shard cannot be opened
            try:
                return decode_rgb(image_bytes(sample)), sample["__key__"], attempt
            except Exception as e:
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
        out, skipped = {}, 0
        for which, name in ((0, "A"), (1, "B")):
            img, key, n = self._draw(which, k)
            rng = item_rng(self.seed, self.rank, k, which, _AUG)
            out[name] = train_transform(img, rng, self.load_size, self.crop_size, self.flip)
            out[name + "_key"] = key
            skipped += n
        out["skipped"] = skipped
        return out


class InfiniteSampler(Sampler):
    """Yields k = start, start + 1, ... forever (start = step * batch_size when resuming)."""

    def __init__(self, start: int = 0):
        if int(start) < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = int(start)

    def __iter__(self):
        return itertools.count(self.start)


def make_loader(dataset, batch_size: int, start_sample: int = 0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Infinite DataLoader from sample ``start_sample``; identical batches for any ``num_workers``.

    Batches are consecutive: batch i holds samples start + i*B ... start + (i+1)*B - 1. Uses its own
    torch.Generator so creating an iterator does not consume the global torch RNG.
    """
    gen = torch.Generator()
    gen.manual_seed(int(getattr(dataset, "seed", 0)))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=InfiniteSampler(start_sample),
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
        generator=gen,
    )


# ------------------------------------------------------------------------------- sequential, for eval


def _split_shards(src, rank: int, world_size: int):
    yield from itertools.islice(src, rank, None, world_size)


def _all_shards(src):
    yield from src


def _closing_open(sources):
    """Replaces webdataset's StreamingOpen (which leaves every tar file open until GC): each local tar is
    closed as soon as the next one is requested or the iteration stops."""
    for src in sources:
        url = src["url"] if isinstance(src, dict) else src
        with open(url, "rb") as stream:
            yield {"url": url, "stream": stream, "local_path": url}


def _raise_user_error(exn, where: str):
    raise UserError(f"cannot read the shards of {where} ({type(exn).__name__}: {exn}); {PREPARE_HINT} again") from exn


def iter_domain(root, domain: str, rank: int = 0, world_size: int = 1, size: int = 256):
    """Yield ``(key, 3xSxS tensor in [-1, 1])`` for this rank's share of ``domain``, in shard order.

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
    import webdataset as wds
    from webdataset.cache import StreamingOpen

    ds = wds.WebDataset(
        [s["url"] for s in shards],
        shardshuffle=False,
        nodesplitter=functools.partial(_split_shards, rank=rank, world_size=world_size) if by_shard else _all_shards,
        workersplitter=None,
        empty_check=False,
        seed=0,  # never draw a seed from python's global RNG
        handler=functools.partial(_raise_user_error, where=where),
    )
    ds.pipeline = [_closing_open if isinstance(stage, StreamingOpen) else stage for stage in ds.pipeline]
    skipped = []
    it = iter(ds)
    try:
        for j, sample in enumerate(it):
            if not by_shard and j % world_size != rank:
                continue
            try:
                img = decode_rgb(image_bytes(sample))
            except Exception:
                skipped.append(sample.get("__key__"))
                continue
            yield sample["__key__"], eval_transform(img, size)
    finally:  # also when the caller stops early: close the open tar stream now, not at GC
        getattr(it, "close", lambda: None)()
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), first: %s", where, len(skipped), ", ".join(map(str, skipped[:5])))
