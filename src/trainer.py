"""The training loop: whole dataset on the device, batches as index gathers, no workers.

One `Trainer` trains one model. Data are uint8 tensors on the training device; each step
gathers a batch, crops, flips and normalises it over the whole batch, mixes it (Mixup) and
takes a step on the smoothed cross entropy. Per-step metrics stay on the device and are read
once per epoch, so the step never waits for the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from src.augment import mixup_smoothing_loss, random_crop, random_hflip
from src.device import Execution
from src.evaluate import classification_metrics
from src.model_cache import compile_mode, compiled
from src.options import CUDA_GRAPH_MODES


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and int64 labels, on the training device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainData:
    """What a run trains and evaluates on; `y_true` is the training labels before noise."""

    train: Split
    test: Split
    y_true: torch.Tensor
    val: Split | None
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    crop_padding: int = 0
    hflip: bool = False


@dataclass
class EpochStats:
    """Training loss and accuracy of one epoch, its throughput and its starting lr."""

    loss: float
    acc: float
    seconds: float
    images: int
    lr: float
    finite: bool = True
    interrupted: bool = False


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], device: torch.device,
                    fused: bool | None = None):
    """SGD (momentum, Nesterov) or AdamW; weight decay skips biases and norm parameters.

    `fused` defaults to CUDA only: fused kernels exist for CUDA; on CPU the foreach path is
    the fast one. A fused optimizer gets its lr as a tensor (float64, on the CPU), which the
    scheduler updates in place (`fill_`): the value is exactly the float's, the kernel reads
    a CPU scalar without a device sync, and a compiled optimizer step would not be
    specialised on it. (Only the model is compiled here, so lr is outside every graph anyway.)
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return optimizer_for(decay, no_decay, cfg, device, fused)


def optimizer_for(decay: list[torch.Tensor], no_decay: list[torch.Tensor],
                  cfg: Mapping[str, Any], device: torch.device, fused: bool | None = None):
    """The configured optimizer over two parameter groups (see build_optimizer)."""
    groups = [{"params": decay, "weight_decay": float(cfg["weight_decay"])},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" if fused is None else fused
    lr: float | torch.Tensor = float(cfg["lr"])
    extra = {}
    if fused:
        extra, lr = {"fused": True}, torch.tensor(lr, dtype=torch.float64)
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]),
                               nesterov=bool(cfg["nesterov"]) and float(cfg["momentum"]) > 0,
                               **extra)
    return torch.optim.AdamW(groups, lr=lr, **extra)


def lr_factor(cfg: Mapping[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the step: warm-up, then cosine, multistep or constant."""
    total = int(cfg["epochs"]) * steps_per_epoch
    warmup = int(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    epochs = int(cfg["epochs"])
    # Milestones up to 1 are fractions of the run, larger ones are epochs.
    milestones = [m * epochs if m <= 1 else m for m in cfg.get("milestones", [])]
    gamma, kind = float(cfg.get("gamma", 0.1)), cfg["schedule"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            t = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if kind == "multistep":
            epoch = step / steps_per_epoch
            return gamma ** sum(epoch >= m for m in milestones)
        return 1.0

    return factor


class Trainer:
    """Trains one model on one TrainData with Mixup + label smoothing."""

    def __init__(self, model: nn.Module, data: TrainData, cfg: Mapping[str, Any],
                 aug_cfg: Mapping[str, Any], execution: Execution, seed: int) -> None:
        self.model, self.data, self.cfg, self.ex = model, data, cfg, execution
        self.device = execution.device
        self.alpha = float(aug_cfg["mixup_alpha"])
        self.eps = torch.tensor(float(aug_cfg["smoothing"]), device=self.device)
        n = len(data.train)
        self.batch_size = min(int(cfg["batch_size"]), n)
        # Fixed batch shapes (drop the last partial batch) keep compiled kernels reusable.
        self.steps_per_epoch = max(n // self.batch_size, 1)
        self.optimizer = build_optimizer(model, cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        self.scaler = execution.grad_scaler()
        # Every random draw of the run comes from these two generators, seeded by the run.
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.epoch_state: dict[str, Any] | None = None  # a paused epoch (see train_epoch)
        # Compiled once per model object (src.model_cache keeps the object across the runs
        # of a sweep). Only the model is compiled: lambda, eps and lr live outside the graph.
        mode = compile_mode(cfg.get("compile", False), self.device)
        self.forward = compiled(model, mode) if mode else model
        # CUDA graphs replay into the same output buffers: each step (and evaluation batch)
        # tells the graph tree that the previous outputs are done with.
        self.cuda_graphs = mode in CUDA_GRAPH_MODES and self.device.type == "cuda"

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to normalised floats, channels-last where chosen."""
        x = (x.float().div_(255) - self.data.mean) / self.data.std
        if self.ex.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The dataset's train-time augmentation over the whole batch."""
        x = random_crop(x, self.data.crop_padding, self.gen)
        if self.data.hflip:
            x = random_hflip(x, self.gen)
        return x

    def begin_epoch(self) -> None:
        """Draw the epoch's sample order and Mixup lambdas (the state a checkpoint keeps)."""
        steps = self.steps_per_epoch
        order = torch.randperm(len(self.data.train), generator=self.gen, device=self.device)
        lams = None
        if self.alpha > 0:
            # Drawn on the host for the whole epoch and sent once: no sync inside the step.
            lams = torch.from_numpy(self.np_rng.beta(self.alpha, self.alpha, steps)).float()
            lams = lams.to(self.device)
        zero = torch.zeros((), device=self.device)
        self.epoch_state = {"order": order, "lams": lams, "step": 0, "loss_sum": zero.clone(),
                            "correct_sum": zero.clone(), "seconds": 0.0, "lr": self.lr}

    def train_epoch(self, stop: Callable[[], bool] | None = None) -> EpochStats:
        """One pass over the training set in fixed-size shuffled batches.

        `stop` is polled between steps (a flag set by a signal handler): when it says so the
        epoch pauses with `interrupted` set, and `epoch_state` holds what resuming needs.
        """
        self.model.train()
        if self.epoch_state is None:
            self.begin_epoch()
        st = self.epoch_state
        bs, steps = self.batch_size, self.steps_per_epoch
        one = torch.ones((), device=self.device)
        start = time.perf_counter()
        interrupted = False
        while st["step"] < steps:
            if stop is not None and stop():
                interrupted = True
                break
            i = st["step"]
            idx = st["order"][i * bs:(i + 1) * bs]
            x = self.normalise(self.augment(self.data.train.x[idx]))
            y = y2 = self.data.train.y[idx]
            lam = one
            if st["lams"] is not None:
                lam = st["lams"][i]
                perm = torch.randperm(bs, generator=self.gen, device=self.device)
                x = lam * x + (1 - lam) * x[perm]
                y2 = y[perm]
            loss, correct = self.step(x, y, y2, lam)
            st["loss_sum"] += loss
            st["correct_sum"] += correct
            st["step"] = i + 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        st["seconds"] += time.perf_counter() - start
        if interrupted:
            return EpochStats(float("nan"), float("nan"), st["seconds"], 0, st["lr"],
                              interrupted=True)
        self.epoch_state = None
        total = float(st["loss_sum"]) / steps
        return EpochStats(total, float(st["correct_sum"]) / (steps * bs), st["seconds"],
                          steps * bs, st["lr"], finite=math.isfinite(total))

    def step(self, x: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
             lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the detached loss and the lambda-weighted hits."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.ex.autocast():
            logits = self.forward(x)
        loss = mixup_smoothing_loss(logits, y, y2, lam, self.eps)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        pred = logits.detach().argmax(-1)
        correct = lam * (pred == y).sum() + (1 - lam) * (pred == y2).sum()
        return loss.detach(), correct

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits for uint8 images, in evaluation mode and large batches."""
        self.model.eval()
        bs = int(self.cfg.get("eval_batch_size", 1024))
        # A compiled forward is specialised to its batch shape: every evaluation batch is
        # padded to eval_batch_size, so one eval graph serves all splits and sizes.
        # (Evaluation is per sample, BN uses running stats: padding changes no output.)
        pad = self.forward is not self.model
        out = []
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            n = len(xb)
            if pad and n < bs:
                xb = torch.cat([xb, xb.new_zeros((bs - n, *xb.shape[1:]))])
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.ex.autocast():  # .float() copies out of the graph's output buffer
                out.append(self.forward(self.normalise(xb))[:n].float())
        return torch.cat(out)

    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss, accuracy and ECE on a split."""
        return classification_metrics(self.predict(split.x), split.y)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
