"""What only a GPU can show, each check asserted (PASS / FAIL), through the loop's own wiring; run first by gpu.sh.

    python -m benchmarks.gpu_checks [--quick] [--markdown FILE] [--json FILE]

1. ``nccl``: 2 processes (when the node has >= 2 GPUs) join an NCCL process group and all-reduce a known tensor.
2. ``fp16-overflow``: the loop's fp16 step (``prepare_step``: CUDA float16 autocast, the GradScaler, fused Adam)
   with the loss scale starting at 2^24: the first steps overflow, each overflow halves the scale exactly once,
   the guard counts them, the weights stay finite and the scale ends >= 1.
3. ``bf16-parity``: CUDA bf16 autocast's first-step losses equal fp32's within 3e-2 relative (bf16's rounding;
   tests/test_precision.py holds the CPU to 1e-2 on a smaller network).
4. ``compile``: ``train.compile=default``: after one warm-up step, further steps under
   ``torch.compiler.set_stance("fail_on_recompile")`` (no recompilation per step) with first-step losses as eager.
5. ``cuda-graphs``: ``train.compile=reduce-overhead``: the same, and Inductor skipped no CUDA graph (its
   ``cudagraph_skips`` counter stays 0), so the steps replay graphs.
6. ``device-skip``: CUDA's default guard mode (auto) is the device-side skip (fused Adam's ``found_inf``); a NaN
   forced into one step changes no weight and is counted, with no host sync in the guard.
7. ``deterministic``: ``train.deterministic=true`` trains on CUDA, and two runs of a U-Net give equal weights.

``--quick`` (CI, no GPU): 1-3 and 6 on the CPU (gloo for 1; 4-5 are covered on the CPU by tests/test_precision.py,
Inductor's CPU compile taking minutes). Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

from cyclegan_dist.config import load_config

TINY = ["model.generator=resnet_6blocks", "model.ngf=16", "model.ndf=16", "loss.pool_size=0", "data.crop_size=64",
        "data.load_size=72"]
QUICK = ["model.ngf=8", "model.ndf=8", "data.crop_size=32", "data.load_size=36"]  # float16 on a CPU is slow
FP16_STEPS = {"full": 30, "quick": 12}


def _config(*overrides: str):
    return load_config("smoke", [*TINY, *overrides])


def _built(*overrides: str):
    """A Runtime and the loop's prepared step (one process)."""
    from accelerate.state import AcceleratorState

    from cyclegan_dist.train.build import build_networks
    from cyclegan_dist.train.runtime import Runtime
    from cyclegan_dist.train.step import prepare_step

    AcceleratorState._reset_state(True)
    config = _config(*overrides)
    rt = Runtime(config.train)
    nets = build_networks(config.model, config.train, pool_size=0, seed=config.seed, rank=0, world=1,
                          device_type=rt.device.type)
    return rt, prepare_step(rt, config, nets), config


def _batch(step: int, config, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    size = config.data.crop_size
    return tuple((torch.rand(2, 3, size, size, generator=g) * 2 - 1).to(device) for _ in range(2))


def check_fp16_overflow(steps: int) -> str:
    init = 2.0 ** 24
    rt, step, config = _built('train.mixed_precision="fp16"', f"train.fp16_init_scale={init}")
    assert step.guard.mode == "scaler", step.guard.mode
    for k in range(steps):
        step(*_batch(k, config, rt.device))
    skips, scale = int(step.guard.read().item()), rt.scaler.get_scale()
    assert skips >= 1, "a 2^24 loss scale never overflowed"
    assert scale == init / 2 ** skips, f"scale {scale} after {skips} overflow skips (expected one halving each)"
    assert scale >= 1, f"loss scale collapsed to {scale}"
    params = [*step.gens_plain.parameters(), *step.discs_plain.parameters()]
    assert torch.isfinite(torch.nn.utils.get_total_norm(params)).item(), "non-finite weights"
    return f"{skips} overflow skips in {steps} steps, scale 2^24 -> {scale:g}"


def check_bf16_parity() -> str:
    losses = {}
    for name, precision in (("fp32", "no"), ("bf16", "bf16")):
        rt, step, config = _built(f'train.mixed_precision="{precision}"')
        losses[name] = {k: float(v) for k, v in step(*_batch(0, config, rt.device)).items()}
    worst = max(abs(losses["bf16"][k] - v) / abs(v) for k, v in losses["fp32"].items())
    # bf16's unit roundoff 2^-8 accumulated over ~20 layers (CPU: measured <= 1e-2); a 10% error in one loss
    # weight gives 0.1; 0 means autocast did not run
    assert 0 < worst <= 3e-2, f"first-step losses differ by {worst:.3g} relative (bound 3e-2)"
    return f"largest relative loss difference {worst:.2e}"


def check_compile(mode: str) -> str:
    from torch._dynamo.utils import counters

    losses = {}
    for name, setting in (("eager", "no"), ("compiled", mode)):
        rt, step, config = _built(f"train.compile={setting}")
        counters.clear()
        start = time.perf_counter()
        losses[name] = {k: float(v) for k, v in step(*_batch(0, config, rt.device)).items()}
        warmup = time.perf_counter() - start
        if name == "compiled":
            with torch.compiler.set_stance("fail_on_recompile"):
                for k in range(1, 6):
                    step(*_batch(k, config, rt.device))
            skips = sum(counters["inductor"].get(key, 0) for key in ("cudagraph_skips",))
            if mode == "reduce-overhead" and rt.device.type == "cuda":
                assert skips == 0, f"Inductor skipped {skips} CUDA graph(s)"
    worst = max(abs(losses["compiled"][k] - v) / abs(v) for k, v in losses["eager"].items())
    assert worst <= 1e-3, f"compiled first-step losses differ from eager by {worst:.3g} relative"
    return f"warm-up {warmup:.0f} s, 5 steps without recompiling, losses within {worst:.1e} of eager"


def check_device_skip() -> str:
    # on CUDA the default (auto) must choose the device-side skip; the CPU takes it when asked
    rt, step, config = _built("train.nonfinite_skip=" + ("auto" if torch.cuda.is_available() else "device"))
    assert step.guard.mode == "device", step.guard.mode
    step(*_batch(0, config, rt.device))
    before = {k: v.clone() for k, v in step.gens_plain.state_dict().items()}
    param = step.gens_plain.G_A.model[1].weight
    handle = param.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    step(*_batch(1, config, rt.device))
    handle.remove()
    after = step.gens_plain.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN gradient changed the generators"
    assert step.guard.read().item() == 1, "the skip was not counted"
    step(*_batch(2, config, rt.device))
    assert not torch.equal(before["G_A.model.1.weight"], step.gens_plain.state_dict()["G_A.model.1.weight"])
    return "a NaN step left the weights as they were (on the device) and was counted; the next step applied"


def check_deterministic() -> str:
    """``train.deterministic=true`` on CUDA: the run trains (ops without a deterministic kernel only warn), and
    two fresh runs of a U-Net (every op deterministic) give the same weights bit for bit."""
    weights = []
    for _ in range(2):
        rt, step, config = _built("train.deterministic=true", "model.generator=unet_64")
        for k in range(3):
            step(*_batch(k, config, rt.device))
        weights.append([p.detach().clone() for p in step.gens_plain.parameters()])
    torch.use_deterministic_algorithms(False)
    same = all(torch.equal(a, b) for a, b in zip(*weights))
    assert same, "two deterministic runs differ"
    return "3 steps, twice: equal weights"


def _nccl_rank(rank: int, world: int, port: int, backend: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    value = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(value)
    dist.barrier()
    Path(out, f"rank-{rank}").write_text(json.dumps(value.cpu().tolist()))
    dist.destroy_process_group()


def check_process_group(backend: str) -> str:
    import tempfile

    import torch.multiprocessing as mp

    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_nccl_rank, args=(world, port, backend, out), nprocs=world, start_method="spawn")
        values = [json.loads(Path(out, f"rank-{r}").read_text()) for r in range(world)]
    expected = [float(sum(range(1, world + 1)))] * 4
    assert values == [expected] * world, values
    return f"{backend}: {world} ranks all-reduced {expected[0]:g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the CPU subset (CI)")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not args.quick and not cuda:
        print("gpu_checks: no CUDA GPU visible (use --quick for the CPU subset)", file=sys.stderr)
        return 2
    if args.quick:
        TINY.extend(QUICK)
    steps = FP16_STEPS["quick" if args.quick else "full"]
    checks = {"fp16-overflow": lambda: check_fp16_overflow(steps), "bf16-parity": check_bf16_parity,
              "device-skip": check_device_skip}
    if cuda and torch.cuda.device_count() >= 2:
        checks["nccl"] = lambda: check_process_group("nccl")
    elif args.quick:
        checks["gloo"] = lambda: check_process_group("gloo")
    if not args.quick:
        checks["compile"] = lambda: check_compile("default")
        checks["cuda-graphs"] = lambda: check_compile("reduce-overhead")
        checks["deterministic"] = check_deterministic
    rows, failed = [], 0
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            detail, status = check(), "PASS"
        except Exception as exc:  # noqa: BLE001 - every check reports, the exit status says whether any failed
            detail, status = f"{type(exc).__name__}: {exc}", "FAIL"
            failed += 1
        rows.append({"check": name, "status": status, "seconds": round(time.perf_counter() - start, 1),
                     "detail": detail})
        print(f"{status} {name} ({rows[-1]['seconds']} s): {detail}", flush=True)
    if cuda and torch.cuda.device_count() < 2:
        rows.append({"check": "nccl", "status": "not run", "seconds": 0, "detail": "needs 2 GPUs"})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n## Correctness checks (benchmarks.gpu_checks)\n\n"
                    "| check | status | s | detail |\n|---|---|---|---|\n")
            f.writelines(f"| {r['check']} | {r['status']} | {r['seconds']} | {r['detail']} |\n" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
