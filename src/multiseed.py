"""Several seeds of one configuration trained at once, as one batched model.

`trainer.parallel_seeds: [s1, ..., sK]` makes one job train K copies of its configuration:
each copy has its own initialisation (a fresh build under its seed, exactly as a separate
run), its own generators (data order, crops, flips, Mixup permutations from a torch generator
seeded with its seed; lambdas from numpy's, as src.trainer draws them), its own optimizer state
and its own records. The K copies run as one model: their parameters and buffers are stacked
(`torch.func.stack_module_state`) and the architecture is called once per step through
`vmap(functional_call)`, so every layer is one batched kernel instead of K small ones.
BatchNorm keeps per-copy running statistics: the stacked buffers are vmapped with the
parameters, and BN's in-place update writes each copy's slice (no `replace_all_batch_norm_
modules_`, which would drop running statistics and change evaluation). The loss is the sum of
the K per-copy losses, so each copy's gradient is exactly its own; SGD and AdamW are
elementwise, so one optimizer over the stacked tensors is K independent ones.

Equality with K separate runs: data order, augmentation draws, lambdas and initial weights are
bit-identical. The arithmetic is identical where the batched kernels compute the same sums in
the same order: linear layers (MLP) on the CPU gave bit-identical training in the tests. Vmapped
convolutions become one grouped convolution whose backward sums in another order, so conv
nets agree to float rounding per step (about 1e-7 relative), which training then amplifies
slowly: per-seed final metrics agree within tolerance, not bit for bit. Not the same as separate
runs: dropout draws (one vmapped stream instead of K global ones; statistically equivalent), and
fp16 loss scaling (one scaler: an overflow in any copy skips the step of all). Not supported:
nn.LSTM (no vmap rule), checkpoints and resume of a partial job (completed seeds are skipped on
a rerun), channels-last (the stacked 5-D batch has no such layout).

Each seed writes a normal run directory (results.json, metrics.jsonl, noise records,
config.yaml; src/run.py's helpers and src/results.py's writers): the job's run_dir with its
trailing `seed=N` replaced by `seed=<each>`, or `run_dir/seed=<each>`. `train_time_s` is the
wall time of the batched training, which the K seeds share (so each seed's `images_per_s` is a
K-th of the job's throughput).

How fast (2-core CPU, 1 thread, digits; `python -m src.bench --parallel-seeds 8`): see the
README's Performance section; the gain is largest for small models, whose separate runs are
bound by per-operation overhead rather than arithmetic.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from src.augment import mixup_smoothing_loss, random_crop, random_hflip
from src.device import Execution
from src.errors import ConfigError
from src.evaluate import classification_metrics
from src.model_cache import COMPILE_OPTIONS, fresh_model
from src.trainer import EpochStats, Split, TrainData, lr_factor, optimizer_for

log = logging.getLogger("src.train")
_SEED_DIR = re.compile(r"seed=\d+$")


# cuDNN's batch norm under vmap on CUDA fails twice: it asks a batched tensor for its
# channels-last contiguity (not implemented inside vmap), and its backward wants bf16 running
# stats under autocast. Around each BatchNorm the batched model turns cuDNN off (PyTorch's own
# kernel then runs, with the vmap rules) and gives BN fp32 input, as autocast's BN computes
# in fp32 anyway; the next convolution casts back down. Compiled models decompose BN
# themselves and need neither.
def _bn_enter(module: nn.Module, args: tuple) -> tuple:
    module.__dict__["_cudnn_was"] = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    return (args[0].float(),)


def _bn_exit(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    torch.backends.cudnn.enabled = module.__dict__.pop("_cudnn_was", True)


class MultiSeedTrainer:
    """Trains K seeds of one configuration as one vmapped model (see the module docstring)."""

    def __init__(self, model_cfg: Mapping[str, Any], in_shape: tuple[int, int, int],
                 data: TrainData, cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any],
                 execution: Execution, seeds: Sequence[int]) -> None:
        self.data, self.cfg, self.seeds = data, cfg, [int(s) for s in seeds]
        self.ex = Execution(execution.device, execution.amp_dtype, channels_last=False)
        self.device = dev = self.ex.device
        models = [fresh_model(model_cfg, in_shape, data.num_classes, self.ex, s)
                  for s in self.seeds]
        params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        # The architecture without storage: functional_call supplies the stacked tensors.
        self.base = copy.deepcopy(models[0]).to("meta")
        if dev.type == "cuda" and not bool(cfg.get("compile", False)):
            for m in self.base.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.register_forward_pre_hook(_bn_enter)
                    m.register_forward_hook(_bn_exit)
        self.alpha = float(aug_cfg["mixup_alpha"])
        self.eps = torch.tensor(float(aug_cfg["smoothing"]), device=dev)
        n = len(data.train)
        self.batch_size = min(int(cfg["batch_size"]), n)
        self.steps_per_epoch = max(n // self.batch_size, 1)
        # Weight decay on what is a matrix or kernel in one copy (ndim > 1 there).
        decay = [p for p in self.params.values() if p.ndim > 2]
        no_decay = [p for p in self.params.values() if p.ndim <= 2]
        self.optimizer = optimizer_for(decay, no_decay, cfg, dev)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        self.scaler = self.ex.grad_scaler()
        self.gens = [torch.Generator(device=dev).manual_seed(s) for s in self.seeds]
        self.np_rngs = [np.random.default_rng(s) for s in self.seeds]
        self.copies = torch.arange(len(self.seeds), device=dev)
        self._train_fn = vmap(self._call, in_dims=(0, 0, 0), randomness="different")
        self._eval_fn = vmap(self._call, in_dims=(0, 0, None), randomness="different")
        if bool(cfg.get("compile", False)):
            self._train_fn = torch.compile(self._train_fn, **COMPILE_OPTIONS)
            self._eval_fn = torch.compile(self._eval_fn, **COMPILE_OPTIONS)
        self._predictions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def begin_epoch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each copy's sample order and lambdas, drawn as its separate run would draw them."""
        n, steps = len(self.data.train), self.steps_per_epoch
        orders = torch.stack([torch.randperm(n, generator=g, device=self.device)
                              for g in self.gens])
        lams = None
        if self.alpha > 0:
            lams = np.stack([r.beta(self.alpha, self.alpha, steps) for r in self.np_rngs])
            lams = torch.from_numpy(lams).float().to(self.device)
        return orders, lams

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """(K, B, C, H, W) normalised images; crops and flips from each copy's generator."""
        # Plain NCHW: the run's data may be cached channels-last, a layout vmap cannot query.
        x = self.data.train.x[idx].contiguous()
        if self.data.crop_padding > 0 or self.data.hflip:
            xs = []
            for k, gen in enumerate(self.gens):  # per copy: the draws of its separate run
                xk = random_crop(x[k], self.data.crop_padding, gen)
                xs.append(random_hflip(xk, gen) if self.data.hflip else xk)
            x = torch.stack(xs)
        return (x.float().div_(255) - self.data.mean) / self.data.std

    def train_epoch(self) -> list[EpochStats]:
        """One epoch of every copy; one EpochStats per seed (time and lr are shared)."""
        self.base.train()
        self._predictions.clear()
        orders, lams = self.begin_epoch()
        bs, steps, k = self.batch_size, self.steps_per_epoch, len(self.seeds)
        lr = self.lr
        loss_sum = torch.zeros(k, device=self.device)
        correct_sum = torch.zeros(k, device=self.device)
        ones = torch.ones(k, device=self.device)  # lambda without Mixup
        start = time.perf_counter()
        for i in range(steps):
            idx = orders[:, i * bs:(i + 1) * bs]
            x = self.batch(idx)
            y = y2 = self.data.train.y[idx]
            lam = ones
            if lams is not None:
                lam = lams[:, i]
                perm = torch.stack([torch.randperm(bs, generator=g, device=self.device)
                                    for g in self.gens])
                lx = lam.view(k, 1, 1, 1, 1)
                x = lx * x + (1 - lx) * x[self.copies[:, None], perm]
                y2 = y[self.copies[:, None], perm]
            loss, correct = self.step(x, y, y2, lam)
            loss_sum += loss
            correct_sum += correct
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        # Divided on the host in float64, as src.trainer does, so the figures match exactly.
        losses = [v / steps for v in loss_sum.tolist()]
        accs = [v / (steps * bs) for v in correct_sum.tolist()]
        return [EpochStats(loss, acc, seconds, steps * bs, lr, finite=bool(np.isfinite(loss)))
                for loss, acc in zip(losses, accs)]

    def step(self, x: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
             lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of all copies: per-copy losses and lambda-weighted hits, shape (K,)."""
        with self.ex.autocast():
            logits = self._train_fn(self.params, self.buffers, x)
        losses = mixup_smoothing_loss(logits, y, y2, lam, self.eps)  # (K,): one per copy
        self.optimizer.zero_grad(set_to_none=True)
        # The sum's gradient with respect to copy k's parameters is copy k's own gradient.
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        pred = logits.detach().argmax(-1)
        correct = lam * (pred == y).sum(-1) + (1 - lam) * (pred == y2).sum(-1)
        return losses.detach(), correct

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, classes) float32 logits of every copy, in evaluation mode."""
        cached = self._predictions.get(id(x))
        if cached is not None and cached[0] is x:
            return cached[1]
        self.base.eval()
        bs = int(self.cfg.get("eval_batch_size", 1024))
        out = []
        for i in range(0, len(x), bs):
            xb = (x[i:i + bs].contiguous().float().div_(255) - self.data.mean) / self.data.std
            with self.ex.autocast():
                out.append(self._eval_fn(self.params, self.buffers, xb).float())
        logits = torch.cat(out, dim=1)
        self._predictions[id(x)] = (x, logits)  # the K seeds' views read it K times
        return logits

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Copy k's weights and buffers, as its separate run's model.state_dict() has them."""
        tensors = self.params | self.buffers
        return {name: t[k].detach().clone() for name, t in tensors.items()}

    def view(self, k: int) -> SeedView:
        """Copy k with the Trainer interface src.run.evaluate_epoch reads."""
        return SeedView(self, k)


class SeedView:
    """One copy of a MultiSeedTrainer seen as a Trainer: predict and evaluate."""

    def __init__(self, multi: MultiSeedTrainer, k: int) -> None:
        self.multi, self.k = multi, k

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """This copy's logits (computed once for all copies)."""
        return self.multi.predict(x)[self.k]

    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss, accuracy and ECE of this copy on a split."""
        return classification_metrics(self.predict(split.x), split.y)


# ---------------------------------------------------------------- the job: K run directories


def seed_dirs(run_dir: Path, seeds: Sequence[int]) -> list[Path]:
    """Sibling run directories: `.../seed=N` becomes `.../seed=<each>`; else run_dir/seed=S."""
    if _SEED_DIR.search(run_dir.name):
        return [run_dir.with_name(f"seed={s}") for s in seeds]
    return [run_dir / f"seed={s}" for s in seeds]


def seed_group(group: str) -> str:
    """The sweep cell without the parallel_seeds override (its seeds share the cell)."""
    items = re.split(r",(?![^\[]*\])", group) if group else []
    return ",".join(i for i in items if not i.startswith("trainer.parallel_seeds="))


def seed_config(cfg: DictConfig, seed: int, run_dir: Path) -> DictConfig:
    """The config a separate run of `seed` would have, writing to `run_dir`."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    out.trainer.seed = int(seed)
    out.trainer.parallel_seeds = []
    out.paths.run_dir = str(run_dir)
    return out


def run_parallel(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """Train the seeds of `trainer.parallel_seeds` together; write one run directory each.

    Returns {"final_test_acc": mean over the seeds, "runs": each seed's results object}.
    """
    seeds = [int(s) for s in cfg.trainer.parallel_seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("trainer.parallel_seeds", seeds, "a list of distinct seeds")
    if cfg.model.name == "lstm":
        raise ConfigError("trainer.parallel_seeds", seeds, "[] for model lstm",
                          hint="nn.LSTM has no vmap rule; run its seeds as separate jobs")
    group = seed_group(group)
    cfgs = {s: seed_config(cfg, s, d)
            for s, d in zip(seeds, seed_dirs(Path(cfg.paths.run_dir), seeds))}
    from src.train import completed_results

    done = {s: r for s in seeds if (r := completed_results(cfgs[s])) is not None}
    todo = [s for s in seeds if s not in done]
    if todo:
        done.update(_train_seeds([cfgs[s] for s in todo], group))
    runs = [done[s] for s in seeds]
    accs = [r["final_test_acc"] for r in runs if r.get("final_test_acc") is not None]
    return {"final_test_acc": float(np.mean(accs)) if accs else None, "runs": runs}


def _train_seeds(cfgs: list[DictConfig], group: str) -> dict[int, dict[str, Any]]:
    """Prepare the data once, train the seeds together, write every seed's records."""
    from src import noise as noise_lib
    from src.device import resolve_execution
    from src.results import RESULTS, now_iso, write_json_atomic
    from src.run import parallel_job_number, prepare_data, results_header, summarise

    first, seeds = cfgs[0], [int(c.trainer.seed) for c in cfgs]
    dirs = [Path(c.paths.run_dir) for c in cfgs]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    ex = resolve_execution(first.trainer, parallel_job_number())
    data, noisy = prepare_data(first, ex, dirs[0])  # the noise is the same for every seed
    for c, d in zip(cfgs[1:], dirs[1:]):
        noise_lib.save_noise(noisy, d, OmegaConf.to_container(c.noise, resolve=True))
    started = now_iso()
    records = [results_header(c, group, noisy, ex, started) for c in cfgs]
    for c, d in zip(cfgs, dirs):
        OmegaConf.save(c, d / "config.yaml", resolve=True)
    histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    try:
        in_shape = tuple(int(v) for v in first.dataset.image_shape)
        multi = MultiSeedTrainer(first.model, in_shape, data, first.trainer,
                                 first.augmentation, ex, seeds)
        _fit(first, multi, data, dirs, records, histories)
    except BaseException as err:
        for r in records:
            if r["status"] == "running":
                r["status"] = "failed" if isinstance(err, Exception) else "interrupted"
                r["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        for r, h, d in zip(records, histories, dirs):
            r.update(summarise(h))
            r["epochs_done"] = h[-1]["epoch"] if h else 0
            r["finished_at"] = now_iso()
            write_json_atomic(d / RESULTS, r)
    _log_external(cfgs, group, histories, records)
    return dict(zip(seeds, records))


def _fit(cfg: DictConfig, multi: MultiSeedTrainer, data: TrainData, dirs: list[Path],
         records: list[dict[str, Any]], histories: list[list[dict[str, Any]]]) -> None:
    """The epoch loop of src.run, for K seeds: a diverged seed stops recording, the rest go on."""
    from src.progress import Progress
    from src.results import METRICS, write_metrics
    from src.run import evaluate_epoch

    epochs, every = int(cfg.trainer.epochs), int(cfg.trainer.eval_every)
    active = set(range(len(dirs)))
    train_s, images, eval_s = [0.0] * len(dirs), [0] * len(dirs), 0.0
    progress = Progress(cfg.trainer.get("progress", "auto"), epochs)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        stats = multi.train_epoch()
        rows: dict[int, dict[str, Any]] = {}
        for k in sorted(active):
            st = stats[k]
            train_s[k] += st.seconds
            images[k] += st.images
            if not st.finite:
                records[k]["status"] = "diverged"
                records[k]["error"] = f"non-finite training loss ({st.loss}) in epoch {epoch}"
                active.discard(k)
            elif epoch % every == 0 or epoch == epochs:
                t_eval = time.perf_counter()
                rows[k] = {"epoch": epoch, "train_loss": st.loss, "train_acc": st.acc,
                           "lr": st.lr, **evaluate_epoch(multi.view(k), data),
                           "images_per_s": st.images / max(st.seconds, 1e-9)}
                eval_s += time.perf_counter() - t_eval  # the seeds' evaluations, together
        epoch_time = time.perf_counter() - t0  # shared by the seeds
        for k, row in rows.items():
            row["epoch_time_s"] = epoch_time
            histories[k].append(row)
            write_metrics(dirs[k] / METRICS, histories[k])
        if rows:
            progress.epoch(_mean_row(list(rows.values())))
        if not active:
            break
    for k, r in enumerate(records):
        if k in active:
            r["status"] = "completed"
        r["train_time_s"] = train_s[k]
        r["eval_time_s"] = eval_s
        r["trained_with_seeds"] = ",".join(str(s) for s in multi.seeds)  # times shared
        r["images_per_s"] = images[k] / max(train_s[k], 1e-9)


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One progress line for the seeds: means, and the job's total images/s."""
    keys = ("train_loss", "train_acc", "test_acc")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {**out, "epoch": rows[0]["epoch"],
            "images_per_s": float(sum(r["images_per_s"] for r in rows))}


def _log_external(cfgs: list[DictConfig], group: str, histories: list[list[dict[str, Any]]],
                  records: list[dict[str, Any]]) -> None:
    """One external-logger run per seed, replayed after training (W&B holds one open run)."""
    from src.loggers import make_logger

    for c, h, r in zip(cfgs, histories, records):
        try:
            logger = make_logger(c.logger, OmegaConf.to_container(c, resolve=True),
                                 f"{group or c.task_name}/seed={c.trainer.seed}",
                                 str(c.paths.run_dir))
            for row in h:
                logger.log_epoch(row)
            logger.finish({k: v for k, v in r.items() if v is not None}, r["status"])
        except Exception as err:  # the runs' own records are written; the logger is extra
            log.warning("external logger failed for %s: %s", c.paths.run_dir, err)


