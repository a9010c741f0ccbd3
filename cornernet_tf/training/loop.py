"""Training: strategy, seed and precision, the learning-rate schedule, and the `fit` loop.

The composition root (`cornernet_tf/run.py`, `run.train`) builds the pieces of a run and
hands them to these functions: `session` (strategy, seed, dtype policy, a non-chief
worker's scratch folder), `prepare_model` (compile, optimizer, checkpoint manager, resume
from the newest checkpoint of the run folder) and `fit` (the loop from the optimizer's step
to `train.steps`). Checkpoints themselves (keyed by variable name; the older ordered-list
layout is still read) are `training/checkpoints.py`; the callbacks `training/callbacks.py`;
starting from another model's weights `training/init_from.py`.

Resuming restores the weights, the optimizer state (Adam moments) and the step counter, and
`fit` continues at that step. This replaces Keras' `ModelCheckpoint` + `BackupAndRestore`
pair: Keras 3's BackupAndRestore rewrites one `.weights.h5` file in place and restarts a
mid-epoch backup at the start of its epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
from typing import Iterator, Optional

import keras
import tensorflow as tf

from cornernet_tf.config import schema as config_lib
from cornernet_tf.training import init_from, interrupts
from cornernet_tf.training.interrupts import TrainingInterrupted
from cornernet_tf.training.run_folder import IncompatibleRunError, RunLock
from cornernet_tf.training.checkpoints import (CHECKPOINT_SUBDIR, CheckpointWriteError,
                                               checkpoint_manager, restore_checkpoint)
from cornernet_tf.training.callbacks import CheckpointCallback, TrainingCallbacks
from cornernet_tf.config.choices import PRECISIONS, SCHEDULES, STRATEGIES
from cornernet_tf.modeling.model import CornerNet
from cornernet_tf.training.progress import ProgressDisplay



# --------------------------------------------------------------------------------------
# Strategy
# --------------------------------------------------------------------------------------

def get_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `train.strategy`.

    Args:
      name: "auto" (MirroredStrategy over all local GPUs when there are several, the default
        strategy otherwise), "mirrored" (all local devices: GPUs, or the CPUs when there are
        none, e.g. logical CPU devices in tests), "multi_worker" (MultiWorkerMirroredStrategy
        from the TF_CONFIG environment variable), "one_device" (the first GPU, else the CPU),
        "default".

    Returns:
      A strategy; the global batch (train.batch_size) is split evenly over its replicas.

    Raises:
      ValueError: unknown name, or "multi_worker" without TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy: expected one of {STRATEGIES}, found {name!r}")
    if name == "multi_worker":
        # First, before anything lists devices: listing initialises the TF runtime, and
        # collective ops must be configured before that.
        if "TF_CONFIG" not in os.environ:
            raise ValueError("train.strategy=multi_worker needs the TF_CONFIG environment "
                             "variable (cluster spec and this worker's task); it is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


# --------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="cornernet_tf")
class CornerNetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a step decay (the reference: x0.1 at 90%), cosine, or constant.

    The training length is a non-trainable `tf.Variable` read inside `__call__`, so the
    compiled train step follows `set_total_steps` (the time budget, `training/budget.py`,
    moves the schedule's end to the step count it chose) instead of a traced constant.
    Everything that depends on it (the step decay's step, the cosine's end, the warm-up cap)
    moves with it.

    Args:
      learning_rate: the peak rate (reference 2.5e-4).
      total_steps: training length in optimizer steps.
      schedule: "step" | "cosine" | "constant".
      decay_at: fraction of total_steps where "step" multiplies by decay_factor.
      decay_factor: the step decay's factor.
      warmup_steps: linear warm-up from 0; capped at half of total_steps.
    """

    def __init__(self, learning_rate: float, total_steps: int, schedule: str = "step",
                 decay_at: float = 0.9, decay_factor: float = 0.1, warmup_steps: int = 0,
                 movable: bool = True):
        if schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: expected one of {SCHEDULES}, found {schedule!r}")
        self.learning_rate = float(learning_rate)
        self.schedule = schedule
        self.decay_at = float(decay_at)
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        # Not a model or optimizer variable: it is in no checkpoint (the budget keeps its
        # choice in the run folder's budget.json) and takes no gradient. A schedule nobody
        # moves (no time budget) keeps python constants: its compiled train step is the
        # graph of the fixed-length schedule (a variable read there changed a quickstart
        # run's weights: constants fold differently in the compiled step).
        self.movable = bool(movable)
        self._total_steps = (tf.Variable(int(total_steps), dtype=tf.int64, trainable=False,
                                         name="schedule_total_steps") if self.movable
                             else int(total_steps))

    @property
    def total_steps(self) -> int:
        """The training length the schedule currently ends at."""
        return int(self._total_steps.numpy()) if self.movable else self._total_steps

    def set_total_steps(self, total_steps: int) -> None:
        """Moves the schedule's end to `total_steps` (read by the next train step).

        Raises:
          ValueError: the schedule was built with movable=False.
        """
        if not self.movable:
            raise ValueError("CornerNetSchedule: built with movable=False (no time budget); "
                             "its end cannot move")
        self._total_steps.assign(int(total_steps))

    def __call__(self, step):
        if not self.movable:
            return self._fixed(step)
        # float32 as before the length became a variable (a run's rates are bit for bit
        # those of the fixed-length schedule); the decay step floor(decay_at * total) in
        # float64, as Python computes it (float32 would give 899 for 0.9 * 1000).
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.learning_rate, tf.float32)
        steps = tf.cast(self._total_steps, tf.int64)
        total = tf.cast(steps, tf.float32)
        warmup = tf.cast(tf.minimum(tf.constant(self.warmup_steps, tf.int64), steps // 2),
                         tf.float32)
        if self.schedule == "step":
            decay_step = tf.floor(self.decay_at * tf.cast(steps, tf.float64))
            rate = tf.where(step >= tf.cast(decay_step, tf.float32), lr * self.decay_factor, lr)
        elif self.schedule == "cosine":
            progress = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0),
                                        0.0, 1.0)
            rate = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            rate = lr
        # warm-up 0: `step < 0` never holds; else the divisor is the warm-up itself
        return tf.where(step < warmup, lr * (step + 1.0) / tf.maximum(warmup, 1.0), rate)

    def _fixed(self, step):
        """The fixed-length schedule, with python constants."""
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.learning_rate, tf.float32)
        total = float(self._total_steps)
        warmup = float(min(self.warmup_steps, self._total_steps // 2))
        if self.schedule == "step":
            rate = tf.where(step >= math.floor(self.decay_at * total), lr * self.decay_factor, lr)
        elif self.schedule == "cosine":
            progress = tf.clip_by_value((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
            rate = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            rate = lr
        if warmup > 0:
            rate = tf.where(step < warmup, lr * (step + 1.0) / warmup, rate)
        return rate

    def get_config(self):
        return dict(learning_rate=self.learning_rate, total_steps=self.total_steps,
                    schedule=self.schedule, decay_at=self.decay_at,
                    decay_factor=self.decay_factor, warmup_steps=self.warmup_steps,
                    movable=self.movable)


def build_optimizer(train_cfg: config_lib.TrainConfig) -> keras.optimizers.Optimizer:
    """Adam (the reference optimizer, no weight decay) on the configured schedule.

    Under `mixed_float16` Keras' `compile` wraps it in a LossScaleOptimizer; the model's
    train_step scales and unscales through `optimizer.scale_loss` / `apply_gradients`.
    """
    schedule = CornerNetSchedule(train_cfg.learning_rate, train_cfg.steps, train_cfg.schedule,
                                 train_cfg.decay_at, train_cfg.decay_factor,
                                 train_cfg.warmup_steps,
                                 movable=train_cfg.time_budget > 0)
    return keras.optimizers.Adam(learning_rate=schedule)


# --------------------------------------------------------------------------------------
# The fit loop
# --------------------------------------------------------------------------------------


def set_precision(policy: str) -> None:
    """Sets the global Keras dtype policy (`train.mixed_precision`, one of PRECISIONS)."""
    if policy not in PRECISIONS:
        raise ValueError(f"train.mixed_precision: expected one of {PRECISIONS}, "
                         f"found {policy!r}")
    keras.mixed_precision.set_global_policy(policy)


def compile_model(model: keras.Model, cfg: config_lib.Config, optimizer=None) -> None:
    """`model.compile` with the optimizer and the loss config (its weights)."""
    model.compile(optimizer=optimizer or build_optimizer(cfg.train), loss_config=cfg.loss)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, config and logs (always, but multi-worker).

    With MultiWorkerMirroredStrategy every worker runs the same steps (checkpoint saving
    included, as it may hold collective ops) but only the chief's files are kept: the
    others write to a temporary folder that is deleted at the end (TF's recommended set-up).
    """
    return bool(strategy.extended.should_checkpoint)


@contextlib.contextmanager
def session(train_cfg: config_lib.TrainConfig, model_dir: str) -> Iterator[
        tuple[tf.distribute.Strategy, Optional[str]]]:
    """The distribution strategy, seed, dtype policy, run lock and signals of a training run.

    The global Keras dtype policy is set to `train.mixed_precision` inside and restored on
    exit. With `train.strategy=multi_worker` only the chief writes into the run folder: a
    non-chief worker gets a temporary folder (deleted on exit; those of dead workers are
    removed at the next start) for its copies. The chief locks the run folder
    (`run_folder.RunLock`) for the whole run. Ctrl-C and SIGTERM (what `docker stop`,
    Kubernetes and Slurm send) raise `TrainingInterrupted`; `fit` saves first and says where.

    Yields:
      (the strategy, the non-chief's scratch folder or None on the chief).

    Raises:
      ConfigError: train.batch_size does not split evenly over the replicas.
      RunLockedError: another training holds `model_dir`.
      TrainingInterrupted: Ctrl-C or SIGTERM.
    """
    previous_policy = keras.mixed_precision.global_policy()
    scratch = None
    lock = None
    try:
        with interrupts.SigtermAsInterrupt():
            try:
                tf.get_logger().setLevel("WARNING")
                strategy = get_strategy(train_cfg.strategy)
                keras.utils.set_random_seed(train_cfg.seed)
                set_precision(train_cfg.mixed_precision)
                check_batch_split(train_cfg, strategy)
                if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                    interrupts.clean_stale_scratch()
                if is_chief(strategy):
                    lock = RunLock(model_dir).acquire()
                else:
                    scratch = tempfile.mkdtemp(
                        prefix=f"{interrupts.SCRATCH_PREFIX}{os.getpid()}-")
                yield strategy, scratch
            except KeyboardInterrupt as e:
                if isinstance(e, TrainingInterrupted) and e.detailed:
                    raise  # fit said what it saved
                signum = getattr(e, "signum", signal.SIGINT)
                raise TrainingInterrupted(
                    signum, f"training interrupted by {signal.Signals(signum).name} before "
                            f"its first step: nothing to save; rerun the same command to "
                            f"start again") from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if lock is not None:
            lock.release()


def check_batch_split(t: config_lib.TrainConfig, strategy: tf.distribute.Strategy) -> None:
    """Raises ConfigError unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise config_lib.ConfigError(
            f"config key 'train.batch_size': {t.batch_size} does not split evenly over the "
            f"{replicas} replicas of train.strategy={t.strategy!r}")


def check_num_classes(cfg: config_lib.Config, label_map) -> None:
    """Raises ConfigError when model.num_classes differs from the train split's categories."""
    if label_map.num_classes != cfg.model.num_classes:
        raise config_lib.ConfigError(
            f"config key 'model.num_classes': {cfg.model.num_classes}, but "
            f"{cfg.data.train_annotations} has {label_map.num_classes} categories")


def prepare_model(model: CornerNet, cfg: config_lib.Config, model_dir: str, write_dir: str,
                  class_names=()) -> tuple[tf.train.CheckpointManager, Optional[str]]:
    """Starts or resumes a freshly built model (under the strategy's scope) and compiles it.

    A run with checkpoints in `<model_dir>/checkpoints` resumes from the newest (weights,
    optimizer state, step) and ignores `train.init_from`; a new run with `train.init_from`
    starts from that source's weights (`init_from`; its report goes to
    `<write_dir>/init_report.json`). `train.freeze_batchnorm` (default: on for runs started
    with init_from) and `train.freeze` are applied before the optimizer is built.

    The run folder is locked (`run_folder.RunLock`, by the chief only) for the whole run.
    A resumed run is checked first (`run_folder.check_resume`): nothing in `model_dir` is
    written before its checkpoint has been restored. Ctrl-C and SIGTERM (what `docker
    stop`, Kubernetes and Slurm send) save a checkpoint of the current step and raise
    `TrainingInterrupted`, whose one-line message says where.

    Args:
      model: `build_model(cfg.model)`, not yet compiled.
      cfg: the resolved config.
      model_dir: the run folder.
      write_dir: where this process writes (model_dir, or a non-chief worker's scratch).
      class_names: the train split's class names (init_from matches classes by name).

    Returns:
      (the manager writing `<write_dir>/checkpoints`, the checkpoint resumed from or None).

    Raises:
      InitFromError: the init_from source is unreadable or of another architecture.
      IncompatibleRunError: the newest checkpoint does not fit the model (nothing written).
    """
    t = cfg.train
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    if latest:
        started_from = os.path.isfile(os.path.join(model_dir, init_from.REPORT_NAME))
        if t.init_from:
            print(f"--init_from={t.init_from} ignored: {model_dir} holds checkpoints, "
                  f"training resumes (init_from applies to a new run only)", flush=True)
    else:
        started_from = bool(t.init_from)
        if t.init_from:
            report = init_from.initialize(model, init_from.read_source(t.init_from, model),
                                          class_names, t.class_map)
            os.makedirs(write_dir, exist_ok=True)
            init_from.write_report(report, write_dir)
            print(init_from.summary(report) + f"\n  report: "
                  f"{os.path.join(write_dir, init_from.REPORT_NAME)}", flush=True)
    frozen_bn = t.freeze_batchnorm if t.freeze_batchnorm is not None else started_from
    if frozen_bn:
        init_from.freeze_batchnorm(model)
    if t.freeze:
        model.freeze(init_from.frozen_variables(model, t.freeze), t.freeze_steps)
    compile_model(model, cfg, build_optimizer(cfg.train))
    model.optimizer.build(model.trainable_variables)
    manager = checkpoint_manager(model, write_dir, model.optimizer)
    if latest:
        try:
            restore_checkpoint(model, latest, model.optimizer, partial=False)
        except (AssertionError, ValueError) as e:
            # Before anything is written: the run folder stays as it was.
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise IncompatibleRunError(
                f"cannot resume {model_dir}: its checkpoint {latest} does not match the "
                f"model and optimizer built from the config (model.* and "
                f"train.mixed_precision must be the run's; {first}). Nothing in "
                f"{model_dir} was changed") from None
        print(f"resuming from {latest} "
              f"(step {int(model.optimizer.iterations.numpy())})", flush=True)
    return manager, latest


def fit(model: CornerNet, dataset: tf.data.Dataset, t: config_lib.TrainConfig,
        callbacks: TrainingCallbacks, strategy: Optional[tf.distribute.Strategy] = None) -> dict:
    """Trains from the model's optimizer step to `train.steps`; the run's results.

    With `train.time_budget` the run ends at the step count the budget chose (at most
    train.steps; `training/budget.py`), with a checkpoint there and, where validation is
    on, a validation of that step.

    Returns:
      dict: "checkpoint" (the last one written; a temporary path on non-chief workers),
      "steps" (the step reached), "history" (one dict of logged values per logging
      interval), "images_per_second" (last interval), "model" (the trained model),
      "stopped_on_nan", "last_good" (the newest checkpoint known good: after a NaN or a
      loss spike, the one kept in `checkpoints/before_spike/`), "evaluations" (one dict
      per validation during training, see `callbacks.ValidationCallback`) and "best" (the
      best validation's step, AP and checkpoint, or None), "budget" (with a time budget,
      `budget.TimeBudget.summary()`: minutes, the steps chosen, s/step...; else None).

    Raises:
      CheckpointWriteError: a checkpoint could not be written (training stopped; the
        previous checkpoint is intact).
      TrainingInterrupted: Ctrl-C or SIGTERM (after the save).
      WorkerLostError: a worker of a multi-worker run stopped answering.
    """
    step = int(model.optimizer.iterations.numpy())
    _fit(model, dataset, t, step, callbacks.all, callbacks.checkpoints, callbacks.progress,
         strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        interrupts.finish_together()
    history = callbacks.progress.history
    validation = callbacks.validation
    return dict(checkpoint=callbacks.checkpoints.last_saved,
                steps=int(model.optimizer.iterations.numpy()), history=history,
                images_per_second=history[-1].get("images_per_second", float("nan"))
                if history else float("nan"), model=model,
                stopped_on_nan=callbacks.checkpoints.stopped_on_nan,
                last_good=callbacks.checkpoints.last_good,
                evaluations=validation.evaluations if validation else [],
                best=validation.best if validation else None,
                budget=callbacks.budget.summary() if callbacks.budget else None)


def _fit(model: CornerNet, dataset: tf.data.Dataset, t: config_lib.TrainConfig, step: int,
         callbacks: list, checkpoints: CheckpointCallback, progress: ProgressDisplay,
         strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """`model.fit` from `step` to `train.steps` in logging intervals (one epoch each).

    Keras prints nothing (verbose=0): `progress` is the one display. A crash, Ctrl-C or
    SIGTERM never loses the work since the last checkpoint: it is saved before the exception
    propagates (unless the weights have gone bad, or the write itself failed: the last good
    checkpoint is then kept as it is). A lost worker of a multi-worker run becomes one
    `WorkerLostError` line; the chief's save is then bounded by SAVE_TIMEOUT_SECONDS.
    """
    log_every = min(t.log_every, t.steps)
    initial_epoch = step // log_every
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    try:
        model.fit(dataset, epochs=initial_epoch + math.ceil((t.steps - step) / log_every),
                  initial_epoch=initial_epoch, steps_per_epoch=log_every,
                  callbacks=callbacks, verbose=0, shuffle=False)
    except BaseException as e:
        progress.close()
        if isinstance(e, CheckpointWriteError):  # writing is what fails: do not try again
            raise
        interrupts.raise_stopped(e, model, checkpoints, multi_worker)
