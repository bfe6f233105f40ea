"""A generator leaves in TorchScript and ONNX with proven parity: dynamic batch and size (U-Net: multiples of its
unit), the exported file run by its own runtime (torch.jit.load, onnxruntime) against the PyTorch generator on real
photos, and a file that does not reproduce it is refused and deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export import tiny, write_checkpoint

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval import formats
from cyclegan_dist.eval.formats import PARITY_TOL, export_format, parity_photos, size_unit
from cyclegan_dist.models import build_generator

from helpers import require_extra, run_cli


@pytest.mark.parametrize("name, unit, sizes", [("resnet_6blocks", 4, [256, 320]), ("unet_32", 32, [256, 320]),
                                               ("unet_256", 256, [256, 512])])
def test_parity_photos_are_valid_sizes_and_two_batches(name, unit, sizes):
    assert size_unit(name) == unit
    photos = parity_photos(unit)
    assert [tuple(x.shape) for x in photos] == [(2, 3, sizes[0], sizes[0]), (1, 3, sizes[1], sizes[1])]
    assert all(-1 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.1 for x in photos)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", ["resnet_6blocks", "unet_32"])
def test_export_reproduces_the_generator_at_other_batch_sizes_and_shapes(tmp_path, fmt, name):
    if fmt == "onnx":
        require_extra("onnx")
    generator = tiny(0, name)
    path, worst = export_format(generator, fmt, tmp_path, name)
    assert path.is_file() and worst <= PARITY_TOL
    x = torch.rand(3, 3, 64, 96) * 2 - 1  # a batch and a size the export never saw (multiples of 32)
    with torch.no_grad():
        reference = generator(x).numpy()
    if fmt == "torchscript":
        out = torch.jit.load(str(path))(x).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {"photo": x.numpy()})[0]
    assert out.shape == reference.shape and np.abs(out - reference).max() <= PARITY_TOL


def test_a_file_that_does_not_reproduce_the_generator_is_refused(tmp_path, monkeypatch):
    """The negative control: the saved TorchScript is of another generator (other weights); the check catches it."""
    generator, other = tiny(0), tiny(1)
    real_trace = torch.jit.trace
    monkeypatch.setattr(formats.torch.jit, "trace", lambda net, *a, **k: real_trace(other, *a, **k))
    with pytest.raises(UserError, match="does not reproduce the generator: largest output difference"):
        export_format(generator, "torchscript", tmp_path, "resnet_6blocks")
    assert not (tmp_path / "generator.torchscript.pt").exists()


def test_export_command_writes_every_format(tmp_path):
    require_extra("onnx")
    write_checkpoint(tmp_path / "run", 10, tiny(0), tiny(1))
    out = run_cli("export", "--checkpoint", tmp_path / "run", "--generator-only", tmp_path / "gen",
                  "--format", "safetensors,torchscript,onnx")
    for name in ("generator.safetensors", "generator.yaml", "generator.torchscript.pt", "generator.onnx"):
        assert (tmp_path / "gen" / name).is_file(), name
    assert out.stdout.count("parity on real photos: max |difference|") == 2
    bad = run_cli("export", "--checkpoint", tmp_path / "run", "--generator-only", tmp_path / "x", "--format", "tflite",
                  check=False)
    assert bad.returncode == 2 and "choose from safetensors, torchscript, onnx" in bad.stderr


def test_unet_export_declares_its_size_unit(tmp_path):
    """ONNX's dynamic height/width of a U-Net 32 are multiples of 32: a 48 px input is refused by the runtime."""
    require_extra("onnx")
    import onnxruntime

    path, _ = export_format(build_generator("unet_32", ngf=4).eval(), "onnx", tmp_path, "unet_32")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {"photo": np.zeros((1, 3, 64, 32), np.float32)})
    with pytest.raises(Exception):
        session.run(None, {"photo": np.zeros((1, 3, 48, 48), np.float32)})
