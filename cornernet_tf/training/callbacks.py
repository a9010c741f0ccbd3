"""Keras callbacks of the training loop: checkpoints, NaN guard, validation, heatmap images.

`training.callbacks.build_callbacks` makes them (for `run.train`) (with `progress.ProgressDisplay`, the progress display); they
are plain `keras.callbacks.Callback`s and can be used with any `fit` of a CornerNet.

A checkpoint that cannot be written (a full disk, a file size limit) stops training with a
`CheckpointWriteError`. TensorFlow reports some of these failures ("File too large") as a
`tf.errors.OutOfRangeError`, which Keras' `fit` takes for the end of the data: left alone,
the run would go on (or stop) without a word and a rerun would start from an older step.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cornernet_tf.evaluation import visualize
from cornernet_tf.keys import BR_HEATMAP, TL_HEATMAP, TOTAL_LOSS
from cornernet_tf.training import budget as budget_lib
from cornernet_tf.training.progress import ProgressDisplay, ValidationClock
from cornernet_tf.training.checkpoints import (BEFORE_SPIKE_SUBDIR, BEST_RECORD, BEST_SUBDIR,
                                               CHECKPOINT_SUBDIR, CheckpointWriteError,
                                               os_error_text, pin_checkpoint, read_best_record,
                                               training_checkpoint, write_checkpoint)

VALIDATION_SUBDIR = "validation"  # detections and metrics of the newest in-training evaluation

SPIKE_FACTOR = 20.0  # a loss above this many times the median of the recent ones is a spike
SPIKE_WINDOW = 32  # steps in that median (normal steps only: a spike does not raise it)
SPIKE_MIN_STEPS = 3  # no spike is called before this many steps of history


def _say(text: str) -> None:
    print(text, flush=True)


def weights_are_finite(model: keras.Model) -> bool:
    """True when no model weight (trainable or BN statistic) holds a NaN or an inf."""
    flags = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(w))) for w in model.weights
             if w.dtype in ("float16", "bfloat16", "float32", "float64")]
    return bool(tf.reduce_all(tf.stack(flags)).numpy()) if flags else True


class StopAtStep(keras.callbacks.Callback):
    """Stops `fit` when the optimizer step reaches `total_steps` (exact, even mid-epoch)."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.total_steps:
            self.model.stop_training = True


class CheckpointCallback(keras.callbacks.Callback):
    """Saves model + optimizer every `every` steps, at the end, and when fit is interrupted.

    It also owns the run's NaN state: once `stop_on_nan` has been called (by `NaNGuard` on a
    non-finite loss, or by `save` on non-finite weights) nothing more is saved, so the newest
    checkpoint stays the last good one.

    A diverging run does not lose its good checkpoints to the keep-N rotation. A checkpoint
    of step k becomes "good" once the loss of a later step (computed with those weights or
    later ones) is finite and no spike (more than SPIKE_FACTOR times the median of the last
    SPIKE_WINDOW normal losses). At the first step of a spike, and at a NaN, the newest
    good checkpoint is pinned into `<checkpoints>/before_spike/` (hard links, see
    `pin_checkpoint`) and that is said; the NaN message names it. The best validation
    checkpoint lives in `<checkpoints>/best/`, outside the rotation too.

    Attributes:
      last_saved: the newest checkpoint path written, or at start `last_saved` (the
        checkpoint the run resumed from) or the manager's newest; None when there is none.
      last_good: the newest checkpoint known good (the pinned copy once pinned), or None.
      stopped_on_nan: True once training was stopped on a NaN/inf (read by `training.loop.fit`).
      save_seconds: the wall time of each save of this session (the time budget reserves
        the slowest for each save still to come).
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int,
                 say: Callable[[str], None] = None, last_saved: Optional[str] = None):
        super().__init__()
        self.manager = manager
        self.every = every
        self.say = say or _say
        self.last_saved: Optional[str] = last_saved or manager.latest_checkpoint
        self.last_good: Optional[str] = self.last_saved  # resumed from: taken as good
        self.stopped_on_nan = False
        self.write_failed = False
        self.save_seconds: list[float] = []
        self._losses: collections.deque = collections.deque(maxlen=SPIKE_WINDOW)
        self._unconfirmed: list[tuple[int, str]] = []  # (step, path) saved, not yet good
        self._spiking = False
        self._mean: Optional[float] = None  # the interval's running mean loss, last batch

    @property
    def pin_folder(self) -> str:
        return os.path.join(self.manager.directory, BEFORE_SPIKE_SUBDIR)

    def save(self) -> Optional[str]:
        """Writes a checkpoint of the current step unless the weights are not finite.

        Returns:
          The checkpoint written (or already there for this step), or None when the
          weights hold a NaN/inf (the last good checkpoint is then left as the newest) or
          an earlier write failed.

        Raises:
          CheckpointWriteError: the write failed; `fit` stops, no later save is attempted.
        """
        if self.stopped_on_nan or self.write_failed:
            return None
        if not weights_are_finite(self.model):
            self.stop_on_nan("a model weight is NaN/inf")
            return None
        step = int(self.model.optimizer.iterations.numpy())
        if self.manager.latest_checkpoint and \
                self.manager.latest_checkpoint.endswith(f"-{step}"):
            return self.manager.latest_checkpoint
        start = time.perf_counter()
        try:
            self.last_saved = write_checkpoint(self.manager, step)
        except CheckpointWriteError:
            self.write_failed = True
            self.model.stop_training = True
            raise
        self.save_seconds.append(time.perf_counter() - start)
        self._unconfirmed.append((step, self.last_saved))
        return self.last_saved

    def _pin_last_good(self) -> Optional[str]:
        """Pins `last_good` into before_spike/ (unless it is there already); returns it."""
        if self.last_good is None or os.path.dirname(self.last_good) == self.pin_folder:
            return self.last_good
        if not tf.io.gfile.exists(self.last_good + ".index"):
            return None  # cannot happen with keep >= 2; never name a missing checkpoint
        try:
            self.last_good = pin_checkpoint(self.last_good, self.pin_folder)
        except (OSError, tf.errors.OpError) as e:  # a full disk: say so, name it where it is
            self.say(f"warning: could not keep {self.last_good} out of the rotation in "
                     f"{self.pin_folder}: {os_error_text(e)}")
        return self.last_good

    def stop_on_nan(self, what: str) -> None:
        """Stops `fit` (no more checkpoints) and says at which step and what to resume from."""
        if self.stopped_on_nan:
            return
        self.stopped_on_nan = True
        self.model.stop_training = True
        step = int(self.model.optimizer.iterations.numpy())
        good = self._pin_last_good()
        msg = (f"{what} at step {step}; training stopped. Last good checkpoint: "
               f"{good or 'none yet'}. Lower train.learning_rate or add "
               f"train.warmup_steps, then resume.")
        logging.error(msg)
        self.say(f"error: {msg}")

    def _watch_loss(self, step: int, loss: float) -> None:
        """Spike detection and confirmation of the checkpoints before `step`."""
        history = sorted(self._losses)
        median = history[len(history) // 2] if history else float("nan")
        spike = len(history) >= SPIKE_MIN_STEPS and loss > SPIKE_FACTOR * max(median, 1e-12)
        if spike:
            if not self._spiking:
                good = self._pin_last_good()
                pinned = good is not None and os.path.dirname(good) == self.pin_folder
                kept = (f"kept {good} (the last checkpoint before it) out of the rotation"
                        if pinned else f"the last checkpoint before it is {good}" if good
                        else "no checkpoint before it to keep")
                self.say(f"warning: loss spike at step {step}: {TOTAL_LOSS} {loss:.4g} is "
                         f"over {SPIKE_FACTOR:g}x the median of the last {len(history)} "
                         f"steps ({median:.4g}); {kept}")
            self._spiking = True
            return
        self._spiking = False
        self._losses.append(loss)
        # The loss of `step` was computed with the weights of step - 1: every checkpoint
        # up to there led to a normal loss.
        confirmed = [path for s, path in self._unconfirmed if s <= step - 1]
        if confirmed:
            self.last_good = confirmed[-1]
            self._unconfirmed = [(s, p) for s, p in self._unconfirmed if s > step - 1]

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get(TOTAL_LOSS)
        if loss is not None and not np.isfinite(float(loss)):
            return  # NaNGuard stops the run; never checkpoint a step with a bad loss
        step = int(self.model.optimizer.iterations.numpy())
        if loss is not None:
            # The logged loss is the mean over the interval so far (batch + 1 steps); this
            # step's own loss is what it added. After a spike the difference stays huge
            # until the interval ends, so nothing is confirmed on a rounding error.
            mean = float(loss)
            own = mean if batch == 0 or self._mean is None else \
                (batch + 1) * mean - batch * self._mean
            self._mean = mean
            self._watch_loss(step, own)
        if step % self.every == 0:
            self.save()

    def on_train_end(self, logs=None):
        if not self.stopped_on_nan:
            self.save()


class NaNGuard(keras.callbacks.Callback):
    """Stops on a NaN/inf loss, naming the step and the last good checkpoint.

    Args:
      checkpoints: the run's CheckpointCallback; it records the stop and saves no more.
    """

    def __init__(self, checkpoints: CheckpointCallback):
        super().__init__()
        self.checkpoints = checkpoints

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get(TOTAL_LOSS)
        if loss is not None and not np.isfinite(float(loss)):
            self.checkpoints.stop_on_nan(f"{TOTAL_LOSS} is {float(loss)}")


class ValidationCallback(keras.callbacks.Callback):
    """COCO evaluation of the validation split during `fit`; the best weights kept as `best`.

    At every multiple of `every` optimizer steps it runs `eval_runner.run_evaluation`
    (the code behind `--mode=evaluate`, with the config's flip test and scales, without the
    pictures) on the first `max_images` validation images (0: all). It prints AP, AP50 and
    the per-class AP, writes them to TensorBoard (`<log_dir>/validation`, tags `AP`, `AP50`,
    `AP75`, `AP_per_class/<name>`, at the optimizer step) and appends them to
    `<output_dir>/history.jsonl`. When the AP beats every earlier one (of this run and of
    the runs it resumes), the model's variables (no optimizer) are written to `best_manager`'s
    folder, `<model_dir>/checkpoints/best/` (one checkpoint, the older one deleted), with
    `best.json` beside it (step, AP, AP50, per-class AP). Training never resumes from it.

    Args:
      cfg: the resolved Config (data.val_*, decode, evaluate).
      every: train.eval_every (> 0).
      total_steps: train.steps (for the ETA of the evaluations still to come).
      max_images: evaluate.max_images.
      output_dir: run_evaluation's folder (detections.json and metrics.json of the newest
        evaluation) and history.jsonl.
      best_manager: a CheckpointManager (max_to_keep=1) over the model variables.
      best_record: the best.json to start from (the chief's, on a resumed run); None: none.
      log_dir: the run's TensorBoard folder.
      checkpoints: the run's CheckpointCallback: nothing is evaluated after a NaN stop.
      say: prints a message (the progress display's, so a live line stays below it).
      split: the validation split as loaded once by the composition root, (records,
        label_map, report) of `pipeline.load_split(..., ground_truth=True)`; None: each
        evaluation loads it (and prints the loader's summary).
      clock: the ValidationClock the progress display reads (None: a private one).

    Attributes:
      evaluations: one dict per evaluation: step, AP, AP50, AP75, per_class_AP, seconds,
        images, best (whether it became the best).
      best: {"step", "AP", "AP50", "per_class_AP", "checkpoint"} or None.
      evaluate_at_end: also evaluate at the end of training when its step is not a
        multiple of `every` (set by the time budget: a budgeted run ends with its AP).
    """

    TAGS = ("AP", "AP50", "AP75")

    def __init__(self, cfg, every: int, total_steps: int, max_images: int, output_dir: str,
                 best_manager: tf.train.CheckpointManager, best_record: Optional[str],
                 log_dir: str, checkpoints: Optional[CheckpointCallback] = None,
                 say: Callable[[str], None] = None, split: Optional[tuple] = None,
                 clock: Optional[ValidationClock] = None):
        super().__init__()
        # Pictures (PR curves, gallery) are for --mode=evaluate; here they would cost time.
        self.cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(
            cfg.evaluate, pictures=False, oracle="none"))
        self.every = every
        self.total_steps = total_steps
        self.max_images = max_images
        self.output_dir = output_dir
        self.best_manager = best_manager
        self.best_record = best_record
        self.log_dir = log_dir
        self.checkpoints = checkpoints
        self.say = say or _say
        self.evaluations: list[dict] = []
        self.best: Optional[dict] = None
        self.split = split
        self.clock = clock or ValidationClock(every, total_steps)
        self._writer = None
        self._last_step = -1
        self.evaluate_at_end = False

    @property
    def seconds(self) -> float:
        """Seconds spent in evaluations so far."""
        return self.clock.seconds

    def on_train_begin(self, logs=None):
        self.best = read_best_record(self.best_record)
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.checkpoints is not None and (self.checkpoints.stopped_on_nan
                                             or self.checkpoints.write_failed):
            return
        if step == self._last_step or step % self.every:
            return
        self._last_step = step
        self.evaluate(step)

    def on_train_end(self, logs=None):
        if not self.evaluate_at_end or self.checkpoints is not None and (
                self.checkpoints.stopped_on_nan or self.checkpoints.write_failed):
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step != self._last_step:
            self._last_step = step
            self.evaluate(step)

    def remaining_seconds(self, step: int) -> float:
        """The evaluations after `step` times the mean time of those done (0: none yet)."""
        return self.clock.remaining_seconds(step)

    def evaluate(self, step: int) -> dict:
        """Runs one evaluation of the current weights at `step`; returns its entry."""
        from cornernet_tf.evaluation import runner as eval_runner  # pycocotools: when used
        start = time.perf_counter()
        metrics = eval_runner.run_evaluation(self.model, self.cfg, self.output_dir,
                                             max_images=self.max_images, verbose=False,
                                             split=self.split)
        entry = dict(step=step, **{k: float(metrics[k]) for k in self.TAGS},
                     per_class_AP={k: float(v) for k, v in
                                   metrics.get("per_class_AP", {}).items()},
                     images=int(metrics.get("images", -1)),
                     seconds=time.perf_counter() - start)
        ap = entry["AP"]
        entry["best"] = math.isfinite(ap) and (self.best is None or ap > self.best["AP"])
        if entry["best"]:
            path = write_checkpoint(self.best_manager, step)
            self.best = dict(step=step, AP=ap, AP50=entry["AP50"],
                             per_class_AP=entry["per_class_AP"], checkpoint=path)
            self._write_best_record(path)
        self.evaluations.append(entry)
        self.clock.add(time.perf_counter() - start)
        self._log(entry)
        return entry

    def _write_best_record(self, path: str) -> None:
        record = dict(self.best, checkpoint=os.path.basename(path))
        target = os.path.join(self.best_manager.directory, BEST_RECORD)
        try:
            with open(target + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
            os.replace(target + ".tmp", target)
        except OSError as e:
            raise CheckpointWriteError(target, self.best["step"], os_error_text(e),
                                       path) from e

    def _log(self, entry: dict) -> None:
        step = entry["step"]
        with self._writer.as_default():
            for key in self.TAGS:
                tf.summary.scalar(key, entry[key], step=step)
            for name, value in entry["per_class_AP"].items():
                if math.isfinite(value):
                    tf.summary.scalar(f"AP_per_class/{name}", value, step=step)
        self._writer.flush()
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "history.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        best = self.best
        best_text = (f"best AP {best['AP']:.3f} (step {best['step']}"
                     + (f", saved as {best['checkpoint']})" if entry["best"] else ")")
                     if best else "no best yet")
        per_class = ", ".join(f"{k} {v:.3f}" if v >= 0 else f"{k} n/a (no ground truth)"
                              for k, v in entry["per_class_AP"].items())
        self.say(f"validation at step {step} on {entry['images']} images "
                 f"({entry['seconds']:.1f} s): AP {entry['AP']:.3f}  AP50 "
                 f"{entry['AP50']:.3f}  AP75 {entry['AP75']:.3f}; {best_text}\n"
                 f"  per-class AP: {per_class or '-'}")


class HeatmapImages(keras.callbacks.Callback):
    """Writes a few training images with their predicted corner heatmaps to TensorBoard."""

    def __init__(self, images: tf.Tensor, log_dir: str, every_epochs: int = 1):
        super().__init__()
        self.images = images  # [n, h, w, 3] float32 0..255
        self.every_epochs = every_epochs
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs:
            return
        outputs = self.model(self.images, training=False)[-1]
        pictures = []
        for i in range(int(self.images.shape[0])):
            image = np.clip(self.images[i].numpy(), 0, 255).astype(np.uint8)
            for key in (TL_HEATMAP, BR_HEATMAP):
                heat = tf.sigmoid(outputs[key][i]).numpy()
                pictures.append(visualize.heatmap_overlay(image, heat))
        step = int(self.model.optimizer.iterations.numpy())
        with self.writer.as_default():
            tf.summary.image("heatmaps (tl, br)", np.stack(pictures), step=step,
                             max_outputs=len(pictures))
        self.writer.flush()


class TrainingCallbacks(NamedTuple):
    """The callbacks of one training run: `all` in `fit`'s order, and the ones the loop
    reads after it (the display's history, the checkpoint state, the validations, the
    time budget's choice)."""
    all: list
    progress: ProgressDisplay
    checkpoints: CheckpointCallback
    validation: Optional[ValidationCallback]
    budget: Optional[budget_lib.TimeBudget] = None


def build_callbacks(cfg, model: keras.Model, model_dir: str, write_dir: str,
                    manager: tf.train.CheckpointManager, latest: Optional[str],
                    sample_images: tf.Tensor, val_split: Optional[tuple] = None,
                    live: Optional[bool] = None,
                    started: Optional[float] = None) -> TrainingCallbacks:
    """The fit callbacks of a run, each given its collaborators.

    Args:
      cfg: the resolved Config.
      model: the compiled model (the best-weights manager tracks its variables).
      model_dir: the run folder (best.json is read from the chief's copy there).
      write_dir: where this process writes (model_dir, or a non-chief worker's scratch).
      manager: the CheckpointManager writing `<write_dir>/checkpoints`.
      latest: the checkpoint the run resumed from, or None.
      sample_images: [2, H, W, 3] training images for the TensorBoard heatmap pictures.
      val_split: the validation split (records, label_map, report), loaded once and matched
        to the model's classes by name; None: no validation during training (the caller
        says why), whatever train.eval_every.
      live: the progress display's live line (None: when stdout is a terminal).
      started: `budget.clock()` when the run started (the time budget counts from there;
        None: now).

    Returns:
      TrainingCallbacks.
    """
    t = cfg.train
    validating = t.eval_every > 0 and val_split is not None
    clock = ValidationClock(t.eval_every, t.steps) if validating else None
    progress = ProgressDisplay(t.steps, t.batch_size, live=live, validation=clock,
                               log_every=min(t.log_every, t.steps))
    checkpoints = CheckpointCallback(manager, t.checkpoint_every, say=progress.message,
                                     last_saved=latest)
    log_dir = os.path.join(write_dir, "logs")
    log_every = min(t.log_every, t.steps)
    # NaNGuard runs before CheckpointCallback so a bad step is never saved; validation
    # after it, so the step it evaluates is on disk first.
    callbacks = [StopAtStep(t.steps), progress, NaNGuard(checkpoints), checkpoints]
    validation = None
    if clock is not None:
        best_folder = os.path.join(CHECKPOINT_SUBDIR, BEST_SUBDIR)
        best_manager = tf.train.CheckpointManager(
            training_checkpoint(model), os.path.join(write_dir, best_folder), max_to_keep=1)
        validation = ValidationCallback(
            cfg, t.eval_every, t.steps, cfg.evaluate.max_images,
            os.path.join(write_dir, VALIDATION_SUBDIR), best_manager,
            os.path.join(model_dir, best_folder, BEST_RECORD), log_dir, checkpoints,
            say=progress.message, split=val_split, clock=clock)
        callbacks.append(validation)
    callbacks += [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"),
                  HeatmapImages(sample_images, log_dir,
                                every_epochs=max(1, t.checkpoint_every // log_every))]
    record = budget_lib.read_record(model_dir, say=_say) if latest else None
    budget = None
    if t.time_budget > 0:
        # Last: at its end of training the last checkpoint and validation are done.
        budget = budget_lib.TimeBudget(
            t.time_budget, t.steps, budget_lib.clock() if started is None else started,
            write_dir, [callbacks[0], progress, validation, clock], checkpoints,
            validation=validation, progress=progress, eval_every=t.eval_every,
            checkpoint_every=t.checkpoint_every, batch_size=t.batch_size, record=record,
            say=progress.message, skip=budget_lib.SKIP_STEPS,
            measure=budget_lib.MEASURE_STEPS)
        callbacks.append(budget)
    elif record is not None:
        print(f"train.time_budget is 0: the {record['steps']} steps an earlier budget of "
              f"{float(record['time_budget']):g} min chose ({budget_lib.RECORD_NAME}) no longer "
              f"apply; training runs to train.steps={t.steps}", flush=True)
    return TrainingCallbacks(callbacks, progress, checkpoints, validation, budget)
