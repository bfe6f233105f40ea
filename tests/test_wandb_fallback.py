"""W&B with an API key but no network (issue "hostile input", item 10): the online attempt fails, and the offline
fallback must still leave a run that ``wandb sync`` can upload later, under the same run id, with the key nowhere in
the run directory. W&B's server is a closed loopback port (http://127.0.0.1:9): nothing leaves the machine.

Before the fix the failed online ``wandb.init`` left its run declared in W&B's service process, and the offline retry
with the same id was refused (``run ID ... is in use``): no W&B run at all, nothing to sync."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cyclegan_dist.config import WandbConfig
from cyclegan_dist.rundir import RunDir
from cyclegan_dist.tracking import INIT_TIMEOUT_S, Tracker

from helpers import TINY_WANDB, result_json, run_cli, warnings_of

CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens there, connections are refused at once
RUN = [*TINY_WANDB, "train.log_every=2"]


def offline_env(home: Path, key: str) -> dict[str, str]:
    """Online mode, a syntactically valid key, W&B's server at a closed loopback port, a temp HOME (no netrc, no
    W&B settings of the machine's user), and a short init timeout (W&B's own variable) to keep the test quick."""
    home.mkdir(exist_ok=True)
    return {"WANDB_MODE": "online", "WANDB_API_KEY": key, "WANDB_BASE_URL": CLOSED_PORT, "HOME": str(home),
            "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"), "NETRC": str(home / ".netrc"),
            "WANDB_INIT_TIMEOUT": "5"}


def first_json(stdout: str) -> tuple[dict, str]:
    """The result a ``train --json`` run printed, and whatever followed it on stdout."""
    result, end = json.JSONDecoder().raw_decode(stdout, stdout.index("{"))
    return result, stdout[end:]


def files_holding(root: Path, secret: bytes) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(root):  # symlinks (wandb/latest-run) are not followed: their targets are here
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                found.append(path)
    return found


def wandb_sync_dry_run(*paths: Path, cwd: Path, env: dict[str, str]) -> str:
    """``wandb sync --dry-run``: lists what it would upload, reads no key and opens no connection."""
    out = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *map(str, paths)], cwd=cwd,
                         capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_online_with_a_key_but_no_network_leaves_a_syncable_offline_run(tmp_path):
    key = secrets.token_hex(20)  # 40 hex characters, like a real key; unique, so the grep below cannot be fooled
    env = offline_env(tmp_path / "home", key)
    run_dir = tmp_path / "run"
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN, "train.steps=4",
                  env=env)
    result, after = first_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 4

    warnings = warnings_of(run_dir, "wandb")  # one named warning: the fallback, not a second failure of the retry
    assert len(warnings) == 1, [w["message"] for w in warnings]
    warning = warnings[0]
    assert "could not start in online mode" in warning["message"], warning
    assert "falling back to offline mode" in warning["message"], warning
    assert "in use" not in warning["message"]
    assert [w["message"] for w in result["warnings"] if w["service"] == "wandb"] == [warning["message"]]
    assert after.strip() == "", f"--json output followed by {after!r}"  # was W&B's exit hook on a half-started run

    wandb_id = result["wandb_id"]
    info = json.loads((run_dir / "wandb-run.json").read_text())
    assert info["mode"] == "offline" and info["id"] == wandb_id and info["url"] is None, info
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{wandb_id}")
    assert Path(info["dir"]) == offline
    (log_file,) = offline.glob("*.wandb")
    assert log_file.name == f"run-{wandb_id}.wandb" and log_file.stat().st_size > 0

    assert files_holding(run_dir, key.encode()) == [], "the API key was written into the run directory"

    # Syncable without network: wandb 0.31 has no public reader of .wandb files, so ask `wandb sync` itself which
    # runs it would upload (--dry-run: no upload, no key needed): the offline run, by path and from the run dir.
    sync_env = {k: v for k, v in env.items() if k != "WANDB_API_KEY"}
    listed = wandb_sync_dry_run(offline, cwd=run_dir, env=sync_env)
    assert "Would sync 1 run(s)" in listed and f"{offline.name}/{log_file.name}" in listed, listed
    listed = wandb_sync_dry_run(cwd=run_dir, env=sync_env)  # what a bare `wandb sync` in the run dir uploads
    assert "Would sync 1 run(s)" in listed and log_file.name in listed, listed

    # A resume (a requeue) falls back the same way and continues the same W&B run: a second offline run, same id.
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN, "train.steps=6",
                  env=env)
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 6 and result["start_step"] == 4
    assert result["wandb_id"] == wandb_id
    assert json.loads((run_dir / "wandb-run.json").read_text())["id"] == wandb_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb"))) == 2
    assert len(warnings_of(run_dir, "wandb")) == 2 and "in use" not in warnings_of(run_dir, "wandb")[-1]["message"]
    assert files_holding(run_dir, key.encode()) == []


class FakeWandb:
    """wandb.init fails online (as without network) and works offline; records the calls, in order."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.calls = tmp_path, []

    def init(self, *, mode, id, settings, **_):
        self.calls.append(("init", mode, id, settings))
        if mode == "online":
            raise RuntimeError("Failed to get resume status: context deadline exceeded")
        return SimpleNamespace(define_metric=lambda *a, **k: None, url=None, finish=lambda: None, log=lambda d: None,
                               dir=str(self.tmp_path / "wandb" / f"offline-run-x-{id}" / "files"))

    def teardown(self, exit_code=None):
        self.calls.append(("teardown",))


@pytest.mark.parametrize("env_timeout", [None, "7"])
def test_failed_online_start_is_torn_down_and_its_wait_bounded(tmp_path, monkeypatch, env_timeout):
    """In process, W&B faked: the failed online start is torn down before the offline retry, which keeps the id;
    the online wait is bounded by INIT_TIMEOUT_S unless WANDB_INIT_TIMEOUT says otherwise (then W&B reads it)."""
    import wandb

    fake = FakeWandb(tmp_path)
    monkeypatch.setattr(wandb, "init", fake.init)
    monkeypatch.setattr(wandb, "teardown", fake.teardown)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if env_timeout is None:
        monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", env_timeout)
    tracker = Tracker(RunDir(tmp_path), WandbConfig(mode="online"), experiment="e", config={}, wandb_id="abc12345",
                      enabled=True, run_name="n")
    tracker.finish()

    assert [c[:3] for c in fake.calls] == [("init", "online", "abc12345"), ("teardown",),
                                           ("init", "offline", "abc12345")]
    settings = fake.calls[0][3]
    if env_timeout is None:
        assert settings.init_timeout == INIT_TIMEOUT_S <= 60
    else:
        assert "init_timeout" not in settings.model_fields_set  # left to W&B, which reads WANDB_INIT_TIMEOUT
    assert tracker.mode == "offline" and len(tracker.warnings) == 1
    assert json.loads((tmp_path / "wandb-run.json").read_text())["id"] == "abc12345"
