"""One run from a composed config: data, noise, model, training loop and its records."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src import noise as noise_lib
from src.augment import method_name
from src.checkpoint import (
    load_checkpoint,
    remove_checkpoints,
    restore_trainer,
    save_checkpoint,
    trainer_state,
)
from src.data import load_arrays, stratified_split
from src.device import Execution, resolve_execution
from src.fingerprint import fingerprint
from src.loggers import NullLogger, make_logger
from src.model_cache import get_model
from src.preempt import Preempted, StopFlag, catch_preemption
from src.progress import Progress
from src.results import METRICS, RESULTS, now_iso, write_json_atomic, write_metrics
from src.trainer import Split, TrainData, Trainer

log = logging.getLogger("src.train")

_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def to_device(key: tuple, array: np.ndarray, device: torch.device,
              channels_last: bool | None = None) -> torch.Tensor:
    """A numpy array as a tensor on `device`, cached so a sweep moves each dataset once.

    `channels_last` (images only): (N, H, W, C) arrays become (N, C, H, W) tensors in that
    memory layout, made once here rather than copied again by every run. Channels-last is the
    arrays' own order, so on a GPU the images are not copied at all.
    """
    full = key + (str(device), channels_last)
    if full not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 16:
            _DEVICE_CACHE.clear()
        t = torch.from_numpy(array).to(device)
        if channels_last is not None:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            t = t.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        _DEVICE_CACHE[full] = t
    return _DEVICE_CACHE[full]


def run_identity(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """The keys that say which run this is (written into results.json and W&B)."""
    aug, nz = cfg.augmentation, cfg.noise
    return {
        "experiment": cfg.task_name,
        "group": group,
        "run_dir": str(cfg.paths.run_dir),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "augmentation": aug.name,
        "method": method_name(float(aug.mixup_alpha), float(aug.smoothing)),
        "mixup_alpha": float(aug.mixup_alpha),
        "smoothing": float(aug.smoothing),
        "noise": nz.name,
        "noise_rate": float(nz.rate),
        "noise_seed": int(nz.seed),
        "noise_label_set": nz.get("label_set") if nz.name == "human" else None,
        "seed": int(cfg.trainer.seed),
        "epochs": int(cfg.trainer.epochs),
        "val_fraction": float(cfg.dataset.get("val_fraction", 0.0)),
    }


def prepare_data(cfg: DictConfig, ex: Execution, run_dir: Path) -> tuple[TrainData, Any]:
    """Load the dataset, inject label noise, hold out validation, move it all to the device."""
    ds = cfg.dataset
    arrays = load_arrays(ds)
    k = int(ds.num_classes)
    noisy = noise_lib.inject_noise(arrays.y_train, k, cfg.noise, dataset=ds.name,
                                   images=arrays.x_train)
    noise_lib.save_noise(noisy, run_dir, OmegaConf.to_container(cfg.noise, resolve=True))
    dev, key = ex.device, (ds.name, ds.get("npz"), ds.get("root"))
    x_train = to_device(key + ("x_train",), arrays.x_train, dev, ex.channels_last)
    x_test = to_device(key + ("x_test",), arrays.x_test, dev, ex.channels_last)
    given = torch.from_numpy(noisy.given_labels).to(dev)
    true = torch.from_numpy(noisy.true_labels).to(dev)
    frac, val = float(ds.get("val_fraction", 0.0)), None
    if frac > 0:
        # Stratified on the labels a practitioner has: the noisy ones.
        tr, va = stratified_split(noisy.given_labels, frac, int(ds.get("val_seed", 0)))
        train_idx, val_idx = torch.from_numpy(tr).to(dev), torch.from_numpy(va).to(dev)
        val = Split(x_train[val_idx], given[val_idx])
        x_train, given, true = x_train[train_idx], given[train_idx], true[train_idx]
    shape = (1, -1, 1, 1)
    data = TrainData(
        train=Split(x_train, given),
        test=Split(x_test, to_device(key + ("y_test",), arrays.y_test, dev)),
        y_true=true, val=val, num_classes=k,
        mean=torch.tensor(list(ds.mean), device=dev).view(shape),
        std=torch.tensor(list(ds.std), device=dev).view(shape),
        crop_padding=int(ds.augment.crop_padding), hflip=bool(ds.augment.hflip),
    )
    return data, noisy


def evaluate_epoch(trainer: Trainer, data: TrainData) -> dict[str, Any]:
    """Test metrics, noisy-validation metrics and what the model does with the noisy labels."""
    row: dict[str, Any] = {}
    for k, v in trainer.evaluate(data.test).items():
        row[f"test_{k}"] = v
    if data.val is not None:
        val = trainer.evaluate(data.val)
        row["val_loss"], row["val_acc"] = val["loss"], val["acc"]
    pred = trainer.predict(data.train.x).argmax(-1).cpu().numpy()
    row.update(noise_lib.noise_metrics(pred, data.train.y.cpu().numpy(),
                                       data.y_true.cpu().numpy()))
    return row


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best figures of a run from its per-epoch records."""
    if not history:
        return {}
    last = history[-1]
    best = max(history, key=lambda r: r["test_acc"])
    out = {
        "final_test_acc": last["test_acc"], "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"], "final_test_loss": last["test_loss"],
        "final_test_ece": last["test_ece"], "final_memorized": last.get("memorized"),
        "final_recovered": last.get("recovered"), "best_val_acc": None,
        "test_acc_at_best_val": None,
    }
    with_val = [r for r in history if r.get("val_acc") is not None]
    if with_val:
        bv = max(with_val, key=lambda r: r["val_acc"])
        out["best_val_acc"], out["test_acc_at_best_val"] = bv["val_acc"], bv["test_acc"]
    return out


def results_header(cfg: DictConfig, group: str, noisy: Any, ex: Execution,
                   started: str) -> dict[str, Any]:
    """The results object of a run about to train: who it is, what noise it got, where."""
    return {"status": "running", "error": None, **run_identity(cfg, group),
            "noise_rate_realized": noisy.realized_rate,
            # Human noise has no requested rate: the file's rate is the rate.
            **({"noise_rate": noisy.realized_rate} if cfg.noise.name == "human" else {}),
            "device": str(ex.device), "amp": ex.amp, "started_at": started,
            "config_fingerprint": fingerprint(cfg)}


def run(cfg: DictConfig, group: str = "") -> dict[str, Any]:
    """Train and evaluate one configuration; return (and write) its results object."""
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = now_iso()
    # Bad devices, missing files and noise that does not fit the data raise ConfigError
    # here, before a results.json exists that analysis could take for a run.
    ex = resolve_execution(cfg.trainer, parallel_job_number())
    data, noisy = prepare_data(cfg, ex, run_dir)
    results = results_header(cfg, group, noisy, ex, started)
    # The exact config of these results, beside them (Hydra's .hydra/ is rewritten on reruns).
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    history: list[dict[str, Any]] = []
    logger: NullLogger = NullLogger()
    try:
        in_shape = tuple(int(v) for v in cfg.dataset.image_shape)
        # Seeded, built and laid out as before; a compiled run reuses this process's model
        # of the same architecture, re-initialised exactly as a fresh build (src.model_cache).
        model = get_model(cfg.model, in_shape, data.num_classes, ex, int(cfg.trainer.seed),
                          reuse=bool(cfg.trainer.compile))
        trainer = Trainer(model, data, cfg.trainer, cfg.augmentation, ex, int(cfg.trainer.seed))
        state = _resume(cfg, trainer, run_dir)
        history = state.history
        resumed = state.epoch > 0 or trainer.epoch_state is not None
        logger = make_logger(cfg.logger, OmegaConf.to_container(cfg, resolve=True),
                             f"{group or cfg.task_name}/seed={cfg.trainer.seed}",
                             str(run_dir), resume=resumed)
        with catch_preemption() as stop:
            _fit(cfg, trainer, data, state, logger, run_dir, results, stop)
        if results["status"] == "completed" and not cfg.trainer.keep_checkpoint:
            remove_checkpoints(run_dir)
    except Preempted as err:
        results["status"], results["error"] = "interrupted", str(err)
        raise
    except BaseException as err:
        results["status"] = "failed" if isinstance(err, Exception) else "interrupted"
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        results.update(summarise(history))
        results["epochs_done"] = history[-1]["epoch"] if history else 0
        results["finished_at"] = now_iso()
        write_json_atomic(run_dir / RESULTS, results)
        _finish_logger(logger, results)
    return results


@dataclass
class RunState:
    """Where a run stands: completed epochs, their records, training time and images."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    images: int = 0
    eval_s: float = 0.0


def _resume(cfg: DictConfig, trainer: Trainer, run_dir: Path) -> RunState:
    """Continue from the run's checkpoint when there is a good one, else start fresh."""
    ckpt = load_checkpoint(run_dir, fingerprint(cfg))
    if ckpt is None:
        return RunState()
    restore_trainer(trainer, ckpt["trainer"])
    state = RunState(**ckpt["run"])
    write_metrics(run_dir / METRICS, state.history)  # drop epochs logged after the checkpoint
    log.info("resuming %s after epoch %d%s", run_dir, state.epoch,
             " (inside the next epoch)" if trainer.epoch_state else "")
    return state


def _checkpoint(cfg: DictConfig, trainer: Trainer, state: RunState, run_dir: Path) -> None:
    save_checkpoint(run_dir, {"fingerprint": fingerprint(cfg), "trainer": trainer_state(trainer),
                              "run": asdict(state)})


def _fit(cfg: DictConfig, trainer: Trainer, data: TrainData, state: RunState,
         logger: NullLogger, run_dir: Path, results: dict[str, Any], stop: StopFlag) -> None:
    """The epoch loop: train, evaluate when due, record, checkpoint; stop on a non-finite
    loss (diverged) or a pre-emption signal (checkpoint, then Preempted)."""
    epochs, every = int(cfg.trainer.epochs), int(cfg.trainer.eval_every)
    ckpt_every = int(cfg.trainer.checkpoint_every)
    progress = Progress(cfg.trainer.get("progress", "auto"), epochs)
    for epoch in range(state.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        stats = trainer.train_epoch(stop)
        state.train_s += stats.seconds
        if stats.interrupted:
            _checkpoint(cfg, trainer, state, run_dir)
            stop.raise_if_set()
        state.images += stats.images
        if not stats.finite:
            results["status"] = "diverged"
            results["error"] = f"non-finite training loss ({stats.loss}) in epoch {epoch}"
            log.error("run diverged: %s", results["error"])
            break
        if epoch % every == 0 or epoch == epochs:
            t_eval = time.perf_counter()
            evaluated = evaluate_epoch(trainer, data)
            state.eval_s += time.perf_counter() - t_eval
            row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc,
                   "lr": stats.lr, **evaluated,
                   "epoch_time_s": time.perf_counter() - t0,
                   "images_per_s": stats.images / max(stats.seconds, 1e-9)}
            state.history.append(row)
            write_metrics(run_dir / METRICS, state.history)
            logger.log_epoch(row)
            progress.epoch(row)
        state.epoch = epoch
        last = epoch == epochs
        if (ckpt_every and epoch % ckpt_every == 0 and not last) or (
                last and cfg.trainer.keep_checkpoint):
            _checkpoint(cfg, trainer, state, run_dir)
        stop.raise_if_set()  # a signal during evaluation: the checkpoint above is current
    else:
        results["status"] = "completed"
    results["train_time_s"] = state.train_s
    results["eval_time_s"] = state.eval_s
    results["images_per_s"] = state.images / max(state.train_s, 1e-9)


def _finish_logger(logger: NullLogger, results: dict[str, Any]) -> None:
    """Close the external logger; its failure must not hide the run's own outcome."""
    try:
        logger.finish({k: v for k, v in results.items() if v is not None}, results["status"])
    except Exception as err:
        log.warning("closing the logger failed: %s", err)


def parallel_job_number() -> int | None:
    """The job's number in a sweep run by a parallel launcher (joblib, submitit), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    target = str(hc.launcher.get("_target_", ""))
    if hc.mode is None or "BasicLauncher" in target or not target:
        return None
    return int(hc.job.num)


