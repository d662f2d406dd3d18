"""The training loop: whole dataset on the device, batches as index gathers, no workers.

A trainer trains M >= 1 members: one model (`SingleTrainer`), or M runs as one batched model
(`StackedTrainer`): M seeds of one configuration, or M configurations that differ only in the
batchable keys (src.config.BATCHABLE_KEYS: seed, Mixup alpha, smoothing eps and when it
starts). Both share everything but the model call: each member has its own generators (data
order, crops, flips and Mixup permutations from a torch generator seeded with its seed;
lambdas, CutMix boxes and the other mixing draws from numpy's), each step gathers a batch,
crops, flips and normalises it over the whole batch, mixes it (src.augmentation: Mixup, CutMix, per
batch, pair or sample; or hands lambda and the partners to the model, which mixes a hidden
state: Manifold Mixup) and takes the one update of src.training.optim on the smoothed cross
entropy. Per-step metrics stay on the device and are read once per epoch, so the step never
waits for the host. The trainer counts its finished epochs (`epochs_done`, kept in its state):
smoothing starts after `augmentation.smoothing_start_epoch` of them (plain cross entropy
before, as Wei et al. 2022 warm up before smoothing).

Per-member settings: each member's lambdas are drawn from its own alpha by its own generator
(a member with alpha = 0 draws nothing, mixes with weight 1 and partners that are itself, which
leaves its batch and loss exactly unmixed), and the loss takes each member's uniform mass as a
(M,) tensor, zero for a member before its own smoothing_start_epoch. So a member draws what its
separate run draws, in the same order. Every other mixing key is one for all members. Where
each batch draws its Manifold Mixup stage (`augmentation.mix_layer` a list, or `default`: the
model's MANIFOLD_LAYERS, as Verma et al.'s code draws k), each member draws its own stage with
its own generator and counts them (EpochStats.mix_layer_counts); stacked members mix each at its
own stage in one vmapped call (StackedTrainer._call_drawn).

Stacked members (`trainer.parallel_seeds`, the batched launcher): their parameters and buffers
are stacked (`torch.func.stack_module_state`) and the architecture is called once per step
through `vmap(functional_call)`, so every layer is one batched kernel instead of M small ones.
BatchNorm keeps per-member running statistics (the stacked buffers are vmapped with the
parameters). The loss is the sum of the M member losses, so each member's gradient is exactly
its own; SGD and AdamW are elementwise, so one optimizer over the stacked tensors is M
independent ones; gradient clipping (trainer.grad_clip) takes each member's own global norm
(src.training.optim.clip_grad_norm). A member that diverged is stopped (`stop_member`): its
loss is left out of the sum and its gradients zeroed, so its failure stays its own. What would
couple members is refused before they are stacked (src.config.validate.cannot_stack): fp16
loss scaling (one scaler) and dropout (one random stream). Compiled (trainer.compile, in the
mode it names), the vmapped calls are built once per architecture in a process and reused by
every batch of a sweep (StackedCalls); evaluation shares trainer.eval_batch_size among the
members and pads its last batch; crops and flips of all members are one gather. Eager on a
CPU, each member evaluates alone, as its separate run does (StackedTrainer.member_by_member):
given the same weights, the same logits, bit for bit.

Equality with M separate runs: data order, augmentation draws, lambdas and initial weights are
identical; the arithmetic is not the same code path (a vmapped linear layer
is a batched matmul, a vmapped convolution a grouped convolution, whose sums a CPU may order
differently), so members agree with separate runs to float rounding, which training amplifies
slowly. Not supported: nn.LSTM/GRU (no vmap rule) and channels-last.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from src.augmentation import (
    MixSettings,
    blend,
    draw_epoch,
    lambda_weighted_hits,
    mix,
    mix_images,
    mixup_smoothing_loss,
    pair_with,
    partners,
    share_within_pairs,
    uniform_mass,
)
from src.config import with_defaults
from src.config.options import CUDA_GRAPH_MODES
from src.data.crop_flip import augment
from src.data.tensors import TrainData
from src.models import MODELS
from src.training.checkpoint import BEST_WEIGHTS, LAST_WEIGHTS, load_weights
from src.training.device import Execution
from src.training.model_cache import (
    cache_key,
    compile_fn,
    compile_mode,
    compiled,
    fresh_model,
    stacked_calls,
)
from src.training.optim import Optimisation


@dataclass
class EpochStats:
    """One member's training loss and accuracy of one epoch, its throughput and starting lr."""

    loss: float
    acc: float
    seconds: float
    images: int
    lr: float
    finite: bool = True
    interrupted: bool = False
    # How many of the epoch's batches were mixed at each stage, where each batch draws its
    # stage (augmentation.mix_layer a list or default); None otherwise.
    mix_layer_counts: dict[str, int] | None = None


@dataclass
class EpochState:
    """An epoch under way: what a checkpoint keeps to resume it at the exact step."""

    order: torch.Tensor  # (M, N): each member's sample order
    # (M, steps), or (M, steps, B) with one per sample: each member's lambdas, None unmixed
    lams: torch.Tensor | None
    step: int
    loss_sum: torch.Tensor  # (M,)
    correct_sum: torch.Tensor  # (M,)
    seconds: float
    lr: float
    cut: torch.Tensor | None = None  # like lams, bool: CutMix instead of Mixup (both on)
    boxes: torch.Tensor | None = None  # lams' shape + (4,): CutMix boxes, None without CutMix
    # Each member's stage per step (an index into MixSettings.layers), on the host so that a
    # step reads its stage without waiting for the device; None for a member that draws none
    # (the whole list None unless the stage is drawn per batch).
    layers: list[list[int] | None] | None = None


@dataclass
class Batch:
    """One training step's input: images (mixed, or under Manifold Mixup unmixed), each
    sample's own label and its partner's, lambda (per batch or per sample), and, under
    Manifold Mixup only, the partners the model mixes its hidden state with and, where each
    batch draws its stage, that stage (one model: its name; stacked: each member's index)."""

    x: torch.Tensor
    y: torch.Tensor
    y2: torch.Tensor
    lam: torch.Tensor
    partners: torch.Tensor | None = None
    layer: str | torch.Tensor | None = None

    def detached(self) -> Batch:
        fields = (self.x, self.y, self.y2, self.lam, self.partners)
        layer = self.layer.detach() if torch.is_tensor(self.layer) else self.layer
        return Batch(*(None if t is None else t.detach() for t in fields), layer)


class Trainer:
    """What every trainer shares: batches, mixing, the step, the epoch loop and its state.
    M is the number of members, K the number of classes."""

    def __init__(self, data: TrainData, cfg: Mapping[str, Any],
                 aug_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                 execution: Execution, seeds: Sequence[int], model_cls: type[nn.Module]) -> None:
        """`aug_cfg`: the augmentation of every member, or one per member (which may differ in
        mixup_alpha, smoothing and smoothing_start_epoch only); `model_cls`: the architecture,
        whose MIX_LAYERS and MANIFOLD_LAYERS resolve `mix_layer`."""
        # Partial mappings (a bench's, a test's) take the rest from conf/ (the one place the
        # defaults are written): the trainer reads every key as cfg[key].
        self.cfg = cfg = with_defaults("trainer", "default", cfg)
        self.data, self.execution = data, execution
        self.device = dev = execution.device
        self.seeds = [int(s) for s in seeds]
        augs = member_augmentations(aug_cfg, len(self.seeds))
        self.member_mixing = [MixSettings.from_config(a).for_model(
            tuple(model_cls.MIX_LAYERS), tuple(model_cls.MANIFOLD_LAYERS)) for a in augs]
        # What the members share (every key but alpha): partners, mix mode, CutMix, the layer.
        self.mixing = self.member_mixing[0]
        # The loss takes the uniform mass of either smoothing convention (src.augmentation).
        masses = [uniform_mass(float(a["smoothing"]), a["smoothing_to"], data.num_classes)
                  for a in augs]
        # One mass for all is a scalar, as a single run has it; else one per member, (M,).
        self.mass = torch.tensor(masses[0] if len(set(masses)) == 1 else masses, device=dev)
        self.no_mass = torch.zeros((), device=dev)
        self.smoothing_starts = [int(a["smoothing_start_epoch"]) for a in augs]
        self._mass, self._mass_at = self.no_mass, -1  # the mass now, and for which epoch
        self.epochs_done = 0  # finished epochs: when smoothing starts
        n = len(data.train)
        self.batch_size = min(int(cfg["batch_size"]), n)
        # Fixed batch shapes (drop the last partial batch) keep compiled kernels reusable;
        # trainer.steps_per_epoch caps an epoch (Co-teaching's num_iter_per_epoch).
        self.steps_per_epoch = max(n // self.batch_size, 1)
        if cfg["steps_per_epoch"] is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, int(cfg["steps_per_epoch"]))
        # Every random draw of a member comes from its two generators, seeded by its seed.
        self.gens = [torch.Generator(device=dev).manual_seed(s) for s in self.seeds]
        self.np_rngs = [np.random.default_rng(s) for s in self.seeds]
        self.epoch_state: EpochState | None = None
        self.cuda_graphs = False
        # (M,) bool of the members still training, None while all are: a member that stopped
        # (diverged) adds nothing to the loss and its gradients are zeroed before the shared
        # step, so its inf or NaN can never reach another member (src.run.lifecycle stops it).
        self.live: torch.Tensor | None = None

    def _optimisation(self, decay: list[torch.Tensor], no_decay: list[torch.Tensor],
                      stacked: bool = False) -> None:
        self.optim = Optimisation(decay, no_decay, self.cfg, self.device, self.steps_per_epoch,
                                  self.execution.grad_scaler(), stacked)

    # ------------------------------------------------------------- what the variants supply

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        """Per-member tensors (M, ...) in the variant's shape: (...) for one model."""
        raise NotImplementedError

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalised, augmented float images of the gathered indices."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor,
                 hidden_mix: tuple[torch.Tensor, torch.Tensor] | None = None,
                 layer: str | torch.Tensor | None = None) -> torch.Tensor:
        """Training logits; with `hidden_mix` = (lambda, partners) the model mixes the hidden
        state after stage `augmentation.mix_layer` (Manifold Mixup), or after the batch's
        drawn stage `layer` (Batch.layer)."""
        raise NotImplementedError

    def _drawn_layer(self, step: int) -> str | torch.Tensor:
        """Step `step`'s drawn stage in the variant's form (Batch.layer)."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, K) float32 logits of every member for uint8 images (N, C, H, W)."""
        raise NotImplementedError

    def _weights(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_weights(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _load_member_weights(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        """Member k's weights from one model's state_dict."""
        raise NotImplementedError

    # ------------------------------------------------------------- shared

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to normalised floats (to [0, 1] only with trainer.normalize=false)."""
        x = x.float().div_(255)
        return (x - self.data.mean) / self.data.std if self.cfg["normalize"] else x

    @property
    def lr(self) -> float:
        return self.optim.lr

    def start_from_parent(self) -> Path | None:
        """Load the weights of the run `trainer.init_from` names into every member, as Wei et
        al. (2022) fine-tune their warmed-up model: the model only, the optimiser, schedule
        and generators stay fresh. The file loaded, or None (from scratch)."""
        path = init_weights_file(self.cfg)
        if path is not None:
            weights = load_weights(path)
            for k in range(len(self.seeds)):
                self._load_member_weights(k, weights)
        return path

    def begin_epoch(self) -> None:
        """Draw each member's sample order and mixing (lambdas, CutMix boxes) for the epoch."""
        if self.epochs_done == 0:  # a fresh run; a resumed one has its weights already
            self.start_from_parent()
        n, steps = len(self.data.train), self.steps_per_epoch
        self.optim.begin_epoch(self.epochs_done + 1)
        order = torch.stack([torch.randperm(n, generator=g, device=self.device)
                             for g in self.gens])
        lams = cut = boxes = layers = None
        if any(m.mixes for m in self.member_mixing):
            # Drawn on the host for the whole epoch and sent once: no sync inside the step.
            hw = (int(self.data.train.x.shape[-2]), int(self.data.train.x.shape[-1]))
            draws = [draw_epoch(m, r, steps, self.batch_size, hw) if m.mixes else None
                     for m, r in zip(self.member_mixing, self.np_rngs)]
            drawn = next(d for d in draws if d is not None)
            # A member that mixes nothing (alpha = 0 beside members with alpha > 0) draws
            # nothing, as its separate run: lambda 1 throughout. Beside CutMix with Mixup,
            # CutMix alone is "cut" throughout (a box pasted over an unblended image).
            lams = torch.from_numpy(np.stack([
                d.lam if d is not None else np.ones_like(drawn.lam) for d in draws
            ])).float().to(self.device)
            if any(d is not None and d.cut is not None for d in draws):
                shape = drawn.lam.shape
                cut = torch.from_numpy(np.stack([
                    d.cut if d is not None and d.cut is not None else np.ones(shape, bool)
                    for d in draws])).to(self.device)
            if drawn.boxes is not None:  # CutMix is on for every member, or for none
                boxes = torch.from_numpy(np.stack([d.boxes for d in draws])).to(self.device)
            if drawn.layer is not None:  # Python ints: a checkpoint holds them as they are
                layers = [None if d is None else d.layer.tolist() for d in draws]
        zero = torch.zeros(len(self.seeds), device=self.device)
        self.epoch_state = EpochState(order, lams, 0, zero.clone(), zero.clone(), 0.0, self.lr,
                                      cut, boxes, layers)

    def batch(self, step: int) -> Batch:
        """Step `step` of the epoch: images, both label sets and lambda (per batch or per
        sample). The images come mixed, or, under Manifold Mixup, unmixed with the partners
        that `step` hands to the model."""
        st, bs, mixing = self.epoch_state, self.batch_size, self.mixing
        idx = self._rows(st.order)[..., step * bs:(step + 1) * bs]
        x = self._images(idx)
        y = self.data.train.y[idx]
        if st.lams is None:
            return Batch(x, y, y, torch.ones(idx.shape[:-1], device=self.device))
        lam = self._rows(st.lams[:, step])
        # A member that mixes nothing draws no partners (its separate run draws none): itself.
        perm = self._rows(torch.stack([
            partners(bs, mixing, g, self.device) if m.mixes
            else torch.arange(bs, device=self.device)
            for m, g in zip(self.member_mixing, self.gens)]))
        cut = None if st.cut is None else self._rows(st.cut[:, step])
        boxes = None if st.boxes is None else self._rows(st.boxes[:, step])
        if mixing.mix_mode == "pair":
            lam, cut, boxes = (None if t is None else share_within_pairs(t, perm)
                               for t in (lam, cut, boxes))
        if mixing.manifold:
            layer = self._drawn_layer(step) if st.layers is not None else None
            return Batch(x, y, pair_with(y, perm), lam, perm, layer)
        if boxes is None:
            x, y2 = mix(x, y, lam, perm)
            return Batch(x, y, y2, lam)
        return Batch(mix_images(x, lam, perm, boxes, cut), y, pair_with(y, perm), lam)

    def step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; the detached loss and lambda-weighted hits of each member.
        With partners (Manifold Mixup) the model mixes its hidden state with them."""
        y, y2, lam, perm = batch.y, batch.y2, batch.lam, batch.partners
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.execution.autocast():
            logits = self._forward(batch.x) if perm is None else \
                self._forward(batch.x, (lam, perm), batch.layer)
        loss = mixup_smoothing_loss(logits, y, y2, lam, self.smoothing_mass())
        if self.live is None:
            self.optim.update(loss.sum())
        else:
            self.optim.update(torch.where(self.live, loss, torch.zeros_like(loss)).sum(),
                              self._mask_stopped)
        return loss.detach(), lambda_weighted_hits(logits, y, y2, lam)

    def stop_member(self, k: int) -> None:
        """Take member k out of the shared update from the next step on (it diverged)."""
        live = torch.ones(len(self.seeds), dtype=torch.bool) if self.live is None \
            else self.live.cpu()
        live[k] = False
        self.live = live.to(self.device)

    def _mask_stopped(self) -> None:
        """Zero the gradients of stopped members (NaN times zero is NaN: filled, not scaled)."""
        raise NotImplementedError

    def smoothing_mass(self) -> torch.Tensor:
        """The uniform mass of the loss now: each member's, or zero before its
        smoothing_start_epoch (plain cross entropy while a model fits, Wei et al. 2022)."""
        if self._mass_at != self.epochs_done:  # worked out once an epoch, not every step
            started = [self.epochs_done >= s for s in self.smoothing_starts]
            if all(started):
                self._mass = self.mass
            elif not any(started):
                self._mass = self.no_mass
            else:
                on = torch.tensor(started, dtype=self.mass.dtype, device=self.device)
                self._mass = self.mass * on
            self._mass_at = self.epochs_done
        return self._mass

    def train_epoch(self, stop: Callable[[], bool] | None = None,
                    on_step: Callable[[], None] | None = None) -> list[EpochStats]:
        """One pass over the training set in fixed-size shuffled batches, one EpochStats a member.

        `stop` is polled between steps (a flag set by a signal handler): when it says so the
        epoch pauses with `interrupted` set, and `epoch_state` holds what resuming needs.
        """
        self.train_mode()
        if self.epoch_state is None:
            self.begin_epoch()
        st, steps = self.epoch_state, self.steps_per_epoch
        start = time.perf_counter()
        interrupted = False
        while st.step < steps:
            if stop is not None and stop():
                interrupted = True
                break
            loss, correct = self.step(self.batch(st.step))
            st.loss_sum += loss
            st.correct_sum += correct
            st.step += 1
            if on_step is not None:
                on_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        st.seconds += time.perf_counter() - start
        if interrupted:
            return [EpochStats(math.nan, math.nan, st.seconds, 0, st.lr, interrupted=True)
                    for _ in self.seeds]
        self.epoch_state = None
        self.epochs_done += 1
        images = steps * self.batch_size
        # Divided on the host in float64: the figures do not depend on M.
        return [EpochStats(loss / steps, correct / images, st.seconds, images, st.lr,
                           finite=math.isfinite(loss / steps), mix_layer_counts=counts)
                for loss, correct, counts in zip(st.loss_sum.tolist(), st.correct_sum.tolist(),
                                                 self._layer_counts(st))]

    def _layer_counts(self, st: EpochState) -> list[dict[str, int] | None]:
        """Each member's number of batches mixed at each stage this epoch (drawn stages only;
        a member that draws none has None, as its separate run)."""
        if st.layers is None:
            return [None] * len(self.seeds)
        return [None if drawn is None else {s: drawn.count(i) for i, s in enumerate(m.layers)}
                for drawn, m in zip(st.layers, self.member_mixing)]

    def train_mode(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything resuming needs: weights, optimisation, every generator, a paused epoch."""
        state = {"weights": self._weights(), "optim": self.optim.state_dict(),
                 "gens": [g.get_state() for g in self.gens],
                 "np_rngs": [r.bit_generator.state for r in self.np_rngs],
                 "torch_rng": torch.get_rng_state(),  # dropout draws from the global generator
                 "epoch_state": asdict(self.epoch_state) if self.epoch_state else None,
                 "epochs_done": self.epochs_done}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put the trainer back into the state `state_dict` recorded."""
        self._load_weights(state["weights"])
        self.optim.load_state_dict(state["optim"])
        for g, s in zip(self.gens, state["gens"]):
            g.set_state(s.cpu() if self.device.type == "cpu" else s)
        for r, s in zip(self.np_rngs, state["np_rngs"]):
            r.bit_generator.state = s
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        ep = state.get("epoch_state")
        if ep is not None:
            ep = EpochState(**{k: v.to(self.device) if torch.is_tensor(v) else v
                               for k, v in ep.items()})
        self.epoch_state = ep
        self.epochs_done = int(state.get("epochs_done", 0))


# trainer.init_weights: which weights file of the run `trainer.init_from` names a run starts
# from (src.run.init_from): its best noisy-validation epoch's, or its final model's.
INIT_WEIGHTS = {"best": BEST_WEIGHTS, "last": LAST_WEIGHTS}


def init_weights_file(cfg: Mapping[str, Any]) -> Path | None:
    """The weights file a run of trainer config `cfg` starts from; None: from scratch."""
    if cfg["init_from"] is None:
        return None
    return Path(str(cfg["init_from"])).expanduser() / INIT_WEIGHTS[cfg["init_weights"]]


def member_augmentations(aug_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                         members: int) -> list[dict[str, Any]]:
    """One complete augmentation config per member (conf/augmentation/none.yaml under a partial
    one); members may differ in alpha and smoothing only."""
    augs = [aug_cfg] * members if isinstance(aug_cfg, Mapping) else list(aug_cfg)
    if len(augs) != members:
        raise ValueError(f"{len(augs)} augmentation configs for {members} members")
    augs = [with_defaults("augmentation", "none", a) for a in augs]
    shared = {replace(MixSettings.from_config(a), mixup_alpha=0.0) for a in augs}
    conventions = {a["smoothing_to"] for a in augs}
    if len(shared) > 1 or len(conventions) > 1:
        raise ValueError("members trained together may differ in mixup_alpha, smoothing and "
                         "smoothing_start_epoch only")
    return augs


def decay_groups(params: list[torch.Tensor], vector_ndim: int, cfg: Mapping[str, Any]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(decayed, not decayed) parameters. `trainer.decay_all: false` exempts biases and norm
    weights (tensors of at most `vector_ndim` dimensions), a common modern choice;
    `true` decays every parameter, as the Mixup paper's code (SGD's weight_decay on
    model.parameters()) does."""
    if bool(cfg["decay_all"]):
        return params, []
    return ([p for p in params if p.ndim > vector_ndim],
            [p for p in params if p.ndim <= vector_ndim])


class SingleTrainer(Trainer):
    """One model: compiled where chosen, channels-last where chosen."""

    def __init__(self, model: nn.Module, data: TrainData, cfg: Mapping[str, Any],
                 aug_cfg: Mapping[str, Any], execution: Execution, seed: int) -> None:
        super().__init__(data, cfg, aug_cfg, execution, [seed], type(model))
        self.model = model
        self._optimisation(*decay_groups(list(model.parameters()), 1, self.cfg))
        # Compiled once per model object (src.training.model_cache keeps the object across
        # the runs of a sweep). Only the model is compiled: lambda, eps and lr stay outside.
        mode = compile_mode(self.cfg["compile"], self.device)
        self.forward = compiled(model, mode) if mode else model
        # CUDA graphs replay into the same output buffers: each step (and evaluation batch)
        # tells the graph tree that the previous outputs are done with.
        self.cuda_graphs = mode in CUDA_GRAPH_MODES and self.device.type == "cuda"

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[0]

    def _mask_stopped(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.zero_()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to normalised floats, channels-last where chosen."""
        x = super().normalise(x)
        if self.execution.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        d = self.data
        return self.normalise(augment(d.train.x[idx], d.crop_padding, d.hflip, self.gens[0]))

    def _drawn_layer(self, step: int) -> str:
        return self.mixing.layers[self.epoch_state.layers[0][step]]

    def _forward(self, x: torch.Tensor,
                 hidden_mix: tuple[torch.Tensor, torch.Tensor] | None = None,
                 layer: str | torch.Tensor | None = None) -> torch.Tensor:
        if hidden_mix is None:
            return self.forward(x)
        lam, perm = hidden_mix
        # A drawn stage is a Python string: a compiled model keeps one graph per stage.
        return self.forward(x, mix_at=self.mixing.mix_layer if layer is None else layer,
                            mixer=lambda h: blend(h, lam, perm))

    def train_mode(self) -> None:
        self.model.train()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        bs = int(self.cfg["eval_batch_size"])
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
            # A copy out of the CUDA graph's output buffer, which the next replay overwrites:
            # .float() alone copies under bf16 but returns the buffer itself under fp32.
            with self.execution.autocast():
                out.append(self.forward(self.normalise(xb))[:n].to(torch.float32, copy=True))
        return torch.cat(out)[None]

    def _weights(self) -> dict[str, Any]:
        return self.model.state_dict()

    def _load_weights(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state)

    def _load_member_weights(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


# cuDNN's batch norm under vmap on CUDA fails twice: it asks a batched tensor for its
# channels-last contiguity (not implemented inside vmap), and its backward wants bf16 running
# stats under autocast. Around each BatchNorm the stacked model turns cuDNN off (PyTorch's own
# kernel then runs, with the vmap rules) and gives BN fp32 input, as autocast's BN computes
# in fp32 anyway; the next convolution casts back down. A compiled model decomposes BN itself
# and needs neither, so while Dynamo traces the hooks do nothing (no graph break, no global
# flag in the graph); where Dynamo falls back to eager, they run and guard the eager call.
def _bn_enter(module: nn.Module, args: tuple) -> tuple | None:
    if torch.compiler.is_compiling():
        return None
    module.__dict__["_cudnn_was"] = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    return (args[0].float(),)


def _bn_exit(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    if torch.compiler.is_compiling():
        return
    torch.backends.cudnn.enabled = module.__dict__.pop("_cudnn_was", True)


def guard_batch_norm(base: nn.Module) -> None:
    """Put the cuDNN guard (above) around every BatchNorm of `base`."""
    for m in base.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_bn_enter)
            m.register_forward_hook(_bn_exit)


class StackedCalls:
    """The architecture without storage (a meta-device module) and the vmapped calls of M
    members over it: training, evaluation, Manifold Mixup at one stage and at each member's
    drawn stage; compiled under `mode` (None: eager). Compiled calls are kept per
    architecture in the process (src.training.model_cache.stacked_calls), so the batches of
    a sweep reuse one set of graphs (a new member count is a new graph: shapes are static)."""

    def __init__(self, base: nn.Module, mixing: MixSettings, mode: str | None,
                 guard_bn: bool) -> None:
        self.base, self.mix_layer, self.layers = base, mixing.mix_layer, mixing.layers
        if guard_bn:
            guard_batch_norm(base)
        fns = [vmap(self._call, in_dims=(0, 0, 0), randomness="different"),
               vmap(self._call, in_dims=(0, 0, None), randomness="different"),
               # Manifold Mixup: each member's lambda and partners go in with its batch, and,
               # where each batch draws its stage, each member's stage index.
               vmap(self._call_mixed, in_dims=(0,) * 5, randomness="different"),
               vmap(self._call_drawn, in_dims=(0,) * 6, randomness="different")]
        if mode is not None:
            fns = [compile_fn(f, mode) for f in fns]
        self.train, self.eval, self.mixed, self.drawn = fns

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _call_mixed(self, params: dict, buffers: dict, x: torch.Tensor, lam: torch.Tensor,
                    perm: torch.Tensor) -> torch.Tensor:
        """One member's forward that mixes the hidden state after stage `mix_layer`."""
        return functional_call(self.base, (params, buffers), (x,),
                               {"mix_at": self.mix_layer,
                                "mixer": lambda h: blend(h, lam, perm)})

    def _call_drawn(self, params: dict, buffers: dict, x: torch.Tensor, lam: torch.Tensor,
                    perm: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        """One member's forward that mixes after its drawn stage `layer` (an index into the
        stages). One vmapped call cannot branch per member, so every stage gets a mixer, and
        the member's lambda is 1 at the stages it did not draw: 1 * h + 0 * h[perm] is h
        exactly, so each member mixes where its separate run does."""
        def at(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda h: blend(h, torch.where(layer == i, lam, torch.ones_like(lam)), perm)

        return functional_call(self.base, (params, buffers), (x,),
                               {"mix_at": self.layers,
                                "mixer": {s: at(i) for i, s in enumerate(self.layers)}})


def stacked_augment(x: torch.Tensor, padding: int, hflip: bool,
                    gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Crops and flips of M members' uint8 batches (M, B, C, H, W), each member's offsets and
    flips drawn from its own generator in src.data.crop_flip.augment's order (so the draws
    are its separate run's), then applied to all members as one gather and one select
    instead of a dozen small kernels per member."""
    m, b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        offsets = []
        for g in gens:  # dy, then dx, per member: random_crop's order
            dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=g, device=dev)
            dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=g, device=dev)
            flip = torch.rand(b, generator=g, device=dev) < 0.5 if hflip else None
            offsets.append((dy, dx, flip))
        dy, dx = (torch.stack([o[i] for o in offsets]) for i in (0, 1))  # (M, B, 1)
        rows = dy + torch.arange(h, device=dev)  # (M, B, H)
        cols = dx + torch.arange(w, device=dev)  # (M, B, W)
        xp = F.pad(x, (padding,) * 4)
        mi = torch.arange(m, device=dev)[:, None, None, None, None]
        bi = torch.arange(b, device=dev)[None, :, None, None, None]
        ci = torch.arange(c, device=dev)[None, None, :, None, None]
        x = xp[mi, bi, ci, rows[:, :, None, :, None], cols[:, :, None, None, :]]
        flips = torch.stack([o[2] for o in offsets]) if hflip else None
    elif hflip:
        flips = torch.stack([torch.rand(b, generator=g, device=dev) < 0.5 for g in gens])
    if hflip:
        x = torch.where(flips[:, :, None, None, None], x.flip(-1), x)
    return x


class StackedTrainer(Trainer):
    """M members as one vmapped model: seeds of one configuration, or configurations that differ
    in the batchable keys only (see the module docstring)."""

    def __init__(self, model_cfg: Mapping[str, Any], in_shape: tuple[int, int, int],
                 data: TrainData, cfg: Mapping[str, Any],
                 aug_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                 execution: Execution, seeds: Sequence[int]) -> None:
        execution = Execution(execution.device, execution.amp_dtype, channels_last=False)
        super().__init__(data, cfg, aug_cfg, execution, seeds, MODELS[model_cfg["name"]])
        models = [fresh_model(model_cfg, in_shape, data.num_classes, execution, s)
                  for s in self.seeds]
        params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        # The mode trainer.compile names (true: the device's fastest), as a single run has it.
        mode = compile_mode(self.cfg["compile"], self.device)
        cuda = self.device.type == "cuda"

        def build() -> StackedCalls:
            # The architecture without storage: functional_call supplies the stacked tensors.
            return StackedCalls(copy.deepcopy(models[0]).to("meta"), self.mixing, mode, cuda)

        if mode is None:
            self.calls = build()
        else:
            key = (cache_key(model_cfg, in_shape, data.num_classes, execution), mode,
                   self.mixing.mix_layer)
            self.calls = stacked_calls(key, build)
        self.base, self.compiled = self.calls.base, mode is not None
        # Evaluation on a CPU, eager: member after member, each as its separate run evaluates
        # (eval_batch_size images per forward). Plain matmuls and convolutions beat their
        # batched and grouped forms there (16 members on the digits' 1,797 images: MLP 57 ms
        # against 93 ms vmapped, cnn_small 213 against 240), and each member's logits are its
        # separate run's bits. Compiled or on a GPU, one vmapped call serves all members.
        self.member_by_member = self.device.type == "cpu" and not self.compiled
        self.cuda_graphs = mode in CUDA_GRAPH_MODES and cuda
        # Weight decay on what is a matrix or kernel in one member (ndim > 1 there).
        # A member's matrix or kernel has one more dimension here (the M stacked members).
        self._optimisation(*decay_groups(list(self.params.values()), 2, self.cfg), stacked=True)
        self._sent_layers: tuple[EpochState, torch.Tensor] | None = None

    def _drawn_layer(self, step: int) -> torch.Tensor:
        """(M,) each member's stage index at `step`; sent to the device once an epoch (a
        copy from the host would wait for the device's queue at every step)."""
        st = self.epoch_state
        if self._sent_layers is None or self._sent_layers[0] is not st:
            # A member that mixes nothing draws no stage: lambda 1 leaves it unmixed anywhere.
            rows = [[0] * self.steps_per_epoch if r is None else r for r in st.layers]
            self._sent_layers = (st, torch.tensor(rows, device=self.device))
        return self._sent_layers[1][:, step]

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _mask_stopped(self) -> None:
        stopped = ~self.live
        for p in self.params.values():
            if p.grad is not None:
                p.grad.masked_fill_(stopped.view(-1, *[1] * (p.ndim - 1)), 0)

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        """(M, B, C, H, W) normalised images; crops and flips from each member's generator."""
        d = self.data
        # Plain NCHW: the run's data may be cached channels-last, a layout vmap cannot query.
        x = d.train.x[idx].contiguous()
        if d.crop_padding > 0 or d.hflip:
            x = stacked_augment(x, d.crop_padding, d.hflip, self.gens)
        return self.normalise(x)

    def _forward(self, x: torch.Tensor,
                 hidden_mix: tuple[torch.Tensor, torch.Tensor] | None = None,
                 layer: str | torch.Tensor | None = None) -> torch.Tensor:
        if hidden_mix is None:
            return self.calls.train(self.params, self.buffers, x)
        if layer is None:
            return self.calls.mixed(self.params, self.buffers, x, *hidden_mix)
        return self.calls.drawn(self.params, self.buffers, x, *hidden_mix, layer)

    def train_mode(self) -> None:
        self.base.train()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.base.eval()
        if self.member_by_member:
            return torch.stack([self._predict_member(k, x) for k in range(len(self.seeds))])
        # trainer.eval_batch_size images per forward in all: each member's share of them, so
        # 16 members evaluate 16 x 64 images at a time, not 16 x 1024.
        bs = max(int(self.cfg["eval_batch_size"]) // len(self.seeds), 1)
        # As SingleTrainer.predict: a compiled call is specialised to its batch shape, so the
        # last batch is padded (per sample, BN on running stats: padding changes no output),
        # and each batch is copied out of a CUDA graph's output buffer.
        pad = self.compiled
        out = []
        for i in range(0, len(x), bs):
            xb = x[i:i + bs].contiguous()
            n = len(xb)
            if pad and n < bs:
                xb = torch.cat([xb, xb.new_zeros((bs - n, *xb.shape[1:]))])
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.execution.autocast():
                logits = self.calls.eval(self.params, self.buffers, self.normalise(xb))
            out.append(logits[:, :n].to(torch.float32, copy=True))
        return torch.cat(out, dim=1)

    def _predict_member(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """(N, K) float32 logits of member k alone, eval_batch_size images per forward: its
        separate run's evaluation, call for call."""
        params = {name: t[k] for name, t in self.params.items()}
        buffers = {name: t[k] for name, t in self.buffers.items()}
        bs = int(self.cfg["eval_batch_size"])
        out = []
        for i in range(0, len(x), bs):
            with self.execution.autocast():
                logits = functional_call(self.base, (params, buffers),
                                         (self.normalise(x[i:i + bs]),))
            out.append(logits.to(torch.float32, copy=True))
        return torch.cat(out)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights and buffers, as its separate run's model.state_dict() has them."""
        tensors = self.params | self.buffers
        return {name: t[k].detach().clone() for name, t in tensors.items()}

    def _weights(self) -> dict[str, Any]:
        return {"params": {k: v.detach() for k, v in self.params.items()},
                "buffers": dict(self.buffers)}

    @torch.no_grad()
    def _load_weights(self, state: Mapping[str, Any]) -> None:
        for k, v in state["params"].items():
            self.params[k].copy_(v)
        for k, v in state["buffers"].items():
            self.buffers[k].copy_(v)

    @torch.no_grad()
    def _load_member_weights(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        tensors = self.params | self.buffers
        if set(state) != set(tensors):
            odd = sorted(set(state) ^ set(tensors))
            raise ValueError(f"the weights are not this model's: {', '.join(odd[:3])} differ")
        for name, t in tensors.items():
            t[k].copy_(state[name])
