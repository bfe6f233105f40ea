"""The embedded demo data set: deterministic, cached, unpaired, with a low identity-PSNR baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cyclegan_dist.data import demo
from cyclegan_dist.data.demo import DEMO_VERSION, _band, demo_eval_pairs, ensure_demo_shards
from cyclegan_dist.data.streams import UnpairedShardDataset, make_loader
from cyclegan_dist.data.styles import colour
from cyclegan_dist.data.transforms import psnr
from cyclegan_dist.errors import UserError
from cyclegan_dist.images import decode as decode_rgb

SMALL = dict(size=32, n_train=40, n_test=8)


def _images(root, domain):
    import tarfile

    out = {}
    index = json.loads((root / "index.json").read_text())
    for s in index["domains"][domain]["shards"]:
        with tarfile.open(root / s["url"]) as tf:
            for m in tf.getmembers():
                out[m.name[:-4]] = np.asarray(decode_rgb(tf.extractfile(m).read()))
    return out


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    return ensure_demo_shards(tmp_path_factory.mktemp("demo") / "d64")


def test_demo_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLEGAN_DIST_CACHE", str(tmp_path / "cache"))
    a = ensure_demo_shards(**SMALL)
    assert a == tmp_path / "cache" / f"demo-32-v{DEMO_VERSION}-40-20-8"
    b = ensure_demo_shards(tmp_path / "elsewhere" / "b", **SMALL)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert files == ["eval-pairs.npy", "index.json", "painting-000000.tar", "photo-000000.tar"]
    for name in files:  # byte-identical builds, index included
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    kw = dict(domain_b="painting", load_size=36, crop_size=32)
    x, y = UnpairedShardDataset(a, **kw)[0], UnpairedShardDataset(b, **kw)[0]
    assert x["A_key"] == y["A_key"] and torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
    # a second call reuses the cache: nothing is built, no file is rewritten or replaced
    def stats():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in [a, *a.iterdir()]}

    before = stats()
    monkeypatch.setattr(demo, "_build", lambda *args: pytest.fail(f"the cached demo set was rebuilt: {args}"))
    assert ensure_demo_shards(**SMALL) == a
    assert stats() == before
    # no temp dirs left
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"demo-32-v{DEMO_VERSION}-40-20-8"]


def test_demo_default_counts_and_psnr_baseline(default_demo):
    index = json.loads((default_demo / "index.json").read_text())
    assert index["created"] is None and index["demo"]["size"] == 64
    ph, pa = index["domains"]["photo"], index["domains"]["painting"]
    assert (ph["count"], pa["count"]) == (600, 300)
    assert (len(ph["shards"]), len(pa["shards"])) == (3, 2) and ph["min_size"] == ph["max_size"] == [64, 64]
    x, t = demo_eval_pairs(default_demo)
    assert x.shape == t.shape == (64, 3, 64, 64) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    base = psnr(x, t)
    assert 12.0 < base < 17.0, base
    # stored targets are exactly T(stored inputs), the default style's colour transform
    xu = np.round((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8)
    tu = np.round((t.permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(np.stack([colour(c) for c in xu[:8]]), tu[:8])
    # learnable: a global affine colour map alone gets far above the identity baseline
    X = np.c_[x.permute(0, 2, 3, 1).reshape(-1, 3).numpy(), np.ones(x.numel() // 3)]
    Y = t.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    fit = X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    assert psnr(torch.from_numpy(fit), torch.from_numpy(Y)) > base + 8


def test_demo_domains_are_unpaired_and_disjoint(tmp_path):
    for shape in [(512, 512), (300, 451), (872, 1000), (1411, 1411), (600, 512)]:
        for i in range(3):
            boxes = [_band(shape, w, i) for w in range(3)]
            spans = sorted((b[2], b[3]) if shape[1] > shape[0] else (b[0], b[1]) for b in boxes)
            assert spans[0][0] == 0 and spans[-1][1] == max(shape)
            assert all(spans[j][1] == spans[j + 1][0] for j in range(2))  # adjacent, not overlapping
    root = ensure_demo_shards(tmp_path / "d", **SMALL)
    photos = np.stack(list(_images(root, "photo").values())).astype(np.float64)
    paintings = np.stack(list(_images(root, "painting").values())).astype(np.float64)
    painted = np.stack([colour(p.astype(np.uint8)) for p in photos]).astype(np.float64)
    rms = np.sqrt(((painted[:, None] - paintings[None]) ** 2).mean(axis=(2, 3, 4)))  # photo x painting
    near = (rms.min(axis=0) < 4).mean()  # paintings that are T(some training photo) up to JPEG noise
    assert near < 0.1, near


def test_demo_loader_and_errors(default_demo, tmp_path):
    ds = UnpairedShardDataset(default_demo, domain_b="painting", load_size=72, crop_size=64)
    batch = next(iter(make_loader(ds, 4)))
    assert batch["A"].shape == batch["B"].shape == (4, 3, 64, 64)
    assert batch["A_key"][0].startswith("photo_") and batch["B_key"][0].startswith("painting_")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a demo shard root"):
        ensure_demo_shards(tmp_path / "busy", **SMALL)
    with pytest.raises(ValueError, match="uint8"):
        colour(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(UserError, match="eval-pairs.npy"):
        demo_eval_pairs(tmp_path / "busy")
