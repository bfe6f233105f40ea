"""``python -m benchmarks.step``: img/s of one CycleGAN training step, ours vs the reference, same run.

Ours: ``cyclegan_dist.train.step.train_step`` with its parts wired as ``cyclegan_dist.train.loop`` wires them
(``Runtime``, ``build_networks``, channels_last, ``net.compile()``, fused Adam, the non-finite guard, ``ImagePool``,
``accelerator.prepare``, ``accelerator.autocast``, ``accelerator.backward``, the loop's ``to_device``).
Baseline: ``benchmarks.reference_step`` (the junyanz ``optimize_parameters``, fp32 eager, no Accelerate)
on the same networks from the same seed. Both take the same CPU batch and move it to the device each step.
Both arms share one process, so on a CPU the reference also runs with the host-memory setting ours' ``Runtime``
makes (``train/host_memory.py``): the ratio compares the step code; what the setting itself gains shows in a run
with ``CYCLEGAN_KEEP_FREED_MEMORY=0`` (glibc's defaults) beside one without.

A *variant* is ``PRECISION[+cl][+compile|+graphs|+autotune][+cudnn]`` (``fp32``, ``bf16+cl``, ``bf16+cl+graphs``:
torch.compile in its default, reduce-overhead (CUDA graphs) or max-autotune mode); the baseline is
always fp32 eager. For each (model, variant, batch) both are built from identical initial weights, one step of
each is compared weight for weight (``max|dw|``: 0 or ~1e-9 means the same math; a real difference shows at the
size of one Adam step, ~lr = 2e-4), then timed interleaved. "img/s" counts training samples (one photo plus one
painting) per second. FLOPs of the step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
real ``train_step`` (on the meta device, so it costs no compute); MFU = FLOPs x steps/s / peak.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from benchmarks.common import (
    PRECISIONS,
    Ratio,
    Report,
    add_common_args,
    apply_threads,
    check_precisions,
    command_string,
    csv,
    fmt,
    interleaved,
    median,
    parse_with_quick,
    resolve_device,
    timed,
)

MODELS = ("resnet9", "unet")
DEFAULT_PEAK_CUDA = 989e12  # H100/H200 SXM dense bf16


# ------------------------------------------------------------------------------------------- variants


# variant flag -> train.compile mode; reduce-overhead = CUDA graphs of each network's forward and backward
COMPILE_FLAGS = {"compile": "default", "graphs": "reduce-overhead", "autotune": "max-autotune"}


@dataclass(frozen=True)
class Variant:
    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "no"  # train.compile: no | default | reduce-overhead | max-autotune
    cudnn: bool = False  # force torch.backends.cudnn.benchmark on for ours (the Runtime sets it on CUDA)

    @classmethod
    def parse(cls, text: str) -> "Variant":
        parts = [p.strip() for p in text.split("+") if p.strip()]
        if not parts or parts[0] not in PRECISIONS:
            raise SystemExit(f"error: variant {text!r} must start with one of {', '.join(PRECISIONS)} "
                             "(e.g. bf16+cl+compile)")
        flags = set(parts[1:])
        unknown = flags - {"cl", "cudnn", *COMPILE_FLAGS}
        if unknown:
            raise SystemExit(f"error: variant {text!r}: unknown flag(s) {', '.join(sorted(unknown))}; "
                             f"use cl, cudnn, {', '.join(COMPILE_FLAGS)}")
        compiled = [COMPILE_FLAGS[f] for f in flags if f in COMPILE_FLAGS]
        return cls(parts[0], "cl" in flags, compiled[0] if compiled else "no", "cudnn" in flags)

    @property
    def name(self) -> str:
        flag = {mode: f for f, mode in COMPILE_FLAGS.items()}.get(self.compile)
        return "+".join([self.precision] + (["cl"] if self.channels_last else []) + ([flag] if flag else [])
                        + (["cudnn"] if self.cudnn else []))


def generator_for(model: str, size: int) -> str:
    if model == "resnet9":
        return "resnet_9blocks"
    if size % 256 == 0:
        return "unet_256"
    if size in (32, 64, 128):
        return f"unet_{size}"  # the U-Net needs 2**depth | size: a shallower one below 256 px (stated in the table)
    raise SystemExit(f"error: the U-Net needs --size 32, 64, 128 or a multiple of 256, got {size}")


def bench_config(model: str, size: int, batch: int, variant: Variant, ngf: int | None):
    from cyclegan_dist.config import load_config

    overrides = [
        f"model.generator={generator_for(model, size)}", f"data.crop_size={size}", f"data.load_size={size}",
        f"train.batch_size={batch}", f'train.mixed_precision="{PRECISIONS[variant.precision]}"',
        f"train.channels_last={str(variant.channels_last).lower()}", f"train.compile={variant.compile}",
        "wandb.mode=disabled",
    ]
    if ngf:
        overrides += [f"model.ngf={ngf}", f"model.ndf={ngf}"]
    return load_config(model, overrides)


# ------------------------------------------------------------------------------------------ the two arms


def reset_runtime() -> None:
    """Forget the previous case's Accelerator state and compiled graphs (cases run one after the other)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Ours:
    step: Callable[[torch.Tensor, torch.Tensor], Any]
    parameters: Callable[[], dict[str, torch.Tensor]]
    device: torch.device


def build_ours(config) -> Ours:
    """Everything ``cyclegan_dist.train.loop.train`` does before its first step that matters for speed,
    in the same order (fresh run: no resume, one process or one rank)."""
    from cyclegan_dist.train.build import build_networks
    from cyclegan_dist.train.runtime import Runtime
    from cyclegan_dist.train.step import prepare_step

    t = config.train
    rt = Runtime(t)
    device = rt.device
    nets = build_networks(config.model, t, pool_size=config.loss.pool_size, seed=config.seed, rank=rt.rank,
                          world=rt.world, device_type=device.type)
    memory = nets.memory_format
    prepared = prepare_step(rt, config, nets)
    gens_plain, discs_plain = prepared.gens_plain, prepared.discs_plain

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).contiguous(memory_format=memory)

    def step(real_A: torch.Tensor, real_B: torch.Tensor):
        return prepared(to_device(real_A), to_device(real_B))

    def parameters() -> dict[str, torch.Tensor]:
        return {**dict(gens_plain.named_parameters()), **dict(discs_plain.named_parameters())}

    return Ours(step, parameters, device)


def count_step_flops(config, batch: int, size: int) -> int | None:
    """FLOPs of one real ``train_step`` (eager, plain parts) counted by FlopCounterMode on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from cyclegan_dist.image_pool import ImagePool
    from cyclegan_dist.train.build import build_pairs
    from cyclegan_dist.train.step import StepParts, train_step

    try:
        gens, discs = build_pairs(config.model, config.seed)
        gens.to("meta")
        discs.to("meta")
        parts = StepParts(gens, discs, discs, torch.optim.Adam(gens.parameters()), torch.optim.Adam(discs.parameters()),
                          ImagePool(config.loss.pool_size), ImagePool(config.loss.pool_size), config.loss)
        a = torch.empty(batch, 3, size, size, device="meta")
        b = torch.empty(batch, 3, size, size, device="meta")
        with FlopCounterMode(display=False) as counter:
            train_step(parts, a, b)
        return int(counter.get_total_flops())
    except Exception as e:  # counting is informative; never fail the timing for it
        print(f"warning: FLOP count failed ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def channels_last_gradient_error(config, device, batch: int, size: int) -> tuple[float, float]:
    """Relative L2 errors of one step's G and D gradients against a float64 contiguous reference:
    ``(channels_last fp32, contiguous fp32)``, eager, the same weights and batch.

    The second number is what fp32 rounding alone gives (up to ~1e-2: the cycle term's gradient cancels a lot
    through InstanceNorm); a first number far above it means a wrong backward kernel for channels_last.
    Written because torch 2.14's CPU ``instance_norm`` backward is wrong when the batch is 1 and the incoming
    gradient is channels_last (error ~1); this shows whether a device has that problem.
    """
    from cyclegan_dist.image_pool import ImagePool
    from cyclegan_dist.train.build import build_pairs
    from cyclegan_dist.train.step import StepParts, train_step

    g = torch.Generator().manual_seed(99)
    real_A = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    real_B = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    grads = {}
    cases = {"ref": (torch.float64, torch.contiguous_format), "cl": (torch.float32, torch.channels_last),
             "nchw": (torch.float32, torch.contiguous_format)}
    for case, (dtype, layout) in cases.items():
        gens, discs = build_pairs(config.model, config.seed)
        gens.to(device, dtype, memory_format=layout)
        discs.to(device, dtype, memory_format=layout)

        def snapshot(name: str, optimizer, case=case) -> None:  # instead of a step: keep the gradients
            grads[(case, name)] = torch.cat([p.grad.double().flatten() for group in optimizer.param_groups
                                             for p in group["params"] if p.grad is not None])
            optimizer.zero_grad(set_to_none=True)

        parts = StepParts(gens, discs, discs, torch.optim.SGD(gens.parameters()), torch.optim.SGD(discs.parameters()),
                          ImagePool(0), ImagePool(0), config.loss, optimizer_step=snapshot)
        train_step(parts, real_A.to(device, dtype).contiguous(memory_format=layout),
                   real_B.to(device, dtype).contiguous(memory_format=layout))
        del gens, discs, parts

    def err(case: str) -> float:
        return max(float((grads[(case, n)] - grads[("ref", n)]).norm() / grads[("ref", n)].norm().clamp_min(1e-30))
                   for n in ("G", "D"))

    return err("cl"), err("nchw")


def max_weight_difference(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    if ours.keys() != ref.keys():
        raise AssertionError(f"parameter names differ: {sorted(set(ours) ^ set(ref))[:5]}")
    with torch.no_grad():
        return max(float((ours[k].float() - ref[k].float().to(ours[k].device)).abs().max()) for k in ours)


# ------------------------------------------------------------------------------------------------ a case


_CL_CHECKS: dict[tuple, tuple[float, float]] = {}


def run_case(model: str, variant: Variant, batch: int, args, peak: float | None) -> dict[str, Any]:
    from benchmarks.reference_step import build_reference

    reset_runtime()
    torch.backends.cudnn.benchmark = args.initial_cudnn_benchmark  # undo the previous case's arms
    config = bench_config(model, args.size, batch, variant, args.ngf)
    ours = build_ours(config)
    device = ours.device
    ref = build_reference(config, device)
    g = torch.Generator().manual_seed(1234)
    real_A = torch.rand(batch, 3, args.size, args.size, generator=g) * 2 - 1  # the loader's CPU batch
    real_B = torch.rand(batch, 3, args.size, args.size, generator=g) * 2 - 1

    ref_flag = True  # the reference sets cudnn.benchmark in BaseModel.__init__ (fixed-size crops)
    ours_flag = bool(torch.backends.cudnn.benchmark) or variant.cudnn  # whatever the Runtime left, or +cudnn

    def ref_step() -> None:
        torch.backends.cudnn.benchmark = ref_flag  # process-global: each arm sets its own before it runs
        ref.set_input(real_A, real_B)
        ref.optimize_parameters()

    def ours_step():
        torch.backends.cudnn.benchmark = ours_flag
        return ours.step(real_A, real_B)

    # two steps of each from identical weights: the same math gives the same losses (step 2 checks the update too;
    # weights are compared after step 1 as well, but Adam's first step is +-lr for any gradient that is ~0, such
    # as the biases that InstanceNorm cancels, so rounding alone can move those by 2 lr)
    loss_diff, dw = 0.0, None
    for i in range(2):
        ref_step()
        mine = ours_step()
        theirs = {"loss/G": ref.loss_G.detach(), "loss/D": (ref.loss_D_A + ref.loss_D_B).detach()}
        for k, v in theirs.items():
            loss_diff = max(loss_diff, abs(float(mine[k]) - float(v)) / max(abs(float(v)), 1e-12))
        if i == 0:
            dw = max_weight_difference(ours.parameters(), ref.parameters())
    for _ in range(max(0, args.warmup - 2)):  # more warm-up (compilation, allocator, cuDNN autotune): untimed
        ref_step()
        ours_step()
    step_gb = step_peak_memory(ours_step, device)
    static_gb = sum(p.numel() * p.element_size() for p in ours.parameters().values()) * 4 / 1e9  # w, grad, Adam m, v
    times = interleaved({"reference": lambda: timed(ref_step, args.steps_per_rep, device),
                         "ours": lambda: timed(ours_step, args.steps_per_rep, device)}, args.reps)
    t_ref, t_ours = median(times["reference"]), median(times["ours"])
    ratio = Ratio.of(times["reference"], times["ours"])
    flops = count_step_flops(config, batch, args.size)
    cl_err = None
    if variant.channels_last:  # checked at batch 1 (where torch 2.14's CPU kernel fails), once per model and size
        key = (model, args.size, device.type)
        if key not in _CL_CHECKS:
            _CL_CHECKS[key] = channels_last_gradient_error(config, device, 1, args.size)
        cl_err = _CL_CHECKS[key]
    mfu = flops / t_ours / peak if (flops and peak) else None
    row = {
        "model": model, "generator": config.model.generator, "ngf": config.model.ngf, "size": args.size,
        "batch": batch, "variant": variant.name, "device": device.type,
        "ours img/s": fmt(batch / t_ours, 2), "ref img/s": fmt(batch / t_ref, 2),
        "ratio": ratio.text(), "ratio range": ratio.spread(),
        "GFLOP/step": fmt(flops / 1e9, 1) if flops else "—",
        "MFU": f"{100 * mfu:.1f}%" if mfu is not None else "—",
        "loss rel. diff": f"{loss_diff:.1e}",
        "CL grad err": f"{cl_err[0]:.1e} ({cl_err[1]:.1e})" if cl_err else "—",
        "cudnn.benchmark ours/ref": f"{ours_flag}/{ref_flag}",
        "peak GB": fmt(static_gb + step_gb, 2) if step_gb is not None else "—",
        # raw numbers for JSON consumers
        "ours_img_s": batch / t_ours, "ref_img_s": batch / t_ref, "ratio_median": ratio.median,
        "ratio_low": ratio.low, "ratio_high": ratio.high, "flops_per_step": flops, "mfu": mfu, "max_dw": dw,
        "loss_rel_diff": loss_diff, "cl_grad_err": cl_err[0] if cl_err else None,
        "nchw_grad_err": cl_err[1] if cl_err else None, "cudnn_benchmark_ours": ours_flag,
        "cudnn_benchmark_ref": ref_flag,
        "times_ours_s": times["ours"], "times_ref_s": times["reference"],
        "peak_memory_gb": static_gb + step_gb if step_gb is not None else None, "static_memory_gb": static_gb,
    }
    return row


def step_peak_memory(step, device) -> float | None:
    """GB one of our steps needs beyond what is allocated before it (activations, gradients, temporaries): the
    CUDA allocator's high-water mark on a GPU; on a CPU the resident set's (VmHWM, reset through
    /proc/self/clear_refs), which the allocator's caching makes approximate. None when it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 1e9

    def status(key: str) -> int | None:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":")), None)

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = status("VmRSS")
        step()
        peak = status("VmHWM")
    except OSError:
        return None
    return (peak - before) / 1e9 if peak is not None and before is not None else None


HEADERS = ["model", "generator", "ngf", "size", "batch", "variant", "ours img/s", "ref img/s", "ratio", "ratio range",
           "GFLOP/step", "MFU", "peak GB", "loss rel. diff", "CL grad err"]


def goal_notes(rows: list[dict[str, Any]], device_type: str) -> list[str]:
    notes = []
    fp32 = [r for r in rows if r["variant"] == "fp32"]
    if fp32:
        worst = min(fp32, key=lambda r: r["ratio_median"])
        ok = all(r["ratio_median"] >= 0.97 for r in fp32)
        notes.append(f"goal fp32 ours/ref >= ~1.0 (within 3% noise): {'MET' if ok else 'NOT MET'} "
                     f"(lowest median ratio {worst['ratio_median']:.2f}, {worst['model']} batch {worst['batch']})")
    fast = [r for r in rows if r["variant"] != "fp32" and r["precision"] != "fp32"]
    if fast and device_type == "cuda":
        best = max(fast, key=lambda r: r["ratio_median"])
        notes.append(f"goal GPU bf16/fp16 >= 2x the fp32 baseline: {'MET' if best['ratio_median'] >= 2 else 'NOT MET'} "
                     f"(best {best['ratio_median']:.2f}x: {best['model']} {best['variant']} batch {best['batch']})")
        at8 = [r for r in fast if r["batch"] == 8 and r["mfu"] is not None]
        if at8:
            b = max(at8, key=lambda r: r["mfu"])
            notes.append(f"goal GPU MFU >= 35% at batch 8: {'MET' if b['mfu'] >= 0.35 else 'NOT MET'} "
                         f"(best {100 * b['mfu']:.1f}%: {b['model']} {b['variant']})")
    elif fast:
        notes.append("bf16/fp16 and MFU goals are GPU goals: on a CPU these rows only show the code path works")
    return notes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    add_common_args(p, size=256, batch="1", reps=5)
    p.add_argument("--model", type=csv(str), default=list(MODELS), help="resnet9,unet (comma-separated)")
    p.add_argument("--variants", type=csv(str), default=None,
                   help="PRECISION[+cl][+compile], comma-separated, e.g. fp32,bf16+cl+compile "
                        "(default: each --precision with --channels-last/--compile)")
    p.add_argument("--channels-last", action="store_true", help="variants built from --precision use channels_last")
    p.add_argument("--compile", action="store_true", help="variants built from --precision use torch.compile")
    p.add_argument("--ngf", type=int, default=None, help="generator/discriminator width (default: the config's 64)")
    p.add_argument("--steps-per-rep", type=int, default=None,
                   help="steps per timed window (default 10 on GPU, 1 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per arm first, >= 2 (default 4; compile needs them)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s for MFU (default $CYCLEGAN_PEAK_FLOPS, else 989e12 on CUDA, none on CPU)")
    args = parse_with_quick(p, argv, {"size": 32, "ngf": 8, "reps": 2})
    check_precisions(args.precision)
    for m in args.model:
        if m not in MODELS:
            raise SystemExit(f"error: --model {m!r} is not one of {', '.join(MODELS)}")
    if args.variants is None:
        suffix = ("+cl" if args.channels_last else "") + ("+compile" if args.compile else "")  # default mode
        args.variants = [p + suffix for p in args.precision]
    args.variant_list = [Variant.parse(v) for v in args.variants]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    if args.device != "auto" and device.type == "cpu" and torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the Runtime picks CUDA whenever it is visible
    args.steps_per_rep = args.steps_per_rep or (10 if device.type == "cuda" else 1)
    args.warmup = max(2, args.warmup if args.warmup is not None else (2 if args.quick else 4))
    args.initial_cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
    peak = args.peak_flops or (float(os.environ["CYCLEGAN_PEAK_FLOPS"]) if os.environ.get("CYCLEGAN_PEAK_FLOPS")
                               else None)
    if peak is None and device.type == "cuda":
        peak = DEFAULT_PEAK_CUDA
    report = Report("step", f"Training step: ours vs reference ({args.size}x{args.size})",
                    command_string("benchmarks.step"),
                    HEADERS)
    stopped = False

    def on_term(signum, frame):  # `timeout` sends SIGTERM: keep the cases measured so far
        raise _Stopped()

    signal.signal(signal.SIGTERM, on_term)
    try:
        for model in args.model:
            for variant in args.variant_list:
                if variant.precision == "fp16" and device.type != "cuda":
                    report.notes.append(f"{model} {variant.name}: skipped (fp16 autocast needs a CUDA GPU)")
                    continue
                for batch in args.batch:
                    row = run_case(model, variant, batch, args, peak)
                    row["precision"] = variant.precision
                    report.rows.append(row)
                    print(f"[{model} {variant.name} batch {batch}] ours {row['ours img/s']} img/s, reference "
                          f"{row['ref img/s']} img/s, ratio {row['ratio']} ({row['ratio range']})", flush=True)
    except _Stopped:
        stopped = True
        report.notes.append(f"STOPPED by SIGTERM (a time limit) after {len(report.rows)} case(s); "
                            "the others did not run")
    report.notes += [
        "ratio = median over repetitions of (reference step time / our step time) in neighbouring interleaved "
        "windows; > 1 means ours is faster. The reference is always fp32 eager.",
        f"{args.reps} timed windows of {args.steps_per_rep} step(s) per arm after {args.warmup} warm-up step(s); "
        "img/s = training samples (photo + painting) per second",
        "loss rel. diff = largest relative difference of the G and D losses between ours and the reference over the "
        "first two steps from the same weights and batch: fp32 eager ~1e-7 (our Adam is fused: the same update, "
        "rounded differently), compile ~1e-6, "
        "bf16 ~1e-3..1e-2 (rounding); a different objective would show ~1e-1",
        "CL grad err (channels_last variants; at batch 1) = relative L2 error of one eager fp32 step's G and D "
        "gradients in "
        "channels_last against float64, with the same for contiguous fp32 in brackets (rounding alone: up to "
        "~1e-2); far above the bracket (~0.1-1) means a wrong backward kernel, as torch 2.14's CPU instance_norm "
        "at batch 1",
        "cuDNN autotuning (torch.backends.cudnn.benchmark): the reference turns it on; ours uses what the training "
        "code sets (on, on CUDA) unless the variant has +cudnn; the flag is set per arm before each step",
    ]
    if peak:
        report.notes.append(f"MFU against a peak of {peak / 1e12:.0f} TFLOP/s")
    report.notes += goal_notes(report.rows, device.type)
    report.emit(args.json_out, args.markdown)
    return 124 if stopped else 0


class _Stopped(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
