"""Training: strategy choice, learning-rate schedule, callbacks, and the `fit` loop.

`train(cfg, model_dir)` is what `python main.py --mode=train` runs. It wires the data
pipeline, the model (under the distribution strategy's scope), the optimizer and the
callbacks, and resumes from the newest checkpoint in `model_dir` when there is one.

Checkpoints are `tf.train.Checkpoint`s of the model's variables and the optimizer, written
by a `CheckpointManager` every `train.checkpoint_every` steps into `<model_dir>/checkpoints/`.
The manager writes the new files before it points the `checkpoint` index at them, so a run
killed mid-write still resumes from the previous checkpoint; resuming restores the weights,
the optimizer state (Adam moments) and the step counter, and `fit` continues at that step.
This replaces Keras' `ModelCheckpoint` + `BackupAndRestore` pair: Keras 3's BackupAndRestore
rewrites one `.weights.h5` file in place and restarts a mid-epoch backup at the start of its
epoch. A write that fails (a full disk) stops training with a `CheckpointWriteError` and
leaves the previous checkpoint as the newest.

With `train.eval_every` > 0 the validation split is evaluated during training and the
weights with the best AP are kept in `<model_dir>/checkpoints/best/` (`--checkpoint=best`);
resuming always starts from the newest checkpoint, never from `best`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Optional

import keras
import tensorflow as tf

from cornernet_tf.config import schema as config_lib
from cornernet_tf.training.checkpoints import (BEST_RECORD, BEST_SUBDIR, CHECKPOINT_SUBDIR,
                                               CheckpointWriteError, checkpoint_manager,
                                               training_checkpoint, write_run_files)
from cornernet_tf.training.callbacks import (CheckpointCallback, HeatmapImages, NaNGuard,
                                             StopAtStep, ValidationCallback)
from cornernet_tf.config.choices import PRECISIONS, SCHEDULES, STRATEGIES
from cornernet_tf.data import pipeline
from cornernet_tf.modeling.model import CornerNet, build_model
from cornernet_tf.training.progress import ProgressDisplay
from cornernet_tf.data.resolve import resolve_dataset_dependent

VALIDATION_SUBDIR = "validation"  # detections and metrics of the newest in-training evaluation


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

    Args:
      learning_rate: the peak rate (reference 2.5e-4).
      total_steps: training length in optimizer steps.
      schedule: "step" | "cosine" | "constant".
      decay_at: fraction of total_steps where "step" multiplies by decay_factor.
      decay_factor: the step decay's factor.
      warmup_steps: linear warm-up from 0; capped at half of total_steps.
    """

    def __init__(self, learning_rate: float, total_steps: int, schedule: str = "step",
                 decay_at: float = 0.9, decay_factor: float = 0.1, warmup_steps: int = 0):
        if schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: expected one of {SCHEDULES}, found {schedule!r}")
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.schedule = schedule
        self.decay_at = float(decay_at)
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.learning_rate, tf.float32)
        total = float(self.total_steps)
        warmup = float(min(self.warmup_steps, self.total_steps // 2))
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
                    decay_factor=self.decay_factor, warmup_steps=self.warmup_steps)


def build_optimizer(train_cfg: config_lib.TrainConfig) -> keras.optimizers.Optimizer:
    """Adam (the reference optimizer, no weight decay) on the configured schedule.

    Under `mixed_float16` Keras' `compile` wraps it in a LossScaleOptimizer; the model's
    train_step scales and unscales through `optimizer.scale_loss` / `apply_gradients`.
    """
    schedule = CornerNetSchedule(train_cfg.learning_rate, train_cfg.steps, train_cfg.schedule,
                                 train_cfg.decay_at, train_cfg.decay_factor,
                                 train_cfg.warmup_steps)
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
    """`model.compile` with the optimizer and the loss config's weights."""
    loss = cfg.loss
    model.compile(optimizer=optimizer or build_optimizer(cfg.train),
                  focal_alpha=loss.focal_alpha, focal_beta=loss.focal_beta,
                  pull_weight=loss.pull_weight, push_weight=loss.push_weight,
                  offset_weight=loss.offset_weight)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, config and logs (always, but multi-worker).

    With MultiWorkerMirroredStrategy every worker runs the same steps (checkpoint saving
    included, as it may hold collective ops) but only the chief's files are kept: the
    others write to a temporary folder that is deleted at the end (TF's recommended set-up).
    """
    return bool(strategy.extended.should_checkpoint)


def train(cfg: config_lib.Config, model_dir: str, verbose: int = 1) -> dict:
    """Trains (or resumes training of) the model described by `cfg` into `model_dir`.

    The global Keras dtype policy is set to `train.mixed_precision` while training and
    restored afterwards. With `train.strategy=multi_worker` only the chief writes into
    `model_dir`; every worker resumes from the chief's newest checkpoint there.

    Args:
      cfg: the resolved config.
      model_dir: checkpoints (`checkpoints/`), TensorBoard logs (`logs/`), `config.yaml`
        and `labels.json` go here.
      verbose: 1: a live progress line when stdout is a terminal, plain lines (one per
        train.log_every steps) otherwise; 0: plain lines always. Keras' own progress bar
        is off (`progress.ProgressDisplay` is the one display).

    Returns:
      dict: "checkpoint" (the last one written; a temporary path on non-chief workers),
      "steps" (the step reached), "history" (one dict of logged values per logging
      interval), "images_per_second" (last interval), "model" (the trained model),
      "stopped_on_nan", "evaluations" (one dict per validation during training, see
      `callbacks.ValidationCallback`) and "best" (the best validation's step, AP and
      checkpoint, or None).

    Raises:
      ConfigError: batch size not divisible by the replicas, or num_classes not matching
        the dataset.
      CheckpointWriteError: a checkpoint could not be written (training stopped; the
        previous checkpoint is intact).
    """
    cfg = resolve_dataset_dependent(cfg)  # model.num_classes / data.max_objects at 0
    previous_policy = keras.mixed_precision.global_policy()
    scratch = None
    try:
        t = cfg.train
        tf.get_logger().setLevel("WARNING")
        strategy = get_strategy(t.strategy)
        keras.utils.set_random_seed(t.seed)
        set_precision(t.mixed_precision)
        if not is_chief(strategy):
            scratch = tempfile.mkdtemp(prefix="cornernet-worker-")
        return _train(cfg, model_dir, strategy, scratch, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train(cfg: config_lib.Config, model_dir: str, strategy: tf.distribute.Strategy,
           scratch: Optional[str], verbose: int) -> dict:
    """`train` once the strategy and policy are set; `scratch` is a non-chief's folder."""
    t = cfg.train
    _check_batch_split(t, strategy)
    dataset, label_map = _training_data(cfg)
    write_dir = scratch or model_dir
    write_run_files(cfg, write_dir, label_map)
    model, manager, latest = _build_or_resume(cfg, strategy, model_dir, write_dir)
    step = int(model.optimizer.iterations.numpy())
    if step >= t.steps:
        print(f"already trained: step {step} >= train.steps {t.steps}", flush=True)
        return dict(checkpoint=latest, steps=step, history=[], stopped_on_nan=False,
                    images_per_second=float("nan"), model=model, evaluations=[], best=None)
    callbacks, progress, checkpoints, validation = _callbacks(
        cfg, model, model_dir, write_dir, manager, latest, dataset,
        live=None if verbose else False)
    print(f"training {t.steps} steps, global batch {t.batch_size} on "
          f"{strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}); "
          f"checkpoints every {t.checkpoint_every} steps in {manager.directory}; TensorBoard "
          f"logs in {os.path.join(write_dir, 'logs')}", flush=True)
    if validation is not None:
        print(f"validation every {t.eval_every} steps on "
              f"{cfg.evaluate.max_images or 'all'} images of {cfg.data.val_annotations}; the "
              f"best AP's weights in {validation.best_manager.directory}", flush=True)
    _fit(model, dataset, t, step, callbacks, checkpoints, progress)
    history = progress.history
    return dict(checkpoint=checkpoints.last_saved,
                steps=int(model.optimizer.iterations.numpy()), history=history,
                images_per_second=history[-1].get("images_per_second", float("nan"))
                if history else float("nan"), model=model,
                stopped_on_nan=checkpoints.stopped_on_nan,
                evaluations=validation.evaluations if validation else [],
                best=validation.best if validation else None)


def _callbacks(cfg: config_lib.Config, model: CornerNet, model_dir: str, write_dir: str,
               manager: tf.train.CheckpointManager, latest: Optional[str],
               dataset: tf.data.Dataset, live: Optional[bool]):
    """The fit callbacks, in order.

    Returns:
      (callbacks, the ProgressDisplay, the CheckpointCallback, the ValidationCallback or
      None when train.eval_every is 0).
    """
    t = cfg.train
    progress = ProgressDisplay(t.steps, t.batch_size, live=live,
                               log_every=min(t.log_every, t.steps))
    checkpoints = CheckpointCallback(manager, t.checkpoint_every, say=progress.message)
    checkpoints.last_saved = latest
    log_dir = os.path.join(write_dir, "logs")
    log_every = min(t.log_every, t.steps)
    # NaNGuard runs before CheckpointCallback so a bad step is never saved; validation
    # after it, so the step it evaluates is on disk first.
    callbacks = [StopAtStep(t.steps), progress, NaNGuard(checkpoints), checkpoints]
    validation = None
    if t.eval_every > 0:
        pipeline.load_split(cfg.data, "val", check_images="none")  # a missing split: now
        best_folder = os.path.join(CHECKPOINT_SUBDIR, BEST_SUBDIR)
        best_manager = tf.train.CheckpointManager(
            training_checkpoint(model),
            os.path.join(write_dir, best_folder), max_to_keep=1)
        validation = ValidationCallback(
            cfg, t.eval_every, t.steps, cfg.evaluate.max_images,
            os.path.join(write_dir, VALIDATION_SUBDIR), best_manager,
            os.path.join(model_dir, best_folder, BEST_RECORD), log_dir, checkpoints,
            say=progress.message)
        callbacks.append(validation)
        progress.validation = validation
    callbacks += [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"),
                  HeatmapImages(next(iter(dataset))[0][:2], log_dir,
                                every_epochs=max(1, t.checkpoint_every // log_every))]
    return callbacks, progress, checkpoints, validation


def _check_batch_split(t: config_lib.TrainConfig, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise config_lib.ConfigError(
            f"config key 'train.batch_size': {t.batch_size} does not split evenly over the "
            f"{replicas} replicas of train.strategy={t.strategy!r}")


def _training_data(cfg: config_lib.Config) -> tuple[tf.data.Dataset, object]:
    """The batched, augmented training dataset and the split's LabelMap.

    Raises:
      ConfigError: model.num_classes differs from the dataset's category count.
    """
    records, label_map, report = pipeline.load_split(cfg.data, "train")
    if label_map.num_classes != cfg.model.num_classes:
        raise config_lib.ConfigError(
            f"config key 'model.num_classes': {cfg.model.num_classes}, but "
            f"{cfg.data.train_annotations} has {label_map.num_classes} categories")
    dataset = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True,
                                     batch_size=cfg.train.batch_size, records=records,
                                     report=report)
    return dataset, label_map


def _build_or_resume(cfg: config_lib.Config, strategy: tf.distribute.Strategy, model_dir: str,
                     write_dir: str) -> tuple[CornerNet, tf.train.CheckpointManager,
                                              Optional[str]]:
    """Model, optimizer and checkpoint manager under the strategy, restored when possible.

    Returns:
      (compiled model, manager writing to `<write_dir>/checkpoints`, the checkpoint resumed
      from in `<model_dir>/checkpoints` or None).
    """
    with strategy.scope():
        model = build_model(cfg.model)
        compile_model(model, cfg, build_optimizer(cfg.train))
        model.optimizer.build(model.trainable_variables)
        manager = checkpoint_manager(model, write_dir, model.optimizer)
        latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
        if latest:
            training_checkpoint(model, model.optimizer).restore(
                latest).assert_existing_objects_matched()
            print(f"resuming from {latest} "
                  f"(step {int(model.optimizer.iterations.numpy())})", flush=True)
    return model, manager, latest


def _fit(model: CornerNet, dataset: tf.data.Dataset, t: config_lib.TrainConfig, step: int,
         callbacks: list, checkpoints: CheckpointCallback, progress: ProgressDisplay) -> None:
    """`model.fit` from `step` to `train.steps` in logging intervals (one epoch each).

    Keras prints nothing (verbose=0): `progress` is the one display. A crash or Ctrl-C
    never loses the work since the last checkpoint: it is saved before the exception
    propagates (unless the weights have gone bad, or the write itself failed: the last good
    checkpoint is then kept as it is).
    """
    log_every = min(t.log_every, t.steps)
    initial_epoch = step // log_every
    try:
        model.fit(dataset, epochs=initial_epoch + math.ceil((t.steps - step) / log_every),
                  initial_epoch=initial_epoch, steps_per_epoch=log_every,
                  callbacks=callbacks, verbose=0, shuffle=False)
    except BaseException as e:
        progress.close()
        if isinstance(e, CheckpointWriteError):  # writing is what fails: do not try again
            raise
        path = checkpoints.save() if checkpoints.model is not None else None
        if path:
            print(f"interrupted: saved {path}", flush=True)
        raise
