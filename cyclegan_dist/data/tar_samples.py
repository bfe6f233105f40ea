"""Random access to the samples of one local tar shard, with the standard library only: ``tarfile`` walks the
headers once (a seek per member, no data read), then a sample's members are read with ``os.pread`` (no shared file
offset, so DataLoader workers and threads can read one open file at once).

A sample is ``{"__key__": key, ".jpg": bytes, ...}``: WebDataset's grouping, where a member's key is its path up to
the first dot of its file name and the rest is the extension.
"""

from __future__ import annotations

import os
import re
import tarfile

MEMBER_NAME = re.compile(r"^((?:.*/)?[^/]*?)(\.[^/]*)$")  # (key, extension), as WebDataset splits a member's name


class TarSamples:
    def __init__(self, path: str | os.PathLike) -> None:
        """Index the tar at ``path``; tarfile.TarError / OSError for a file that is no readable tar."""
        self.path = str(path)
        with tarfile.open(self.path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
        size = os.path.getsize(self.path)
        self.cut = [m.name for m in members if m.offset_data + m.size > size]  # a truncated copy of the shard
        grouped: dict[str, list[tuple[str, int, int]]] = {}
        for m in members:
            if match := MEMBER_NAME.match(m.name):
                key, ext = match.groups()
                grouped.setdefault(key, []).append((ext, m.offset_data, m.size))
        self.samples = list(grouped.items())
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        key, parts = self.samples[index]
        return {"__key__": key, **{ext: os.pread(self._fd, size, offset) for ext, offset, size in parts}}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TarSamples:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
