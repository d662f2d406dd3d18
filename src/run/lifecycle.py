"""One job's life, for M >= 1 members: folders, data, trainer, epochs, records, loggers.

A member is one run: one configuration and seed, one run folder, one results.json. A plain job
has one member; `trainer.parallel_seeds` gives a job M members that train together as one
batched model (src.training.trainer.StackedTrainer), and the batched launcher
(hydra_plugins/lsmix_batched_launcher) hands it the runs of a sweep that differ only in the
batchable keys (src.config.BATCHABLE_KEYS, checked by src.run.batches). Each member keeps its
own group, records, metrics and logger, as its separate run would. Everything else is written
once here for both: the lock on the run folders, the records (src.run.records), divergence,
evaluation, metrics, progress, checkpoints, the signal policy (src.run.signals) and the external
loggers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.config.validate import cannot_stack
from src.data.tensors import TrainData, first_samples, prepare_data
from src.errors import ConfigError
from src.files import write_json_atomic
from src.noise import noise_metrics
from src.run.batches import check_batch, describe_batch, differing_keys
from src.run.identity import fingerprint, flat_settings, input_records, run_identity
from src.run.lock import run_folder_lock
from src.run.loggers import NullLogger, make_logger, run_name
from src.run.progress import Progress
from src.run.records import METRICS, RESULTS, now_iso, summarise, write_metrics
from src.run.signals import SIGNALS
from src.training.checkpoint import (
    BEST_WEIGHTS,
    LAST_WEIGHTS,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    save_weights,
)
from src.training.device import Execution, resolve_execution
from src.training.evaluate import (
    calibration_metrics,
    classification_metrics,
    memorization_indices,
    temperature_scaled_ece,
)
from src.training.model_cache import get_model
from src.training.profiling import step_profiler
from src.training.threads import apply_threads, launcher_jobs
from src.training.trainer import EpochStats, SingleTrainer, StackedTrainer, Trainer

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One run of the job: its config, folder, results object and logger."""

    cfg: DictConfig
    run_dir: Path
    record: dict[str, Any]
    logger: NullLogger | None = None


@dataclass
class JobState:
    """Where the job stands (what a checkpoint keeps besides the trainer)."""

    epoch: int = 0
    histories: list[list[dict[str, Any]]] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    eval_s: float = 0.0
    active: list[bool] = field(default_factory=list)
    # Why each member that stopped diverged (None while it trains): kept, so that a resumed
    # job records it again instead of leaving the member's status "running".
    diverged: list[str | None] = field(default_factory=list)

    @classmethod
    def fresh(cls, k: int) -> JobState:
        return cls(0, [[] for _ in range(k)], [0.0] * k, [0] * k, 0.0, [True] * k, [None] * k)


def results_header(cfg: DictConfig, group: str, noisy: Any, execution: Execution,
                   started: str,
                   threads: int) -> dict[str, Any]:
    """The results object of a run about to train: who it is, what noise it got, where."""
    inputs = input_records(cfg)  # hashed once: the fingerprint covers the same records
    return {"status": "running", "error": None, **run_identity(cfg, group),
            "noise_rate_realized": noisy.realized_rate,
            # Human noise has no requested rate: the file's rate is the rate.
            **({"noise_rate": noisy.realized_rate} if cfg.noise.name == "human" else {}),
            "device": str(execution.device), "amp": execution.amp, "threads": threads,
            "started_at": started,
            "config_fingerprint": fingerprint(cfg, inputs), "inputs": inputs,
            "config": flat_settings(cfg)}


def save_hydra_record(cfg: DictConfig, run_dir: Path, hydra: DictConfig | None = None) -> None:
    """Hydra's record of the job (.hydra/config.yaml, hydra.yaml, overrides.yaml), written
    here once the job owns its folder rather than by Hydra before the job starts
    (`hydra.output_subdir: null`): a job refused for its folder rewrites nothing there.
    `hydra`: the job's own Hydra config (a batch of a sweep's jobs), else the current one."""
    from hydra.core.hydra_config import HydraConfig

    if hydra is None and not HydraConfig.initialized():
        return
    hydra_cfg = hydra if hydra is not None else HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}),
                   out / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, out / "overrides.yaml")


def job_fingerprint(members: list[Member]) -> str:
    """The checkpoint's key: the run's fingerprint, or a hash of every member's (read from
    their results headers, computed once)."""
    prints = [m.record["config_fingerprint"] for m in members]
    if len(prints) == 1:
        return prints[0]
    return hashlib.sha256(",".join(prints).encode()).hexdigest()[:16]


def build_trainer(cfgs: list[DictConfig], data: TrainData, execution: Execution) -> Trainer:
    """One model, or the members as one batched model (each with its seed, alpha and eps)."""
    cfg, seeds = cfgs[0], [int(c.trainer.seed) for c in cfgs]
    in_shape = tuple(int(v) for v in cfg.dataset.image_shape)
    if len(seeds) == 1:
        # Seeded, built and laid out as a fresh build; a compiled run reuses this process's
        # model of the same architecture, re-initialised (src.training.model_cache).
        model = get_model(cfg.model, in_shape, data.num_classes, execution, seeds[0],
                          reuse=bool(cfg.trainer.compile))
        return SingleTrainer(model, data, cfg.trainer, cfg.augmentation, execution, seeds[0])
    return StackedTrainer(cfg.model, in_shape, data, cfg.trainer,
                          [c.augmentation for c in cfgs], execution, seeds)


def run_job(cfgs: list[DictConfig], group: str | list[str] = "", spread: int | None = None,
            hydra: list[DictConfig | None] | None = None) -> list[dict[str, Any]]:
    """Train the members (configs that differ only in src.config.BATCHABLE_KEYS, each with its
    own folder); return each results object. `group`: the sweep folder name (W&B and results
    `group`) of every member, or one per member; `hydra`: each member's Hydra config for its
    .hydra record (None: the current one)."""
    check_batch(cfgs)  # before anything is written
    groups = [group] * len(cfgs) if isinstance(group, str) else list(group)
    records = hydra if hydra is not None else [None] * len(cfgs)
    members = [Member(c, Path(c.paths.run_dir), {}) for c in cfgs]
    dirs = [m.run_dir for m in members]
    with run_folder_lock(dirs):
        for m, hydra_cfg in zip(members, records):
            save_hydra_record(m.cfg, m.run_dir, hydra_cfg)
        started = now_iso()
        # Bad devices, missing files and noise that does not fit the data raise ConfigError
        # here, before a results.json exists that analysis could take for a run.
        execution = resolve_execution(cfgs[0].trainer, spread)
        if len(cfgs) > 1 and execution.amp == "fp16":  # trainer.amp=auto on a GPU without bf16
            why = cannot_stack(cfgs[0].model, "fp16")
            raise ConfigError("trainer.amp", str(cfgs[0].trainer.amp), "a precision that "
                              f"runs trained together can share ({why})",
                              hint="set trainer.amp=off, or train these runs one at a time")
        jobs = launcher_jobs()
        threads = apply_threads(cfgs[0].trainer.threads, jobs) if execution.device.type == "cpu" \
            else torch.get_num_threads()
        data, noisy = prepare_data(cfgs[0], execution.device, execution.channels_last, dirs)
        overfit = int(cfgs[0].trainer.overfit_batches)
        if overfit > 0:  # debug=overfit: the same few batches every epoch
            data = first_samples(data, overfit * int(cfgs[0].trainer.batch_size))
        for m, g in zip(members, groups):
            m.record = results_header(m.cfg, g, noisy, execution, started, threads)
            # The exact config of these results, beside them (Hydra's .hydra/ is rewritten
            # on reruns).
            OmegaConf.save(m.cfg, m.run_dir / "config.yaml", resolve=True)
        state = JobState.fresh(len(members))
        try:
            trainer = build_trainer(cfgs, data, execution)
            key = job_fingerprint(members)
            state = _resume(cfgs, trainer, dirs[0], state, key)
            for m, active, why in zip(members, state.active, state.diverged or
                                      [None] * len(members)):
                if not active:  # it diverged before the checkpoint: its outcome stands
                    m.record["status"] = "diverged"
                    m.record["error"] = why or "diverged before the checkpoint it resumed from"
            if len(members) == 1:  # one open W&B run at a time: live for a single member
                resumed = state.epoch > 0 or trainer.epoch_state is not None
                members[0].logger = _open_logger(members[0], groups[0], resumed)
            _fit(cfgs, members, trainer, data, state, key,
                 jobs if execution.device.type == "cpu" else None,
                 job=None if spread is None else str(spread), group=groups[0])
            if all(m.record["status"] != "running" for m in members) and \
                    not cfgs[0].trainer.keep_checkpoint:
                remove_checkpoints(dirs[0])
        except BaseException as err:
            status = "failed" if isinstance(err, Exception) else "interrupted"
            for m in members:
                if m.record["status"] == "running":
                    m.record["status"], m.record["error"] = status, f"{type(err).__name__}: {err}"
            raise
        finally:
            for m, g, history in zip(members, groups, state.histories):
                m.record.update(summarise(history, int(m.cfg.trainer.last_k)))
                m.record["epochs_done"] = history[-1]["epoch"] if history else 0
                m.record["finished_at"] = now_iso()
                write_json_atomic(m.run_dir / RESULTS, m.record)
                _close_logger(m, g, history)
    return [m.record for m in members]


def _resume(cfgs: list[DictConfig], trainer: Trainer, ckpt_dir: Path, state: JobState,
            key: str) -> JobState:
    """Continue from the job's checkpoint (of fingerprint `key`) when there is a good one,
    else start fresh."""
    ckpt = load_checkpoint(ckpt_dir, key)
    if ckpt is None:
        return state
    try:
        trainer.load_state_dict(ckpt["trainer"])
        state = JobState(**ckpt["job"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:  # another format
        log.warning("checkpoint in %s does not fit this trainer (%s); starting over",
                    ckpt_dir, err)
        return JobState.fresh(len(cfgs))
    for k, active in enumerate(state.active):
        if not active:
            trainer.stop_member(k)
    for c, history in zip(cfgs, state.histories):  # drop epochs logged after the checkpoint
        write_metrics(Path(c.paths.run_dir) / METRICS, history)
    log.info("resuming %s after epoch %d%s", ckpt_dir, state.epoch,
             " (inside the next epoch)" if trainer.epoch_state else "")
    return state


def _checkpoint(cfgs: list[DictConfig], trainer: Trainer, state: JobState, key: str) -> None:
    save_checkpoint(Path(cfgs[0].paths.run_dir), {
        "fingerprint": key, "trainer": trainer.state_dict(), "job": asdict(state)})


def evaluate_members(trainer: Trainer, data: TrainData, members: list[int],
                     final: bool = False) -> dict[int, dict[str, Any]]:
    """Test metrics (with calibration), noisy-validation metrics and what each member does
    with the noisy labels; on the `final` evaluation also the test ECE after temperature
    scaling fitted on the validation split.

    Each split is predicted once for all members (one batched call for stacked members).
    """
    rows: dict[int, dict[str, Any]] = {k: {} for k in members}
    test = trainer.predict(data.test.x)
    val = trainer.predict(data.val.x) if data.val is not None else None
    given, true = data.train.y.cpu().numpy(), data.y_true.cpu().numpy()
    train_x, keep = data.train.x, memorization_indices(trainer.cfg["memorization_subset"],
                                                       len(data.train))
    if keep is not None:  # trainer.memorization_subset: a fixed subset of the training split
        train_x, given, true = train_x[torch.from_numpy(keep).to(train_x.device)], \
            given[keep], true[keep]
    train_pred = trainer.predict(train_x).argmax(-1).cpu().numpy()
    for k in members:
        rows[k].update({f"test_{n}": v for n, v in
                        classification_metrics(test[k], data.test.y).items()})
        rows[k].update({f"test_{n}": v for n, v in
                        calibration_metrics(test[k], data.test.y).items()})
        if val is not None:
            metrics = classification_metrics(val[k], data.val.y)
            rows[k]["val_loss"], rows[k]["val_acc"] = metrics["loss"], metrics["acc"]
        rows[k].update(noise_metrics(train_pred[k], given, true))
        if final and val is not None:
            ts = temperature_scaled_ece(test[k], data.test.y, val[k], data.val.y)
            rows[k]["test_ece_ts"], rows[k]["temperature"] = ts["ece_ts"], ts["temperature"]
    return rows


def _fit(cfgs: list[DictConfig], members: list[Member], trainer: Trainer, data: TrainData,
         state: JobState, key: str, cpu_jobs: int | None = None, job: str | None = None,
         group: str = "") -> None:
    """The epoch loop: train, evaluate when due, record, checkpoint; a member whose loss is
    not finite ends `diverged` (the others go on); a signal checkpoints, then stops the job."""
    trainer_cfg = cfgs[0].trainer
    epochs, every = int(trainer_cfg.epochs), int(trainer_cfg.eval_every)
    ckpt_every = int(trainer_cfg.checkpoint_every)
    # Periodic checkpoints at most this often: a run of sub-second epochs would otherwise spend
    # more time writing checkpoints than training. A signal still checkpoints at once.
    interval, last_saved = float(trainer_cfg.checkpoint_interval_s), time.perf_counter()
    desc = run_name(run_identity(cfgs[0], group))
    if len(members) > 1:
        desc += f" (+{len(members) - 1} {'seeds' if seeds_only(cfgs) else 'runs'})"
    with Progress(trainer_cfg.get("progress", "auto"), epochs, trainer.steps_per_epoch, desc=desc,
                  job=job, batch_size=trainer.batch_size * len(members)) as progress, \
            SIGNALS.deferred(), \
            step_profiler(bool(trainer_cfg.profile), members[0].run_dir,
                          trainer.device) as profiler:
        on_step = progress.step if profiler is None else \
            (lambda: (progress.step(), profiler.step()))
        for epoch in range(state.epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            if trainer.device.type == "cpu":
                apply_threads(trainer_cfg.threads, cpu_jobs)  # jobs started or ended meanwhile
            progress.start_epoch(epoch)
            stats = trainer.train_epoch(SIGNALS, on_step=on_step)
            if stats[0].interrupted:  # its seconds so far stay in the paused epoch's state
                _checkpoint(cfgs, trainer, state, key)
                SIGNALS.raise_if_requested()
            _record_training(members, stats, state, epoch, data, trainer)
            if (epoch % every == 0 or epoch == epochs) and any(state.active):
                _record_evaluation(members, trainer, data, stats, state, epoch, t0, progress)
            state.epoch = epoch
            last = epoch == epochs
            due = (ckpt_every and epoch % ckpt_every == 0 and not last
                   and time.perf_counter() - last_saved >= interval)
            if due or (last and trainer_cfg.keep_checkpoint):
                _checkpoint(cfgs, trainer, state, key)
                last_saved = time.perf_counter()
            if SIGNALS() and not due:  # a signal during evaluation: save this epoch first
                _checkpoint(cfgs, trainer, state, key)
            SIGNALS.raise_if_requested()
            if not any(state.active):
                break
    # What a batch's members share, described once (each reads every member's config).
    same_seeds = len(members) > 1 and seeds_only(cfgs)
    trained_with = describe_batch(cfgs, key) if len(members) > 1 else None
    for k, m in enumerate(members):
        if state.active[k]:
            m.record["status"] = "completed"
        m.record["train_time_s"] = state.train_s[k]
        m.record["eval_time_s"] = state.eval_s
        if len(members) > 1:  # their times are the job's, shared
            if same_seeds:
                m.record["trained_with_seeds"] = ",".join(str(s) for s in trainer.seeds)
            m.record["trained_with"] = trained_with
        m.record["images_per_s"] = state.images[k] / max(state.train_s[k], 1e-9)
        if trainer_cfg.save_weights and m.record["status"] == "completed":
            save_weights(m.run_dir / LAST_WEIGHTS, member_weights(trainer, k))


def seeds_only(cfgs: list[DictConfig]) -> bool:
    """Whether the members are seeds of one configuration (trainer.parallel_seeds)."""
    return set(differing_keys(cfgs)) <= {"trainer.seed", "paths.run_dir"}


# A loss this far above a uniform guess's (log K) has exploded: no soft target of the suite
# (smoothed, mixed, or with negative smoothing) makes a learning model's loss reach it.
EXPLODED_LOSS = 100.0
# A log-probability below -COLLAPSED_LOG_PROB (e^-100 ~ 4e-44, beneath float32's smallest
# normal number) means the logits have run away from each other. Negative smoothing (uniform
# mass m < 0) puts negative target entries of total mass at most |m| on classes, and the
# loss rewards pushing their probabilities to zero without bound (Wei et al. 2022 warm up
# first for this reason): a loss below -|m| * (COLLAPSED_LOG_PROB + log K) can only come
# from such runaway logits, never from a model that is learning. Targets without negative
# entries give a loss >= 0.
COLLAPSED_LOG_PROB = 100.0
# After this many passes over the training split a model still at chance on its training
# labels is not learning (passes, not epochs: trainer.steps_per_epoch may cap an epoch).
CHANCE_EPOCHS = 3


def collapse_bound(mass: float, num_classes: int) -> float:
    """The lowest training loss a learning model reaches with uniform mass `mass`."""
    return -abs(min(mass, 0.0)) * (COLLAPSED_LOG_PROB + math.log(num_classes))


def divergence(st: EpochStats, epoch: int, num_classes: int, labels_learnable: bool,
               mass: float = 0.0, passes: float | None = None) -> str | None:
    """Why a member's epoch says it diverged, or None: a non-finite loss, a loss exploded
    upwards or collapsed downwards (below `collapse_bound` of its uniform mass `mass`), or
    training accuracy still at chance after CHANCE_EPOCHS passes over the training split
    (`passes`: images seen / split size; epochs when not given)."""
    if not st.finite:
        return f"non-finite training loss ({st.loss}) in epoch {epoch}"
    bound = EXPLODED_LOSS * math.log(num_classes)
    if st.loss > bound:
        return f"training loss {st.loss:.4g} above {bound:.4g} (100 x log K) in epoch {epoch}"
    floor = collapse_bound(mass, num_classes)
    if st.loss < floor:
        return (f"training loss {st.loss:.4g} below {floor:.4g} in epoch {epoch}: the logits "
                f"ran away (a log-probability under -{COLLAPSED_LOG_PROB:g} at uniform mass "
                f"{mass:g})")
    seen = epoch if passes is None else passes
    if labels_learnable and seen >= CHANCE_EPOCHS and st.acc <= 1 / num_classes + 0.01:
        return (f"training accuracy {st.acc:.4f} still at chance (1/K = {1 / num_classes:.4f})"
                f" after {epoch} epochs")
    return None


def _record_training(members: list[Member], stats: list[EpochStats], state: JobState,
                     epoch: int, data: TrainData, trainer: Trainer) -> None:
    """Add the epoch's time and images; a diverged member (see `divergence`) ends `diverged`
    and is stopped in the trainer (it no longer touches the shared update)."""
    k_classes = data.num_classes
    # Labels a model can fit beyond chance: not (close to) uniformly random.
    noise = float(members[0].record.get("noise_rate_realized") or 0.0)
    # (debug=overfit counts epochs of one batch: no chance rule there.)
    learnable = noise <= 0.8 * (k_classes - 1) / k_classes and \
        not int(members[0].cfg.trainer.overfit_batches)
    for k, st in enumerate(stats):
        if not state.active[k]:
            continue
        state.train_s[k] += st.seconds
        state.images[k] += st.images
        mass = float(members[k].record.get("smoothing_uniform_mass") or 0.0)
        passes = state.images[k] / max(len(data.train), 1)  # epochs may be capped
        why = divergence(st, epoch, k_classes, learnable, mass, passes)
        if why is not None:
            state.active[k] = False
            if len(state.diverged) == len(state.active):
                state.diverged[k] = why
            trainer.stop_member(k)
            rec = members[k].record
            rec["status"], rec["error"] = "diverged", why
            log.error("run %s diverged: %s", members[k].run_dir, why)


def _record_evaluation(members: list[Member], trainer: Trainer, data: TrainData,
                       stats: list[EpochStats], state: JobState, epoch: int, t0: float,
                       progress: Progress) -> None:
    """Evaluate the active members; append, write and log each one's epoch row."""
    active = [k for k in range(len(members)) if state.active[k]]
    t_eval = time.perf_counter()
    evaluated = evaluate_members(trainer, data, active, final=epoch == int(
        members[0].cfg.trainer.epochs))
    state.eval_s += time.perf_counter() - t_eval
    epoch_time = time.perf_counter() - t0
    rows = []
    for k in active:
        st = stats[k]
        row = {"epoch": epoch, "train_loss": st.loss, "train_acc": st.acc, "lr": st.lr,
               **evaluated[k], "epoch_time_s": epoch_time,
               "images_per_s": st.images / max(st.seconds, 1e-9),
               # What the epoch trained with (set at its start): auto may change it between
               # epochs, and another count gives other kernels and other bits.
               "threads": torch.get_num_threads()}
        if st.mix_layer_counts is not None:  # each batch drew its Manifold Mixup stage
            row["mix_layer_counts"] = st.mix_layer_counts
        state.histories[k].append(row)
        write_metrics(members[k].run_dir / METRICS, state.histories[k])
        if members[k].cfg.trainer.save_best == "val" and new_best_val(state.histories[k]):
            save_weights(members[k].run_dir / BEST_WEIGHTS, member_weights(trainer, k))
        if members[k].logger is not None:
            members[k].logger.log_epoch(row)
        rows.append(row)
    progress.end_epoch(_mean_row(rows))


def new_best_val(history: list[dict[str, Any]]) -> bool:
    """Whether the last row's validation accuracy beats every earlier one (ties keep the
    earlier epoch, as `summarise` picks it)."""
    last = history[-1].get("val_acc")
    return last is not None and all(last > r["val_acc"] for r in history[:-1]
                                    if r.get("val_acc") is not None)


def member_weights(trainer: Trainer, k: int) -> dict[str, Any]:
    """Member k's weights as its separate run's model.state_dict() has them."""
    if isinstance(trainer, SingleTrainer):
        return trainer.model.state_dict()
    return trainer.member_state_dict(k)


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One progress line for the members: means, and the job's total images/s."""
    if len(rows) == 1:
        return rows[0]
    out = {k: float(np.mean([r[k] for r in rows]))
           for k in ("train_loss", "train_acc", "test_acc")}
    if rows[0].get("val_acc") is not None:
        out["val_acc"] = float(np.mean([r["val_acc"] for r in rows]))
    return {**out, "epoch": rows[0]["epoch"],
            "images_per_s": float(sum(r["images_per_s"] for r in rows))}


def _open_logger(member: Member, group: str, resumed: bool) -> NullLogger:
    cfg = member.cfg
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.trainer.get("init_from"):  # the run its weights come from: folder and identity
        from src.run.init_from import parent_identity

        config["parent"] = parent_identity(cfg)
    return make_logger(cfg.logger, config, run_identity(cfg, group), str(member.run_dir),
                       resume=resumed)


def _close_logger(member: Member, group: str, history: list[dict[str, Any]]) -> None:
    """Close the member's external logger (a batched member's is opened now and replayed);
    its failure must not hide the run's own outcome."""
    try:
        if member.logger is None:
            if member.record.get("status") in (None, "running"):
                return
            member.logger = _open_logger(member, group, resumed=False)
            for row in history:
                member.logger.log_epoch(row)
        member.logger.finish({k: v for k, v in member.record.items() if v is not None},
                             member.record["status"])
    except Exception as err:
        log.warning("external logger failed for %s: %s", member.run_dir, err)
