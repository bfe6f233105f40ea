"""Generator files: load one trained generator from whatever a user points at; write it alone; junyanz ``.pth``.

Sources :func:`load_generator` accepts (``direction``: ``AtoB`` = G_A, photo -> painting; ``BtoA`` = G_B):

* a checkpoint directory ``<run>/checkpoints/step-XXXXXXXX/`` (its ``config.yaml`` + ``G_A``/``G_B.safetensors``);
* a run directory (its best checkpoint when ``checkpoints/best`` names one, else the newest complete one),
  or its ``checkpoints/`` folder;
* a directory written by :func:`export_generator` (``generator.safetensors`` + ``generator.yaml``);
* a ``.safetensors`` file with its architecture in ``config=`` or next to it (``<stem>.yaml``,
  ``generator.yaml`` or ``config.yaml``);
* a junyanz/pytorch-CycleGAN-and-pix2pix ``.pth`` state_dict (``latest_net_G_A.pth``, ``latest_net_G.pth``),
  or a directory of them. Read with ``torch.load(weights_only=True)``.

Where no config says what the architecture is, it is read off the state_dict's keys and shapes (ResNet/U-Net,
ngf, norm, channels); explicit ``generator=``/``ngf=``/``norm=``/``use_dropout=`` arguments override both.
The weights are always loaded with ``strict=True``; a file that does not fit the architecture is a
:class:`UserError` naming the first missing/unexpected keys and the first shape mismatch, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cyclegan_dist.config import ModelConfig, from_dict, read_yaml_mapping
from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import CONFIG, EMA_FILES, GENERATOR_FILES, RunDir, atomic_write, resolve_checkpoint

DIRECTIONS = ("AtoB", "BtoA")
ARCH_KEYS = ("generator", "ngf", "norm", "use_dropout", "input_nc", "output_nc")
EXPORT_WEIGHTS, EXPORT_ARCH = "generator.safetensors", "generator.yaml"
_LEGACY_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")  # old InstanceNorm stats
_SHOW = 3


# ------------------------------------------------------------------------------------------------ public


def generator_from_config(model: ModelConfig) -> nn.Module:
    """The (uninitialised) generator a ModelConfig describes."""
    from cyclegan_dist.models.generators import build_generator

    return build_generator(model.generator, model.input_nc, model.output_nc, model.ngf, model.norm, model.use_dropout)


def load_generator(
    source: str | os.PathLike,
    direction: str = "AtoB",
    device: str | torch.device = "cpu",
    *,
    config: str | os.PathLike | None = None,
    generator: str | None = None,
    ngf: int | None = None,
    norm: str | None = None,
    use_dropout: bool | None = None,
    raw_weights: bool = False,
) -> tuple[nn.Module, ModelConfig]:
    """The generator at ``source`` in eval mode on ``device``, and the ModelConfig that describes *it*
    (for ``BtoA`` out of a checkpoint, input_nc/output_nc are those of G_B, i.e. swapped)."""
    if direction not in DIRECTIONS:
        raise UserError(f"direction {direction!r} is not valid; choose AtoB (G_A) or BtoA (G_B)")
    overrides = {k: v for k, v in {"generator": generator, "ngf": ngf, "norm": norm, "use_dropout": use_dropout}.items()
                 if v is not None}
    weights_path, arch, state = _locate(Path(source).expanduser(), direction, config, raw_weights)
    if state is None:
        state = _read_weights(weights_path, direction)
    if arch is None:
        arch = infer_architecture(state) or {}
        if not overrides and not arch:
            warnings.warn(f"{weights_path}: could not tell the architecture from the keys; "
                          "assuming resnet_9blocks, ngf 64 (pass generator/ngf to choose)")
    model_config = _model_config({**arch, **overrides}, weights_path)
    net = generator_from_config(model_config)
    load_weights(net, state, weights_path, model_config)
    return net.to(device).eval(), model_config


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike,
                 model_config: ModelConfig | None = None) -> None:
    """``net.load_state_dict(state, strict=True)``; a mismatch is one-line :class:`UserError`."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{where}: {mismatch_message(net, state, model_config)}") from None


def mismatch_message(net: nn.Module, state: Mapping[str, torch.Tensor], model_config: ModelConfig | None = None) -> str:
    expected = net.state_dict()
    legacy_ok = {k for k in state if k.endswith(_LEGACY_SUFFIXES) and k not in expected}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in legacy_ok]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    what = describe(model_config) if model_config is not None else type(net).__name__
    parts = []
    if missing:
        parts.append(f"missing keys {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_first(unexpected)}")
    if shapes:
        k, got, want = shapes[0]
        more = f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"shape mismatch {k}: file {list(got)} vs model {list(want)}{more}")
    inferred = infer_architecture(state)
    hint = f"; the file looks like {describe(inferred)}" if inferred else ""
    return (f"the weights do not fit {what}: {'; '.join(parts) or 'load_state_dict failed'}{hint} "
            "(choose the architecture with --generator/--ngf/--norm, or check the checkpoint's config)")


def describe(arch: ModelConfig | Mapping[str, Any]) -> str:
    a = dataclasses.asdict(arch) if dataclasses.is_dataclass(arch) else dict(arch)
    extra = ", dropout" if a.get("use_dropout") else ""
    return (f"{a.get('generator')} (ngf={a.get('ngf')}, norm={a.get('norm')}, "
            f"{a.get('input_nc')}->{a.get('output_nc')} channels{extra})")


def export_generator(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, direction: str = "AtoB",
                     raw_weights: bool = False) -> Path:
    """Write ``generator.safetensors`` + ``generator.yaml`` (architecture keys only) into ``out_dir`` (the EMA
    generator of a checkpoint that has one, unless ``raw_weights``).

    ``checkpoint_dir`` is anything :func:`load_generator` accepts. Use in a notebook (e.g. on Kaggle)::

        import numpy as np, torch, yaml
        from PIL import Image
        from safetensors.torch import load_file
        from cyclegan_dist.models import build_generator   # or junyanz's networks.define_G: same keys
        arch = yaml.safe_load(open("generator.yaml"))
        G = build_generator(arch["generator"], arch["input_nc"], arch["output_nc"], arch["ngf"], arch["norm"],
                            arch["use_dropout"])
        G.load_state_dict(load_file("generator.safetensors")); G.eval()
        x = torch.from_numpy(np.asarray(Image.open("photo.jpg").convert("RGB").resize((256, 256),
                                                                                      Image.BICUBIC)).copy())
        with torch.inference_mode(): y = G(x.permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
        Image.fromarray(((y + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save("out.jpg")
    """
    net, mc = load_generator(checkpoint_dir, direction, raw_weights=raw_weights)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    from safetensors.torch import save

    atomic_write(out / EXPORT_WEIGHTS, save(tensors, metadata={"direction": direction, "source": str(checkpoint_dir)}))
    arch = {k: getattr(mc, k) for k in ARCH_KEYS}
    header = (f"# CycleGAN generator ({direction}) exported from {checkpoint_dir}\n"
              f"# weights: {EXPORT_WEIGHTS} (junyanz/pytorch-CycleGAN-and-pix2pix state_dict layout)\n")
    atomic_write(out / EXPORT_ARCH, header + yaml.safe_dump(arch, sort_keys=False))
    return out


def load_junyanz_pair(path_or_dir: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts of junyanz-format generators, for ``model.init_from``.

    A directory with ``<epoch>_net_G_A.pth`` and ``<epoch>_net_G_B.pth`` (``latest`` preferred) gives
    ``{"G_A": ..., "G_B": ...}``; a directory with a single ``*_net_G.pth`` (their pretrained models) or a single
    ``.pth`` file gives ``{"G_A": ...}`` (``{"G_B": ...}`` if the file is named ``*_net_G_B.pth``).
    Legacy InstanceNorm running statistics are dropped; load each with :func:`load_weights`.
    """
    p = Path(path_or_dir).expanduser()
    if p.is_file():
        role = "G_B" if p.name.endswith("_net_G_B.pth") else "G_A"
        return {role: _strip_legacy(_read_pth(p))}
    if not p.is_dir():
        raise UserError(f"model.init_from: {p} does not exist (expected a directory of *_net_G_A.pth/*_net_G_B.pth "
                        "or a .pth file)")
    files = _junyanz_files(p)
    return {role: _strip_legacy(_read_pth(f)) for role, f in files.items()}


def infer_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """Architecture keys read off a reference-layout generator state_dict, or None if it is not one."""
    first_resnet, first_unet = state.get("model.1.weight"), state.get("model.model.0.weight")
    if first_resnet is not None and first_resnet.dim() == 4 and any(".conv_block." in k for k in state):
        blocks = {k.split(".")[1] for k in state if ".conv_block." in k}
        name = f"resnet_{len(blocks)}blocks"
        last = max((int(k.split(".")[1]) for k in state if re.fullmatch(r"model\.\d+\.weight", k)), default=None)
        if last is None:
            return None
        out_nc = int(state[f"model.{last}.weight"].shape[0])
        norm = "batch" if "model.2.weight" in state else "instance" if "model.1.bias" in state else "none"
        # the second conv of a block sits at conv_block.5, or at .6 behind a Dropout (.6 is a norm otherwise)
        dropout = any(k.endswith(".conv_block.6.weight") and state[k].dim() == 4 for k in state)
        ngf, in_nc = int(first_resnet.shape[0]), int(first_resnet.shape[1])
    elif first_unet is not None and first_unet.dim() == 4 and "model.model.3.weight" in state:
        depth = max(k.split(".").count("model") for k in state) - 1
        name = f"unet_{2 ** depth}"
        norm = ("batch" if "model.model.1.model.2.weight" in state
                else "instance" if "model.model.1.model.1.bias" in state else "none")
        dropout = False  # Dropout has no parameters: invisible in a U-Net's keys (and a no-op in eval mode)
        ngf, in_nc = int(first_unet.shape[0]), int(first_unet.shape[1])
        out_nc = int(state["model.model.3.weight"].shape[1])
    else:
        return None
    from cyclegan_dist.models import GENERATORS

    if name not in GENERATORS:
        return None
    return {"generator": name, "ngf": ngf, "norm": norm, "use_dropout": dropout, "input_nc": in_nc, "output_nc": out_nc}


# ---------------------------------------------------------------------------------------------- locating


def generator_file(source: str | os.PathLike, direction: str = "AtoB", raw_weights: bool = False) -> Path:
    """The weights file :func:`load_generator` reads for ``source``."""
    return _locate(Path(source).expanduser(), direction, None, raw_weights, need_arch=False)[0]


def _locate(p: Path, direction: str, config: str | os.PathLike | None, raw_weights: bool = False,
            need_arch: bool = True):
    """(weights file, architecture dict or None, pre-read state or None). A checkpoint's EMA generator
    (``G_A_ema.safetensors``, written when ``train.ema_decay > 0``) is preferred unless ``raw_weights``."""
    given = _read_arch(Path(config).expanduser(), direction) if config is not None else None
    if p.is_file():
        if p.suffix == ".safetensors":
            role = "BtoA" if p.stem == "G_B" else "AtoB" if p.stem == "G_A" else direction
            arch = given
            if arch is None:
                for name in (f"{p.stem}.yaml", EXPORT_ARCH, "config.yaml"):
                    if (p.parent / name).is_file():
                        arch = _read_arch(p.parent / name, role)
                        break
            return p, arch, None
        return p, given, None  # .pth / .pt: torch.load(weights_only=True)
    if not p.exists():
        raise UserError(f"generator source not found: {p} (expected a run or checkpoint directory, "
                        ".safetensors or junyanz .pth file)")
    if (p / EXPORT_WEIGHTS).is_file():
        arch = given or (_read_arch(p / EXPORT_ARCH, direction) if (p / EXPORT_ARCH).is_file() else None)
        return p / EXPORT_WEIGHTS, arch, None
    pths = list(p.glob("*_net_G*.pth"))
    if pths and not (p / "checkpoints").is_dir():
        files = _junyanz_files(p)
        role = "G_A" if direction == "AtoB" else "G_B"
        if role not in files:
            raise UserError(f"{p} holds no {role} generator ({', '.join(f.name for f in files.values())}); "
                            "a single *_net_G.pth is the AtoB direction")
        return files[role], given, None
    ckpt = p if (p / GENERATOR_FILES["G_A"]).is_file() else resolve_checkpoint(p)
    role = "G_A" if direction == "AtoB" else "G_B"
    weights = ckpt / GENERATOR_FILES[role]
    if not raw_weights and (ckpt / EMA_FILES[role]).is_file():
        weights = ckpt / EMA_FILES[role]
    if not weights.is_file():
        raise UserError(f"checkpoint {ckpt} has no {weights.name}")
    if not (ckpt / "complete").is_file():
        warnings.warn(f"checkpoint {ckpt} has no 'complete' marker: it may be partial")
    if given is None and need_arch and not (ckpt / CONFIG).is_file():
        raise UserError(f"checkpoint {ckpt} has no config.yaml (the architecture); pass a config")
    return weights, given or (_read_arch(ckpt / CONFIG, direction) if need_arch else None), None


def _read_arch(path: Path, direction: str) -> dict[str, Any]:
    """Architecture keys from a run config (``model:`` section; G_B swaps channels) or a generator.yaml."""
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    raw = read_yaml_mapping(path)
    if "model" in raw:
        mc = from_dict(raw["model"] or {}, ModelConfig, where=str(path), prefix="model.")
        arch = {k: getattr(mc, k) for k in ARCH_KEYS}
        if direction == "BtoA":
            arch["input_nc"], arch["output_nc"] = mc.output_nc, mc.input_nc
        return arch
    mc = from_dict(raw, ModelConfig, where=str(path))
    return {k: getattr(mc, k) for k in ARCH_KEYS if k in raw}


def _model_config(arch: Mapping[str, Any], where: Path) -> ModelConfig:
    try:
        return from_dict({k: v for k, v in arch.items() if k in ARCH_KEYS}, ModelConfig, where=str(where))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - defensive: a type the coercer rejects
        raise UserError(f"{where}: bad architecture {dict(arch)}: {exc}") from None


def _junyanz_files(d: Path) -> dict[str, Path]:
    """{"G_A": path, "G_B": path} or {"G_A": path} from a directory of junyanz checkpoints."""
    by_epoch: dict[str, dict[str, Path]] = {}
    for f in d.glob("*_net_G*.pth"):
        m = re.fullmatch(r"(.+)_net_G(_A|_B)?\.pth", f.name)
        if m:
            role = "G_B" if m.group(2) == "_B" else "G_A"
            by_epoch.setdefault(m.group(1), {})[role] = f
    if not by_epoch:
        raise UserError(f"{d}: no junyanz generator files (*_net_G_A.pth, *_net_G_B.pth or *_net_G.pth)")
    if "latest" in by_epoch:
        return by_epoch["latest"]
    if len(by_epoch) > 1:
        names = ", ".join(sorted(by_epoch))
        raise UserError(f"{d}: generators of several epochs ({names}) and no 'latest_*'; pass one .pth file")
    return next(iter(by_epoch.values()))


def check_digest(path: Path) -> None:
    """A file of a checkpoint that records digests (``digests.json`` beside it) must have the sha256 recorded
    there: else one UserError naming it, the expected and the actual digest. Files of older checkpoints, exports
    and junyanz files have none: nothing to check."""
    from cyclegan_dist.checkpoint import digest_problem
    from cyclegan_dist.rundir import DIGESTS

    problem = digest_problem(path)
    if problem:
        others = [p for p in RunDir(path.parent.parent.parent).complete_checkpoints() if p != path.parent]
        raise UserError(f"{path} is damaged: {problem}; it was not loaded. Restore the file from a copy, or use "
                        "another checkpoint" + (f" (e.g. --checkpoint {others[-1]})" if others else "")
                        + f"; the digests are in {path.parent / DIGESTS}")


def _read_weights(path: Path, direction: str) -> dict[str, torch.Tensor]:
    check_digest(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise UserError(f"{path}: cannot read as safetensors: {exc}") from None
    state = _read_pth(path)
    if isinstance(state.get("generators"), Mapping):  # our state.pt: the GeneratorPair
        state = state["generators"]
    prefix = "G_A." if direction == "AtoB" else "G_B."
    if any(k.startswith(("G_A.", "G_B.")) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _read_pth(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / unsupported-global errors
        raise UserError(f"{path}: cannot read as a PyTorch state_dict (torch.load weights_only=True): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path}: expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _strip_legacy(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop InstanceNorm running statistics of old reference files (the layers hold none: affine=False).

    A BatchNorm's stats are kept: a BatchNorm layer also has ``weight``/``bias`` under the same prefix."""
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        if k.endswith(_LEGACY_SUFFIXES) and k.rsplit(".", 1)[0] + ".weight" not in state:
            continue
        out[k] = v
    return out


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more
