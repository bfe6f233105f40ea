"""Shared fixtures.

``slurm_cluster``: the test SLURM (slurm/testcluster), started once per session if it is not up: with
``--nodes $CYCLEGAN_SLURM_NODES`` (default 2, as in CI: two nodes in their own network namespaces). Tests that
need it skip only when ``sbatch`` is missing and CYCLEGAN_REQUIRE_SLURM is unset; with CYCLEGAN_REQUIRE_SLURM=1
(CI) a missing or dead cluster is a failure. A cluster that is up already is used as it is (one node or
several); tests that need two nodes (tests/test_multinode.py) skip on one, or fail under CYCLEGAN_REQUIRE_SLURM.
The SLURM client tools read ``$SLURM_CONF`` (default /etc/slurm/slurm.conf): point it at another cluster's
config to run the tests there (slurm/testcluster/README.md, "Two clusters on one machine").
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cluster_nodes import START, slurm_nodes


def _node_up() -> bool:
    return bool(slurm_nodes())


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A running test SLURM: started with slurm/testcluster/start.sh when it is not up (root only)."""
    if _node_up():
        return
    if os.geteuid() != 0 or not START.is_file():
        pytest.fail(f"SLURM is not running and cannot be started here (needs root and {START})")
    nodes = os.environ.get("CYCLEGAN_SLURM_NODES") or "2"
    proc = subprocess.run(["bash", str(START), "--nodes", nodes], check=False, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0 or not _node_up():
        pytest.fail(f"bash {START} --nodes {nodes} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                    f"{proc.stderr[-4000:]}")
