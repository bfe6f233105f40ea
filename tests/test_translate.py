"""``python -m cyclegan_dist translate``: sources (folder, zip, glob, one file), names kept, sizes, skipped files and
exit codes, EMA weights, and the seamless tiles of ``--full-res`` (``cyclegan_dist/eval/tiles.py``), on real
generators of the package and real photo crops."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cyclegan_dist.cli import main
from cyclegan_dist.config import load_config, write_config
from cyclegan_dist.eval.tiles import tile_starts, translate_padded, translate_tiled
from cyclegan_dist.images import from_array, resize_shorter
from cyclegan_dist.models import build_generator
from cyclegan_dist.models.io import export_generator

from helpers import ROOT, jpeg_bytes, jpeg_folder, photo_crop, run_cli, tiny_shard_root

NGF = 4


def tiny(seed: int, name: str = "resnet_6blocks", norm: str = "instance") -> torch.nn.Module:
    torch.manual_seed(seed)  # PyTorch's default init: outputs that depend clearly on the input
    return build_generator(name, 3, 3, NGF, norm, False).eval()


def write_run(run_dir: Path, nets: dict[str, torch.nn.Module], crop_size: int = 40,
              generator: str = "resnet_6blocks") -> Path:
    """A run directory with one complete checkpoint holding ``nets`` (G_A, G_B, optionally G_A_ema...), trained
    (as its config says) at ``crop_size``."""
    ckpt = run_dir / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    write_config(load_config("smoke", [f"model.generator={generator}", f"model.ngf={NGF}",
                                       f"data.load_size={crop_size + 4}", f"data.crop_size={crop_size}"]),
                 ckpt / "config.yaml")
    for role, net in nets.items():
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt / f"{role}.safetensors"))
    torch.save({"step": 10}, ckpt / "state.pt")
    (ckpt / "complete").write_text(json.dumps({"step": 10, "world_size": 1}))
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "run", {"G_A": tiny(1), "G_B": tiny(2)})


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def pixels(data_or_path) -> np.ndarray:
    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def expected(net: torch.nn.Module, photo: np.ndarray, short_side: int) -> np.ndarray:
    """What translate should write for ``photo`` (lossless, PNG): resized, then the padded forward pass."""
    resized = np.asarray(resize_shorter(from_array(photo), short_side))
    return translate_padded(net, [resized], 4)[0]


def translate(*argv, capsys=None) -> tuple[int, str, str]:
    code = main(["translate", *map(str, argv), "--quiet", "--device", "cpu"])
    out = capsys.readouterr() if capsys is not None else None
    return code, out.out if out else "", out.err if out else ""


# ------------------------------------------------------------------------------------------------ sources


def test_folder_to_folder_keeps_names_subfolders_and_the_training_size(run, tmp_path, capsys):
    src = jpeg_folder(tmp_path / "photos", 4, sub=True)  # img000.jpg, sub/img001.jpg, img002.jpg, sub/img003.jpg
    (src / "sub" / "lossless.png").write_bytes(png_bytes(photo_crop(9)))
    code, out, err = translate("--checkpoint", run, "--in", src, "--out", tmp_path / "out", capsys=capsys)
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["img000.jpg", "img002.jpg", "sub/img001.jpg", "sub/img003.jpg", "sub/lossless.png"]
    for name in written:  # 56x48 crops, shorter side to the run's data.crop_size 40: 47x40 (not a multiple of 4)
        with Image.open(tmp_path / "out" / name) as im:
            assert im.size == (47, 40) and im.format == ("PNG" if name.endswith(".png") else "JPEG"), name
    G_A = tiny(1)  # the run's generator: the PNG holds exactly its output
    assert np.array_equal(pixels(tmp_path / "out/sub/lossless.png"), expected(G_A, photo_crop(9), 40))
    assert "translated 5 image(s), skipped 0" in out
    assert "shorter side 40 (data.crop_size of" in err
    assert sorted(p.name for p in src.rglob("*") if p.is_file()) == sorted(  # the source is untouched
        ["img000.jpg", "img001.jpg", "img002.jpg", "img003.jpg", "lossless.png"])


def test_zip_in_zip_out(run, tmp_path, capsys):
    src = tmp_path / "photos.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("a/one.jpg", jpeg_bytes(photo_crop(1)))
        z.writestr("two.png", png_bytes(photo_crop(2)))
        z.writestr("../escape.png", png_bytes(photo_crop(3)))  # stays inside the output
        z.writestr("notes.txt", b"not an image")  # not an image name: not listed
    dst = tmp_path / "out.zip"
    dst.write_bytes(b"")  # an earlier (here: broken) output is replaced whole
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("old.png", b"old")
    code, out, err = translate("--checkpoint", run, "--in", src, "--out", dst, "--format", "png", capsys=capsys)
    assert code == 0, err
    with zipfile.ZipFile(dst) as z:
        assert sorted(z.namelist()) == ["a/one.png", "escape.png", "two.png"]
        assert pixels(z.read("two.png")).shape == (40, 47, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial zip left behind


def test_glob_and_single_image(run, tmp_path, capsys):
    src = jpeg_folder(tmp_path / "photos", 4, sub=True)
    (src / "skip.png").write_bytes(png_bytes(photo_crop(7)))
    code, _, err = translate("--checkpoint", run, "--in", f"{src}/*.jpg", "--out", tmp_path / "flat", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["img000.jpg", "img002.jpg"]
    code, _, err = translate("--checkpoint", run, "--in", f"{src}/**/*.jpg", "--out", tmp_path / "deep",
                             "--format", "png", capsys=capsys)
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "deep").as_posix() for p in (tmp_path / "deep").rglob("*.png")) == [
        "img000.png", "img002.png", "sub/img001.png", "sub/img003.png"]

    one = tmp_path / "one.webp"
    Image.fromarray(photo_crop(5, 60, 90)).save(one, "WEBP", lossless=True)
    code, out, err = translate("--checkpoint", run, "--in", one, "--out", tmp_path / "single", "--size", "30",
                               "--bf16", capsys=capsys)
    assert code == 0, err
    with Image.open(tmp_path / "single" / "one.png") as im:  # not a JPEG input: PNG
        assert im.size == (45, 30)  # --size: the shorter side, aspect kept (90x60 -> 45x30)
    assert "translated 1 image(s), skipped 0" in out


def test_shards_in(run, tmp_path, capsys):
    root = tiny_shard_root(tmp_path / "shards", photos=3, paintings=2, size=48)
    code, out, err = translate("--checkpoint", run, "--in", f"{root}/photo-*.tar", "--out", tmp_path / "out",
                               capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["crop000.png", "crop001.png", "crop002.png"]
    assert pixels(tmp_path / "out/crop000.png").shape == (40, 40, 3)


def test_a_bad_image_is_skipped_named_and_counted(run, tmp_path, capsys, monkeypatch):
    """Exit 1, each bad file named, the others written; a truncated JPEG is refused even where another module
    told PIL to load truncated images (decoding runs in threads: the flag is off for the whole run, then
    restored)."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    src = jpeg_folder(tmp_path / "photos", 3)
    (src / "truncated.jpg").write_bytes(jpeg_bytes(photo_crop(4))[:200])
    (src / "text.png").write_text("not an image at all")
    code, out, err = translate("--checkpoint", run, "--in", src, "--out", tmp_path / "out", capsys=capsys)
    assert code == 1 and ImageFile.LOAD_TRUNCATED_IMAGES is True
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split(":")[0] for line in skipped) == ["skipped text.png", "skipped truncated.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img000.jpg", "img001.jpg", "img002.jpg"]
    assert "translated 3 image(s), skipped 2" in out


def test_size_keeps_the_aspect(run, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "wide.png").write_bytes(png_bytes(photo_crop(1, 40, 100)))
    (src / "tall.png").write_bytes(png_bytes(photo_crop(2, 90, 30)))
    code, _, err = translate("--checkpoint", run, "--in", src, "--out", tmp_path / "out", "--size", "24",
                             "--batch-size", "1", capsys=capsys)
    assert code == 0, err
    assert pixels(tmp_path / "out/wide.png").shape == (24, 60, 3)
    assert pixels(tmp_path / "out/tall.png").shape == (72, 24, 3)
    assert np.array_equal(pixels(tmp_path / "out/tall.png"), expected(tiny(1), photo_crop(2, 90, 30), 24))


def test_unet_takes_any_size_resized_or_at_full_resolution(tmp_path, capsys):
    """unet_32 takes only multiples of 32: 50 and 58 px (resized) or 45x70 (full resolution) are reflect-padded
    and cropped back, so each output has its input's size."""
    nets = {"G_A": tiny(3, "unet_32"), "G_B": tiny(4, "unet_32")}
    export_generator(write_run(tmp_path / "run", nets, 64, "unet_32"), tmp_path / "gen")  # no training size in it
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(photo_crop(1, 45, 70)))
    code, _, err = translate("--checkpoint", tmp_path / "gen", "--in", src, "--out", tmp_path / "small", "--size",
                             "50", capsys=capsys)
    assert code == 0, err
    assert pixels(tmp_path / "small/a.png").shape == (50, 78, 3)
    code, _, err = translate("--checkpoint", tmp_path / "gen", "--in", src, "--out", tmp_path / "full",
                             "--full-res", "--tile", "20", "--overlap", "8", capsys=capsys)
    assert code == 0, err
    assert pixels(tmp_path / "full/a.png").shape == (45, 70, 3)
    assert "full resolution, 32x32 tiles overlapping by 8 px" in err  # --tile rounded up to the unit
    code, _, err = translate("--checkpoint", tmp_path / "gen", "--in", src, "--out", tmp_path / "default",
                             capsys=capsys)
    assert code == 0 and pixels(tmp_path / "default/a.png").shape == (256, 398, 3)  # no run config: 256
    assert "the default 256" in err


def test_ema_by_default_raw_weights_on_request(tmp_path, capsys):
    nets = {"G_A": tiny(1), "G_B": tiny(2), "G_A_ema": tiny(5), "G_B_ema": tiny(6)}
    run = write_run(tmp_path / "run", nets)
    src = tmp_path / "photos"
    src.mkdir()
    (src / "p.png").write_bytes(png_bytes(photo_crop(3)))
    outputs = {}
    for flags in ((), ("--raw-weights",), ("--direction", "BtoA")):
        dst = tmp_path / f"out{len(outputs)}"
        code, _, err = translate("--checkpoint", run, "--in", src, "--out", dst, *flags, capsys=capsys)
        assert code == 0, err
        outputs[flags] = pixels(dst / "p.png")
    assert np.array_equal(outputs[()], expected(nets["G_A_ema"], photo_crop(3), 40))
    assert np.array_equal(outputs[("--raw-weights",)], expected(nets["G_A"], photo_crop(3), 40))
    assert np.array_equal(outputs[("--direction", "BtoA")], expected(nets["G_B_ema"], photo_crop(3), 40))
    assert not np.array_equal(outputs[()], outputs[("--raw-weights",)])


# ------------------------------------------------------------------------------------------------ mistakes


@pytest.mark.parametrize("case", ["missing checkpoint", "empty source", "out inside in", "over the source",
                                  "size with full-res", "overlap >= tile"])
def test_user_errors_are_one_line_and_exit_2(case, run, tmp_path, capsys):
    src = jpeg_folder(tmp_path / "photos", 1)
    (tmp_path / "empty").mkdir()
    argv = {
        "missing checkpoint": ["--checkpoint", tmp_path / "nowhere", "--in", src, "--out", tmp_path / "o"],
        "empty source": ["--checkpoint", run, "--in", tmp_path / "empty", "--out", tmp_path / "o"],
        "out inside in": ["--checkpoint", run, "--in", src, "--out", src / "translated"],
        "over the source": ["--checkpoint", run, "--in", src / "img000.jpg", "--out", src],
        "size with full-res": ["--checkpoint", run, "--in", src, "--out", tmp_path / "o", "--size", "64",
                               "--full-res"],
        "overlap >= tile": ["--checkpoint", run, "--in", src, "--out", tmp_path / "o", "--full-res", "--tile",
                            "16", "--overlap", "16"],
    }[case]
    code, out, err = translate(*argv, capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "o").exists() and sorted(p.name for p in src.rglob("*")) == ["img000.jpg"]


def test_the_command_end_to_end(run, tmp_path):
    """The real entry point: a missing checkpoint is one line and exit 2, before torch is imported (seconds); the
    help explains the exit codes; a translation prints its summary."""
    src = jpeg_folder(tmp_path / "photos", 2)
    code = ("import sys\nfrom cyclegan_dist.cli import main\nrc = main(['translate', *sys.argv[1:]])\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch', rc)")
    missing = subprocess.run([sys.executable, "-c", code, "--checkpoint", str(tmp_path / "nowhere"), "--in",
                              str(src), "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
    assert missing.stdout.split() == ["no", "torch", "2"], missing.stdout + missing.stderr
    assert missing.stderr.splitlines() == [
        f"error: --checkpoint {tmp_path / 'nowhere'}: not found (a run or checkpoint directory, an exported "
        "generator directory, a .safetensors or a junyanz .pth file)"]
    helped = run_cli("translate", "--help")
    assert "exit status: 0 every image was translated; 1 some could not be read" in helped.stdout
    done = run_cli("translate", "--checkpoint", run, "--in", src, "--out", tmp_path / "o", "--quiet")
    assert "translated 2 image(s), skipped 0" in done.stdout


# ------------------------------------------------------------------------------------------------ tiles


def smooth_generator(name: str, norm: str, seed: int = 0) -> torch.nn.Module:
    """A package generator whose every kernel is a random channel mix times a normalised binomial blur: smooth
    outputs where the image is smooth, as a trained generator's are (PyTorch's random init gives pixel noise as
    large as any seam, which would hide one)."""
    net = build_generator(name, 3, 3, 8, norm, False)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                k = m.weight.shape[-1]
                binomial = torch.tensor([float(math.comb(k - 1, i)) for i in range(k)])
                blur = torch.outer(binomial, binomial) / binomial.sum() ** 2
                if isinstance(m, torch.nn.ConvTranspose2d):
                    blur = blur * 4  # stride 2: each output pixel gets a quarter of the taps
                fan_in = m.weight.shape[0 if isinstance(m, torch.nn.ConvTranspose2d) else 1]
                mix = torch.randn(m.weight.shape[:2], generator=rng) / math.sqrt(fan_in)
                m.weight.copy_(mix[:, :, None, None] * blur)
                if m.bias is not None:
                    m.bias.zero_()
    return net.eval()


H, W, TILE = 160, 224, 64


def smooth_images() -> dict[str, np.ndarray]:
    import skimage.data

    yy, xx = np.mgrid[0:H, 0:W]
    gradient = np.stack([40 + xx * 150 / W, 60 + yy * 120 / H, 200 - (xx + yy) * 100 / (H + W)], -1)
    return {"gradient": np.rint(gradient).astype(np.uint8),
            "photo": np.ascontiguousarray(skimage.data.astronaut()[100:100 + H, 150:150 + W])}


def seam_and_inside(out: np.ndarray, overlap: int) -> tuple[float, float]:
    """(largest step across a tile border, largest step anywhere else), a step being the mean absolute
    difference of two neighbouring columns (rows), over the whole column (row)."""
    out = out.astype(np.float64)
    steps = {"x": np.abs(np.diff(out, axis=1)).mean(axis=(0, 2)), "y": np.abs(np.diff(out, axis=0)).mean(axis=(1, 2))}
    seam = inside = 0.0
    for axis, length in (("x", W), ("y", H)):
        starts = tile_starts(length, TILE, overlap)
        borders = {s - 1 for s in starts[1:]} | {s + TILE - 1 for s in starts[:-1]}  # step between b and b + 1
        seam = max(seam, max(steps[axis][b] for b in borders))
        inside = max(inside, max(v for i, v in enumerate(steps[axis]) if all(abs(i - b) > 2 for b in borders)))
    return seam, inside


@pytest.mark.parametrize("name", ["resnet_6blocks", "unet_32"])
def test_blended_tiles_leave_no_seam_where_plain_tiles_do(name):
    """InstanceNorm normalises each tile by its own statistics, so plain tiles (overlap 0) meet with a step at
    every border: over 1.5 times any step inside them (the negative control: the measure sees seams). Blended
    tiles (overlap 16 of 64) step across their borders no more than anywhere inside, on a smooth gradient and on a
    real photo."""
    net, unit = smooth_generator(name, "instance"), 32 if name.startswith("unet") else 4
    for label, image in smooth_images().items():
        plain_seam, plain_inside = seam_and_inside(translate_tiled(net, image, TILE, 0, unit), 0)
        assert plain_seam > 1.5 * plain_inside, (label, plain_seam, plain_inside)
        seam, inside = seam_and_inside(translate_tiled(net, image, TILE, 16, unit), 16)
        assert seam <= inside, (label, seam, inside)


def test_tiles_agree_with_one_pass_where_the_generator_is_translation_equivariant():
    """Without InstanceNorm (norm none) a ResNet is translation-equivariant away from padding, so what a tile
    computes equals the one-pass result except near the tile's own edges, where its convolutions saw padding.
    With tiles of 96 overlapping by half, the blend weighs those edges so little that the tiled image equals the
    one-pass image to 1/255 everywhere (uint8 rounding of the blend of uint8 tiles), while plain tiles differ by
    more than 10/255. With InstanceNorm nothing like this can hold: a tile's statistics are not the image's; a
    tile as large as the image is the one pass itself, exactly."""
    net = smooth_generator("resnet_6blocks", "none")
    for label, image in smooth_images().items():
        whole = translate_padded(net, [image], 4)[0].astype(int)
        tiled = translate_tiled(net, image, 96, 48, 4).astype(int)
        plain = translate_tiled(net, image, 96, 0, 4).astype(int)
        assert np.abs(tiled - whole).max() <= 1, label
        assert np.abs(plain - whole).max() > 10, label
    instance = smooth_generator("resnet_6blocks", "instance")
    image = smooth_images()["photo"]
    assert np.array_equal(translate_tiled(instance, image, 256, 64, 4), translate_padded(instance, [image], 4)[0])
