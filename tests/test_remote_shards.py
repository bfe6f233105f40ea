"""Shard roots in object storage and on web servers (``cyclegan_dist/data/remote.py``), against real servers on
loopback that these tests start: moto's ``ThreadedMotoServer`` (an S3 *emulator* speaking the S3 protocol over HTTP)
and the standard library's ``ThreadingHTTPServer`` (counting GETs, optionally slow or dropping connections
mid-file). No traffic leaves 127.0.0.1: the endpoint, dummy credentials and NO_PROXY are set in the tests'
environment only, and the instance-metadata lookup of boto3 is off."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cyclegan_dist.config import load_config
from cyclegan_dist.data import remote
from cyclegan_dist.data.prepare import prepare_shards
from cyclegan_dist.errors import UserError

from helpers import (
    ROOT,
    TINY,
    assert_same_generator_files,
    jpeg_folder,
    latest_checkpoint,
    run_cli,
    run_torchrun,
    tiny_shard_root,
)

LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "AWS_EC2_METADATA_DISABLED": "true"}
TRAIN = [*TINY, "train.steps=2", "train.checkpoint_every=2", "train.log_every=1"]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    for key, value in LOOPBACK.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shard_root(tmp_path_factory.mktemp("remote") / "root")


def tars(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.tar"))


# ------------------------------------------------------------------------------------------ the web server


@dataclass
class Served:
    """A directory served at ``url``; ``gets`` counts requests by path; the next ``drops`` requests for a .tar
    send half the file and close the connection; each .tar request first waits ``delay`` seconds."""

    directory: Path
    url: str = ""
    gets: Counter = field(default_factory=Counter)
    drops: int = 0
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tar_gets(self, prefix: str = "/root/") -> dict[str, int]:
        return {p.removeprefix(prefix): n for p, n in self.gets.items() if p.startswith(prefix) and p.endswith(".tar")}


class CountingHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        served: Served = self.server.served
        tar = self.path.endswith(".tar")
        with served.lock:
            served.gets[self.path] += 1
            drop = tar and served.drops > 0
            served.drops -= drop
        if tar:
            time.sleep(served.delay)
        if not drop:
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])  # then the connection closes: the client sees a cut body
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def http(tmp_path):
    served = Served(tmp_path / "srv")
    served.directory.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(served.directory)))
    server.daemon_threads = True
    server.served = served
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


def serve(served: Served, shards: Path, name: str = "root") -> str:
    shutil.copytree(shards, served.directory / name)
    return f"{served.url}/{name}"


# --------------------------------------------------------------------------------------- the S3 emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """moto's S3 emulator on loopback, and the environment that points boto3 at it (dummy credentials)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = tmp_path_factory.mktemp("aws")  # no ~/.aws of the machine's user is read
    yield {**LOOPBACK, "AWS_ACCESS_KEY_ID": "dummy", "AWS_SECRET_ACCESS_KEY": "dummy",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials")}
    server.stop()


@dataclass
class Bucket:
    url: str  # s3://bucket/root
    name: str
    client: object
    env: dict


@pytest.fixture
def s3(s3_env, monkeypatch) -> Bucket:
    import boto3

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"b{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    return Bucket(f"s3://{name}/root", name, client, s3_env)


def stats(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob("*.tar")}


def same_files(a: Path, b: Path) -> bool:
    return tars(a) == tars(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in [*tars(a), "index.json"])


# ---------------------------------------------------------------------------------------------- training


def test_training_from_http_and_s3_gives_the_weights_of_the_local_root(shards, http, s3, tmp_path):
    url = serve(http, shards)
    remote.upload_root(shards, s3.url, overwrite=False)
    runs = {}
    for name, root in (("local", shards), ("http", url), ("s3", s3.url)):
        runs[name] = tmp_path / name
        run_cli("train", "--config", "smoke", "--run-dir", runs[name], "--set", *TRAIN, f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}", env=s3.env)
    for name in ("http", "s3"):
        assert_same_generator_files(latest_checkpoint(runs["local"]), latest_checkpoint(runs[name]))
    assert http.tar_gets() == {n: 1 for n in tars(shards)}
    assert f"root: {url}" in (runs["http"] / "config.yaml").read_text()  # the URL, as given


def fetch_in_another_process(url: str, cache: Path, max_gb: float | None = None) -> subprocess.Popen:
    code = f"from cyclegan_dist.data.remote import local_root; local_root({url!r}, {str(cache)!r}, {max_gb!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


def test_two_processes_at_once_download_each_shard_once(shards, http, tmp_path):
    url = serve(http, shards)
    http.delay = 0.3  # the second asks while the first is still fetching
    both = [fetch_in_another_process(url, tmp_path / "cache") for _ in range(2)]
    for process in both:
        finish(process)
    assert http.gets["/root/index.json"] == 2 and http.tar_gets() == {n: 1 for n in tars(shards)}
    assert same_files(next(p for p in (tmp_path / "cache").iterdir() if p.name != ".locks"), shards)


def test_two_ranks_train_from_one_download(shards, http, tmp_path):
    url = serve(http, shards)
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", tmp_path / "run", "--set", *TRAIN, f"data.root={url}",
                 f"data.cache_dir={tmp_path / 'cache'}", "train.dist_timeout_min=2")
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"
    assert http.tar_gets() == {n: 1 for n in tars(shards)}
    assert http.gets["/root/index.json"] == 2  # each rank reads the index itself


def test_a_shard_changed_after_prepare_is_named(shards, http, s3, tmp_path):
    url = serve(http, shards)
    changed = http.directory / "root" / "monet-000001.tar"
    data = bytearray(changed.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    changed.write_bytes(bytes(data))
    out = run_cli("train", "--config", "smoke", "--run-dir", tmp_path / "run", "--set", *TRAIN, f"data.root={url}",
                  f"data.cache_dir={tmp_path / 'cache'}", check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: shard " + url + "/monet-000001.tar does not match its sha256" in out.stderr
    assert "changed on the server after `prepare`" in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "cache").glob("*/monet-000001.tar"))  # never renamed into place

    remote.upload_root(shards, s3.url, overwrite=False)
    s3.client.put_object(Bucket=s3.name, Key="root/photo-000001.tar", Body=b"not the shard")
    with pytest.raises(UserError, match=r"photo-000001\.tar is 13 bytes, the index says \d+: it changed on the"):
        remote.local_root(s3.url, tmp_path / "cache-s3")


# ------------------------------------------------------------------------------------------------ the cache


def test_a_warm_cache_fetches_no_shard_again(shards, http, s3, tmp_path):
    url = serve(http, shards)
    first = remote.local_root(url, tmp_path / "cache")
    before = stats(first)
    assert remote.local_root(url, tmp_path / "cache") == first and stats(first) == before
    assert http.tar_gets() == {n: 1 for n in tars(shards)} and http.gets["/root/index.json"] == 2
    assert same_files(first, shards)

    remote.upload_root(shards, s3.url, overwrite=False)
    mirror = remote.local_root(s3.url, tmp_path / "cache")
    before = stats(mirror)
    time.sleep(0.01)  # a re-fetch would show in the mtimes
    assert remote.local_root(s3.url, tmp_path / "cache") == mirror and stats(mirror) == before
    assert same_files(mirror, shards) and mirror != first


def test_a_damaged_cached_shard_is_fetched_again(shards, http, tmp_path):
    url = serve(http, shards)
    mirror = remote.local_root(url, tmp_path / "cache")
    flipped, cut = mirror / "photo-000001.tar", mirror / "monet-000000.tar"
    data = bytearray(flipped.read_bytes())
    data[600] ^= 0xFF
    flipped.write_bytes(bytes(data))
    os.truncate(cut, 1000)
    assert remote.local_root(url, tmp_path / "cache") == mirror
    assert same_files(mirror, shards)
    assert http.tar_gets() == {n: 1 + (n in (flipped.name, cut.name)) for n in tars(shards)}


def test_a_dropped_connection_is_retried_then_named(shards, http, tmp_path, caplog):
    url = serve(http, shards)
    http.drops = 2  # the first shard's first two tries are cut in the middle
    with caplog.at_level(logging.WARNING, "cyclegan_dist.data.remote"):
        mirror = remote.local_root(url, tmp_path / "cache")
    assert same_files(mirror, shards)
    assert http.tar_gets()["photo-000000.tar"] == 3
    assert "fetching " + url + "/photo-000000.tar failed (try 1 of 4)" in caplog.text

    http.drops = 1000  # a server that never sends a whole shard
    with pytest.raises(UserError, match=r"cannot fetch shard .*/root/photo-000000\.tar: 4 tries failed, the last "
                                        r"with: .*(IncompleteRead|ended after|Connection broken)"):
        remote.local_root(url, tmp_path / "cache2")
    left = [p.name for p in (tmp_path / "cache2").glob("*/*photo-000000.tar*")]
    assert left == [], "neither the shard nor its temporary file may stay"


def test_eviction_keeps_the_cache_under_its_limit_and_spares_roots_in_use(shards, http, tmp_path, caplog):
    a, b = serve(http, shards, "a"), serve(http, shards, "b")
    cache = tmp_path / "cache"
    size = sum(p.stat().st_size for p in shards.glob("*.tar"))
    limit_gb = 1.5 * size / 1e9  # one root fits, two do not

    def in_another_process(url: str) -> None:
        finish(fetch_in_another_process(url, cache, limit_gb))

    def mirrors() -> list[str]:
        return sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir() and p.name not in (".locks", "mine"))

    (cache / "mine").mkdir(parents=True)  # not a copy of a root: never evicted, even when it is the oldest
    (cache / "mine" / "notes.txt").write_text("kept")
    os.utime(cache / "mine", (0, 0))

    in_another_process(a)  # that process ended: its copy is no longer in use
    assert mirrors() == ["127.0.0.1_" + a.rsplit(":", 1)[1].replace("/", "_")]
    kept = remote.local_root(b, cache, limit_gb)  # in use by this process from now on
    assert [m.endswith("_b") for m in mirrors()] == [True] and (cache / "mine" / "notes.txt").is_file()
    assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= limit_gb * 1e9
    with caplog.at_level(logging.WARNING, "cyclegan_dist.data.remote"):
        in_another_process(a)  # b is in use here: it stays, over the limit
    assert len(mirrors()) == 2 and same_files(kept, shards)
    with pytest.raises(UserError, match=r"holds 0\.\d+ GB, more than data\.cache_max_gb=0\.0001: raise"):
        remote.local_root(b, cache, 0.0001)


def test_an_index_without_digests_is_checked_by_size(shards, http, tmp_path, caplog):
    url = serve(http, shards)
    index_path = http.directory / "root" / "index.json"
    index = json.loads(index_path.read_text())
    for domain in index["domains"].values():
        for shard in domain["shards"]:
            del shard["bytes"], shard["sha256"]
    index_path.write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, "cyclegan_dist.data.remote"):
        mirror = remote.local_root(url, tmp_path / "cache")
    assert "records no sha256/size per shard" in caplog.text and same_files(mirror, http.directory / "root")
    os.truncate(mirror / "photo-000000.tar", 512)
    remote.local_root(url, tmp_path / "cache")
    assert same_files(mirror, http.directory / "root") and http.tar_gets()["photo-000000.tar"] == 2


def test_a_missing_shard_is_named_without_retries(shards, http, tmp_path):
    url = serve(http, shards)
    (http.directory / "root" / "photo-000002.tar").unlink()
    with pytest.raises(UserError, match=r"cannot fetch .*/root/photo-000002\.tar: HTTP 404"):
        remote.local_root(url, tmp_path / "cache")
    assert http.tar_gets()["photo-000002.tar"] == 1


# ------------------------------------------------------------------------------------- prepare and config


def test_prepare_writes_a_root_to_s3(s3, tmp_path):
    photos, paintings = jpeg_folder(tmp_path / "photos", 4), jpeg_folder(tmp_path / "paintings", 3)
    domains = {"photo": photos, "monet": paintings}
    prepare_shards(domains, s3.url, shard_size=2, progress=False)
    index, _ = remote.read_remote_index(s3.url)
    assert index["domains"]["photo"]["count"] == 4 and len(index["domains"]["photo"]["shards"]) == 2
    mirror = remote.local_root(s3.url, tmp_path / "cache")
    assert tars(mirror) == ["monet-000000.tar", "monet-000001.tar", "photo-000000.tar", "photo-000001.tar"]

    with pytest.raises(UserError, match=f"--out {s3.url} is not empty; nothing was written"):
        prepare_shards(domains, s3.url, shard_size=10, progress=False)
    prepare_shards(domains, s3.url, shard_size=10, progress=False, overwrite=True)
    listed = s3.client.list_objects_v2(Bucket=s3.name, Prefix="root/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["root/index.json", "root/monet-000000.tar", "root/photo-000000.tar"]
    updated = remote.local_root(s3.url, tmp_path / "cache")  # the same copy, brought up to date
    assert updated == mirror and tars(mirror) == ["monet-000000.tar", "photo-000000.tar"]
    with pytest.raises(UserError, match="a web server is read-only here"):
        prepare_shards(domains, "https://127.0.0.1:9/root", progress=False)


def test_the_cli_prepares_to_s3_and_exports_photos_from_it(s3, tmp_path):
    """``prepare --out s3://`` through the CLI, then ``export --photos s3://.../photo-*.tar``: the photos are read
    from the node-local copy, and the zip holds one image per photo."""
    photos, paintings = jpeg_folder(tmp_path / "photos", 5), jpeg_folder(tmp_path / "paintings", 3)
    prepared = run_cli("prepare", "--photos", photos, "--paintings", paintings, "--out", s3.url, "--shard-size", "2",
                       "--no-progress", env=s3.env)
    assert "photo: 5 images in 3 shard(s)" in prepared.stdout and f"wrote {s3.url}/index.json" in prepared.stdout
    run = tmp_path / "run"
    run_cli("train", "--config", "smoke", "--run-dir", run, "--set", *TRAIN, env=s3.env)
    out = tmp_path / "images.zip"
    run_cli("export", "--checkpoint", run, "--photos", f"{s3.url}/photo-*.tar", "--out", out, "--quiet",
            env={**s3.env, "TMPDIR": str(tmp_path)})
    with zipfile.ZipFile(out) as z:
        assert len(z.namelist()) == 5


@pytest.mark.parametrize("root, message", [
    ("https://user:secret@127.0.0.1/shards", "must not carry credentials"),
    ("s3://bucket/shards?X-Amz-Signature=secret", r"takes no '\?query'"),
    ("ftp://127.0.0.1/shards", "unsupported scheme 'ftp'"),
    ("s3:///shards", "no bucket"),
])
def test_a_root_url_with_credentials_or_an_unknown_scheme_is_refused(root, message):
    with pytest.raises(UserError, match=message) as error:
        load_config("smoke", [f"data.root={root}"])
    assert "secret" not in str(error.value)
