"""The training loop: SGD with warmup and step decay, mixed precision (``sfpn.engine.precision``),
DDP, checkpoints, evaluation, logs.

Iteration-based, like the paper's schedules. Everything that decides what an iteration computes
is checkpointed or derived from the iteration number (model, optimizer, scheduler, grad scaler,
every rank's RNG states, and the data stream, which is a pure function of seed and position), so
a resumed run continues exactly as the uninterrupted one would have.

Only rank 0 writes files: checkpoints, ``metrics.jsonl`` (one JSON record per log step and per
evaluation), ``plot.png`` and ``eval.json``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from .._threads import SharedCoreThreads, fitted_cpu_threads
from ..data.coco import collate
from ..data.samplers import GroupedTrainBatchSampler, loader_generator
from . import distributed
from .checkpoint import (
    capture_rng_state,
    check_model_config,
    config_to_dict,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig, validate
from .evaluation import evaluate, format_metrics
from .optimizer import FusedSGD
from .plot import plot_metrics
from .precision import choose_precision, prepare_model


class WarmupMultiStep:
    """LR factor at an iteration: linear warmup from ``warmup_factor``, then x``gamma`` at each
    milestone. A class rather than a closure so LambdaLR can checkpoint it."""

    def __init__(self, warmup_iters: int, warmup_factor: float, milestones: list[int], gamma: float):
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.milestones = sorted(milestones)
        self.gamma = gamma

    def __call__(self, iteration: int) -> float:
        factor = self.gamma ** sum(iteration >= m for m in self.milestones)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


class TrainingDiverged(FloatingPointError):
    """The loss became non-finite or exploded; the message names the iteration, the loss terms
    and the last good checkpoint."""


class DivergenceGuard:
    """Decides whether a training loss means the run has diverged.

    Detection losses start at their highest and fall, so the reference is the running median of
    the total loss over the run's first ``window`` iterations (robust to a few odd batches): a
    later loss above ``factor`` (> 1) times it, or any non-finite loss, is divergence; ``window``
    0 leaves only the non-finite test. ``early_losses`` is checkpointed so that a resumed run
    keeps its reference.
    """

    def __init__(self, factor: float, window: int):
        if not factor > 1:
            raise ValueError(f"divergence_factor must be greater than 1, got {factor}")
        if window < 0:
            raise ValueError(f"divergence_window must be non-negative, got {window}")
        self.factor = factor
        self.window = window
        self.early_losses: list[float] = []

    def reference(self) -> float | None:
        """The median of the early losses seen so far, or None before the first."""
        return float(np.median(self.early_losses)) if self.early_losses else None

    def check(self, loss: float) -> str | None:
        """Why ``loss`` (this iteration's total) is divergence, or None; records it while the
        window is open."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        reference = self.reference()
        if reference is not None and loss > self.factor * reference:
            count = len(self.early_losses)
            return (f"loss {loss:.4g} is over {self.factor:g}x the median {reference:.4g} of the first "
                    f"{count} iteration{'s' if count > 1 else ''}")
        if len(self.early_losses) < self.window:
            self.early_losses.append(loss)
        return None


def seed_everything(seed: int) -> None:
    """Seeds torch, numpy and Python; ranks get different streams (their RPN/RoI sampling)."""
    seed = seed + distributed.get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on biases and normalisation parameters (1-d tensors).
    Fused: one pass over each parameter, its gradient and momentum instead of three (the default
    run's R18 on one CPU thread: 2.2 ms a step against 6.5), and none of ATen's copies of
    channels_last gradients (:mod:`sfpn.engine.optimizer`)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.dim() <= 1 else decay).append(parameter)
    solver = config.solver
    return FusedSGD(
        [{"params": decay, "weight_decay": solver.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=solver.lr,
        momentum=solver.momentum,
    )


def build_scheduler(optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    solver = config.solver
    milestones = [round(step * solver.max_iters) for step in solver.steps]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupMultiStep(solver.warmup_iters, solver.warmup_factor, milestones, solver.gamma)
    )


class Trainer:
    """Trains ``model`` on ``train_set`` and evaluates on ``val_set`` (COCO datasets).

    Args:
        model: a detector following the sfpn detector contract, on ``device``.
        meta: what a checkpoint must record to rebuild the model (preset, overrides, classes...);
            ``model_config`` is added from ``model.config``.
        output_dir: where rank 0 writes checkpoints, metrics.jsonl, plot.png and eval.json.
    """

    def __init__(self, model, train_set, val_set, config: TrainConfig, output_dir: str, device: torch.device, meta: dict, progress: bool = True):
        validate(config)
        self.config = config
        self.device = device
        self.output_dir = output_dir
        self.progress = progress
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.meta = dict(meta, train_config=config_to_dict(config))
        if hasattr(model, "config"):
            self.meta["model_config"] = config_to_dict(model.config)
        self.world_size = distributed.get_world_size()
        self.rank = distributed.get_rank()
        if config.solver.batch_size % self.world_size:
            raise ValueError(f"solver.batch_size ({config.solver.batch_size}) must be a multiple of the number of processes ({self.world_size})")
        #: What the run computes in (``solver.amp`` on this device) and why.
        self.precision = choose_precision(config.solver.amp, device)
        prepare_model(model, self.precision)
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.dtype == torch.float16)
        self.iteration = 0
        self.guard = DivergenceGuard(config.divergence_factor, config.divergence_window)
        #: The newest checkpoint written or resumed from, named when the run diverges.
        self.last_checkpoint: str | None = None
        #: While :meth:`train` runs on the CPU with ``cpu_threads=adaptive``: what fits the thread
        #: count to the free cores, ticked every iteration and every evaluated batch.
        self.shared_cores: SharedCoreThreads | None = None
        if distributed.is_distributed():
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
            )
        else:
            self.ddp_model = model
        if distributed.is_main_process():
            os.makedirs(output_dir, exist_ok=True)
        self.metrics_file = os.path.join(output_dir, "metrics.jsonl")

    # -- checkpoints --------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """The full training state; collective (gathers every rank's RNG states)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "rng": distributed.all_gather_objects(capture_rng_state()),
            "early_losses": list(self.guard.early_losses),
            "meta": self.meta,
        }

    def save(self, name: str) -> None:
        state = self.checkpoint_state()
        self.last_checkpoint = os.path.join(self.output_dir, name)
        if distributed.is_main_process():
            save_checkpoint(self.last_checkpoint, state)
            prune_checkpoints(self.output_dir, self.config.keep_checkpoints)

    def resume(self, path: str) -> None:
        """Continues from a checkpoint: weights, optimizer, schedule, iteration, RNG states."""
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(path, map_location="cpu")
        if "model_config" in self.meta:
            check_model_config(state, self.meta["model_config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.guard.early_losses = list(state.get("early_losses", []))  # absent before the guard existed
        self.last_checkpoint = state["path"]
        rng = state["rng"]
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            # Another world size: the data stream and the sampling differ anyway; keep going.
            seed_everything(self.config.seed + self.iteration)
        if distributed.is_main_process() and os.path.isfile(self.metrics_file):
            self._truncate_metrics(self.iteration)

    def _truncate_metrics(self, iteration: int) -> None:
        """Drops the log records written after the checkpoint, which the resumed run redoes."""
        with open(self.metrics_file) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["iter"] <= iteration]
        with open(self.metrics_file, "w") as f:
            f.writelines(kept)

    # -- logging ------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if distributed.is_main_process():
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- the loop -----------------------------------------------------------------------------

    def _loader(self):
        sampler = GroupedTrainBatchSampler(
            self.train_set.aspect_ratio_groups(),
            self.config.solver.batch_size // self.world_size,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            start_batch=self.iteration,
        )
        workers = self.config.data.num_workers
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            generator=loader_generator(),
        )

    def _to_device(self, images, targets):
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [
            {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}
            for target in targets
        ]
        return images, targets

    def step(self, images, targets) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the detached losses. Raises ``TrainingDiverged``
        before touching the weights when the loss has diverged."""
        with self.precision.autocast(self.device.type):
            losses = self.ddp_model(images, targets)
        self._check_divergence(losses)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: v.detach() for k, v in losses.items()}

    def _check_divergence(self, losses: dict[str, torch.Tensor]) -> None:
        """Raises ``TrainingDiverged`` when this iteration's loss, averaged over the ranks (so
        that every rank stops together rather than leaving the others waiting in backward), has
        diverged. Costs one device-to-host copy of the loss terms per iteration."""
        terms = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
        terms = distributed.reduce_mean(terms)
        reason = self.guard.check(sum(terms.values()))
        if reason is not None:
            listed = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
            raise TrainingDiverged(
                f"training diverged at iteration {self.iteration + 1}: {reason} ({listed}); last good "
                f"checkpoint: {self.last_checkpoint or 'none written yet'}; lower solver.lr or set "
                "solver.clip_grad_norm"
            )

    def evaluate(self) -> dict:
        distributed.broadcast_buffers(self.model)
        metrics, table = evaluate(
            self.model,
            self.val_set,
            self.device,
            batch_size=self.config.eval_batch_size,
            num_workers=min(self.config.data.num_workers, 2),
            results_file=os.path.join(self.output_dir, "results.json"),
            progress=self.progress,
            precision=self.precision,
            shared_cores=self.shared_cores,
        )
        self._log({"type": "eval", "iter": self.iteration, **metrics})
        if distributed.is_main_process():
            tqdm.write(f"evaluation at iteration {self.iteration}:\n{table}")
            plot_metrics(self.metrics_file, os.path.join(self.output_dir, "plot.png"))
        return metrics

    def train(self, max_iters: int | None = None) -> dict | None:
        """Trains up to ``config.solver.max_iters`` (or stops early at ``max_iters``, leaving a
        checkpoint there as a kill would); evaluates at the end. Returns the final metrics.

        On the CPU with ``cpu_threads=adaptive`` the intra-op thread count follows the cores that
        other processes leave free (``sfpn._threads.SharedCoreThreads``), through the iterations
        and the evaluations; the count the call started with is restored when it returns."""
        with fitted_cpu_threads(self.device.type, self.config.cpu_threads) as shared_cores:
            self.shared_cores = shared_cores
            try:
                return self._train(max_iters)
            finally:
                self.shared_cores = None

    def _train(self, max_iters: int | None) -> dict | None:
        config = self.config
        total = config.solver.max_iters
        stop = min(total, max_iters) if max_iters is not None else total
        start = self.iteration
        self.model.train()
        bar = tqdm(total=total, initial=self.iteration, desc="training", disable=not (self.progress and distributed.is_main_process()), dynamic_ncols=True)
        window: dict[str, float] = {}
        window_iters, window_start, data_time = 0, time.perf_counter(), 0.0
        batches = iter(self._loader()) if self.iteration < stop else None
        shared_cores = self.shared_cores
        while self.iteration < stop:
            data_start = time.perf_counter()
            images, targets = self._to_device(*next(batches))
            data_time += time.perf_counter() - data_start
            losses = self.step(images, targets)
            self.iteration += 1
            window_iters += 1
            for key, value in losses.items():
                window[key] = window.get(key, 0.0) + value
            bar.update(1)
            if shared_cores is not None and shared_cores.tick() is not None and distributed.is_main_process():
                tqdm.write(f"iteration {self.iteration}: other processes use {shared_cores.others:.1f} of this "
                           f"process's cores; now {shared_cores.threads} of at most {shared_cores.most} CPU threads")
            if self.iteration % config.log_every == 0 or self.iteration == stop:
                means = distributed.reduce_mean({k: float(v) / window_iters for k, v in window.items()})
                loss = sum(means.values())
                elapsed = time.perf_counter() - window_start
                record = {
                    "type": "train",
                    "iter": self.iteration,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "loss": loss,
                    **means,
                    "time": elapsed / window_iters,
                    "data_time": data_time / window_iters,
                    "cpu_threads": torch.get_num_threads(),
                }
                self._log(record)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.4g}", s_it=f"{record['time']:.2f}")
                window, window_iters, window_start, data_time = {}, 0, time.perf_counter(), 0.0
            if self.iteration % config.checkpoint_every == 0 and self.iteration < total:
                self.save(f"model_{self.iteration:07d}.pth")
            elif self.iteration == stop and stop < total:
                self.save(f"model_{self.iteration:07d}.pth")
            if config.eval_every and self.iteration % config.eval_every == 0 and self.iteration < total:
                self.evaluate()
        bar.close()
        if self.iteration < total:
            return None
        if self.iteration > start or not os.path.isfile(os.path.join(self.output_dir, "model_final.pth")):
            self.save("model_final.pth")
        metrics = self.evaluate()
        if distributed.is_main_process():
            with open(os.path.join(self.output_dir, "eval.json"), "w") as f:
                json.dump(metrics, f, indent=2)
        return metrics
