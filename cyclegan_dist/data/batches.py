"""How a training batch crosses from a DataLoader worker to the training process: as numpy arrays.

A torch tensor leaves a worker through a shared-memory segment of its own, whose file descriptor is passed over
a Unix socket (torch's ``file_descriptor`` sharing strategy), five tensors per batch (two crops, two flip flags,
the skipped count): at batch 1 that costs more than decoding the two JPEGs. A numpy array is pickled through the
worker's pipe instead (a 256 px uint8 crop is 196 KB), far cheaper (the figures: ``benchmarks/RESULTS.md``,
"Reading (CPU, 2026-12-02)", Loader). So workers collate into :class:`ArrayBatch` (``default_collate``'s layout,
numpy leaves) and the training process gets ``default_collate``'s dict of tensors back, zero-copy
(``torch.from_numpy``): from :func:`tensor_batches` or, with ``pin_memory=True``, from the DataLoader's pinning
thread, which calls ``ArrayBatch.pin_memory`` (its hook for custom batch types), so pinning stays off the training
thread.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch


class ArrayBatch:
    """A collated batch with numpy arrays where ``default_collate`` has tensors (lists of strings stay lists)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def tensors(self) -> dict[str, Any]:
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in self.fields.items()}

    def pin_memory(self, device: str | None = None) -> dict[str, Any]:
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.tensors().items()}


def collate_arrays(samples: list[dict[str, Any]]) -> ArrayBatch:
    """``default_collate`` of a list of sample dicts (tensors, bools, ints, strings), with numpy leaves."""
    fields: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            fields[key] = np.stack([v.numpy() for v in values])
        elif isinstance(first, (bool, np.bool_)):
            fields[key] = np.asarray(values, dtype=np.bool_)
        elif isinstance(first, (int, np.integer)):
            fields[key] = np.asarray(values, dtype=np.int64)
        elif isinstance(first, float):
            fields[key] = np.asarray(values, dtype=np.float64)
        else:
            fields[key] = values
    return ArrayBatch(fields)


class TensorBatches:
    """Iterates a DataLoader whose workers collate with :func:`collate_arrays`, yielding dicts of tensors."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield batch.tensors() if isinstance(batch, ArrayBatch) else batch
