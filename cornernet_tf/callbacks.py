"""Keras callbacks of the training loop: checkpoints, NaN guard, progress, heatmap images.

`training.train` wires them; they are plain `keras.callbacks.Callback`s and can be used
with any `fit` of a CornerNet.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cornernet_tf import visualize
from cornernet_tf.keys import BR_HEATMAP, LOSS_KEYS, TL_HEATMAP, TOTAL_LOSS


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

    Attributes:
      last_saved: the newest checkpoint path written (or found at start), or None.
      stopped_on_nan: True once training was stopped on a NaN/inf (read by `training.train`).
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__()
        self.manager = manager
        self.every = every
        self.last_saved: Optional[str] = manager.latest_checkpoint
        self.stopped_on_nan = False

    def save(self) -> Optional[str]:
        """Writes a checkpoint of the current step unless the weights are not finite.

        Returns:
          The checkpoint written (or already there for this step), or None when the
          weights hold a NaN/inf: the last good checkpoint is then left as the newest.
        """
        if self.stopped_on_nan:
            return None
        if not weights_are_finite(self.model):
            self.stop_on_nan("a model weight is NaN/inf")
            return None
        step = int(self.model.optimizer.iterations.numpy())
        if self.manager.latest_checkpoint and \
                self.manager.latest_checkpoint.endswith(f"-{step}"):
            return self.manager.latest_checkpoint
        self.last_saved = self.manager.save(checkpoint_number=step)
        return self.last_saved

    def stop_on_nan(self, what: str) -> None:
        """Stops `fit` (no more checkpoints) and says at which step and what to resume from."""
        if self.stopped_on_nan:
            return
        self.stopped_on_nan = True
        self.model.stop_training = True
        step = int(self.model.optimizer.iterations.numpy())
        msg = (f"{what} at step {step}; training stopped. Last good checkpoint: "
               f"{self.last_saved or 'none yet'}. Lower train.learning_rate or add "
               f"train.warmup_steps, then resume.")
        logging.error(msg)
        print(f"error: {msg}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get(TOTAL_LOSS)
        if loss is not None and not np.isfinite(float(loss)):
            return  # NaNGuard stops the run; never checkpoint a step with a bad loss
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
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


class ProgressLogger(keras.callbacks.Callback):
    """One line per logging interval: step/total, every loss term, lr, images/s, ETA.

    It also adds `learning_rate` to the epoch logs so TensorBoard records it.
    """

    def __init__(self, total_steps: int, batch_size: int, early_steps=(1, 5)):
        super().__init__()
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.early_steps = set(early_steps)
        self._t0 = self._t_last = None
        self._step_last = 0
        self.history: list[dict] = []

    def on_train_begin(self, logs=None):
        self._t0 = self._t_last = time.time()
        self._step_last = int(self.model.optimizer.iterations.numpy())

    def _line(self, step, logs, rate):
        remaining = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
        terms = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted((logs or {}).items())
                          if k in LOSS_KEYS)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        return (f"step {step}/{self.total_steps}  {terms}  lr {lr:.3g}  {rate:.1f} img/s  "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(remaining))}")

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step - self._step_last in self.early_steps and self._t0 is not None:
            rate = (step - self._step_last) * self.batch_size / (time.time() - self._t0)
            print(self._line(step, logs, rate) + "  (includes graph tracing)", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        step = int(self.model.optimizer.iterations.numpy())
        steps = max(step - getattr(self, "_epoch_start_step", self._step_last), 1)
        rate = steps * self.batch_size / max(now - self._t_last, 1e-9)
        self._t_last, self._epoch_start_step = now, step
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["images_per_second"] = rate
        self.history.append(dict(step=step, **{k: float(v) for k, v in (logs or {}).items()}))
        print(self._line(step, logs, rate), flush=True)


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
