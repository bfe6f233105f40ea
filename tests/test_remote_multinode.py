"""A 2-node SLURM job whose shards come from a web server (issue 23A), on the real 2-node test SLURM
(slurm/testcluster/start.sh --nodes 2; one task per node, ranks on the CPU with gloo).

The test serves a shard root over HTTP (the standard library's ThreadingHTTPServer, counting GETs by client address
and path) on the root namespace's address on the nodes' bridge (start.sh's ``<prefix>-br``, e.g. 10.199.0.1): the
one address of this machine the nodes reach, and nothing outside. ``launcher submit --gpus 2 --gpus-per-node 1``
with ``data.root=http://...`` runs one rank on each node; each node fetches the root into its own cache.

All the test's "nodes" share one file system, where a real cluster gives each node its own disk. As a site's
TaskProlog does (``SLURM_TMPDIR``, a node-local directory), a ``sitecustomize`` on the job's PYTHONPATH sets
``SLURM_TMPDIR=<test dir>/node-tmp/$SLURMD_NODENAME`` in every task, and ``data.cache_dir`` stays at its default
(``$SLURM_TMPDIR/cyclegan-dist-cache``). Checked: the job completes with its ranks on both nodes, each node's
cache holds every shard once, byte-equal to the served root and with the sha256 of ``index.json``, and the server
saw exactly one GET per shard from each node's address.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import socket
import subprocess
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cluster_nodes import bridge_address, two_nodes
from slurm_helpers import task_log, wait_done

from cyclegan_dist.data.remote import CACHE_NAME, mirror_name
from launcher.runs import read_manifest

from helpers import ROOT, TINY, launcher, tiny_shard_root

pytestmark = [pytest.mark.xdist_group("multinode")]  # needs both nodes up: never beside the node-killing tests
TRAIN = [*TINY, "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "eval.at_end=false",
         "train.dist_timeout_min=3"]
JOB_TIMEOUT = 300  # s: a hang guard for one tiny 2-rank job on a loaded 2-core machine, not a speed requirement
NODE_TMP_ENV = "CYCLEGAN_TEST_NODE_TMP"
SITECUSTOMIZE = f'''"""What a site's TaskProlog does (tests/test_remote_multinode.py): SLURM_TMPDIR, per node."""
import os

if os.environ.get("SLURMD_NODENAME") and os.environ.get("{NODE_TMP_ENV}") and not os.environ.get("SLURM_TMPDIR"):
    os.environ["SLURM_TMPDIR"] = os.path.join(os.environ["{NODE_TMP_ENV}"], os.environ["SLURMD_NODENAME"])
    os.makedirs(os.environ["SLURM_TMPDIR"], exist_ok=True)
'''


class CountingHandler(SimpleHTTPRequestHandler):
    """Serves the directory; counts each GET by (client address, path)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.gets[(self.client_address[0], self.path)] += 1
        super().do_GET()


@pytest.fixture(scope="module")
def nodes(request) -> list[str]:
    return two_nodes(request)[:2]


@pytest.fixture(scope="module")
def server(nodes, tmp_path_factory):
    """The shard root served on the bridge address (never any other address of this machine)."""
    address = bridge_address(nodes)
    if address is None:
        pytest.skip("needs the nodes of slurm/testcluster in their network namespaces on one bridge "
                    "(start.sh --nodes 2)")
    served = tmp_path_factory.mktemp("served")
    tiny_shard_root(served / "root")
    httpd = ThreadingHTTPServer((address, 0), functools.partial(CountingHandler, directory=str(served)))
    httpd.daemon_threads = True
    httpd.gets, httpd.lock = Counter(), threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield {"url": f"http://{address}:{httpd.server_address[1]}/root", "root": served / "root", "gets": httpd.gets,
           "address": address}
    httpd.shutdown()
    httpd.server_close()


def tar_gets(gets: Counter, client: str) -> dict[str, int]:
    return {path.rsplit("/", 1)[1]: n for (who, path), n in gets.items() if who == client and path.endswith(".tar")}


def test_two_nodes_each_fetch_the_shards_once_and_train(nodes, server, tmp_path):
    site, node_tmp = tmp_path / "site", tmp_path / "node-tmp"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    url, address = server["url"], server["address"]
    no_proxy = f"{address},127.0.0.1,localhost"
    env = {"PYTHONPATH": f"{ROOT}:{site}", NODE_TMP_ENV: str(node_tmp), "NO_PROXY": no_proxy, "no_proxy": no_proxy}
    root = tmp_path / "runs"
    out = launcher("submit", "--run-root", str(root), "--cluster", "testcluster", "--exp", "smoke", "--gpus", "2",
                   "--gpus-per-node", "1", "--name", "remote", "--set", *TRAIN, f"data.root={url}", cwd=tmp_path,
                   env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 nodes x 1 GPU (world size 2)" in out.stdout, out.stdout
    run_dir = root / "smoke" / "remote"
    try:
        m = wait_done(run_dir, JOB_TIMEOUT)
    finally:
        job = read_manifest(run_dir)["job"]["id"]
        subprocess.run(["scancel", job], check=False, capture_output=True, timeout=60)
    hosts = {}
    for rank in (0, 1):
        found = re.search(rf"\[distenv\] rank {rank}/2 local 0/1 on (\S+) \((\S+)\)", task_log(m, rank))
        assert found, task_log(m, rank)[-3000:]
        hosts[found.group(1)] = found.group(2)
    assert sorted(hosts) == sorted(nodes), hosts  # one rank on each node
    assert (run_dir / "checkpoints" / "step-00000002" / "complete").is_file()

    index = json.loads((server["root"] / "index.json").read_text())
    digests = {s["url"]: s["sha256"] for d in index["domains"].values() for s in d["shards"]}
    assert len(digests) >= 4
    for node, node_address in hosts.items():
        assert socket.gethostbyname(node) == node_address
        assert tar_gets(server["gets"], node_address) == {name: 1 for name in digests}, (node, server["gets"])
        mirror = node_tmp / node / CACHE_NAME / mirror_name(url)
        cached = sorted(p.name for p in mirror.glob("*.tar"))
        assert cached == sorted(digests), (node, cached)
        for name, sha in digests.items():
            data = (mirror / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha and data == (server["root"] / name).read_bytes()
            assert json.loads((mirror / ".verified" / f"{name}.json").read_text())["sha256"] == sha
        assert (mirror / "index.json").read_bytes() == (server["root"] / "index.json").read_bytes()
    assert sorted(p.name for p in node_tmp.iterdir()) == sorted(nodes)  # nothing cached outside the nodes' dirs
