"""A trained generator in the formats people deploy: TorchScript and ONNX beside safetensors + YAML, each file
kept only after it reproduces the PyTorch generator on real photos.

Both take a dynamic batch and image size. ResNet generators take any height and width divisible by 4 (two
stride-2 convolutions); a U-Net ``unet_N`` only multiples of N (it halves the image log2(N) times): the ONNX file
declares exactly that (``height = N x k``), and the parity check runs two batch sizes at two valid sizes.

Parity: the largest absolute difference of the outputs (in [-1, 1]) over the check photos, fp32, at most
``PARITY_TOL``; above it the file is deleted and the export fails, naming the difference.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from cyclegan_dist.errors import UserError
from cyclegan_dist.images import from_array, resize, to_array

PARITY_TOL = 1e-4  # fp32 kernels of another runtime differ by ~1e-6 on these networks; a wrong graph by >= 1e-2
FORMATS = ("safetensors", "torchscript", "onnx")
FILE_NAMES = {"torchscript": "generator.torchscript.pt", "onnx": "generator.onnx"}


def size_unit(generator_name: str) -> int:
    """Height and width must be multiples of this: N for ``unet_N``, 4 for the ResNets."""
    return int(generator_name.split("_")[1]) if generator_name.startswith("unet_") else 4


def parity_photos(unit: int) -> list[torch.Tensor]:
    """Real photos (scikit-image's astronaut and coffee, shipped with the package) in [-1, 1]: a batch of 2 at
    the smallest valid size >= 256, then 1 at another valid size (dynamic shapes, checked)."""
    import skimage.data

    images = [skimage.data.astronaut(), skimage.data.coffee()]
    first = unit * math.ceil(256 / unit)
    second = unit * math.ceil(first * 1.25 / unit) if unit < 256 else first * 2
    batches = []
    for size, chosen in ((first, images), (second, images[:1])):
        arrays = [to_array(resize(from_array(a), size)) for a in chosen]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
        batches.append(x.contiguous())
    return batches


def export_format(generator: torch.nn.Module, fmt: str, out_dir: Path, generator_name: str) -> tuple[Path, float]:
    """Write ``generator`` (eval mode, CPU, fp32) in ``fmt`` into ``out_dir``; (path, largest parity difference)."""
    if fmt not in FILE_NAMES:
        raise UserError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    generator = generator.eval().float().cpu()
    photos = parity_photos(size_unit(generator_name))
    path = out_dir / FILE_NAMES[fmt]
    run = _write_torchscript(generator, path, photos[0]) if fmt == "torchscript" else \
        _write_onnx(generator, path, photos[0], size_unit(generator_name))
    with torch.inference_mode():
        worst = max(float(np.abs(run(x) - generator(x).numpy()).max()) for x in photos)
    if not worst <= PARITY_TOL:
        path.unlink(missing_ok=True)
        raise UserError(f"{fmt} export of {generator_name} does not reproduce the generator: largest output "
                        f"difference {worst:.3g} > {PARITY_TOL:g} on real photos; nothing was kept")
    return path, worst


def _write_torchscript(generator: torch.nn.Module, path: Path, example: torch.Tensor):
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; people still load it (C++, mobile)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # instance_norm's spatial-size-1 branch: constant
        with torch.no_grad():
            traced = torch.jit.trace(generator, example, check_trace=False)  # convolutions only: shape-generic
        traced.save(str(path))
        loaded = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> np.ndarray:
        return loaded(x).numpy()
    return run


def _write_onnx(generator: torch.nn.Module, path: Path, example: torch.Tensor, unit: int):
    try:
        import onnxruntime
    except ImportError:
        raise UserError('--format onnx needs onnxruntime and onnxscript: pip install "cyclegan-dist[onnx]"') from None
    dim = torch.export.Dim
    shapes = ({0: dim("batch", min=1, max=1024), 2: unit * dim("height_units", min=1, max=8192 // unit),
               3: unit * dim("width_units", min=1, max=8192 // unit)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(generator, (example,), dynamic_shapes=shapes, input_names=["photo"],
                                    output_names=["painting"], dynamo=True, verbose=False)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"photo": x.numpy()})[0]
    return run
