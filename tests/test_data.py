"""Data layer on real tars made here: prepare, index, bad inputs, streams (determinism, resume), worker batches."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_dist.cli import build_parser
from cyclegan_dist.data.prepare import prepare_shards
from cyclegan_dist.data.streams import StreamSampler, UnpairedShardDataset, iter_domain, make_loader
from cyclegan_dist.errors import UserError
from cyclegan_dist.images import decode as decode_rgb
from cyclegan_dist.images import resize_shorter

from helpers import jpeg_bytes, jpeg_folder, photo_crop, read_tar


def _digest(root: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("shards")
    prepare_shards(
        {"photo": jpeg_folder(base / "p", 10), "monet": jpeg_folder(base / "m", 5, start=50)},
        base / "root", shard_size=4, progress=False,
    )
    return base / "root"


# ------------------------------------------------------------------------------------------ prepare


@pytest.mark.parametrize("fmt,ext", [("raw", "ppm"), ("jpeg", "jpg")])
def test_prepare_index_layout_and_resize(tmp_path, fmt, ext):
    idx = prepare_shards(
        {"photo": jpeg_folder(tmp_path / "p", 7, sub=True), "monet": jpeg_folder(tmp_path / "m", 3, start=20)},
        tmp_path / "out", shard_size=3, resize=40, progress=False, format=fmt,
    )
    out = tmp_path / "out"
    assert json.loads((out / "index.json").read_text()) == idx
    assert idx["version"] == 1 and idx["resize"] == 40 and idx["created"] and idx["format"] == fmt
    ph = idx["domains"]["photo"]
    assert ph["count"] == 7 and [s["nsamples"] for s in ph["shards"]] == [3, 3, 1]
    assert [s["url"] for s in ph["shards"]] == ["photo-000000.tar", "photo-000001.tar", "photo-000002.tar"]
    assert idx["domains"]["monet"]["count"] == 3 and len(idx["domains"]["monet"]["shards"]) == 1
    # 56x48 with the shorter side resized to 40 -> 47x40
    assert ph["min_size"] == [47, 40] and ph["max_size"] == [47, 40]
    files = read_tar(out / "photo-000000.tar")
    assert list(files) == [f"img000.{ext}", f"img002.{ext}", f"img004.{ext}"]  # sorted walk: top-level files first
    assert f"sub__img001.{ext}" in read_tar(out / "photo-000001.tar")  # keys from relative paths, no dots
    img = decode_rgb(files[f"img000.{ext}"])
    assert img.mode == "RGB" and img.size == (47, 40)
    if fmt == "raw":  # lossless: exactly the resized source
        source = resize_shorter(decode_rgb((tmp_path / "p" / "img000.jpg").read_bytes()), 40)
        assert np.array_equal(np.asarray(img), np.asarray(source))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out", "p"]  # no temp dirs left behind


def test_raw_shards_of_large_unresized_photos_warn(tmp_path, caplog, monkeypatch):
    """Raw shards store every pixel: without --resize, a large set says how big it is and what to do instead."""
    import cyclegan_dist.data.prepare as prepare

    monkeypatch.setattr(prepare, "RAW_WARN_GB", 1e-6)  # ~1 KB: the 56x48 test photos count as "large"
    with caplog.at_level(logging.WARNING):
        prepare_shards({"photo": jpeg_folder(tmp_path / "p", 2)}, tmp_path / "raw", progress=False)
    assert "raw shards hold every pixel of the originals" in caplog.text and "--resize 286" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare_shards({"photo": tmp_path / "p"}, tmp_path / "resized", resize=40, progress=False)
        prepare_shards({"photo": tmp_path / "p"}, tmp_path / "jpeg", format="jpeg", progress=False)
    assert "every pixel" not in caplog.text
    with pytest.raises(UserError, match="--format must be one of raw, jpeg"):
        prepare_shards({"photo": tmp_path / "p"}, tmp_path / "x", format="png", progress=False)


def test_prepare_bad_inputs_skipped_counted_converted(tmp_path, caplog):
    d = tmp_path / "mixed"
    jpeg_folder(d, 3)
    good = jpeg_bytes(photo_crop(9))
    (d / "corrupt.jpg").write_bytes(b"this is not a jpeg" * 20)
    (d / "truncated.jpg").write_bytes(good[: len(good) * 6 // 10])
    (d / ".hidden.jpg").write_bytes(b"junk")  # hidden files are ignored, not counted
    (d / "notes.txt").write_text("not an image")
    Image.fromarray(photo_crop(1)[..., 0], "L").save(d / "gray.png")
    rgba = np.dstack([photo_crop(2), np.full((48, 56), 255, np.uint8)])
    rgba[:, :28, 3] = 0  # left half transparent -> composited over white
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(photo_crop(3)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(photo_crop(4)).convert("P").save(d / "pal.png")
    g16 = (np.linspace(0, 65535, 48 * 56).reshape(48, 56)).astype(np.uint16)
    Image.fromarray(g16).save(d / "g16.png")
    with Image.open(d / "g16.png") as im16:
        assert im16.mode == "I;16"
    Image.fromarray(photo_crop(5, 8, 8)).save(d / "tiny.png")
    with caplog.at_level(logging.WARNING):
        idx = prepare_shards({"photo": d}, tmp_path / "out", shard_size=100, min_size=16, progress=False)
    ph = idx["domains"]["photo"]
    assert (ph["count"], ph["skipped_corrupt"], ph["skipped_small"]) == (3 + 5, 2, 1)
    text = caplog.text
    assert "skipped 2 unreadable" in text and "corrupt.jpg" in text and "truncated.jpg" in text
    assert "skipped 1 image(s) smaller than min_size=16" in text and "first: tiny.png" in text
    files = read_tar(tmp_path / "out" / "photo-000000.tar")
    assert set(files) == ({f"img00{i}.ppm" for i in range(3)}
                          | {"gray.ppm", "rgba.ppm", "cmyk.ppm", "pal.ppm", "g16.ppm"})
    for data in files.values():
        assert Image.open(io.BytesIO(data)).mode == "RGB"
    g = np.asarray(decode_rgb(files["g16.ppm"]), np.float64)
    assert abs(g.mean() - 127.5) < 4 and g[0, 0, 0] < 10 and g[-1, -1, 0] > 245  # rescaled, not clipped
    a = np.asarray(decode_rgb(files["rgba.ppm"]), np.float64)
    assert a[:, :20].mean() > 250  # transparent half is white


def test_prepare_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    good = jpeg_folder(tmp_path / "good", 2)
    with pytest.raises(UserError, match=str(tmp_path / "empty")):
        prepare_shards({"photo": good, "monet": tmp_path / "empty"}, tmp_path / "o1", progress=False)
    with pytest.raises(UserError, match="does not exist"):
        prepare_shards({"photo": tmp_path / "missing"}, tmp_path / "o2", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match=f"{bad}.*no readable image"):
        prepare_shards({"photo": good, "monet": bad}, tmp_path / "o3", progress=False)
    with pytest.raises(UserError, match="domain name"):
        prepare_shards({"pho.to": good}, tmp_path / "o4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty", "good"]  # nothing written


def test_rerun_refuses_and_keeps_old_shards(tmp_path):
    out = tmp_path / "out"
    prepare_shards({"photo": jpeg_folder(tmp_path / "a", 3)}, out, shard_size=2, progress=False)
    before = _digest(out)
    with pytest.raises(UserError, match="--overwrite"):
        prepare_shards({"photo": jpeg_folder(tmp_path / "b", 5, start=10)}, out, shard_size=2, progress=False)
    assert _digest(out) == before
    idx = prepare_shards({"photo": tmp_path / "b"}, out, shard_size=2, progress=False, overwrite=True)
    assert idx["domains"]["photo"]["count"] == 5 and _digest(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]
    other = tmp_path / "notshards"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not a shard root"):
        prepare_shards({"photo": tmp_path / "a"}, other, progress=False, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"


def test_cli_prepare(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args([
        "prepare", "--photos", str(jpeg_folder(tmp_path / "p", 3)),
        "--paintings", str(jpeg_folder(tmp_path / "q", 2)),
        "--out", str(tmp_path / "o"), "--domains", "photo,art", "--shard-size", "2", "--no-progress",
    ])
    assert args.func(args) == 0
    idx = json.loads((tmp_path / "o" / "index.json").read_text())
    assert {k: v["count"] for k, v in idx["domains"].items()} == {"photo": 3, "art": 2}
    assert re.search(r"photo: 3 images in 2 shard\(s\), [0-9.]+ MB \(raw\)", capsys.readouterr().out)
    args = parser.parse_args(["prepare", "--photos", str(tmp_path / "p"), "--paintings", str(tmp_path / "q"),
                              "--out", str(tmp_path / "oj"), "--format", "jpeg", "--no-progress"])
    assert args.func(args) == 0 and "MB (jpeg)" in capsys.readouterr().out
    assert json.loads((tmp_path / "oj" / "index.json").read_text())["format"] == "jpeg"
    args = parser.parse_args(["prepare", "--photos", str(tmp_path / "p"), "--paintings", str(tmp_path / "q"),
                              "--out", str(tmp_path / "oq"), "--quality", "80"])
    with pytest.raises(UserError, match="--quality applies to --format jpeg only"):
        args.func(args)
    assert not (tmp_path / "oq").exists()
    args = parser.parse_args(["prepare", "--photos", str(tmp_path / "p"), "--out", str(tmp_path / "o2")])
    with pytest.raises(UserError, match="--paintings"):
        args.func(args)


# ------------------------------------------------------------------------------- stream: bad roots


def test_stream_root_errors(tmp_path, shard_root):
    with pytest.raises(UserError, match="does not exist.*cyclegan_dist prepare"):
        UnpairedShardDataset(tmp_path / "nope")
    (tmp_path / "noindex").mkdir()
    with pytest.raises(UserError, match="index.json not found.*cyclegan_dist prepare"):
        UnpairedShardDataset(tmp_path / "noindex")
    with pytest.raises(UserError, match="'painting' is not in shard root.*monet, photo"):
        UnpairedShardDataset(shard_root, domain_b="painting")
    with pytest.raises(UserError, match="crop_size"):
        UnpairedShardDataset(shard_root, load_size=32, crop_size=40)
    root = tmp_path / "copy"
    shutil.copytree(shard_root, root)
    (root / "monet-000001.tar").unlink()
    with pytest.raises(UserError, match=f"{root / 'monet-000001.tar'} is listed .* does not exist.*prepare"):
        UnpairedShardDataset(root)


@pytest.mark.parametrize("frac", [0.3, 0.55, 0.95])
def test_truncated_tar_is_a_user_error(tmp_path, shard_root, frac):
    """Chosen behaviour: a tar that is cut short anywhere (missing samples, or a member cut short) is
    rejected up front with a UserError naming the shard; never a silently shorter or wrong stream."""
    root = tmp_path / "copy"
    shutil.copytree(shard_root, root)
    tar = root / "photo-000001.tar"
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1]
        end = last.offset_data + last.size  # data end; beyond is zero padding
    tar.write_bytes(tar.read_bytes()[: int(end * frac)])
    with pytest.raises(UserError, match=f"shard {tar} is damaged.*prepare"):
        UnpairedShardDataset(root, load_size=36, crop_size=32)
    with pytest.raises(UserError, match=f"shard {tar} is damaged"):
        iter_domain(root, "photo", size=32)  # at the call, not at the first next()


def _hand_root(path: Path, photo: list[tuple[str, bytes]], monet: list[tuple[str, bytes]]) -> Path:
    from webdataset import TarWriter

    path.mkdir()
    index = {"version": 1, "domains": {}, "resize": None, "created": None}
    for dom, items in (("photo", photo), ("monet", monet)):
        with TarWriter(str(path / f"{dom}-000000.tar"), encoder=False) as w:
            for key, data in items:
                w.write({"__key__": key, "jpg": data})
        index["domains"][dom] = {"count": len(items), "shards": [{"url": f"{dom}-000000.tar", "nsamples": len(items)}]}
    (path / "index.json").write_text(json.dumps(index))
    return path


def test_corrupt_samples_in_shards_are_skipped_and_counted(tmp_path, caplog):
    good = [(f"good{i}", jpeg_bytes(photo_crop(i))) for i in range(3)]
    trunc = jpeg_bytes(photo_crop(7))
    bad = [("bad0", b"\x00" * 300), ("bad1", trunc[: len(trunc) // 2]), ("bad2", b"\xff\xd8garbage")]
    root = _hand_root(tmp_path / "r", good[:1] + bad[:2] + good[1:] + bad[2:],
                      [(f"m{i}", jpeg_bytes(photo_crop(30 + i))) for i in range(2)])
    ds = UnpairedShardDataset(root, load_size=36, crop_size=32)
    with caplog.at_level(logging.WARNING):
        items = [ds[k] for k in range(40)]
    assert {it["A_key"] for it in items} <= {"good0", "good1", "good2"}
    total = sum(it["skipped"] for it in items)
    assert total > 0 and ds.skipped == total
    assert caplog.text.count("skipping unreadable sample") == 1  # once per process, not per sample
    fresh = UnpairedShardDataset(root, load_size=36, crop_size=32)  # re-draws are deterministic too
    for k in (0, 17, 39):
        assert fresh[k]["A_key"] == items[k]["A_key"] and torch.equal(fresh[k]["A"], items[k]["A"])
    # a domain with no readable sample at all is fatal, naming root and domain
    root2 = _hand_root(tmp_path / "r2", good, bad)
    ds2 = UnpairedShardDataset(root2, load_size=36, crop_size=32, max_tries=20)
    with pytest.raises(UserError, match=f"domain 'monet' of shard root {root2}: 20 random samples"):
        ds2[0]
    # the eval stream skips them too
    keys = [k for k, _ in iter_domain(root, "photo", size=32)]
    assert keys == ["good0", "good1", "good2"]


# ------------------------------------------------------------------------------- stream: semantics


def _same(a: dict, b: dict) -> bool:
    return (a["A_key"] == b["A_key"] and a["B_key"] == b["B_key"] and torch.equal(a["A"], b["A"])
            and torch.equal(a["B"], b["B"]) and a["A_flip"] == b["A_flip"] and a["B_flip"] == b["B_flip"])


def test_item_is_pure_function_of_seed_and_g(shard_root):
    kw = dict(load_size=36, crop_size=32)
    ds1, ds2 = UnpairedShardDataset(shard_root, **kw), UnpairedShardDataset(shard_root, **kw)
    ks = [5, 0, 123_456_789, 1]
    first = {k: ds1[k] for k in ks}
    for k in reversed(ks):  # another instance, another access order: same items
        assert _same(first[k], ds2[k])
    it = ds1[0]
    assert it["A"].shape == (3, 32, 32) and it["B"].shape == (3, 32, 32) and it["A"].dtype == torch.uint8  # IPC: uint8
    assert isinstance(it["A_flip"], bool)
    assert any(ds1[k]["A"].min() < 128 < ds1[k]["A"].max() for k in range(4))  # real image content
    assert len(ds1) == 10
    other_seed = UnpairedShardDataset(shard_root, seed=1, **kw)
    assert not all(_same(ds1[k], other_seed[k]) for k in range(4))
    assert not all(_same(ds1[k], ds1[k + 4]) for k in range(4))
    clone = pickle.loads(pickle.dumps(ds1))  # after use (open readers): what spawn-started workers get
    assert _same(clone[5], first[5])
    # unpaired resampling covers both domains
    keys = [ds1[k] for k in range(60)]
    assert len({x["A_key"] for x in keys}) >= 8 and len({x["B_key"] for x in keys}) == 5


def assert_same_batch(got: dict, expected: dict) -> None:
    """The same collated batch: keys, tensor dtypes and values, and the non-tensor fields (lists of keys)."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor) and got[key].dtype == value.dtype, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def _take(loader, n):
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    del it
    return out


def test_loader_worker_count_invariance_and_exact_resume(shard_root):
    ds = UnpairedShardDataset(shard_root, load_size=36, crop_size=32)
    state = torch.random.get_rng_state()
    b0 = _take(make_loader(ds, 3, num_workers=0), 5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global torch RNG is not consumed
    b2 = _take(make_loader(ds, 3, num_workers=2), 5)
    resumed = _take(make_loader(ds, 3, start_sample=2 * 3, num_workers=0), 3)
    for x, y in zip(b0, b2):  # workers hand numpy over (cyclegan_dist.data.batches): the same dict of tensors
        assert_same_batch(y, x)
    for x, y in zip(b0[2:], resumed):
        assert x["A_key"] == y["A_key"] and x["B_key"] == y["B_key"] and torch.equal(x["A"], y["A"])
    assert b0[0]["A"].shape == (3, 3, 32, 32) and b0[0]["skipped"].tolist() == [0, 0, 0]
    assert b0[1]["A_key"] == [ds[k]["A_key"] for k in (3, 4, 5)]
    s = iter(StreamSampler(7))
    assert [next(s) for _ in range(3)] == [7, 8, 9]


def test_ranks_share_one_global_stream_on_any_world_size(shard_root):
    """A step of W ranks x B takes the next W*B samples of the run's stream, rank r the r-th block: 4 ranks x 2 and
    2 ranks x 4 (and 1 x 8) consume the same samples, step for step, from any start."""
    ds = UnpairedShardDataset(shard_root, load_size=36, crop_size=32)

    def step_keys(world: int, start: int, steps: int) -> list[list[str]]:
        loaders = [iter(make_loader(ds, 8 // world, start_sample=start, rank=r, world=world)) for r in range(world)]
        return [sum((next(it)["A_key"] for it in loaders), []) for _ in range(steps)]

    expected = [[ds[g]["A_key"] for g in range(s * 8, s * 8 + 8)] for s in range(3)]
    assert step_keys(1, 0, 3) == step_keys(2, 0, 3) == step_keys(4, 0, 3) == expected
    assert step_keys(2, 8, 2) == expected[1:]  # resumed after one step, on another world size
    s = iter(StreamSampler(16, rank=1, world=2, batch=3))
    assert [next(s) for _ in range(6)] == [19, 20, 21, 25, 26, 27]
    with pytest.raises(ValueError):
        StreamSampler(0, rank=2, world=2)


def test_iter_domain_every_image_once_across_ranks(shard_root):
    index = json.loads((shard_root / "index.json").read_text())
    all_keys = [k for k, _ in iter_domain(shard_root, "photo", size=24)]
    assert len(all_keys) == index["domains"]["photo"]["count"] == len(set(all_keys))
    _, t = next(iter_domain(shard_root, "photo", size=24))
    assert t.shape == (3, 24, 24) and t.dtype == torch.uint8
    for ws in (2, 3, 5):  # 3 shards: 5 ranks forces the per-sample split
        parts = [[k for k, _ in iter_domain(shard_root, "photo", r, ws, size=24)] for r in range(ws)]
        flat = [k for p in parts for k in p]
        assert sorted(flat) == sorted(all_keys) and len(flat) == len(set(flat))
        assert all(parts)


def test_worker_batches_collate_like_default_collate(shard_root):
    """collate_arrays(...).tensors() is default_collate(...) exactly: keys, dtypes, shapes, values."""
    from torch.utils.data import default_collate

    from cyclegan_dist.data.batches import ArrayBatch, collate_arrays

    ds = UnpairedShardDataset(shard_root, load_size=36, crop_size=32)
    samples = [ds[k] for k in range(4)]
    ours, expected = collate_arrays(samples), default_collate(samples)
    assert isinstance(ours, ArrayBatch) and not any(isinstance(v, torch.Tensor) for v in ours.fields.values())
    assert_same_batch(ours.tensors(), expected)


def test_worker_batches_are_pinned_by_the_dataloaders_pin_thread(shard_root, monkeypatch):
    """With pin_memory the DataLoader's pinning thread calls ``ArrayBatch.pin_memory`` (its hook for custom batch
    types) and hands on a dict of pinned tensors. Pinning needs a GPU: ``Tensor.pin_memory`` is replaced by a
    marker here (the one mock of this file, for what this machine cannot run); the hook and the conversion are real.
    """
    from torch.utils.data._utils.pin_memory import pin_memory

    from cyclegan_dist.data.batches import collate_arrays

    pinned = []

    def fake_pin(self, *args, **kwargs):
        pinned.append(self.shape)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    ds = UnpairedShardDataset(shard_root, load_size=36, crop_size=32)
    out = pin_memory(collate_arrays([ds[0], ds[1]]))
    assert isinstance(out, dict) and out["A"].shape == (2, 3, 32, 32) and out["A"].dtype == torch.uint8
    assert out["A_flip"].dtype == torch.bool and out["A_key"] == [ds[0]["A_key"], ds[1]["A_key"]]
    assert (2, 3, 32, 32) in pinned and len(pinned) == sum(isinstance(v, torch.Tensor) for v in out.values())
