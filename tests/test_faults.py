"""Fault injection, for real: each failure a long run meets on a cluster is provoked in real processes, and the
promised behaviour is asserted (the run finishes or stops as stated, in bounded time, with the last good checkpoint
intact and loadable, and an exact resume where it continues). The SLURM ones (a modified tree before a requeue, a
rank killed) are in tests/test_launcher_faults.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from cyclegan_dist.rundir import RunDir

from helpers import (
    ROOT,
    TINY,
    TINY_WANDB,
    events,
    generator_weights,
    latest_checkpoint,
    list_complete,
    read_metrics,
    result_json,
    run_cli,
    run_torchrun,
    warnings_of,
)

# ------------------------------------------------------------------------------------------------ W&B


def test_wandb_online_without_key_or_network_falls_back_to_offline(tmp_path):
    """No API key, no network (W&B's server pointed at a closed loopback port): training is not touched; W&B runs
    offline (syncable later) and the fallback is one named warning and an event."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"WANDB_MODE": "online", "HOME": str(home), "WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"), "NETRC": str(home / ".netrc")}
    run_dir = tmp_path / "run"
    out = run_cli("train", "--json", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY_WANDB, "train.steps=4",
                  "train.log_every=2", env=env)
    result = result_json(out.stdout)
    assert result["status"] == "completed" and result["step"] == 4
    (warning,) = warnings_of(run_dir, "wandb")
    assert "could not start in online mode" in warning["message"] and "falling back to offline" in warning["message"]
    info = json.loads((run_dir / "wandb-run.json").read_text())
    assert info["mode"] == "offline" and list((run_dir / "wandb").glob("offline-run-*")), info
    assert "WANDB_API_KEY" not in (run_dir / "config.yaml").read_text()


# ------------------------------------------------------------------------------------------------ run directories


def test_resume_never_refuses_a_used_run_directory_and_archive_moves_it_aside(tmp_path):
    run_dir = tmp_path / "r1"
    common = ["--config", "smoke", "--run-dir", run_dir]
    run_cli("train", *common, "--set", *TINY, "train.steps=6", "train.checkpoint_every=2", "train.keep_last=2",
            "train.log_every=2")
    before = sorted(p.name for p in list_complete(run_dir))
    assert before == ["step-00000004", "step-00000006"]

    refused = run_cli("train", *common, "--resume", "never", "--set", *TINY, "train.steps=3", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds checkpoints of an earlier run (step-00000004, step-00000006)" in refused.stderr
    assert "--run-dir" in refused.stderr and "--archive" in refused.stderr
    assert sorted(p.name for p in list_complete(run_dir)) == before, "nothing may be deleted"

    run_cli("train", *common, "--resume", "never", "--archive", "--set", *TINY, "train.steps=3",
            "train.checkpoint_every=1", "train.keep_last=1", "train.log_every=1")
    assert [p.name for p in list_complete(run_dir)] == ["step-00000003"]  # pruning kept only this run's newest
    (archived,) = (run_dir / "archive").iterdir()
    assert sorted(p.name for p in RunDir(archived).complete_checkpoints()) == before  # the old run, whole
    assert [r["step"] for r in read_metrics(run_dir) if "loss/G" in r] == [1, 2, 3]  # metrics not mixed
    assert [r["step"] for r in RunDir(archived).metrics() if "loss/G" in r] == [2, 4, 6]


def test_pruning_never_deletes_another_runs_checkpoints(tmp_path):
    """A checkpoint of another run (another run id) in the directory is never pruned, whatever its step."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    run_cli("train", "--config", "smoke", "--run-dir", a, "--set", *TINY, "train.steps=9", "train.checkpoint_every=9")
    run_cli("train", "--config", "smoke", "--run-dir", b, "--set", *TINY, "train.steps=2", "train.checkpoint_every=1",
            "train.keep_last=1")
    shutil.copytree(latest_checkpoint(a), b / "checkpoints" / "step-00000009")  # a foreign, newer checkpoint
    run_cli("train", "--config", "smoke", "--run-dir", b, "--resume", str(b / "checkpoints" / "step-00000002"),
            "--set", *TINY, "train.steps=4", "train.checkpoint_every=1", "train.keep_last=1")
    assert sorted(p.name for p in list_complete(b)) == ["step-00000004", "step-00000009"]


# ------------------------------------------------------------------------------------------------ divergence


def test_diverging_run_warns(tmp_path):
    """train.lr=1000: the losses explode (finite); the run says so in the log, events and the summary."""
    run_dir = tmp_path / "run"
    out = run_cli("train", "--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.lr=1000",
                  "train.steps=24", "train.log_every=2", check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    divergence = warnings_of(run_dir, "divergence") + warnings_of(run_dir, "nonfinite")
    assert divergence, events(run_dir)
    assert "warning" in out.stdout.lower() or "diverg" in out.stderr.lower()


@pytest.mark.parametrize("mode", ["host", "device"])
def test_guard_skips_exactly_the_nonfinite_updates(mode):
    """The guard's step on a real fused Adam, both ways it skips without a loss scaler (the CPU reads the flag on the
    host; CUDA lets the optimizer skip on the device through GradScaler's found_inf contract, run here on the CPU):
    a step with one NaN among the gradients changes no weight and no Adam state (its step counter included); finite
    gradients are applied exactly as by an unguarded optimizer; the count of skipped steps is right; the contract's
    attributes are gone after each step."""
    from cyclegan_dist.train.guard import NonFiniteGuard

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))

    guarded, plain = model(), model()
    opt = torch.optim.Adam(guarded.parameters(), lr=0.1, fused=True)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(mode, torch.device("cpu"))
    grads = [torch.randn(5, *p.shape, generator=torch.Generator().manual_seed(i)) for i, p in
             enumerate(guarded.parameters())]

    for k, poison in enumerate([False, True, False, True, True]):
        weights_before = [p.detach().clone() for p in guarded.parameters()]
        state_before = {i: {n: v.clone() for n, v in s.items()} for i, s in enumerate(opt.state.values())}
        for i, p in enumerate(guarded.parameters()):
            p.grad = grads[i][k].clone()
        if poison:
            next(iter(guarded.parameters())).grad[0, 1] = float("nan")
        guard.step("G", opt)
        assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
        assert all(p.grad is None for p in guarded.parameters())
        if poison:
            assert all(torch.equal(a, p) for a, p in zip(weights_before, guarded.parameters())), k
            assert all(torch.equal(v, s[n]) for i, s in enumerate(opt.state.values())
                       for n, v in state_before.get(i, s).items()), k
        else:  # the same update as an unguarded optimizer given the same (finite) gradients
            for i, p in enumerate(plain.parameters()):
                p.grad = grads[i][k].clone()
            opt_plain.step()
            opt_plain.zero_grad(set_to_none=True)
            assert all(torch.equal(a, b) for a, b in zip(guarded.parameters(), plain.parameters())), k
    assert guard.read().item() == 3
    assert guard.read().item() == 0  # read resets


@pytest.mark.parametrize("policy, skip", [("stop", "host"), ("skip", "host"), ("skip", "device"),
                                          ("rollback", "device")])
def test_nonfinite_steps_are_never_applied(tmp_path, policy, skip):
    """bf16 with an LR large enough to overflow: non-finite losses/gradients appear; no NaN weight is applied or
    written, and train.on_nonfinite decides what happens. ``skip``: where the loop skips (train.nonfinite_skip:
    the host, as on a CPU, or the device, fused Adam's found_inf, as on CUDA)."""
    run_dir = tmp_path / policy
    common = ["--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.mixed_precision=bf16",
              "train.log_every=2", "train.checkpoint_every=4", f"train.on_nonfinite={policy}",
              "train.nonfinite_max_skips=6", "train.nonfinite_max_rollbacks=2", f"train.nonfinite_skip={skip}"]
    run_cli("train", *common, "train.steps=4")  # a good checkpoint first, at the normal LR
    good = generator_weights(latest_checkpoint(run_dir))
    out = run_cli("train", "--json", *common, "train.steps=40", "train.lr=1e20", check=False)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for ckpt in list_complete(run_dir):
        finite = all(torch.isfinite(v).all() for v in generator_weights(ckpt).values())
        assert finite, f"{ckpt} holds non-finite weights"
    messages = [w["message"] for w in warnings_of(run_dir, "nonfinite")]
    assert messages and "non-finite" in messages[0] and "up to step" in messages[0], messages
    result = result_json(out.stdout)
    if policy == "stop":
        assert out.returncode == 1 and result["status"] == "diverged" and "stopping" in messages[-1]
        last = generator_weights(latest_checkpoint(run_dir))
        assert torch.equal(last["model.model.0.weight"], good["model.model.0.weight"])
    elif policy == "skip":
        assert "train.nonfinite_max_skips=6" in messages[0]
        # it ends either after more than 6 skipped steps, or when a finite gradient times this LR overflowed the
        # weights themselves: then the next checkpoint is refused (never written) and the run stops
        ended = "stopping" in messages[-1] or "no checkpoint written" in messages[-1]
        assert result["status"] == "diverged" and ended
    else:
        assert [e["event"] for e in events(run_dir, "rollback")] == ["rollback", "rollback"]
        assert "rolling back to step-00000004 with half the LR" in messages[0]
        assert result["status"] == "diverged" and "stopping" in messages[-1]


# ------------------------------------------------------------------------------------------------ evaluation


def test_fid_failure_on_one_rank_is_contained(tmp_path):
    """The in-training FID fails on rank 1 only (its Inception raises, injected from outside through a
    sitecustomize module): no rank waits alone, the evaluation is a logged missing value and a warning, no 'best'
    checkpoint is chosen from it, and training finishes."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import cyclegan_dist.eval.inception as inception\n"
        "    def broken(self, *args, **kwargs):\n"
        "        raise RuntimeError('injected Inception failure on rank 1')\n"
        "    inception.InceptionFeatures.features_of_batch = broken\n")
    from helpers import tiny_shard_root

    shards = tiny_shard_root(tmp_path / "shards")
    run_dir = tmp_path / "run"
    # a rank left waiting alone in a collective would fail it after train.dist_timeout_min (exit != 0)
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", run_dir, "--set", f"data.root={shards}",
                 "data.domain_b=monet", *TINY, "train.steps=4", "train.log_every=2", "eval.every=2",
                 "eval.num_photos=4", "eval.batch_size=4", "train.dist_timeout_min=3",
                 env={"PYTHONPATH": f"{inject}{os.pathsep}{ROOT}", "CYCLEGAN_DIST_CACHE": str(tmp_path / "cache")})
    failed = warnings_of(run_dir, "eval")
    assert len(failed) == 2 and all("injected Inception failure on rank 1" in w["message"] for w in failed), failed
    evals = [r for r in read_metrics(run_dir) if "eval/mifid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval/mifid"] is None for r in evals)
    assert RunDir(run_dir).best() is None and not (run_dir / "checkpoints" / "best.json").exists()
    assert latest_checkpoint(run_dir).name == "step-00000004"


# ------------------------------------------------------------------------------------------------ the LR curve


def test_extending_a_run_keeps_its_lr_curve_continuous(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", "smoke", "--run-dir", run_dir, "--set", *TINY, "train.log_every=1",
              "train.lr_decay_fraction=0.5"]
    run_cli("train", *common, "train.steps=10")
    run_cli("train", *common, "train.steps=20")  # train longer: the documented way
    lrs = [(r["step"], r["lr"]) for r in read_metrics(run_dir) if "lr" in r]
    steps = [s for s, _ in lrs]
    assert steps == list(range(1, 21)), steps
    values = [lr for _, lr in lrs]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:])), f"the LR went back up: {values}"
    assert values[10] < values[9] * 1.0001 and values[10] > 0, "no jump at the extension"
    (note,) = events(run_dir, "schedule")
    assert "train.steps is now 20" in note["message"] and "continues from factor" in note["message"]


# ------------------------------------------------------------------------------------------------ durable writes


def test_checkpoint_files_are_fsynced_before_the_marker_and_the_rename(tmp_path, monkeypatch):
    """The order of a save, observed on the real function: every file fsynced, then the marker written and
    fsynced, then the rename, then the directory fsynced."""
    import cyclegan_dist.checkpoint as ckpt
    import cyclegan_dist.rundir as rundir

    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        calls.append(("rename", f"{self} -> {target}"))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    run = RunDir(tmp_path / "run")
    ckpt.save_checkpoint(run, 7, rank=0, world_size=1, run_id="r", barrier=lambda: None,
                         shared_state=lambda: {"x": torch.ones(2)}, rank_state={"y": torch.zeros(1)},
                         generators={"G_A.safetensors": {"w": torch.ones(3)}}, config_yaml="a: 1\n")
    tmp = str(run.checkpoints / ".tmp-step-00000007")

    def first_sync(name: str) -> int:  # atomic writes fsync their temporary file (".<name>.<id>.tmp")
        return next(i for i, (op, p) in enumerate(calls) if op == "fsync" and os.path.dirname(p) == tmp
                    and os.path.basename(p) in (name, *(b for b in [os.path.basename(p)] if b.startswith(f".{name}."))))

    marker = first_sync("complete")
    for name in ("rank-00000.pt", "state.pt", "G_A.safetensors", "config.yaml"):
        assert first_sync(name) < marker, (name, calls)
    renames = [i for i, (op, p) in enumerate(calls) if op == "rename" and p.startswith(tmp + " ->")]
    assert len(renames) == 1 and marker < renames[0], calls
    assert ("fsync", str(run.checkpoints)) in calls[renames[0]:], calls
    assert rundir.is_checkpoint(run.checkpoint(7))


# ------------------------------------------------------------------------------------------------ damaged samples


def test_skipped_samples_are_counted_over_workers_and_ranks(tmp_path):
    """Unreadable samples in the shards, 2 ranks with a DataLoader worker each: data/skipped sums every draw that
    was skipped (exactly what the ranks' streams skip, computed here independently), and one warning names the
    first keys."""
    import io

    import numpy as np
    from PIL import Image
    from webdataset import TarWriter

    from cyclegan_dist.data.streams import UnpairedShardDataset

    def jpeg(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(seed).random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
        return buf.getvalue()

    root = tmp_path / "shards"
    root.mkdir()
    domains = {"photo": [("good0", jpeg(0)), ("bad0", b"\x00" * 300), ("good1", jpeg(1)), ("bad1", b"\xff\xd8x"),
                         ("good2", jpeg(2))],
               "monet": [(f"m{i}", jpeg(10 + i)) for i in range(3)] + [("bad2", jpeg(9)[:200])]}
    index = {"version": 1, "domains": {}, "resize": None, "created": None}
    for domain, items in domains.items():
        with TarWriter(str(root / f"{domain}-000000.tar"), encoder=False) as w:
            for key, data in items:
                w.write({"__key__": key, "jpg": data})
        index["domains"][domain] = {"count": len(items), "shards": [{"url": f"{domain}-000000.tar",
                                                                      "nsamples": len(items)}]}
    (root / "index.json").write_text(json.dumps(index))
    run_dir = tmp_path / "run"
    steps, batch = 8, 2
    run_torchrun(2, "train", "--config", "smoke", "--run-dir", run_dir, "--set", f"data.root={root}",
                 "data.domain_b=monet", *TINY, "data.num_workers=1",
                 f"train.steps={steps}", "train.log_every=4", f"train.batch_size={batch}", "data.load_size=36")
    dataset = UnpairedShardDataset(root, "photo", "monet", load_size=36, crop_size=32)
    expected = sum(dataset[g]["skipped"] for g in range(steps * batch * 2))  # the run's stream: 2 ranks x batch
    counted = sum(r["data/skipped"] for r in read_metrics(run_dir) if "data/skipped" in r)
    assert expected > 0 and counted == expected, (counted, expected)
    (warning,) = warnings_of(run_dir, "data")
    assert warning["keys"] and set(warning["keys"]) <= {"bad0", "bad1", "bad2"}, warning
