"""FID / MiFID during training on 2 gloo ranks, with the real Inception, on a tiny shard set; best by MiFID."""

from __future__ import annotations

import json
import math

import pytest

from helpers import TINY, list_complete, read_metrics, require_extra, run_torchrun, tiny_shard_root

require_extra("metrics")


pytestmark = [pytest.mark.xdist_group("eval")]  # one xdist worker runs the group (shared fixtures)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    return tiny_shard_root(tmp_path_factory.mktemp("shards"))


def test_eval_every_n_steps_keeps_the_best_checkpoint(tmp_path, tiny_shards):
    run_dir = tmp_path / "run"
    cache = tmp_path / "cache"
    args = ["train", "--config", "smoke", "--run-dir", run_dir, "--set", f"data.root={tiny_shards}",
            "data.domain_b=monet", *TINY, "train.log_every=2", "train.checkpoint_every=1", "train.keep_last=1",
            "eval.every=2", "eval.num_photos=6", "eval.batch_size=4"]
    out = run_torchrun(2, *args, "train.steps=4", env={"CYCLEGAN_DIST_CACHE": str(cache)})
    evals = [r for r in read_metrics(run_dir) if "eval/mifid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    # what it measured, logged and said once: 6 photos over 2 ranks, all 10 paintings of the shards, at the crop size
    assert all((r["eval/n_generated"], r["eval/n_real"], r["eval/size"]) == (6, 10, 32) for r in evals), evals
    assert out.stderr.count("(in-training FID: 6 photos") == 1 and "against all 10 monet images" in out.stderr
    for r in evals:  # MiFID = FID / (d_thr + 1e-14), d_thr = d below the 0.1 threshold, else 1 (eval/fid.py)
        d = r["eval/memorization_distance"]
        assert math.isfinite(r["eval/fid"]), r
        assert r["eval/mifid"] == pytest.approx(r["eval/fid"] / ((d if d < 0.1 else 1.0) + 1e-14), rel=1e-12), r
    assert evals[0]["eval/fid"] != evals[1]["eval/fid"], "step 4 scored the same generator as step 2"
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["eval/mifid"] == min(r["eval/mifid"] for r in evals)
    names = [p.name for p in list_complete(run_dir)]
    assert best["checkpoint"] in names, "the best checkpoint must survive keep_last pruning"
    assert (run_dir / "checkpoints" / "best").read_text().strip() == best["checkpoint"]  # for people
    assert len(list((cache / "fid-stats").glob("*.npz"))) == 1, "real statistics cached on disk"
