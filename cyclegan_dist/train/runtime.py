"""The distributed runtime: Accelerator(s), rank/world/device, collectives, the stop flag, RNG. Knows nothing of
CycleGAN.

On a machine without CUDA the Accelerator runs on the CPU and, under ``torchrun``, ``accelerate launch
--multi_gpu`` or SLURM tasks, joins a gloo process group from the environment (RANK, WORLD_SIZE, ...).
Under DeepSpeed each model needs an engine of its own, so the generators and the discriminators each get an
Accelerator with its own DeepSpeed plugin ("G" and "D", from the same ZeRO config); they share the process
group and state. Otherwise both are the same object.

Precision outside DeepSpeed is the Runtime's own, the same on every device: ``torch.autocast`` for bf16/fp16 and,
for fp16, one ``torch.amp.GradScaler`` (Accelerate would drop fp16 silently on a CPU; here the CPU runs the very
path a GPU runs, slowly). Under DeepSpeed the engine's own precision config applies.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from cyclegan_dist.config import TrainConfig, find_config_file
from cyclegan_dist.errors import UserError
from cyclegan_dist.train.cpu_threads import set_cpu_threads
from cyclegan_dist.train.host_memory import retain_freed_memory

log = logging.getLogger("cyclegan_dist.train")
_STOP = threading.Event()
STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on a stop (each check is a host-device sync)


def request_stop() -> None:
    """Ask the running training loop to checkpoint and return at the next agreed step (signal-handler safe)."""
    _STOP.set()


class Runtime:
    """What the loop needs from the distributed world, in one place."""

    def __init__(self, train: TrainConfig) -> None:
        cpu = not torch.cuda.is_available()
        _set_determinism(train, cpu)
        ds_config = deepspeed_config_path(train)
        from accelerate import Accelerator

        if ds_config is None:
            # The precision policy (autocast, fp16's GradScaler) is ours, the same on every device (below);
            # Accelerate sets up the device, the process group and DDP.
            self.acc_G = self.acc_D = Accelerator(cpu=cpu, mixed_precision="no",
                                                  kwargs_handlers=_handlers(cpu, train) + _ddp_handlers(train, cpu))
        else:
            from accelerate.utils import DeepSpeedPlugin

            if train.mixed_precision == "fp16" and cpu:
                raise UserError("fp16 with DeepSpeed needs a CUDA GPU (DeepSpeed's fp16 optimizer); on the CPU use "
                                "train.mixed_precision=bf16 or no, or leave train.deepspeed unset")
            plugins = {name: DeepSpeedPlugin(hf_ds_config=_read_ds_config(ds_config, train)) for name in ("G", "D")}
            handlers = _handlers(cpu, train, always=True)  # Accelerate turns DeepSpeed off with cpu=True: gloo
            self.acc_G = Accelerator(mixed_precision=train.mixed_precision, deepspeed_plugins=plugins,
                                     kwargs_handlers=handlers)
            self.acc_D = Accelerator(mixed_precision=train.mixed_precision, kwargs_handlers=handlers)
        acc = self.acc_G
        self.rank, self.world, self.device = acc.process_index, acc.num_processes, acc.device
        self.is_main = acc.is_main_process
        self.deepspeed = ds_config is not None  # ZeRO: every rank holds its own slice of the optimizer state
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.mixed_precision)
        # fp16 outside DeepSpeed: one GradScaler for both optimizers (train/guard.py), on the CPU as on a GPU
        self.scaler = (torch.amp.GradScaler(self.device.type, init_scale=train.fp16_init_scale)
                       if train.mixed_precision == "fp16" and not self.deepspeed else None)
        if self.scaler is not None and cpu and self.is_main:
            log.warning("train.mixed_precision=fp16 on the CPU: float16 autocast and loss scaling run as on a GPU, "
                        "but slowly (bf16 is the CPU's fast half precision)")
        if self.device.type == "cpu":
            retain_freed_memory()  # no page faults for the same blocks at every step (train/host_memory.py)
            set_cpu_threads(local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # train/cpu_threads.py

    def autocast(self):
        """The autocast context of this precision (``torch.autocast``; nothing in fp32). A new one per use (the loop
        enters it twice per step): cheap, unlike ``Accelerator.autocast()`` (``benchmarks/RESULTS.md``, "Reading
        (CPU, 2026-12-02, session 4)")."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, gens, discs, opt_G, opt_D):
        if not self.deepspeed:
            return self.acc_G.prepare(gens, discs, opt_G, opt_D)
        gens, opt_G = self.acc_G.prepare(gens, opt_G)
        self.acc_D.state.select_deepspeed_plugin("D")
        discs, opt_D = self.acc_D.prepare(discs, opt_D)
        return gens, discs, opt_G, opt_D

    def backward_of(self, acc):
        """What a step calls for ``loss.backward()`` with ``acc``'s model (acc_G or acc_D): the DeepSpeed
        engine's backward (which also steps it); ``scaler.scale(loss).backward()`` under fp16; else the plain
        call (Accelerate's ``backward`` adds only a ``loss / 1`` there)."""
        if self.deepspeed:
            return acc.backward
        if self.scaler is not None:
            scale = self.scaler.scale
            return lambda loss: scale(loss).backward()
        return _backward

    def stepping(self, optimizer):
        """The optimizer a step calls ``step``/``zero_grad`` on: the torch optimizer inside Accelerate's wrapper
        (whose ``step`` adds only Python work without its scaler: ``benchmarks/RESULTS.md``, "Reading (CPU,
        2026-12-02, session 4)"), DeepSpeed's wrapper under DeepSpeed. Checkpoints keep using the wrapper's
        state_dict, the same object's."""
        return optimizer if self.deepspeed else getattr(optimizer, "optimizer", optimizer)

    def unwrap(self, module):
        """The module inside DDP (or a DeepSpeed engine). Not Accelerate's unwrap_model under DDP: it imports
        DeepSpeed whenever it is installed, which prints a line to stdout in every run."""
        if self.deepspeed:
            return self.acc_G.unwrap_model(module)
        from torch.nn.parallel import DistributedDataParallel

        return module.module if isinstance(module, DistributedDataParallel) else module

    def main_process_first(self):
        return self.acc_G.main_process_first()

    def barrier(self) -> None:
        self.acc_G.wait_for_everyone()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (itself in one process)."""
        return self.acc_G.reduce(values.to(self.device), reduction="mean") if self.world > 1 else values

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.acc_G.reduce(values.to(self.device), reduction="sum") if self.world > 1 else values

    def any(self, flag: torch.Tensor) -> torch.Tensor:
        """A device tensor: > 0 on every rank when ``flag`` > 0 on any (no host sync)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        flag = flag.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag

    def collective_check(self, check, elsewhere: str) -> None:
        """Run ``check`` here; if it raises on any rank, every rank raises (the failing rank its own exception,
        the others a UserError saying ``elsewhere``), so no rank goes on to wait alone in a collective."""
        error = None
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - an OSError too (a read-only run root): every rank must hear of it
            error = exc
        if self.world > 1 and self.sum(torch.tensor([1.0 if error else 0.0])).item() > 0 and error is None:
            error = UserError(elsewhere)
        if error is not None:
            raise error

    def gather_object(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return gather_object([obj]) if self.world > 1 else [obj]

    def stop_requested(self, step: int) -> bool:
        """True on every rank, at the same step, once any rank was asked to stop (a tiny all-reduce every
        STOP_CHECK_EVERY steps when distributed; a SLURM warning comes minutes before the end)."""
        flag = _STOP.is_set()
        if self.world == 1:
            return flag
        if step % STOP_CHECK_EVERY:
            return False
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def shutdown(self) -> None:
        """Leave the process group cleanly (avoids gloo's rare abort at interpreter exit)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def deepspeed_config_path(train: TrainConfig) -> str | None:
    """train.deepspeed, or the config file of ``accelerate launch --config_file .../deepspeed_*.yaml``."""
    if train.deepspeed:
        return str(find_config_file(train.deepspeed))
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if not path:
            raise UserError("accelerate launch asked for DeepSpeed without deepspeed_config_file; use the "
                            "accelerate/deepspeed_zero2.yaml config or set train.deepspeed=deepspeed/zero2.json")
        return str(find_config_file(path))
    return None


def _read_ds_config(path: str, train: TrainConfig) -> dict:
    try:
        config = json.loads(open(path).read())
    except OSError as exc:
        raise UserError(f"train.deepspeed: cannot read {path} ({exc}); see deepspeed/zero2.json") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"train.deepspeed: {path} is not valid JSON: {exc}") from None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2):  # ZeRO-1/2 skip a step whose gradient norm is not finite (train/guard.py)
        raise UserError(f"{path}: ZeRO stage {stage} is not supported here; use stage 1 or 2")
    # every rank's optimizer slice is saved in the form DeepSpeed merges and re-slices for another number of ranks
    config.setdefault("zero_optimization", {})["elastic_checkpoint"] = True
    config["train_micro_batch_size_per_gpu"] = train.batch_size  # no data loader passes through prepare()
    config.pop("train_batch_size", None)
    return config


def _set_determinism(train: TrainConfig, cpu: bool) -> None:
    """``train.deterministic``: torch's deterministic algorithms where it has them and no cuDNN autotuning (slower;
    bit-exact resume on a GPU for networks whose every op has a deterministic kernel: the U-Nets; the ResNets'
    reflection-pad backward has none on CUDA, and torch warns); otherwise cuDNN picks the fastest kernels for the
    fixed crop size, as the reference does."""
    if train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
        # warn_only: an op without a deterministic CUDA kernel (the ResNet's ReflectionPad2d backward) warns
        # instead of failing the run; everything else runs deterministically
        torch.use_deterministic_algorithms(True, warn_only=True)
    if not cpu:
        torch.backends.cudnn.benchmark = not train.deterministic
        torch.backends.cudnn.deterministic = train.deterministic


def _handlers(cpu: bool, train: TrainConfig, always: bool = False) -> list:
    """The process group: gloo on CPUs, NCCL on GPUs; a collective that waits longer than train.dist_timeout_min
    fails (a rank that hangs on a live node; a dead one ends the job at once through srun --kill-on-bad-exit)."""
    from accelerate.utils import InitProcessGroupKwargs

    if not always and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # a process group only when there are several ranks
        return []
    return [InitProcessGroupKwargs(backend="gloo" if cpu else "nccl",
                                   timeout=timedelta(minutes=train.dist_timeout_min))]


def _ddp_handlers(train: TrainConfig, cpu: bool) -> list:
    """DDP's options. ``gradient_as_bucket_view``: the gradients live in the all-reduce buckets (no copy in or
    out of them, one gradient's worth of memory less). Exact resume on more than two ranks: DDP regroups its
    buckets after a process's first step, which moves each gradient's position in the all-reduce buffer and so the
    order in which its ranks' values are summed (a ring all-reduce sums chunk by chunk, from a different rank per
    chunk); a resumed process would start with the original grouping and its sums would differ in the last bits
    from the uninterrupted run's. With ``find_unused_parameters`` DDP keeps the grouping fixed (one extra walk of
    the autograd graph per step). Paid only where resume is bit-exact otherwise: on the CPU, or on GPUs with
    ``train.deterministic`` (cuDNN's autotuning and atomic kernels already break it there). Two ranks never need
    it: a + b is b + a exactly."""
    from accelerate.utils import DistributedDataParallelKwargs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return []
    exact = cpu or train.deterministic
    return [DistributedDataParallelKwargs(gradient_as_bucket_view=True, find_unused_parameters=world > 2 and exact)]


def peak_memory_gb(device) -> float | None:
    """This process's peak memory: the CUDA caching allocator's high-water mark on a GPU (a host-side counter,
    no sync), the resident set's (``ru_maxrss``, the kernel's VmHWM: one system call) on a CPU; None when
    unknown."""
    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
    except (ImportError, OSError):
        return None


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2**32)
    torch.manual_seed(seed * 1000 + rank)
