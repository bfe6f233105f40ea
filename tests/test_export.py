"""Generator loading (checkpoints, run dirs, safetensors, junyanz .pth) and the images.zip export, on real files."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cyclegan_dist.cli import build_parser
from cyclegan_dist.config import load_config, write_config
from cyclegan_dist.data.transforms import normalize, to_uint8
from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.export import export_zip, photo_tensor
from cyclegan_dist.images import ImageSource
from cyclegan_dist.models import build_generator
from cyclegan_dist.models.io import export_generator, infer_architecture, load_generator, load_junyanz_pair
from cyclegan_dist.rundir import RunDir

from helpers import ROOT

NGF = 4


def tiny(seed: int, name: str = "resnet_6blocks", in_nc: int = 3, out_nc: int = 3, ngf: int = NGF) -> torch.nn.Module:
    torch.manual_seed(seed)  # PyTorch's default init: outputs that depend clearly on the input
    return build_generator(name, in_nc, out_nc, ngf, "instance", False).eval()


def write_checkpoint(run_dir: Path, step: int, G_A, G_B, overrides=()) -> Path:
    d = run_dir / "checkpoints" / f"step-{step:08d}"
    d.mkdir(parents=True)
    write_config(load_config("smoke", ["model.generator=resnet_6blocks", f"model.ngf={NGF}", *overrides]),
                 d / "config.yaml")
    save_file({k: v.contiguous() for k, v in G_A.state_dict().items()}, str(d / "G_A.safetensors"))
    save_file({k: v.contiguous() for k, v in G_B.state_dict().items()}, str(d / "G_B.safetensors"))
    torch.save({"step": step}, d / "state.pt")
    (d / "complete").write_text(json.dumps({"step": step, "world_size": 1}))
    return d


def same_output(a, b, size: int = 32) -> bool:
    in_nc = next(m for m in a.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.rand(2, in_nc, size, size) * 2 - 1
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """12 crops of scikit-image's bundled photos (no download), in sub-folders, with a repeated stem."""
    from skimage import data

    srcs = [data.astronaut(), data.chelsea(), data.coffee()]
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        src = srcs[i % 3]
        h, w = int(rng.integers(96, 200)), int(rng.integers(96, 200))
        y, x = int(rng.integers(0, src.shape[0] - h)), int(rng.integers(0, src.shape[1] - w))
        sub = d / ("a" if i < 6 else "b")
        sub.mkdir(exist_ok=True)
        stem = "dup" if i in (2, 8) else f"p{i:02d}"
        ext = ".png" if i % 2 else ".jpg"
        Image.fromarray(src[y : y + h, x : x + w]).save(sub / f"{stem}{ext}", quality=95)
    return d


def read_zip(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with Image.open(io.BytesIO(z.read(info))) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (256, 256), info.filename
                out[info.filename] = np.asarray(im).astype(np.int16)
    return out


# ------------------------------------------------------------------------------------------- loading


def test_checkpoint_dir_and_run_dir(tmp_path):
    G_A, G_B = tiny(1), tiny(2)
    ckpt = write_checkpoint(tmp_path / "run", 100, G_A, G_B)
    net, mc = load_generator(ckpt, "AtoB")
    assert not net.training and mc.generator == "resnet_6blocks" and mc.ngf == NGF
    assert same_output(net, G_A)
    assert same_output(load_generator(ckpt, "BtoA")[0], G_B)
    assert same_output(load_generator(ckpt / "G_B.safetensors")[0], G_B)  # sibling config.yaml

    # a run dir: the newest complete checkpoint, unless checkpoints/best names another
    newer_A = tiny(3)
    write_checkpoint(tmp_path / "run", 200, newer_A, tiny(4))
    (tmp_path / "run/checkpoints/step-00000300").mkdir()  # incomplete: ignored
    assert same_output(load_generator(tmp_path / "run")[0], newer_A)
    RunDir(tmp_path / "run").write_best("step-00000100", 100, 1.0)
    assert same_output(load_generator(tmp_path / "run")[0], G_A)
    assert same_output(load_generator(tmp_path / "run/checkpoints")[0], G_A)

    with pytest.raises(UserError, match="no complete checkpoint"):
        (tmp_path / "empty/checkpoints").mkdir(parents=True)
        load_generator(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        load_generator(tmp_path / "nowhere")
    with pytest.raises(UserError, match="direction"):
        load_generator(ckpt, "AtoC")


def test_btoa_swaps_channels(tmp_path):
    G_A, G_B = tiny(1, out_nc=1), tiny(2, in_nc=1, out_nc=3)
    ckpt = write_checkpoint(tmp_path, 1, G_A, G_B, ["model.output_nc=1", "loss.lambda_identity=0"])
    net, mc = load_generator(ckpt, "BtoA")
    assert (mc.input_nc, mc.output_nc) == (1, 3)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x), G_B(x))


def test_junyanz_pth_with_legacy_instance_norm_stats(tmp_path):
    nets = {"G_A": tiny(5), "G_B": tiny(6)}
    for role, net in nets.items():
        sd = OrderedDict(net.state_dict())
        norms = [n for n, m in net.named_modules() if isinstance(m, torch.nn.InstanceNorm2d)]
        assert norms
        for n in norms:  # what the reference (and PyTorch < 0.4) wrote for every InstanceNorm
            c = net.get_submodule(n).num_features
            sd[f"{n}.running_mean"], sd[f"{n}.running_var"] = torch.zeros(c), torch.ones(c)
            sd[f"{n}.num_batches_tracked"] = torch.tensor(7)
        torch.save(sd, tmp_path / f"latest_net_{role}.pth")
    pth = tmp_path / "latest_net_G_A.pth"

    net, mc = load_generator(pth, generator="resnet_6blocks", ngf=NGF)  # explicit architecture
    assert same_output(net, nets["G_A"])
    net, mc = load_generator(pth)  # architecture read off the keys
    assert (mc.generator, mc.ngf, mc.norm) == ("resnet_6blocks", NGF, "instance") and same_output(net, nets["G_A"])
    assert same_output(load_generator(tmp_path, "BtoA")[0], nets["G_B"])  # a directory of them

    pair = load_junyanz_pair(tmp_path)
    assert set(pair) == {"G_A", "G_B"}
    assert not any(k.endswith("running_mean") for k in pair["G_A"])
    fresh = build_generator("resnet_6blocks", 3, 3, NGF)
    fresh.load_state_dict(pair["G_B"], strict=True)
    assert same_output(fresh.eval(), nets["G_B"])
    single = tmp_path / "single" / "latest_net_G.pth"
    single.parent.mkdir()
    single.write_bytes(pth.read_bytes())
    assert set(load_junyanz_pair(single.parent)) == {"G_A"} and set(load_junyanz_pair(single)) == {"G_A"}
    with pytest.raises(UserError, match="no junyanz generator"):
        (tmp_path / "nothing").mkdir()
        load_junyanz_pair(tmp_path / "nothing")


def test_wrong_architecture_is_a_one_line_user_error(tmp_path):
    pth = tmp_path / "net_G.pth"
    torch.save(tiny(1).state_dict(), pth)
    with pytest.raises(UserError) as err:
        load_generator(pth, generator="resnet_6blocks", ngf=8)
    msg = str(err.value)
    assert "\n" not in msg and "shape mismatch model.1.weight: file [4, 3, 7, 7] vs model [8, 3, 7, 7]" in msg
    assert "looks like resnet_6blocks (ngf=4" in msg
    with pytest.raises(UserError) as err:
        load_generator(pth, generator="resnet_9blocks")
    assert "missing keys model.16.conv_block.1.weight" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        load_generator(pth, generator="unet_32")
    assert "missing keys model.model.0.weight" in str(err.value) and "unexpected keys model.1.weight" in str(err.value)

    # a checkpoint whose config.yaml disagrees with its weights
    ckpt = write_checkpoint(tmp_path / "run", 1, tiny(1), tiny(2), ["model.generator=resnet_9blocks"])
    with pytest.raises(UserError, match="do not fit resnet_9blocks"):
        load_generator(ckpt)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read"):
        load_generator(tmp_path / "junk.pth")


def test_infer_unet_architecture():
    net = tiny(0, "unet_32")
    arch = infer_architecture(net.state_dict())
    assert arch == {"generator": "unet_32", "ngf": NGF, "norm": "instance", "use_dropout": False,
                    "input_nc": 3, "output_nc": 3}
    batch = build_generator("resnet_9blocks", 3, 1, 8, "batch", True)
    assert infer_architecture(batch.state_dict()) == {"generator": "resnet_9blocks", "ngf": 8, "norm": "batch",
                                                      "use_dropout": True, "input_nc": 3, "output_nc": 1}


def test_export_generator_round_trip(tmp_path):
    G_A, G_B = tiny(1), tiny(2)
    ckpt = write_checkpoint(tmp_path / "run", 10, G_A, G_B)
    out = export_generator(tmp_path / "run", tmp_path / "export", "BtoA")
    assert sorted(p.name for p in out.iterdir()) == ["generator.safetensors", "generator.yaml"]
    import yaml

    arch = yaml.safe_load((out / "generator.yaml").read_text())
    assert set(arch) == {"generator", "ngf", "norm", "use_dropout", "input_nc", "output_nc"}
    assert same_output(load_generator(out)[0], G_B)
    assert same_output(load_generator(out / "generator.safetensors")[0], G_B)
    # the docstring recipe: no cyclegan_dist loader involved
    from safetensors.torch import load_file

    G = build_generator(arch["generator"], arch["input_nc"], arch["output_nc"], arch["ngf"], arch["norm"],
                        arch["use_dropout"])
    G.load_state_dict(load_file(str(out / "generator.safetensors")))
    assert same_output(G.eval(), G_B) and ckpt.is_dir()


# -------------------------------------------------------------------------------------------- export


def test_export_zip(photo_dir, tmp_path):
    net = tiny(7)
    src = ImageSource(photo_dir)
    out = tmp_path / "images.zip"
    count = export_zip(net, src, out, batch_size=5, progress=False)
    assert count == 12 and not list(tmp_path.glob("*.tmp"))
    got = read_zip(out)
    expected_names = {f"p{i:02d}.jpg" for i in range(12) if i not in (2, 8)} | {"dup.jpg", "dup-1.jpg"}
    assert set(got) == expected_names

    # each entry is the generator's output for its own photo (a/ comes before b/: a/dup -> dup.jpg)
    expected = {}
    for name, image in ImageSource(photo_dir):
        stem = Path(name).stem
        key = "dup-1.jpg" if name == "b/dup.png" or name == "b/dup.jpg" else f"{stem}.jpg"
        with torch.inference_mode():
            expected[key] = to_uint8(net(normalize(photo_tensor(image)[None])))[0].astype(np.int16)
    names = sorted(expected)
    spread = np.mean([np.abs(expected[a] - expected[b]).mean() for a, b in itertools.pairwise(names)])
    assert spread > 10, "the test generator must depend on its input"
    for key, img in got.items():
        errors = {k: np.abs(img - e).mean() for k, e in expected.items()}
        assert errors[key] < 4.5, (key, errors[key])  # a random net's output is noise: the worst case for JPEG
        assert min(errors, key=errors.get) == key

    # uint8 tensors (what the shard streams yield) give the same result as the uint8 arrays
    _, first = next(iter(ImageSource(photo_dir)))
    t = photo_tensor(first)
    out2 = tmp_path / "t.zip"
    assert export_zip(net, [("x/y.png", t), ("x/y.png", t)], out2, progress=False, limit=1) == 1
    assert np.array_equal(read_zip(out2)["y.jpg"], got["dup.jpg"])  # a/dup.jpg comes first


def test_interrupted_export_keeps_the_old_zip(photo_dir, tmp_path):
    out = tmp_path / "images.zip"
    out.write_bytes(b"the previous, complete export")

    def photos():
        for i, item in enumerate(ImageSource(photo_dir)):
            if i == 7:
                raise RuntimeError("disk on fire")
            yield item

    with pytest.raises(RuntimeError, match="disk on fire"):
        export_zip(tiny(1), photos(), out, batch_size=3, progress=False)
    assert out.read_bytes() == b"the previous, complete export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.zip"]
    with pytest.raises(UserError, match="no photos"):
        export_zip(tiny(1), [], out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.zip"]


def test_export_command(photo_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "run", 5, tiny(1), tiny(2))
    parser = build_parser()

    def run(*argv: str) -> int:
        args = parser.parse_args(["export", *argv])
        return args.func(args)

    out = tmp_path / "images.zip"
    base = ["--checkpoint", str(tmp_path / "run"), "--photos", str(photo_dir), "--out", str(out), "--quiet"]
    assert run(*base, "--limit", "4", "--device", "cpu") == 0
    assert len(read_zip(out)) == 4
    err = capsys.readouterr().err
    assert "warning: 4 images; Kaggle wants 7000-10000" in err
    assert run(*base, "--strict") == 2  # all 12, still too few for Kaggle: not written, the old zip stays
    assert len(read_zip(out)) == 4 and "was not written" in capsys.readouterr().err
    assert run(*base, "--direction", "BtoA", "--batch-size", "12") == 0
    assert len(read_zip(out)) == 12 and not list(tmp_path.glob(".*.zip"))

    assert run("--checkpoint", str(ckpt), "--generator-only", str(tmp_path / "gen")) == 0
    assert (tmp_path / "gen" / "generator.safetensors").is_file()
    with pytest.raises(UserError, match="--photos"):
        run("--checkpoint", str(ckpt))
    with pytest.raises(UserError, match="--batch-size"):
        run(*base, "--batch-size", "0")


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "/no/such/run", "--photos", ".", "--out", "x.zip"], "--checkpoint /no/such/run: not found"),
    (["--checkpoint", ".", "--photos", "/no/such/photos", "--out", "x.zip"], "image source not found: /no/such/photos"),
])
def test_export_path_mistakes_are_refused_before_torch_loads(argv, message):
    """A wrong path is one line at once: the check runs before torch is imported (which takes seconds)."""
    code = ("import sys\nfrom cyclegan_dist.cli import main\nrc = main(['export', *sys.argv[1:]])\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch', rc)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    assert message in out.stderr
