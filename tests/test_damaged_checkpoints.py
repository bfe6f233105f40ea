"""Hostile input, for real: damaged checkpoint files (cut short, a flipped bit, one rank's file alone) and a disk
that fills up while a checkpoint is written. Each is provoked on the files of a real training run, and the real
CLI is asserted: resume falls back to the newest checkpoint that loads and names the damaged one; export refuses a
generator whose digest changed; a full disk is one UserError and leaves the previous checkpoint intact.

The disk-full test runs in a private mount namespace (``unshare``; as root, or as a user with user namespaces) on a
small tmpfs: a real ENOSPC from the kernel, no monkeypatching. The driver is this file run as a script."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclegan_dist.rundir import RunDir

from helpers import (
    REQUIRE_EXTRAS_ENV,
    ROOT,
    TINY,
    events,
    jpeg_folder,
    latest_checkpoint,
    list_complete,
    result_json,
    run_cli,
    run_torchrun,
    skip_or_fail,
    warnings_of,
)

RUN = [*TINY, "train.checkpoint_every=2", "train.log_every=2"]


def train(run_dir: Path, steps: int, *flags: str, check: bool = True, **kw):
    return run_cli("train", "--json", "--quiet", "--config", "smoke", "--run-dir", run_dir, *flags, "--set", *RUN,
                   f"train.steps={steps}", check=check, **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def flip(path: Path, at: float = 0.5) -> None:
    """One flipped byte in the middle: the size and the container stay valid, the contents do not."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_intact(checkpoint: Path) -> None:
    """Every file has the sha256 and size its digests.json records (computed here, independently), and state.pt
    loads with weights_only=True."""
    record = json.loads((checkpoint / "digests.json").read_text())
    files = sorted(p.name for p in checkpoint.iterdir() if p.name not in ("complete", "digests.json"))
    assert sorted(record["sha256"]) == files, (record, files)
    for name in files:
        assert record["sha256"][name] == sha256(checkpoint / name), name
        assert record["bytes"][name] == (checkpoint / name).stat().st_size, name
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == int(checkpoint.name.split("-")[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One rank, 4 steps: checkpoints step-2 and step-4 (copied for each test)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(run_dir, 4)
    assert [p.name for p in list_complete(run_dir)] == ["step-00000002", "step-00000004"]
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ------------------------------------------------------------------------------------------------ digests


def test_a_checkpoint_records_the_digest_of_every_file_before_its_marker(trained, tmp_path, monkeypatch):
    for checkpoint in list_complete(trained):
        assert_intact(checkpoint)

    import cyclegan_dist.checkpoint as ckpt

    order: list[str] = []
    real_replace, real_rename = os.replace, Path.rename

    def replace(src, dst):  # atomic_write's last step: the file takes its name
        order.append(Path(dst).name)
        return real_replace(src, dst)

    def rename(self, target):  # the checkpoint directory takes its name
        order.append(f"rename {Path(target).name}")
        return real_rename(self, target)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "rename", rename)
    run = RunDir(tmp_path / "r")
    final = ckpt.save_checkpoint(run, 3, rank=0, world_size=1, run_id="r", barrier=lambda: None,
                                 shared_state=lambda: {"x": torch.ones(2)}, rank_state={"y": torch.zeros(1)},
                                 generators={"G_A.safetensors": {"w": torch.ones(3)}}, config_yaml="a: 1\n")
    assert order.index("digests.json") < order.index("complete") < order.index("rename step-00000003"), order
    record = json.loads((final / "digests.json").read_text())
    assert record["sha256"] == {name: sha256(final / name) for name in
                                ("G_A.safetensors", "config.yaml", "rank-00000.pt", "state.pt")}


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("damage, reason", [
    ("cut", r"it is \d+ bytes, \d+ were written \(cut short\); its sha256 is [0-9a-f]{64}, but digests.json "
            r"recorded [0-9a-f]{64}"),
    ("flip", r"its sha256 is [0-9a-f]{64}, but digests.json recorded [0-9a-f]{64}"),
    ("cut, no digests", r"torch.load fails: \w+"),  # a checkpoint of before the digests: the load itself fails
], ids=["cut", "flipped-byte", "cut-without-digests"])
def test_resume_auto_passes_over_a_damaged_checkpoint(run_dir, damage, reason):
    newest, older = list_complete(run_dir)[-1], list_complete(run_dir)[0]
    if "no digests" in damage:
        for checkpoint in list_complete(run_dir):
            (checkpoint / "digests.json").unlink()
    (cut if damage.startswith("cut") else flip)(newest / "state.pt")

    out = train(run_dir, 6)
    result = result_json(out.stdout)
    assert (result["status"], result["start_step"], result["step"]) == ("completed", 2, 6)
    (warning,) = warnings_of(run_dir, "checkpoint")
    damaged = str(newest / "state.pt")
    assert warning["checkpoint"] == str(newest) and list(warning["files"]) == [damaged]
    assert re.search(reason, warning["files"][damaged]), warning
    assert f"resuming from {older} instead" in warning["message"]
    assert f"{damaged}: " in out.stderr and "passed over" in out.stderr  # the log says it too
    (start,) = [e for e in events(run_dir, "train_start") if e["step"] == 2]
    assert start["resumed_from"] == str(older)
    for checkpoint in list_complete(run_dir)[-2:]:  # step-4 written again, then step-6
        assert_intact(checkpoint)
    # the damaged one is set aside, not complete any more: nothing (latest, pruning, rollback) picks it again
    aside = run_dir / "checkpoints" / f"damaged-{newest.name}"
    assert (aside / "state.pt").is_file() and "renamed to damaged-" in warning["message"]
    assert aside not in list_complete(run_dir)


def test_no_checkpoint_that_loads_is_one_user_error_naming_each_file(run_dir):
    older, newest = list_complete(run_dir)
    cut(older / "state.pt", 0.3)
    flip(newest / "rank-00000.pt")
    before = {p.name: sha256(p) for c in (older, newest) for p in c.iterdir()}

    out = train(run_dir, 6, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = [s for s in out.stderr.splitlines() if s.startswith("error:")]
    assert f"no checkpoint in {run_dir / 'checkpoints'} loads" in line
    assert f"{older / 'state.pt'} (it is" in line and f"{newest / 'rank-00000.pt'} (its sha256 is" in line
    assert "--resume never --archive" in line
    assert {p.name: sha256(p) for c in (older, newest) for p in c.iterdir()} == before  # nothing touched

    explicit = train(run_dir, 6, "--resume", str(newest), check=False)
    assert explicit.returncode == 2 and "Traceback" not in explicit.stderr, explicit.stderr[-3000:]
    (line,) = [s for s in explicit.stderr.splitlines() if s.startswith("error:")]
    assert f"--resume {newest}: the checkpoint is damaged: {newest / 'rank-00000.pt'}" in line
    assert "--resume auto" in line


def test_a_rank_file_damaged_alone_moves_every_rank_to_the_same_checkpoint(tmp_path):
    """Rank 1's file of the newest checkpoint is damaged, rank 0's files are intact: both ranks resume from the
    older checkpoint (if rank 0 went on from the newest, the two ranks would run different numbers of steps and
    the run could not complete)."""
    run_dir = tmp_path / "run"
    args = ["train", "--json", "--quiet", "--config", "smoke", "--run-dir", run_dir, "--set", *RUN]
    run_torchrun(2, *args, "train.steps=4", timeout=300)
    older, newest = list_complete(run_dir)
    flip(newest / "rank-00001.pt")

    result = result_json(run_torchrun(2, *args, "train.steps=6", timeout=300).stdout)
    assert (result["status"], result["start_step"], result["step"], result["world_size"]) == ("completed", 2, 6, 2)
    (warning,) = warnings_of(run_dir, "checkpoint")
    assert list(warning["files"]) == [str(newest / "rank-00001.pt")] and "its sha256 is" in warning["message"]
    assert f"resuming from {older} instead" in warning["message"]
    for checkpoint in list_complete(run_dir)[-2:]:
        assert_intact(checkpoint)


# ------------------------------------------------------------------------------------------------ export


def test_export_refuses_a_generator_whose_digest_changed(run_dir, tmp_path):
    newest = latest_checkpoint(run_dir)
    flip(newest / "G_A.safetensors", 0.9)  # in the tensor data: still a valid safetensors file
    assert load_file(newest / "G_A.safetensors")
    expected = json.loads((newest / "digests.json").read_text())["sha256"]["G_A.safetensors"]
    actual = sha256(newest / "G_A.safetensors")
    photos = jpeg_folder(tmp_path / "photos", 3)
    out = tmp_path / "out" / "images.zip"

    for argv in (["--photos", photos, "--out", out], ["--generator-only", tmp_path / "gen"]):
        refused = run_cli("export", "--checkpoint", run_dir, "--quiet", *argv, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        (line,) = [s for s in refused.stderr.splitlines() if s.startswith("error:")]
        assert f"{newest / 'G_A.safetensors'} is damaged" in line
        assert f"its sha256 is {actual}, but digests.json recorded {expected}" in line
        assert f"--checkpoint {list_complete(run_dir)[0]}" in line  # the intact older one is suggested
    assert not out.parent.exists() and not (tmp_path / "gen").exists()  # nothing written

    other = run_cli("export", "--checkpoint", run_dir, "--quiet", "--direction", "BtoA", "--photos", photos,
                    "--out", out)  # G_B is intact: it exports
    assert other.returncode == 0 and out.is_file()
    (newest / "digests.json").unlink()  # a checkpoint of before the digests: no check, no error
    assert run_cli("export", "--checkpoint", run_dir, "--generator-only", tmp_path / "gen").returncode == 0


# ------------------------------------------------------------------------------------------------ disk full

DISK_MB = 64


def test_disk_full_while_checkpointing_is_one_user_error_and_keeps_the_previous_checkpoint(tmp_path):
    """A tmpfs of 64 MiB holds the run directory. After checkpoint step-2, a filler leaves a quarter of a
    checkpoint free; the resumed run fails writing step-4 (a real ENOSPC), then, with the filler removed,
    ``--resume auto`` continues from step-2."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    namespace = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        namespace[1:1] = ["--user", "--map-root-user"]
    if shutil.which("unshare") is None:
        skip_or_fail("no unshare(1) here: cannot mount a small tmpfs to fill", REQUIRE_EXTRAS_ENV)
    proc = subprocess.run([*namespace, sys.executable, __file__, "disk-full", str(disk), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:
        skip_or_fail(f"cannot mount a tmpfs in a private mount namespace here: {proc.stderr.strip()[-500:]}",
                     REQUIRE_EXTRAS_ENV)  # CI (root, util-linux) can: there it must run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = json.loads((out / "runs.json").read_text())
    run_dir = disk / "run"

    full = runs["full"]
    assert full["rc"] == 2 and "Traceback" not in full["stderr"], full["stderr"][-4000:]
    (line,) = [s for s in full["stderr"].splitlines() if s.startswith("error:")]
    assert f"no space left on the device holding the run directory {run_dir} (free now: " in line
    free = int(re.search(r"free now: [\d.]+ MiB = (\d+) bytes", line).group(1))
    needed = int(re.search(r"needs about [\d.]+ MiB = (\d+) bytes, the size of step-00000002", line).group(1))
    assert needed == runs["step2_bytes"] and free < needed, line
    assert "No space left on device" in line and "while writing checkpoint step-00000004" in line
    assert f"the previous checkpoint {run_dir / 'checkpoints' / 'step-00000002'} is intact" in line
    assert "nothing of step-00000004 was kept" in line and line.endswith("then continue with --resume auto")
    assert runs["listing_after_full"] == ["latest", "step-00000002"]  # no .tmp-step-00000004, no step-00000004
    assert_intact(out / "after-full" / "step-00000002")  # what the disk held right after the failure
    end = json.loads(runs["events_after_full"][-1])  # the run says how it ended, in its own record
    assert (end["event"], end["status"], end["step"]) == ("train_end", "failed", 4) and "no space" in end["error"]

    again = runs["after_freeing"]
    assert again["rc"] == 0, again["stderr"][-4000:]
    result = result_json(again["stdout"])
    assert (result["status"], result["start_step"], result["step"]) == ("completed", 2, 4)
    assert runs["listing_at_end"] == ["latest", "step-00000002", "step-00000004"]
    assert_intact(out / "at-end" / "step-00000004")


def _disk_full_driver(disk: Path, out: Path) -> int:
    """In a private mount namespace: mount the tmpfs, run the three trainings, record what a test needs."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(mounted.stderr, file=sys.stderr)
        return 3
    try:
        run_dir, runs = disk / "run", {}
        first = train(run_dir, 4, "--stop-after", "2")
        assert result_json(first.stdout)["status"] == "stopped", first.stdout
        step2 = run_dir / "checkpoints" / "step-00000002"
        runs["step2_bytes"] = sum(p.stat().st_size for p in step2.iterdir())
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - runs["step2_bytes"] // 4))

        full = train(run_dir, 4, check=False)
        runs["full"] = {"rc": full.returncode, "stdout": full.stdout, "stderr": full.stderr}
        runs["listing_after_full"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        runs["events_after_full"] = (run_dir / "events.jsonl").read_text().splitlines()
        shutil.copytree(run_dir / "checkpoints", out / "after-full")

        filler.unlink()
        again = train(run_dir, 4, check=False)
        runs["after_freeing"] = {"rc": again.returncode, "stdout": again.stdout, "stderr": again.stderr}
        runs["listing_at_end"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        shutil.copytree(run_dir / "checkpoints", out / "at-end")
        (out / "runs.json").write_text(json.dumps(runs))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["disk-full"]:
    sys.exit(_disk_full_driver(Path(sys.argv[2]), Path(sys.argv[3])))
