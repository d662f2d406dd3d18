"""Time the suite's training step and epoch against a plain reference loop and a bare loop.

    python -m src.tools.bench --dataset digits --model cnn                       # real data, CPU
    python -m src.tools.bench --shape 3,32,32 --num-classes 10 --n 50000 \\
        --model preact_resnet18 --device cuda --batch-size 512 --amp bf16 --compile
    python -m src.tools.bench --smoke                                             # CI: seconds
    python -m src.tools.bench_check                        # exit 1 if the step is > 5 % behind bare

Everything runs in one process on the same model architecture, data and device:

* `suite_step`, `suite_epoch`: the suite's `Trainer` (whole dataset on the device, batch
  gathers, batch-wide crop/flip, Mixup, smoothed loss, on-device metrics, autocast,
  channels-last, fused optimizer and `torch.compile` where chosen). Steps are timed inside an
  epoch (paused through `train_epoch`'s stop hook), epochs whole.
* `bare_step`: the same model, forward, loss function (`mixup_smoothing_loss`) and optimizer
  on batches prepared beforehand (normalised, mixed): no gathering, augmentation, schedule
  or metrics. `overhead_vs_bare` = suite step time / bare step time - 1.
* `reference_epoch`: src.reference, the original Mixup code's way (DataLoader + per-image
  transforms, fp32, `.item()` per batch) on a fresh fp32 model of the same architecture.
  `speedup_vs_reference` = suite images/s over reference images/s.
* `multiseed_epoch` (with `--parallel-seeds K`): K seeds trained as one batched model
  (src.training.trainer.StackedTrainer); `multiseed_speedup` = its images/s over the
  single-seed suite's.
* `suite_eval` (with `--eval`): the suite's evaluation forward (`Trainer.predict`, padded
  batches of `trainer.eval_batch_size`, compiled where chosen) over the whole training split,
  what every evaluated epoch predicts for the memorisation metrics.

`--trainer NAME` composes `trainer=NAME` (conf/trainer, e.g. `cifar`: the Mixup paper's recipe)
before the options above are applied. `python -m src.tools.bench_check` runs the bench and
fails when the suite's step falls more than 5 % behind its bare loop (src.tools.bench_check).

Each measurement runs `--warmup` times untimed (compilation, allocator and cuDNN warm-up),
then `--repeats` times; the table and the JSON give the median. Wall time is taken on a
synchronised clock (`torch.cuda.synchronize` before and after); on CUDA the device time of the
same span comes from CUDA events. FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one
forward of a batch (on the meta device), x3 for a training step (forward + backward of
activations and weights). `flop_floor_fraction` = achieved FLOP/s / `--peak-tflops`, whose
default 800 is an H100-class dense bf16 peak (give your GPU's figure; it is null on CPU unless
a peak is given).

JSON (`--out`, default outputs/bench/bench.json), one object:

* `schema` (1), `created_at` (ISO 8601), `command` (the argv);
* `machine`: `platform`, `processor`, `cpu_count`, `torch_threads`, `torch`, `python`,
  `device` (e.g. `cpu`, `cuda:0`), `device_name`;
* `config`: `dataset`, `shape` [C, H, W], `num_classes`, `n_train`, `model`, `model_args`,
  `trainer` (the conf/trainer option), `alpha`, `eps`, `batch_size`, `device`, `amp`,
  `compile`, `compile_mode` (the torch.compile mode used, null for eager), `channels_last`,
  `crop_padding`, `hflip`, `warmup`, `repeats`, `steps`, `ref_workers`, `parallel_seeds`,
  `eval`, `peak_tflops`, `smoke`;
* `flops`: `forward_per_image`, `train_per_image` (FLOPs);
* `results`: a list, one object per measurement: `name` (`suite_step`, `suite_epoch`,
  `bare_step`, `reference_epoch_workers_N` for each DataLoader worker count N timed,
  `multiseed_epoch`, `suite_eval`), `seconds` (median wall time of one
  unit: a step or an epoch), `seconds_all` (every repeat), `device_seconds` (median CUDA-event
  time, null on CPU), `images` (per unit), `images_per_s` (images / seconds);
* `summary`: `suite_images_per_s` (epoch), `reference_images_per_s` (the fastest worker
  count's), `reference_best_workers`, `speedup_vs_reference` (against that fastest),
  `bare_images_per_s`, `overhead_vs_bare`, `achieved_tflops` (suite epoch),
  `flop_floor_fraction`, `multiseed_images_per_s`, `multiseed_speedup`,
  `eval_images_per_s`; null where not measured.

How fast it runs: `--dataset digits --model cnn` takes about 10 s on a 2-core CPU; `--smoke`
a few seconds. Measured figures are in the README's Performance section.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.config.entry import unwritable as unwritable_folder
from src.data.tensors import Split, TrainData, normalisation
from src.errors import ConfigError
from src.models import build_model
from src.run.records import now_iso
from src.tools.report import machine, print_fields, write_report
from src.training.device import Execution, resolve_device, resolve_execution
from src.training.model_cache import compile_mode, get_model
from src.training.trainer import SingleTrainer, StackedTrainer, Trainer

CONF = Path(__file__).resolve().parents[2] / "conf"
# Smaller widths for --smoke, per model (a key of one model is not a key of another).
SMOKE_MODEL_ARGS = {"cnn": ["channels=[8,16]"], "mlp": ["hidden_sizes=[32]"],
                    "preact_resnet18": ["width=8"], "vit": ["width=32", "depth=1"]}


@dataclass
class Measure:
    """One timed quantity: per-repeat wall and device seconds of one unit (step or epoch)."""

    name: str
    images: int
    seconds_all: list[float] = field(default_factory=list)
    device_all: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The JSON object of this measurement."""
        sec = statistics.median(self.seconds_all)
        dev = statistics.median(self.device_all) if self.device_all else None
        return {"name": self.name, "seconds": sec, "seconds_all": self.seconds_all,
                "device_seconds": dev, "images": self.images,
                "images_per_s": self.images / sec if sec > 0 else None}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None]:
    """Wall seconds of fn() on a synchronised clock, and CUDA-event seconds on a GPU."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    fn()
    if cuda:
        end.record()
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    return wall, (start.elapsed_time(end) / 1000 if cuda else None)


def measure(name: str, fn: Callable[[], Any], images: int, device: torch.device, warmup: int,
            repeats: int, units: int = 1) -> Measure:
    """Run fn warmup times untimed, then repeats times timed; `units` steps per call."""
    for _ in range(warmup):
        fn()
    m = Measure(name, images)
    for _ in range(repeats):
        wall, dev = timed(fn, device)
        m.seconds_all.append(wall / units)
        if dev is not None:
            m.device_all.append(dev / units)
    return m


# ---------------------------------------------------------------- data and model set-up


def compose_config(args: argparse.Namespace) -> DictConfig:
    """The run config the bench measures, composed from conf/ exactly as a run composes it
    (Hydra's compose API, the command line's values as overrides) and validated as a run is.
    Synthetic data (--shape) replaces the dataset's shape, classes and statistics."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    import src.config  # noqa: F401  (the resolver the Hydra config uses)
    from src.config.entry import missing_option
    from src.config.validate import validate
    from src.train import CONF_DIR

    over = [f"dataset={args.dataset}", f"model={args.model}", f"trainer={args.trainer}",
            *[f"model.{item}" for item in args.model_arg],
            f"trainer.batch_size={args.batch_size}", f"trainer.amp={args.amp}",
            f"trainer.compile={str(args.compile).lower()}", f"trainer.device={args.device}",
            f"trainer.channels_last={str(args.channels_last).lower()}", "trainer.epochs=1000",
            f"augmentation.mixup_alpha={args.alpha}", f"augmentation.smoothing={args.eps}",
            "paths.run_dir=."]
    if args.npz:
        over.append(f"dataset.npz={args.npz}")
    if args.shape:
        c, h, w = (int(v) for v in args.shape.split(","))
        cifar_like = (c, h, w) == (3, 32, 32)  # augment as conf/dataset/cifar10.yaml does
        over += [f"dataset.image_shape=[{c},{h},{w}]", f"dataset.num_classes={args.num_classes}",
                 f"dataset.mean=[{','.join(['0.5'] * c)}]",
                 f"dataset.std=[{','.join(['0.25'] * c)}]",
                 f"dataset.augment.crop_padding={4 if cifar_like else 0}",
                 f"dataset.augment.hflip={str(cifar_like).lower()}"]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=over)
    except MissingConfigException as err:  # --dataset or --model that conf/ does not have
        raise missing_option(err) from None
    except HydraException as err:  # a model argument the model has no key for, say
        raise ConfigError("--model-arg", args.model_arg, f"keys of model {args.model} "
                          "(conf/model) with values of their type",
                          hint=str(err).splitlines()[0]) from None
    validate(cfg)
    return cfg


def load_data(args: argparse.Namespace, cfg: DictConfig) -> tuple[dict[str, Any], np.ndarray,
                                                                  np.ndarray]:
    """(dataset config, train images (N, H, W, C) uint8, labels) of the chosen data."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    if args.shape:
        c, h, w = ds["image_shape"]
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (args.n, h, w, c), dtype=np.uint8)
        y = rng.integers(0, args.num_classes, args.n).astype(np.int64)
        ds["name"] = f"synthetic-{c}x{h}x{w}"
        return ds, x, y
    from src.data.arrays import load_arrays

    arrays = load_arrays(ds)
    x, y = arrays.x_train, arrays.y_train
    if args.n:
        x, y = x[:args.n], y[:args.n]
    return ds, x, y


def train_data(ds: dict[str, Any], x: np.ndarray, y: np.ndarray, crop: int, hflip: bool,
               device: torch.device) -> TrainData:
    """The suite's TrainData on the device (a token test split: the bench does not evaluate)."""
    xt = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y).to(device)
    mean, std = normalisation(ds, device)
    return TrainData(train=Split(xt, yt), test=Split(xt[:8], yt[:8]), y_true=yt, val=None,
                     mean=mean, std=std, num_classes=int(ds["num_classes"]),
                     crop_padding=crop, hflip=hflip)


def flops_per_image(model_cfg: dict[str, Any], shape: tuple[int, int, int], k: int,
                    batch: int) -> float:
    """Forward FLOPs per image, counted on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(model_cfg, shape, k)
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.empty(batch, *shape))
    return counter.get_total_flops() / batch


# ---------------------------------------------------------------- the timed loops


def time_suite(trainer: Trainer, args: argparse.Namespace) -> list[Measure]:
    """The suite's step (S steps inside an epoch, paused by the stop hook) and whole epoch."""
    bs, dev = trainer.batch_size, trainer.device
    steps = min(args.steps, trainer.steps_per_epoch)

    def run_steps() -> None:
        st = trainer.epoch_state
        if st is None or trainer.steps_per_epoch - st.step < steps:
            trainer.begin_epoch()
        target = trainer.epoch_state.step + steps
        trainer.train_epoch(stop=lambda: trainer.epoch_state.step >= target)

    def run_epoch() -> None:
        trainer.epoch_state = None
        trainer.train_epoch()

    step = measure("suite_step", run_steps, bs, dev, args.warmup, args.repeats, units=steps)
    epoch = measure("suite_epoch", run_epoch, bs * trainer.steps_per_epoch, dev, args.warmup,
                    args.repeats)
    return [step, epoch]


def time_bare(trainer: Trainer, args: argparse.Namespace) -> Measure:
    """The suite's own step on batches made beforehand by the suite's own batch code: the
    floor of a step, without gathering, augmentation and mixing inside the loop."""
    steps = min(args.steps, trainer.steps_per_epoch)
    trainer.begin_epoch()
    batches = [trainer.batch(i).detached() for i in range(steps)]
    trainer.epoch_state = None

    def run() -> None:
        trainer.train_mode()
        for batch in batches:
            trainer.step(batch)

    return measure("bare_step", run, trainer.batch_size, trainer.device, args.warmup,
                   args.repeats, units=steps)


def time_reference(args: argparse.Namespace, ds: dict[str, Any], x: np.ndarray, y: np.ndarray,
                   model_cfg: dict[str, Any], device: torch.device, crop: int,
                   hflip: bool) -> list[Measure]:
    """The original Mixup code's loop, one epoch per repeat on a fresh fp32 model, at each
    DataLoader worker count asked for: the comparison is with the best of them (a user
    tunes the worker count; on 2 cores, workers compete with training)."""
    from src.tools import reference

    out = []
    for workers in args.ref_workers:
        torch.manual_seed(0)
        np.random.seed(0)
        model = build_model(model_cfg, tuple(ds["image_shape"]),
                            int(ds["num_classes"])).to(device)
        optimizer = reference.make_optimizer(model)
        loader = reference.make_loader(x, y, args.batch_size, ds["mean"], ds["std"], crop,
                                       hflip, workers)
        epoch = functools.partial(reference.train_epoch, model, loader, optimizer, args.alpha,
                                  args.eps, device)
        out.append(measure(f"reference_epoch_workers_{workers}", epoch, len(y), device,
                           args.warmup, args.repeats))
    return out


def time_multiseed(args: argparse.Namespace, ds: dict[str, Any], data: TrainData,
                   model_cfg: dict[str, Any], trainer_cfg: dict[str, Any],
                   execution: Execution) -> Measure:
    """K seeds as one batched model (src.training.trainer.StackedTrainer), one epoch of all K
    per repeat."""
    seeds = list(range(args.parallel_seeds))
    mt = StackedTrainer(model_cfg, tuple(ds["image_shape"]), data, trainer_cfg,
                        {"mixup_alpha": args.alpha, "smoothing": args.eps}, execution, seeds)
    images = len(seeds) * mt.batch_size * mt.steps_per_epoch

    def run_epoch() -> None:
        mt.epoch_state = None
        mt.train_epoch()

    return measure("multiseed_epoch", run_epoch, images, execution.device, args.warmup,
                   args.repeats)


def time_eval(trainer: Trainer, args: argparse.Namespace) -> Measure:
    """The suite's evaluation forward over the whole training split, one pass per repeat."""
    x = trainer.data.train.x
    return measure("suite_eval", lambda: trainer.predict(x), len(x), trainer.device,
                   args.warmup, args.repeats)


# ---------------------------------------------------------------- report


def summarise(rows: dict[str, dict[str, Any]], flops: dict[str, float], peak: float | None,
              device: torch.device) -> dict[str, Any]:
    """Ratios of the measurements (null where one side was not measured)."""
    def ips(name: str) -> float | None:
        return rows[name]["images_per_s"] if name in rows else None

    suite, bare, multi = ips("suite_epoch"), ips("bare_step"), ips("multiseed_epoch")
    evaluation = ips("suite_eval")
    refs = {n: r["images_per_s"] for n, r in rows.items() if n.startswith("reference_epoch")}
    best_ref = max(refs, key=refs.get) if refs else None
    ref = refs[best_ref] if best_ref else None
    achieved = suite * flops["train_per_image"] / 1e12 if suite else None
    use_peak = peak if peak is not None else (800.0 if device.type == "cuda" else None)
    step, bare_s = rows.get("suite_step"), rows.get("bare_step")
    return {
        "suite_images_per_s": suite, "reference_images_per_s": ref,
        "reference_best_workers": int(best_ref.rsplit("_", 1)[1]) if best_ref else None,
        "speedup_vs_reference": suite / ref if suite and ref else None,
        "bare_images_per_s": bare,
        "overhead_vs_bare": (step["seconds"] / bare_s["seconds"] - 1) if step and bare_s
        else None,
        "achieved_tflops": achieved,
        "flop_floor_fraction": achieved / use_peak if achieved and use_peak else None,
        "multiseed_images_per_s": multi,
        "multiseed_speedup": multi / suite if multi and suite else None,
        "eval_images_per_s": evaluation,
    }


def print_table(report: dict[str, Any]) -> None:
    """The results as a fixed-width table, then the summary ratios."""
    cfg = report["config"]
    print(f"model {cfg['model']} {cfg['model_args']} on {cfg['dataset']} {cfg['shape']}, "
          f"batch {cfg['batch_size']}, alpha {cfg['alpha']}, eps {cfg['eps']}, "
          f"{report['machine']['device']} amp={cfg['amp']} compile={cfg['compile_mode']}, "
          f"{report['machine']['torch_threads']} threads")
    print(f"{'measurement':18s} {'seconds':>10s} {'device s':>10s} {'images':>8s} "
          f"{'images/s':>10s}")
    for r in report["results"]:
        dev = f"{r['device_seconds']:.5f}" if r["device_seconds"] is not None else "-"
        print(f"{r['name']:18s} {r['seconds']:10.5f} {dev:>10s} {r['images']:8d} "
              f"{r['images_per_s']:10.0f}")
    print_fields(report["summary"])


# ---------------------------------------------------------------- entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m src.tools.bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits", help="a conf/dataset name (real data)")
    p.add_argument("--npz", default=None, help="offline archive for --dataset")
    p.add_argument("--shape", default=None, help="synthetic data C,H,W instead of --dataset")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--n", type=int, default=None, help="training images (synthetic: 50000)")
    p.add_argument("--model", default="cnn", help="a conf/model name")
    p.add_argument("--trainer", default="default",
                   help="a conf/trainer name (e.g. cifar), before the options below")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. width=32 or channels=[8,16]")
    p.add_argument("--alpha", type=float, default=1.0, help="Mixup alpha (0 = off)")
    p.add_argument("--eps", type=float, default=0.1, help="label smoothing eps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--amp", default="auto", help="auto, bf16, fp16 or off")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the suite's model, as trainer.compile: alone, the "
                        "device's fastest mode (CUDA: reduce-overhead); or a mode by name")
    p.add_argument("--channels-last", default="auto", type=_auto_bool)
    p.add_argument("--crop-padding", type=int, default=None, help="default: the dataset's")
    p.add_argument("--hflip", type=_auto_bool, default=None, help="default: the dataset's")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="steps per timed step measurement")
    p.add_argument("--ref-workers", type=int, nargs="+", default=None,
                   help="reference DataLoader worker counts to time (default: 0 .. cores); "
                        "the speed-up is against the fastest")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--parallel-seeds", type=int, default=0, metavar="K",
                   help="also time K seeds as one batched model (StackedTrainer)")
    p.add_argument("--eval", action="store_true",
                   help="also time the evaluation forward over the training split")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak for the FLOP floor (default 800 on CUDA: H100-class dense bf16)")
    p.add_argument("--out", default="outputs/bench/bench.json")
    p.add_argument("--smoke", action="store_true", help="a few steps of a tiny model (CI)")
    args = p.parse_args(argv)
    check_args(p, args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.model_arg = args.model_arg or list(SMOKE_MODEL_ARGS.get(args.model, []))
        args.warmup, args.repeats, args.steps = 1, 1, 2
        args.batch_size = min(args.batch_size, 32)
        args.n = args.n or 128
        args.ref_workers = [0] if args.ref_workers is None else args.ref_workers
    if args.shape and args.n is None:
        args.n = 50000
    if args.ref_workers is None:  # every count from none to one per core
        args.ref_workers = list(range((os.cpu_count() or 1) + 1))
    try:
        args.config = compose_config(args)
    except ConfigError as err:  # the suite's own validation, named by the bench's option
        option = OPTION_OF_KEY.get(err.key)
        p.error(f"{option}={err.value!r}: expected {err.allowed} ({err.key} of a run)"
                if option else f"{err}")
    return args


# The bench's options that set a run's config key (compose_config), to name them in errors.
OPTION_OF_KEY = {"dataset": "--dataset", "model": "--model", "trainer": "--trainer",
                 "trainer.compile": "--compile",
                 "trainer.amp": "--amp", "trainer.batch_size": "--batch-size",
                 "trainer.device": "--device", "augmentation.mixup_alpha": "--alpha",
                 "augmentation.smoothing": "--eps", "dataset.npz": "--npz"}


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad values stop here, with the option, the value and what is allowed, before any data
    is loaded or anything timed."""

    def bad(option: str, value: Any, allowed: str) -> None:
        p.error(f"{option}={value!r}: expected {allowed}")

    try:  # what a run's config would hold is checked by the suite's validation (below)
        resolve_device(args.device)
    except ConfigError as err:
        bad("--device", args.device, err.allowed)
    if args.shape is not None:
        parts = args.shape.split(",")
        if len(parts) != 3 or not all(v.strip().isdigit() and int(v) > 0 for v in parts):
            bad("--shape", args.shape, "three positive integers C,H,W, e.g. 3,32,32")
    for option in ("repeats", "steps", "num_classes"):
        if getattr(args, option) < 1:
            bad("--" + option.replace("_", "-"), getattr(args, option), "an integer >= 1")
    for option in ("warmup", "parallel_seeds"):
        if getattr(args, option) < 0:
            bad("--" + option.replace("_", "-"), getattr(args, option), "an integer >= 0")
    if args.n is not None and args.n < 1:
        bad("--n", args.n, "an integer >= 1")
    if args.threads is not None and args.threads < 1:
        bad("--threads", args.threads, "an integer >= 1")
    if args.ref_workers is not None and any(w < 0 for w in args.ref_workers):
        bad("--ref-workers", args.ref_workers, "worker counts >= 0")
    for option in ("crop_padding",):
        if getattr(args, option) is not None and getattr(args, option) < 0:
            bad("--crop-padding", args.crop_padding, "an integer >= 0")
    problem = unwritable(Path(args.out))
    if problem:
        bad("--out", args.out, f"a JSON file path in a writable folder ({problem})")


def unwritable(out: Path) -> str | None:
    """Why the report could not be written at `out`, found by trying to write in its folder
    (src.config.entry.unwritable) before hours of timing, not after."""
    if out.is_dir():
        return "it is a folder"
    return unwritable_folder(out.parent)


def _auto_bool(text: str) -> str | bool:
    return text if text == "auto" else text.lower() in ("1", "true", "yes", "on")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything the arguments ask for; return the report object."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = args.config
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    execution = resolve_execution(trainer_cfg)  # as a run resolves device, precision and layout
    device, cl = execution.device, execution.channels_last
    ds, x, y = load_data(args, cfg)
    crop = ds["augment"]["crop_padding"] if args.crop_padding is None else args.crop_padding
    hflip = ds["augment"]["hflip"] if args.hflip is None else bool(args.hflip)
    shape = tuple(int(v) for v in ds["image_shape"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    data = train_data(ds, x, y, crop, hflip, device)
    model = get_model(model_cfg, shape, data.num_classes, execution, seed=0)
    trainer = SingleTrainer(model, data, trainer_cfg, {"mixup_alpha": args.alpha,
                                                "smoothing": args.eps}, execution, seed=0)
    results = time_suite(trainer, args) + [time_bare(trainer, args)]
    if not args.no_reference:
        results += time_reference(args, ds, x, y, model_cfg, device, crop, hflip)
    if args.parallel_seeds:
        results.append(time_multiseed(args, ds, data, model_cfg, trainer_cfg, execution))
    if args.eval:
        results.append(time_eval(trainer, args))
    fwd = flops_per_image(model_cfg, shape, data.num_classes, trainer.batch_size)
    flops = {"forward_per_image": fwd, "train_per_image": 3 * fwd}
    rows = {m.name: m.row() for m in results}
    config = {"dataset": ds["name"], "shape": list(shape), "num_classes": data.num_classes,
              "n_train": len(y), "model": args.model, "model_args": model_cfg,
              "trainer": args.trainer, "alpha": args.alpha, "eps": args.eps,
              "batch_size": trainer.batch_size,
              "device": str(device), "amp": execution.amp, "compile": args.compile,
              "compile_mode": compile_mode(args.compile, device),
              "channels_last": cl, "crop_padding": crop, "hflip": hflip,
              "warmup": args.warmup, "repeats": args.repeats, "steps": args.steps,
              "ref_workers": args.ref_workers, "parallel_seeds": args.parallel_seeds,
              "eval": args.eval, "peak_tflops": args.peak_tflops, "smoke": args.smoke}
    return {"schema": 1, "created_at": now_iso(),
            "command": " ".join(["python -m src.tools.bench", *args.argv]),
            "machine": machine(device), "config": config, "flops": flops,
            "results": list(rows.values()),
            "summary": summarise(rows, flops, args.peak_tflops, device)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, measure, print the table, write the JSON."""
    args = parse_args(argv)
    try:
        report = run(args)
    except ConfigError as err:  # e.g. an --npz that is not a readable archive
        print(f"python -m src.tools.bench: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(report)
    write_report(report, args.out)
    return report


def cli() -> None:
    """The console script: measure, print, write (exit code 0, or 2 for a bad option)."""
    main()


if __name__ == "__main__":
    cli()
