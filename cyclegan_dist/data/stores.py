"""Reading and writing files of a remote shard root: ``s3://bucket/prefix`` through boto3, ``http(s)://`` through
requests, with the transfer rule the node cache (``data/remote.py``) relies on: stream into a sink, hash on the
way, retry a dropped connection, a timeout, a 5xx or a body cut short with exponential backoff (:data:`ATTEMPTS`
tries), then a UserError that names the file.

Clients: boto3 for ``s3://`` (AWS's own SDK, synchronous: the standard credential chain, i.e. ``AWS_*`` variables,
``~/.aws`` files, instance roles, and the endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` or the config file; s3fs would add an async layer and pins of botocore); requests for
``http(s)://`` (timeouts, connection pooling, ``~/.netrc`` and proxy variables, and a body cut short raises).
Credentials are never read, logged or written here: the clients find them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from cyclegan_dist.data.shards import INDEX_NAME, parse_index
from cyclegan_dist.errors import UserError

log = logging.getLogger(__name__)

ATTEMPTS = 4  # tries per file: the first and three retries
BACKOFF_S = 0.5  # the wait before retry i (1, 2, 3): BACKOFF_S * 2 ** (i - 1)
CHUNK = 1 << 20
TIMEOUT_S = (10, 60)  # connect, read (between two bytes)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


# ------------------------------------------------------------------------------------------------ stores


class Retry(Exception):
    """A failure worth another try: a dropped connection, a timeout, a 5xx, a body cut short."""


class S3Store:
    """Objects under ``s3://bucket/prefix`` through boto3 (credentials and endpoint from the environment)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self._client = None

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(connect_timeout=TIMEOUT_S[0], read_timeout=TIMEOUT_S[1],
                                                            retries={"mode": "standard", "max_attempts": 3}))
        return self._client

    def open(self, name: str) -> tuple[int | None, Iterator[bytes]]:
        """``(announced size, body chunks)``; raises Retry or UserError."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
        except Exception as e:  # noqa: BLE001 - sorted by _s3_error
            raise _s3_error(e, f"cannot fetch {self.where(name)}") from None
        return int(obj["ContentLength"]), obj["Body"].iter_chunks(CHUNK)

    def names(self) -> set[str]:
        """The names directly under the prefix."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                         Delimiter="/")
            return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}
        except Exception as e:  # noqa: BLE001
            raise as_user_error(_s3_error(e, f"cannot list {self.url}")) from None

    def put(self, path: Path, name: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self.key(name))  # multipart and retries: s3transfer
        except Exception as e:  # noqa: BLE001
            raise as_user_error(_s3_error(e, f"cannot upload {path} to {self.where(name)}")) from None

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
        except Exception as e:  # noqa: BLE001
            raise as_user_error(_s3_error(e, f"cannot delete {self.where(name)}")) from None


class HttpStore:
    """Files under ``http(s)://host/path`` through requests (``~/.netrc``, proxies from the environment)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._session = None

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def open(self, name: str) -> tuple[int | None, Iterator[bytes]]:
        import requests

        if self._session is None:
            self._session = requests.Session()
        try:  # identity: a Content-Length of the stored bytes, not of a compressed transfer
            r = self._session.get(self.where(name), stream=True, timeout=TIMEOUT_S,
                                  headers={"Accept-Encoding": "identity"})
        except requests.RequestException as e:
            raise Retry(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200:
            r.close()
            why = f"HTTP {r.status_code} {r.reason}"
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise Retry(why)
            raise UserError(f"cannot fetch {self.where(name)}: {why}; check data.root (the URL of a directory "
                            f"written by prepare) and any credentials in ~/.netrc")
        length = r.headers.get("Content-Length", "")
        return (int(length) if length.isdigit() else None), _body(r)


def _body(response) -> Iterator[bytes]:
    with response:
        yield from response.iter_content(CHUNK)


def open_store(url: str) -> S3Store | HttpStore:
    return S3Store(url) if urlsplit(url).scheme.lower() == "s3" else HttpStore(url)


def _s3_error(e: Exception, what: str) -> Exception:
    """A boto3 failure as Retry (worth another try) or UserError (retrying cannot help)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return UserError(f"{what}: no AWS credentials ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                         "AWS_PROFILE / ~/.aws/credentials (another S3 service: also AWS_ENDPOINT_URL_S3)")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "?")
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "Throttling"):
            return Retry(f"{code} (HTTP {status})")
        return UserError(f"{what}: {code} (HTTP {status}); check the URL, and the credentials and endpoint in the "
                         "environment (AWS_PROFILE, AWS_ENDPOINT_URL_S3, ~/.aws)")
    if isinstance(e, (BotoCoreError, OSError)):
        return Retry(f"{type(e).__name__}: {e}")
    return e  # a bug: its traceback is kept


def as_user_error(e: Exception) -> Exception:
    return UserError(f"{e}; check the server and the network, then run again") if isinstance(e, Retry) else e


# ---------------------------------------------------------------------------------------------- transfers


def transfer(store, name: str, sink, what: str) -> tuple[str, int]:
    """Stream ``name`` into the binary file ``sink`` (rewound before each try): ``(sha256, bytes)``. Failures worth
    another try are retried with exponential backoff; after :data:`ATTEMPTS` a UserError names the file."""
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        sink.seek(0)
        sink.truncate()
        h, n = hashlib.sha256(), 0
        try:
            announced, chunks = store.open(name)
            for block in chunks:
                h.update(block)
                sink.write(block)
                n += len(block)
            if announced is not None and n != announced:
                raise Retry(f"the transfer ended after {n} of {announced} bytes")
            return h.hexdigest(), n
        except UserError:
            raise
        except OSError as e:
            if e.errno in DISK_FULL:
                raise UserError(f"cannot write the cached copy of {store.where(name)} ({e.strerror}); free space "
                                "or point data.cache_dir at a larger node-local disk") from None
            last = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - botocore/urllib3 errors while reading a body: a transfer failure
            last = str(e) if isinstance(e, Retry) else f"{type(e).__name__}: {e}"
        log.warning("fetching %s failed (try %d of %d): %s", store.where(name), attempt + 1, ATTEMPTS, last)
    raise UserError(f"cannot fetch {what} {store.where(name)}: {ATTEMPTS} tries failed, the last with: {last}; check "
                    "the server and the network, then run again")


def read_index(store) -> tuple[dict, bytes]:
    buf = io.BytesIO()
    transfer(store, INDEX_NAME, buf, "the shard index")
    raw = buf.getvalue()
    return parse_index(raw, store.where(INDEX_NAME)), raw
