"""Shard root layout and ``index.json`` (no torch import here; images are decoded by ``cyclegan_dist.images``).

A shard root holds, per domain, WebDataset tars ``<domain>-000000.tar, <domain>-000001.tar, ...`` whose
samples are ``{__key__, ppm}`` (raw 8-bit RGB, ``prepare --format raw``, the default) or ``{__key__, jpg}``
(RGB JPEG, ``--format jpeg``), plus ``index.json``::

    {"version": 1,
     "domains": {"photo": {"count": N, "shards": [{"url": "photo-000000.tar", "nsamples": n, "bytes": b,
                                                    "sha256": "..."}, ...],
                           "min_size": [w, h], "max_size": [w, h], "skipped_corrupt": c, "skipped_small": s},
                 ...},
     "resize": 286 | null, "format": "raw" | "jpeg" (absent in roots written before it: jpeg),
     "created": "2024-...Z" | null}

``url`` is relative to the root; ``bytes`` and ``sha256`` (absent in roots written before them) let a remote root's
node-local copy be checked (``data/remote.py``). Everything that reads a root goes through :func:`read_index` and
:func:`shard_list`, which turn a missing/damaged root into a :class:`UserError` that says to run
``python -m cyclegan_dist prepare``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from cyclegan_dist.errors import UserError

INDEX_NAME = "index.json"
INDEX_VERSION = 1
SHARD_FORMATS = {"raw": "ppm", "jpeg": "jpg"}  # prepare --format -> the member each sample stores
PREPARE_HINT = "run `python -m cyclegan_dist prepare --photos DIR --paintings DIR --out ROOT` (or --kaggle DIR)"
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_]+$")


def shard_name(domain: str, i: int) -> str:
    return f"{domain}-{i:06d}.tar"


def check_domain_name(name: str) -> str:
    if not isinstance(name, str) or not _DOMAIN_RE.match(name):
        raise UserError(f"invalid domain name {name!r}: use letters, digits and '_' only (e.g. photo, monet)")
    return name


# ----------------------------------------------------------------------------------------------- index


def read_index(root) -> dict:
    """Load and check ``root/index.json``; every problem is a UserError naming the path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"shard root {root} does not exist (or is not a directory): {PREPARE_HINT}")
    path = root / INDEX_NAME
    if not path.is_file():
        raise UserError(f"{path} not found: {root} is not a shard root; {PREPARE_HINT}")
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path} is not readable ({e}); {PREPARE_HINT} again with --overwrite") from None
    return parse_index(text, path)


def parse_index(text: str | bytes, where) -> dict:
    """The checked index from the text of an ``index.json`` (``where``: its path or URL, for the message)."""
    try:
        index = json.loads(text)
    except ValueError as e:
        raise UserError(f"{where} is not readable JSON ({e}); {PREPARE_HINT} again with --overwrite") from None
    if (not isinstance(index, dict) or index.get("version") != INDEX_VERSION
            or not isinstance(index.get("domains"), dict)):
        raise UserError(f"{where} is not a version-{INDEX_VERSION} shard index; {PREPARE_HINT} again with --overwrite")
    return index


def file_digest(path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def shard_list(root, index: dict, domain: str) -> list[dict]:
    """``[{"url": absolute path, "nsamples": n}, ...]`` of one domain; checks the files exist."""
    root = Path(root).expanduser().resolve()
    doms = index["domains"]
    if domain not in doms:
        raise UserError(
            f"domain {domain!r} is not in shard root {root} (it has: {', '.join(sorted(doms)) or 'none'}); "
            f"set data.domain_a/domain_b to one of those, or {PREPARE_HINT} with --domains"
        )
    entry = doms[domain]
    shards = []
    for s in entry.get("shards", []):
        path = root / s["url"]
        if not path.is_file():
            raise UserError(
                f"shard {path} is listed in {root / INDEX_NAME} but does not exist; the shard root is incomplete: "
                f"{PREPARE_HINT} again with --overwrite"
            )
        shards.append({"url": str(path), "nsamples": int(s["nsamples"])})
    if sum(s["nsamples"] for s in shards) != int(entry.get("count", -1)) or not shards:
        raise UserError(
            f"{root / INDEX_NAME}: domain {domain!r} has count {entry.get('count')} but its shards hold "
            f"{sum(s['nsamples'] for s in shards)} samples; {PREPARE_HINT} again with --overwrite"
        )
    return shards


def verify_shard(url: str, nsamples: int) -> None:
    """Check that a tar is complete: ``nsamples`` samples and no member cut short (truncated copy).

    Walks the tar headers with the standard library's ``tarfile`` (headers only). A damaged tar is a UserError.
    """
    import tarfile

    from cyclegan_dist.data.tar_samples import TarSamples

    why = None
    try:
        samples = TarSamples(url)
    except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError) as e:  # a cut or foreign file
        why = f"unreadable tar ({type(e).__name__}: {e})"
    else:
        with samples:
            if samples.cut:
                why = f"truncated: member {samples.cut[0]} is cut short"
            elif len(samples) != nsamples:
                why = f"has {len(samples)} samples, the index says {nsamples} (truncated or replaced)"
    if why:
        raise UserError(f"shard {url} is damaged: {why}; {PREPARE_HINT} again with --overwrite")


def sanitize_key(name: str) -> str:
    """A WebDataset-safe key from a relative path: no dots (they split key/extension), no slashes."""
    from cyclegan_dist.images import IMAGE_EXTS  # here: the CLI reads this module's constants at start-up

    p = str(name).replace("\\", "/")
    if Path(p).suffix.lower() in IMAGE_EXTS:
        p = p[: -len(Path(p).suffix)]
    parts = [re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in p.split("/") if part]
    return "__".join(parts)
