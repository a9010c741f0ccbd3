"""Checkpoints: what they hold, where they live, how they are written and found.

Checkpoints are `tf.train.Checkpoint`s of the model's variables and the optimizer, written
by a `CheckpointManager` every `train.checkpoint_every` steps into `<model_dir>/checkpoints/`.
The manager writes the new files before it points the `checkpoint` index at them, so a run
killed mid-write still resumes from the previous checkpoint; resuming restores the weights,
the optimizer state (Adam moments) and the step counter. A write that fails (a full disk)
raises `CheckpointWriteError` and leaves the previous checkpoint as the newest.

With `train.eval_every` > 0 the weights with the best validation AP are kept in
`<model_dir>/checkpoints/best/` (`--checkpoint=best`), with their step and metrics in
`best.json` beside them.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from cornernet_tf.config import Config
from cornernet_tf.errors import MachineError


BEST_SUBDIR = "best"  # <model_dir>/checkpoints/best/: the best validation AP's weights


BEST_RECORD = "best.json"  # beside it: its step and metrics


class CheckpointWriteError(MachineError):
    """A checkpoint could not be written; training stops (it is not a tf.errors.OpError).

    Attributes:
      path: the checkpoint prefix that failed (e.g. `run/checkpoints/ckpt-1000`).
      step: the optimizer step it was for.
      reason: the OS error, e.g. "File too large (OutOfRangeError)".
      kept: the newest good checkpoint, left as it was (None when there is none yet).
    """

    def __init__(self, path: str, step: int, reason: str, kept: Optional[str]):
        self.path, self.step, self.reason, self.kept = path, step, reason, kept
        where = (f"the newest good checkpoint, {kept}, is intact" if kept else
                 "there is no earlier checkpoint")
        super().__init__(
            f"could not write checkpoint {path} (step {step}): {reason}; training stopped.\n"
            f"{where}: free disk space (or lift the file size limit) and rerun the same "
            f"command to resume.")


def os_error_text(error: BaseException) -> str:
    """The OS error inside `error`: "No space left on device (ENOSPC)", "File too large
    (OutOfRangeError)" (TensorFlow's message without its op and temporary file names)."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({errno.errorcode.get(error.errno, error.errno)})"
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\s*\[Op:\w+\]\s*$", "", re.sub(r"^\{\{.*?\}\}\s*", "", text.strip()))
    return f"{text.rsplit('; ', 1)[-1]} ({type(error).__name__})"


def write_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """`manager.save(checkpoint_number=step)`; a failure leaves the earlier ones as they were.

    The manager writes the new files (through a `<prefix>_temp` folder) before it rewrites
    the `checkpoint` index, which it replaces atomically; a failed write therefore leaves
    the index pointing at the previous checkpoint. The failed write's partial files are
    removed (unless the index on disk lists that prefix).

    Returns:
      The checkpoint prefix written.

    Raises:
      CheckpointWriteError: the write failed (OSError or a TensorFlow I/O error).
    """
    prefix = f"{os.path.join(manager.directory, 'ckpt')}-{step}"
    kept = manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as e:
        _remove_partial_checkpoint(manager.directory, prefix)
        raise CheckpointWriteError(prefix, step, os_error_text(e), kept) from e


def _remove_partial_checkpoint(directory: str, prefix: str) -> None:
    """Deletes `prefix`'s files and temporary files unless the index on disk lists it."""
    state = tf.train.get_checkpoint_state(directory)
    listed = {os.path.normpath(p) for p in (state.all_model_checkpoint_paths if state else [])}
    if os.path.normpath(prefix) in listed:
        return
    pattern = glob.escape(prefix)
    leftovers = glob.glob(pattern + ".*") + glob.glob(pattern + "_temp*") + glob.glob(
        os.path.join(glob.escape(directory), "checkpoint.tmp*"))
    for path in leftovers:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError as e:  # the error being reported matters more than this one
            logging.warning("could not remove the partial checkpoint file %s: %s", path, e)


def read_best_record(path: Optional[str]) -> Optional[dict]:
    """The best.json at `path` (its "checkpoint" made a full path), or None when absent."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        record = json.load(f)
    record["checkpoint"] = os.path.join(os.path.dirname(path), record["checkpoint"])
    return record


CHECKPOINT_SUBDIR = "checkpoints"


def training_checkpoint(model: keras.Model, optimizer=None) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of every model variable (BN statistics too) and the optimizer.

    A Keras 3 model is not a trackable object graph for tf.train.Checkpoint (its layers'
    variables would only be reached through the optimizer, and BN moving statistics not at
    all), so the model's variables are checkpointed as an ordered list: `model.variables`
    has the same order for the same architecture, whatever the layers' auto-generated names.
    """
    items = {"model_variables": list(model.variables)}
    if optimizer is not None:
        items["optimizer"] = optimizer
    return tf.train.Checkpoint(**items)


def checkpoint_manager(model: keras.Model, model_dir: str, optimizer=None,
                       max_to_keep: int = 3) -> tf.train.CheckpointManager:
    """A CheckpointManager over `<model_dir>/checkpoints/` for the model (and optimizer)."""
    ckpt = training_checkpoint(model, optimizer)
    return tf.train.CheckpointManager(ckpt, os.path.join(model_dir, CHECKPOINT_SUBDIR),
                                      max_to_keep=max_to_keep)


def resolve_checkpoint(model_dir: str, checkpoint: Optional[str] = None) -> str:
    """The checkpoint prefix that `--checkpoint` names.

    Args:
      model_dir: the training run's folder.
      checkpoint: None or "latest" (the newest in `<model_dir>/checkpoints/`), "best" (the
        best validation AP, `<model_dir>/checkpoints/best/`, written when train.eval_every
        > 0), a checkpoint prefix (e.g. `runs/x/checkpoints/ckpt-500`) or a folder
        holding a `checkpoint` index (its newest).

    Returns:
      The checkpoint prefix.

    Raises:
      FileNotFoundError: no such checkpoint (names the folder looked in and what writes it).
    """
    folder = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    if checkpoint in (None, "", "latest"):
        path = tf.train.latest_checkpoint(folder)
        if not path:
            raise FileNotFoundError(
                f"no checkpoint in {folder!r}: train first (--mode=train "
                f"--model_dir={model_dir}) or pass --checkpoint=<path>")
        return path
    if checkpoint == "best":
        best_dir = os.path.join(folder, BEST_SUBDIR)
        path = tf.train.latest_checkpoint(best_dir)
        if not path:
            raise FileNotFoundError(
                f"--checkpoint=best: no best checkpoint in {best_dir!r}; it is written by "
                f"validation during training (train.eval_every > 0). Use --checkpoint=latest "
                f"or a checkpoint path")
        return path
    if tf.io.gfile.exists(checkpoint + ".index"):
        return checkpoint
    path = tf.train.latest_checkpoint(checkpoint) if tf.io.gfile.isdir(checkpoint) else None
    if not path:
        raise FileNotFoundError(f"--checkpoint={checkpoint}: expected 'latest', 'best', a "
                                f"checkpoint prefix (with a {checkpoint}.index file) or a "
                                f"folder with a 'checkpoint' index; found none of these")
    return path


def restore_weights(model: keras.Model, model_dir: str, checkpoint: Optional[str] = None) -> str:
    """Loads model weights (no optimizer) from the checkpoint `checkpoint` names.

    Args:
      model: a model built from the run's config.
      model_dir: the training run's folder.
      checkpoint: see `resolve_checkpoint`: None/"latest", "best", or a path.

    Returns:
      The checkpoint path restored.

    Raises:
      FileNotFoundError: no such checkpoint (names the folder looked in).
      ValueError: the checkpoint does not match the model.
    """
    path = resolve_checkpoint(model_dir, checkpoint)
    try:
        training_checkpoint(model).restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match the model built from the config "
                         f"(model.* keys must be those it was trained with): {e}") from None
    return path


def write_run_files(cfg: Config, model_dir: str, label_map) -> None:
    """The resolved config (config.yaml) and labels.json, next to the checkpoints."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(cfg.to_yaml())
    label_map.write(os.path.join(model_dir, "labels.json"))
