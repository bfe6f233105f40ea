"""The training loop under Accelerate: build, prepare, resume, step, log, sample, checkpoint.

Works the same in one process and under ``torchrun`` / ``accelerate launch --multi_gpu`` / SLURM tasks
(one process per GPU). Data never passes through ``accelerator.prepare``: every rank reads its own stream,
item k of rank r being a pure function of (seed, r, k), so resume needs only the step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from cyclegan_dist import checkpoint as ckpt
from cyclegan_dist.config import Config, diff_configs, write_config
from cyclegan_dist.errors import UserError
from cyclegan_dist.tracking import Tracker, new_wandb_id, previous_wandb_id, truncate_metrics
from cyclegan_dist.train import runtime
from cyclegan_dist.train.build import build_networks
from cyclegan_dist.train.data_setup import setup_data
from cyclegan_dist.train.evaluation import TrainingEvaluator, read_best, write_best
from cyclegan_dist.train.schedule import lr_factor, set_lr
from cyclegan_dist.train.step import StepParts, train_step

log = logging.getLogger("cyclegan_dist.train")

# Keys whose change makes a checkpoint unusable (the networks, the objective, the data stream, the optimizer).
INCOMPATIBLE = ("model", "loss", "seed", "data.domain_a", "data.domain_b", "data.crop_size", "data.load_size",
                "train.batch_size", "train.lr", "train.beta1", "train.beta2", "train.lr_scaling", "train.deepspeed")


def train(config: Config, run_dir: Path, resume: str = "auto", run_name: str | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train until ``train.steps``, or until ``stop_after`` more steps / a stop request (then checkpoint and return)."""
    acc_G, acc_D = runtime.make_accelerators(config.train)
    accelerator = acc_G  # process group, reductions, autocast: shared by both
    rank, world = accelerator.process_index, accelerator.num_processes
    device, is_main = accelerator.device, accelerator.is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    runtime.seed_everything(config.seed, rank)
    t = config.train

    with accelerator.main_process_first():  # rank 0 builds the demo data set once; the others then read it
        data = setup_data(config, rank)
    nets = build_networks(config, rank, world)
    gens, discs, opt_G, opt_D = nets.gens, nets.discs, nets.opt_G, nets.opt_D
    pool_A, pool_B, base_lr, memory = nets.pool_A, nets.pool_B, nets.base_lr, nets.memory_format

    source = ckpt.resolve_resume(run_dir, resume)
    shared = ckpt.load_shared(source) if source is not None else None
    if shared is not None:
        _check_compatible(shared["config"], config, source)
        gens.load_state_dict(shared["generators"])
        discs.load_state_dict(shared["discriminators"])
    if acc_D is acc_G:
        gens, discs, opt_G, opt_D = accelerator.prepare(gens, discs, opt_G, opt_D)
    else:  # DeepSpeed: one engine per model
        gens, opt_G = acc_G.prepare(gens, opt_G)
        acc_D.state.select_deepspeed_plugin("D")
        discs, opt_D = acc_D.prepare(discs, opt_D)
    sharded_optimizer = acc_D is not acc_G  # ZeRO: every rank holds its own slice of the optimizer state
    step, wandb_id = 0, previous_wandb_id(run_dir) if resume != "never" else None
    wandb_id = wandb_id or new_wandb_id()  # a job killed before its first checkpoint keeps its W&B run
    if shared is not None:
        step, wandb_id = int(shared["step"]), shared["wandb_id"]
        mine = ckpt.load_rank(source, rank)
        if sharded_optimizer and (mine is None or shared["world_size"] != world):
            raise UserError(f"{source} holds ZeRO optimizer slices of {shared['world_size']} ranks; "
                            f"resume it with the same number of ranks (now {world})")
        if sharded_optimizer:  # DeepSpeed ZeRO takes a list of slices indexed by rank; this rank's is enough
            for opt, name in ((opt_G, "opt_G"), (opt_D, "opt_D")):
                slices = [None] * world
                slices[rank] = mine[name]
                opt.optimizer.load_state_dict(slices, load_from_fp32_weights=True)
        else:
            opt_G.load_state_dict(shared["opt_G"])
            opt_D.load_state_dict(shared["opt_D"])
        if accelerator.scaler is not None and shared.get("scaler") is not None:
            accelerator.scaler.load_state_dict(shared["scaler"])
        if mine is not None:
            pool_A.load_state_dict(mine["pool_A"], device)
            pool_B.load_state_dict(mine["pool_B"], device)
            runtime.set_rng_state(mine["rng"])
        if is_main:
            truncate_metrics(run_dir, step)
            log.info("resumed from %s at step %d", source, step)
            if shared["world_size"] != world:
                log.warning("checkpoint was written by %d ranks, resuming on %d: the per-rank data streams%s change",
                            shared["world_size"], world, " and the scaled LR" if t.lr_scaling != "none" else "")
    gens_plain, discs_plain = accelerator.unwrap_model(gens), accelerator.unwrap_model(discs)

    if is_main:
        write_config(config, run_dir / "config.yaml")
    tracker = Tracker(run_dir, config, wandb_id, enabled=is_main, run_name=run_name or run_dir.name)
    parts = StepParts(gens, discs, discs_plain, opt_G, opt_D, pool_A, pool_B, config.loss,
                      backward=acc_G.backward, backward_D=acc_D.backward, autocast=accelerator.autocast)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).contiguous(memory_format=memory)

    def save(at_step: int) -> Path:
        return ckpt.save_checkpoint(
            run_dir, at_step, rank=rank, world_size=world, barrier=accelerator.wait_for_everyone,
            shared_state=(lambda: {
                "step": at_step, "config": config.to_dict(), "wandb_id": wandb_id, "world_size": world,
                "generators": gens_plain.state_dict(), "discriminators": discs_plain.state_dict(),
                **({} if sharded_optimizer else {"opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict()}),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            }) if is_main else None,
            rank_state={"step": at_step, "pool_A": pool_A.state_dict(), "pool_B": pool_B.state_dict(),
                        "rng": runtime.rng_state(), "samples_seen": at_step * t.batch_size,
                        "digest": {"generators": ckpt.weights_digest(gens_plain),
                                   "discriminators": ckpt.weights_digest(discs_plain)},
                        **({"opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict()} if sharded_optimizer else {})},
            generators={"G_A": gens_plain.G_A.state_dict(), "G_B": gens_plain.G_B.state_dict()},
            config_yaml=(run_dir / "config.yaml").read_text() if is_main else None,
            keep_last=t.keep_last, protect=(best["checkpoint"],) if best else (),
        )

    e = config.eval
    evaluator = (TrainingEvaluator(config, data.root, data.domain_a, data.domain_b, rank, world, device)
                 if e.every or e.at_end else None)
    best = read_best(run_dir) if source is not None else None
    result: dict[str, Any] = {"run_dir": str(run_dir), "world_size": world, "start_step": step, "wandb_id": wandb_id}
    if is_main and step == 0 and data.eval_pairs is not None:
        result["psnr_before"] = data.psnr(gens_plain.G_A, device, accelerator.autocast)
        tracker.log(0, {"eval/psnr": result["psnr_before"], "eval/psnr_identity": data.psnr_identity})

    loader = iter(data.loader(start_sample=step * t.batch_size))
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    status, last_metrics = "completed", {}
    while step < t.steps:
        lr = base_lr * lr_factor(step, t.steps, t.lr_decay_fraction)
        set_lr(opt_G, lr)
        set_lr(opt_D, lr)
        batch = next(loader)
        losses = train_step(parts, to_device(batch["A"]), to_device(batch["B"]))
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        step += 1
        window_steps += 1
        if step % t.log_every == 0 or step == t.steps:
            names = sorted(sums)
            means = accelerator.reduce(torch.stack([sums[n] for n in names]).to(device), reduction="mean") / window_steps
            elapsed = time.perf_counter() - window_start
            last_metrics = {n: float(v) for n, v in zip(names, means.tolist())}
            last_metrics.update({"lr": lr, "world_size": world, "img_per_s": window_steps * t.batch_size * world / elapsed,
                                 "step_time_s": elapsed / window_steps, "data/skipped": data.skipped()})
            tracker.log(step, last_metrics)
            sums, window_steps, window_start = {}, 0, time.perf_counter()
        if is_main and t.sample_every and (step % t.sample_every == 0 or step == t.steps):
            path = data.save_grid(gens_plain, run_dir / "samples" / f"step-{step:08d}.png", device, accelerator.autocast)
            tracker.log_image(step, "samples", path)
            if data.eval_pairs is not None:  # demo data: translation quality against the known transform
                tracker.log(step, {"eval/psnr": data.psnr(gens_plain.G_A, device, accelerator.autocast)})
        stop = runtime.stop_requested(accelerator, step) or (stop_after is not None and step - result["start_step"] >= stop_after)
        evaluate = evaluator is not None and ((e.every and step % e.every == 0) or (e.at_end and step == t.steps))
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps or stop or evaluate:
            result["checkpoint"] = str(save(step))
        if evaluate:
            scores = evaluator.evaluate(gens_plain.G_A, accelerator.autocast, lambda x: gather_object([x]))
            if is_main:
                tracker.log(step, scores)
                result["eval"] = scores
                if best is None or scores["eval/mifid"] < best["eval/mifid"]:
                    best = {"checkpoint": Path(result["checkpoint"]).name, "step": step, "eval/mifid": scores["eval/mifid"]}
                    write_best(run_dir, best["checkpoint"], step, scores["eval/mifid"])
        if stop:
            status = "stopped"
            break

    result.update({"status": status, "step": step, "metrics": last_metrics})
    if is_main and data.eval_pairs is not None and status == "completed":
        result["psnr_after"] = data.psnr(gens_plain.G_A, device, accelerator.autocast)
        result["psnr_identity"] = data.psnr_identity
        tracker.log(step, {"eval/psnr": result["psnr_after"], "eval/psnr_identity": data.psnr_identity})
    tracker.summary({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
    tracker.finish()
    runtime.finish_distributed(accelerator)
    return result


def _check_compatible(saved: dict[str, Any], config: Config, source: Path) -> None:
    differences = [d for d in diff_configs(saved, config.to_dict())
                   if any(d == key or d.startswith(key + ".") or d.startswith(key + ":") for key in INCOMPATIBLE)]
    if differences:
        raise UserError(
            f"checkpoint {source} was made with a different config: {'; '.join(differences)}. "
            "Use the original config, a new run directory, or --resume never to start over."
        )
