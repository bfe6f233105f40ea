"""Shard roots in object storage (``s3://bucket/prefix``) or on a web server (``https://host/path``).

Training reads shards from local files (``data/streams.py``), so a remote root is copied first: :func:`local_root`
reads the root's ``index.json`` from the server, fetches the shards it names into a node-local cache and returns that
copy, read exactly like a root ``prepare`` wrote on disk (the same index bytes and shards: the same batches).

The cache (``data.cache_dir``; default ``$SLURM_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, + ``/cyclegan-dist-cache``)
holds one directory per root URL (a "mirror"), shared by the ranks of a node:

* one download per node: the ranks take ``.locks/<mirror>.fetch`` in turn (``fcntl.flock``, node-local); the first
  fetches, the others find every shard present and checked;
* a shard is streamed into a hidden temporary name, hashed on the way, and renamed into place only when its size and
  ``sha256`` match ``index.json`` (``prepare`` records both; an older index is checked by size only, with a
  warning). A dropped connection, a timeout or a 5xx is retried with exponential backoff (``data/stores.py``),
  then a UserError names the shard and the last error; a shard that differs from the index (changed on the server
  after ``prepare``) is a UserError at once;
* a checked shard gets a stamp (``.verified/<name>.json``: digest, size, inode, mtime, ctime); a cached file whose
  stat no longer matches its stamp (truncated, rewritten) is hashed again, and fetched again when damaged;
* a size limit (``data.cache_max_gb``): before fetching, the least recently used other mirrors are deleted until
  this root fits; a mirror some process uses (``.locks/<mirror>.use``, held shared for that process's life) is
  never deleted.

Clients (``data/stores.py``): boto3 for ``s3://``, requests for ``http(s)://``. Credentials are never read, logged
or written here: the clients find them; a URL carrying any is refused (``config.check_remote_url``), so
``config.yaml`` records only the URL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from cyclegan_dist.config import REMOTE_SCHEMES, check_remote_url
from cyclegan_dist.data.shards import INDEX_NAME, PREPARE_HINT, file_digest
from cyclegan_dist.data.stores import S3Store, open_store, read_index, transfer
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import atomic_write

log = logging.getLogger(__name__)

CACHE_NAME = "cyclegan-dist-cache"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # what `prepare` writes; nothing that leaves the mirror
_LOCKS, _STAMPS = ".locks", ".verified"
_MIRROR_NAME = re.compile(r"-[0-9a-f]{12}$")  # mirror_name's suffix
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_IN_USE: dict[str, int] = {}  # .use lock path -> the descriptor holding it shared for this process's life


def is_remote(root) -> bool:
    """Whether ``root`` is an ``s3://`` or ``http(s)://`` URL (anything else is a local path)."""
    return isinstance(root, str) and urlsplit(root).scheme.lower() in REMOTE_SCHEMES


def default_cache_dir() -> Path:
    base = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / CACHE_NAME


def read_remote_index(root: str) -> tuple[dict, bytes]:
    """``(checked index, its bytes)`` of the remote shard root ``root``."""
    check_remote_url("data.root", root)
    return read_index(open_store(root))


def _shard_entries(index: dict, where: str) -> list[dict]:
    """Every shard of the index once: ``{"url", "bytes", "sha256"}`` (the last two None in older indexes)."""
    out = {}
    for domain in index["domains"].values():
        for s in domain.get("shards", []) if isinstance(domain, dict) else ():
            name = s.get("url") if isinstance(s, dict) else None
            if not isinstance(name, str) or not _FILE_NAME.match(name) or name == INDEX_NAME:
                raise UserError(f"{where} names a shard {name!r} that is not a plain file name next to it; "
                                f"{PREPARE_HINT} again with --overwrite")
            out[name] = {"url": name, "bytes": s.get("bytes"), "sha256": s.get("sha256")}
    return list(out.values())


# ----------------------------------------------------------------------------------------- the node cache


def mirror_name(url: str) -> str:
    """The cache directory of a root URL: readable, and unique by a hash of the whole URL."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.split("://", 1)[-1]).strip("._")[:60]
    return f"{readable}-{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}"


def local_root(root: str, cache_dir=None, max_gb: float | None = None) -> Path:
    """The node-local copy of the remote shard root ``root`` (fetched and checked as needed), a local shard root."""
    check_remote_url("data.root", root)
    store = open_store(root)
    index, raw = read_index(store)
    index_url = store.where(INDEX_NAME)
    entries = _shard_entries(index, index_url)
    if any(not e["sha256"] or e["bytes"] is None for e in entries):
        log.warning("%s records no sha256/size per shard (written before they were recorded): the cached copies are "
                    "checked by the size the server announces only; %s again to record them", index_url, PREPARE_HINT)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        (cache / _LOCKS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.cache_dir {cache} cannot be created ({e.strerror}); point data.cache_dir at a "
                        "writable node-local directory") from None
    name = mirror_name(root)
    mirror = cache / name
    _hold_in_use(cache / _LOCKS / f"{name}.use")
    if max_gb:
        _make_room(cache, name, sum(e["bytes"] or 0 for e in entries), int(max_gb * 1e9), root)
    with _locked(cache / _LOCKS / f"{name}.fetch"):
        (mirror / _STAMPS).mkdir(parents=True, exist_ok=True)
        todo = [e for e in entries if not _cached(mirror, e)]
        if todo:
            log.info("fetching %d shard(s) of %s into %s", len(todo), root, mirror)
        for entry in todo:
            _fetch(store, entry, mirror, index_url)
        _drop_stale(mirror, {e["url"] for e in entries})
        path = mirror / INDEX_NAME
        if not path.is_file() or path.read_bytes() != raw:
            atomic_write(path, raw)  # last: the copy is complete once its index is there
        os.utime(mirror)  # its last use, for the eviction order
    return mirror


def local_source(source: str, cache_dir=None, max_gb: float | None = None) -> str:
    """``export --photos``: shards of a remote root (``s3://bucket/root/photo-*.tar``) as the same glob in the
    node-local copy of that root; a local source is returned unchanged."""
    if not is_remote(source):
        return source
    root, _, pattern = source.rstrip("/").rpartition("/")
    if "://" not in root or not pattern.endswith(".tar"):
        raise UserError(f"--photos {source}: a remote source must be shards of a prepared root, e.g. "
                        "s3://bucket/root/photo-*.tar")
    return str(local_root(root, cache_dir, max_gb) / pattern)


def _stamp(path: Path, sha256: str | None) -> dict:
    st = path.stat()
    return {"sha256": sha256, "bytes": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _cached(mirror: Path, entry: dict) -> bool:
    """Whether the cached copy of a shard is present and checked (re-hashed when its stat changed since)."""
    path, stamp_path = mirror / entry["url"], mirror / _STAMPS / f"{entry['url']}.json"
    if not path.is_file():
        return False
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = None
    fresh = _stamp(path, stamp.get("sha256") if isinstance(stamp, dict) else None)
    sizes_agree = entry["bytes"] is None or fresh["bytes"] == entry["bytes"]
    if stamp == fresh and sizes_agree and (not entry["sha256"] or stamp["sha256"] == entry["sha256"]):
        return True
    if entry["sha256"] and sizes_agree and file_digest(path)[0] == entry["sha256"]:
        atomic_write(stamp_path, json.dumps(_stamp(path, entry["sha256"])))
        return True
    log.warning("the cached shard %s is damaged or out of date (its size or sha256 differs from %s): fetching it "
                "again", path, INDEX_NAME)
    path.unlink()
    return False


def _fetch(store, entry: dict, mirror: Path, index_url: str) -> None:
    name, dest = entry["url"], mirror / entry["url"]
    tmp = mirror / f".{name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            digest, size = transfer(store, name, f, "shard")
            f.flush()
            os.fsync(f.fileno())
        changed = f"it changed on the server after `prepare` wrote {index_url}; {PREPARE_HINT} again with --overwrite"
        if entry["bytes"] is not None and size != entry["bytes"]:
            raise UserError(f"shard {store.where(name)} is {size} bytes, the index says {entry['bytes']}: {changed}")
        if entry["sha256"] and digest != entry["sha256"]:
            raise UserError(f"shard {store.where(name)} does not match its sha256 in the index "
                            f"({digest[:16]}... != {entry['sha256'][:16]}...): {changed}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write(mirror / _STAMPS / f"{name}.json", json.dumps(_stamp(dest, entry["sha256"])))


def _drop_stale(mirror: Path, names: set[str]) -> None:
    """Remove shards the index no longer names, their stamps, and what a killed fetch left behind."""
    for p in mirror.iterdir():
        if p.is_file() and (p.name.startswith(".") or (p.name not in names and p.name != INDEX_NAME)):
            p.unlink(missing_ok=True)
    for p in (mirror / _STAMPS).iterdir():
        if p.name.removesuffix(".json") not in names:
            p.unlink(missing_ok=True)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _make_room(cache: Path, keep: str, need: int, limit: int, root: str) -> None:
    """Delete the least recently used mirrors no process uses until ``need`` more bytes fit under ``limit``."""
    if need > limit:
        raise UserError(f"shard root {root} holds {need / 1e9:.2f} GB, more than data.cache_max_gb="
                        f"{limit / 1e9:g}: raise data.cache_max_gb, or point data.cache_dir at a larger disk")
    with _locked(cache / _LOCKS / "evict"):
        others = [p for p in cache.iterdir() if p.name != keep and _is_mirror(p)]
        others.sort(key=lambda p: p.stat().st_mtime)
        sizes = {p.name: _tree_bytes(p) for p in others}
        total = need + sum(sizes.values())
        for p in others:
            if total <= limit:
                break
            if _evict(cache, p):
                total -= sizes[p.name]
                log.info("evicted %s (%.2f GB, the least recently used) from the shard cache", p, sizes[p.name] / 1e9)
        if total > limit:
            log.warning("the shard cache %s will hold %.2f GB, over data.cache_max_gb=%g: the other roots in it are in "
                        "use", cache, total / 1e9, limit / 1e9)


def _is_mirror(path: Path) -> bool:
    """A directory this module made (never anything else a shared data.cache_dir may hold)."""
    return _MIRROR_NAME.search(path.name) is not None and (path / _STAMPS).is_dir()


def _evict(cache: Path, mirror: Path) -> bool:
    fd = os.open(cache / _LOCKS / f"{mirror.name}.use", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) or e.errno in _UNSUPPORTED:
                return False  # in use (or no locks here: never delete what may be in use)
            raise
        shutil.rmtree(mirror, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _flock(fd: int, op: int, path: Path) -> None:
    try:
        fcntl.flock(fd, op)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        log.warning("file locks are not supported where %s lives (%s): the ranks of a node may fetch the same shard "
                    "twice; put data.cache_dir on a node-local disk", path.parent, e.strerror)


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(fd, fcntl.LOCK_EX, path)
        yield
    finally:
        os.close(fd)  # drops the lock


def _hold_in_use(path: Path) -> None:
    """Mark a mirror in use by this process until it exits (a shared lock that eviction cannot take)."""
    key = str(path)
    if key not in _IN_USE:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _flock(fd, fcntl.LOCK_SH, path)
        _IN_USE[key] = fd


# ------------------------------------------------------------------------------------- prepare --out s3://


def check_remote_out(url: str, overwrite: bool) -> None:
    """Refuse ``prepare --out URL`` before anything is written: not S3, not empty without --overwrite, not a root."""
    check_remote_url("--out", url)
    store = open_store(url)
    if not isinstance(store, S3Store):
        raise UserError(f"--out {url}: prepare writes a directory or s3://bucket/prefix; a web server is read-only "
                        "here (prepare into a directory, then publish it)")
    names = store.names()
    if names and not overwrite:
        raise UserError(f"--out {url} is not empty; nothing was written. Pass --overwrite to replace it, or choose "
                        "another --out")
    if names and INDEX_NAME not in names:
        raise UserError(f"--out {url} is not empty and is not a shard root (no {INDEX_NAME}); refusing to replace it "
                        "even with --overwrite: choose an empty or new prefix")


def upload_root(local: Path, url: str, overwrite: bool) -> None:
    """Upload the shard root ``local`` to ``s3://bucket/prefix``: the shards, then ``index.json`` (a reader sees no
    index rather than an old index over new shards), then old shards the new index does not name are deleted."""
    check_remote_out(url, overwrite)  # again: something may have appeared meanwhile
    store = S3Store(url)
    old = store.names()
    if INDEX_NAME in old:
        store.delete(INDEX_NAME)
    new = sorted(p.name for p in Path(local).iterdir() if p.is_file() and p.name != INDEX_NAME)
    for name in new:
        store.put(Path(local) / name, name)
    store.put(Path(local) / INDEX_NAME, INDEX_NAME)
    for name in sorted(old - set(new) - {INDEX_NAME}):
        if name.endswith(".tar"):
            store.delete(name)


def readable_root(data) -> Path:
    """Where a run's shards (``data``: its DataConfig) are read on this node: the embedded demo set, the node-local
    copy of an ``s3://`` / ``https://`` root, or the directory itself."""
    if data.root is None:
        from cyclegan_dist.data.demo import demo_root

        return demo_root(data)
    if is_remote(data.root):
        return local_root(data.root, data.cache_dir, data.cache_max_gb)
    return Path(data.root)
