"""Pixels: uint8 crops and their [-1, 1] tensors (the reference's torchvision pipeline), the loader's fast decoder
against PIL's, and raw shards against the reference's resize-and-crop."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan_dist.data.prepare import prepare_shards
from cyclegan_dist.data.streams import UnpairedShardDataset
from cyclegan_dist.images import decode as decode_rgb
from cyclegan_dist.images import encode_raw

from helpers import jpeg_bytes, photo_crop


def test_transforms_roundtrip_and_reference_semantics():
    """Workers ship uint8 crops and a flip flag; ``normalize`` (on the device) gives exactly what the reference's
    torchvision pipeline (Resize bicubic, crop, flip, ToTensor, Normalize(0.5, 0.5)) gives."""
    import torchvision.transforms as T

    from cyclegan_dist.data.transforms import eval_image, normalize, to_uint8, train_crop, uint8_chw

    a = photo_crop(3, 40, 50)
    img = Image.fromarray(a)
    assert np.array_equal(to_uint8(normalize(uint8_chw(img)[None]))[0], a)
    assert to_uint8(normalize(uint8_chw(img)[None])).shape == (1, 40, 50, 3)
    (t1, f1), (t2, f2) = (train_crop(img, np.random.default_rng(3), load_size=36, crop_size=32) for _ in range(2))
    assert torch.equal(t1, t2) and f1 == f2 and t1.shape == (3, 32, 32) and t1.dtype == torch.uint8
    # the same crop/flip by hand: resize 36x36 bicubic, crop at the drawn (x, y), flip if drawn < 0.5
    g = np.random.default_rng(3)
    x, y, flip = int(g.integers(0, 5)), int(g.integers(0, 5)), bool(g.random() < 0.5)
    ref = np.asarray(img.resize((36, 36), Image.BICUBIC))[y : y + 32, x : x + 32]
    assert f1 == flip
    flipped = normalize(t1[None], torch.tensor([f1]))[0]
    assert np.array_equal(to_uint8(flipped), ref[:, ::-1] if flip else ref)
    mirror = normalize(t1[None], torch.tensor([True]))[0]
    assert torch.equal(mirror, normalize(t1[None])[0].flip(-1))
    reference = T.Compose([T.Resize([24, 24], T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert eval_image(img, 24).shape == (3, 24, 24)
    assert torch.equal(normalize(eval_image(img, 24)[None])[0], reference(img))  # bit-identical to torchvision


@pytest.mark.parametrize("flavour", ["raw", "4:2:0", "4:4:4", "4:2:2", "progressive", "exif-rotated", "grey",
                                     "cmyk", "png"])
def test_fast_decoder_gives_the_pixels_of_the_pil_decoder(flavour):
    """``decode_chw`` (raw PPM read as it is, libjpeg-turbo through torchcodec for 3-channel JPEGs, PIL for the
    rest) yields exactly the pixels of ``images.decode`` (the one RGB policy), and refuses a truncated file as the
    strict PIL path does."""
    from cyclegan_dist.data.transforms import _jpeg_decoder, decode_chw, uint8_chw

    assert _jpeg_decoder() is not None, "torchcodec (an install requirement) did not load: the fast path is untested"
    img = Image.fromarray(photo_crop(5, 61, 83))
    buf = io.BytesIO()
    if flavour == "raw":
        buf.write(encode_raw(img))
    elif flavour in ("4:2:0", "4:4:4", "4:2:2"):
        img.save(buf, "JPEG", quality=90, subsampling=flavour)
    elif flavour == "progressive":
        img.save(buf, "JPEG", quality=90, progressive=True)
    elif flavour == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to show upright
        img.save(buf, "JPEG", quality=90, exif=exif)
    elif flavour == "grey":
        img.convert("L").save(buf, "JPEG", quality=90)
    elif flavour == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG")
    data = buf.getvalue()
    fast, pil = decode_chw(data), uint8_chw(decode_rgb(data))
    assert fast.dtype == torch.uint8 and fast.shape == pil.shape and torch.equal(fast, pil)
    if flavour not in ("raw", "grey", "cmyk", "png"):  # the fast path itself, not a fallback to PIL
        assert torch.equal(_jpeg_decoder()(data, mode="UNCHANGED"), pil)
    if flavour == "exif-rotated":
        assert fast.shape == (3, 83, 61)  # turned upright
    if flavour == "raw":
        assert np.array_equal(fast.permute(1, 2, 0).numpy(), np.asarray(img))  # lossless
    with pytest.raises(Exception):
        decode_chw(data[: len(data) * 2 // 3])


def test_raw_shards_give_exactly_the_reference_pipelines_crops(tmp_path):
    """prepare --resize L (raw, the default) then the stream's crop = the reference's Resize([L, L], bicubic) +
    crop + flip of the original file, pixel for pixel (square photos, as Kaggle's)."""
    from cyclegan_dist.data.streams import _AUG, item_rng
    from cyclegan_dist.data.transforms import normalize, to_uint8

    src = tmp_path / "p"
    src.mkdir()
    for i in range(3):
        (src / f"img{i}.jpg").write_bytes(jpeg_bytes(photo_crop(i, 40, 40)))
    prepare_shards({"photo": src, "monet": src}, tmp_path / "root", resize=36, progress=False)
    ds = UnpairedShardDataset(tmp_path / "root", load_size=36, crop_size=32, seed=7)
    for k in range(6):
        item = ds[k]
        g = item_rng(7, k, 0, _AUG)
        x, y, flip = int(g.integers(0, 5)), int(g.integers(0, 5)), bool(g.random() < 0.5)
        original = decode_rgb((src / f"{item['A_key']}.jpg").read_bytes())
        ref = np.asarray(original.resize((36, 36), Image.BICUBIC))[y:y + 32, x:x + 32]
        assert item["A_flip"] == flip
        got = to_uint8(normalize(item["A"][None], torch.tensor([item["A_flip"]])))[0]
        assert np.array_equal(got, ref[:, ::-1] if flip else ref)
