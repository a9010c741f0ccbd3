"""Checkpoints: what they hold, where they live, how they are written and found.

Checkpoints are `tf.train.Checkpoint`s of the model's variables, keyed by name (see
`training_checkpoint`; checkpoints of the older ordered-list layout are still read), and the
optimizer, written by a `CheckpointManager` every `train.checkpoint_every` steps into
`<model_dir>/checkpoints/`. The manager writes the new files before it points the
`checkpoint` index at them, so a run killed mid-write still resumes from the previous
checkpoint; resuming restores the weights, the optimizer state (Adam moments) and the step
counter. A write that fails (a full disk) raises `CheckpointWriteError` and leaves the
previous checkpoint as the newest.

With `train.eval_every` > 0 the weights with the best validation AP are kept in
`<model_dir>/checkpoints/best/` (`--checkpoint=best`), with their step and metrics in
`best.json` beside them.
"""

from __future__ import annotations

import collections
import errno
import glob
import json
import os
import re
import shutil
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from cornernet_tf.config import Config
from cornernet_tf.errors import MachineError
from cornernet_tf.modeling import weights
from cornernet_tf.training.run_folder import write_text_atomic


BEST_SUBDIR = "best"  # <model_dir>/checkpoints/best/: the best validation AP's weights


BEST_RECORD = "best.json"  # beside it: its step and metrics
# <model_dir>/checkpoints/before_spike/: the last good checkpoint before a loss spike or a
# NaN, kept out of the keep-N rotation (hard links: no copy of the data)
BEFORE_SPIKE_SUBDIR = "before_spike"


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


MODEL_KEY = "model"  # checkpoint key of the name-keyed model variables
LEGACY_KEY = "model_variables"  # the ordered-list layout written up to commit ac9b80c
_VARIABLE_VALUE = "VARIABLE_VALUE"  # a variable's attribute in the object graph
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # the object graph, stored in the checkpoint


def training_checkpoint(model: keras.Model, optimizer=None,
                        legacy: bool = False) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of every model variable (BN statistics too) and the optimizer.

    A Keras 3 model is not a trackable object graph for tf.train.Checkpoint (a checkpoint of
    `model=model` holds no model weights), so each variable is tracked under its name
    (`modeling.weights.named_variables`), one checkpoint object per path component:
    `tf.train.load_checkpoint(path).get_variable_to_shape_map()` lists
    `model/backbone/stem/0/conv/kernel/.ATTRIBUTES/VARIABLE_VALUE`, and a checkpoint can be
    read by name without building a model (`read_model_arrays`).

    Args:
      model: a built CornerNet.
      optimizer: also checkpoint its state (Adam moments, iterations).
      legacy: the layout written up to commit ac9b80c (`model.variables` as an ordered
        list, `model_variables/<i>`), to read such checkpoints.
    """
    items = ({LEGACY_KEY: list(model.variables)} if legacy
             else {MODEL_KEY: _nested(weights.named_variables(model))})
    if optimizer is not None:
        items["optimizer"] = optimizer
    return tf.train.Checkpoint(**items)


def _nested(named: dict) -> dict:
    """{"a/b/c": v} -> {"a": {"b": {"c": v}}}: one checkpoint object per path component."""
    tree: dict = {}
    for name, variable in named.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = variable
    return tree


def is_legacy(path: str) -> bool:
    """Whether the checkpoint at prefix `path` has the ordered-list layout."""
    keys = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    return any(k.startswith(LEGACY_KEY + "/") for k in keys)


def restore_checkpoint(model: keras.Model, path: str, optimizer=None,
                       partial: bool = True) -> None:
    """Restores the model (and optimizer) from either layout; every model variable filled.

    Args:
      model: a built model of the checkpoint's architecture.
      path: checkpoint prefix.
      optimizer: restore its state too (resuming); None ignores the checkpoint's.
      partial: tolerate checkpoint entries the model does not use (the optimizer's when
        `optimizer` is None).

    Raises:
      AssertionError, ValueError: a model variable is absent from the checkpoint or has
        another shape there.
    """
    status = training_checkpoint(model, optimizer, legacy=is_legacy(path)).restore(path)
    if partial:
        status.expect_partial()
    status.assert_existing_objects_matched()


def read_model_arrays(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """The model variables of a name-keyed checkpoint as name -> array (nothing built).

    Raises:
      ValueError: the checkpoint has the legacy layout (its names need a model of its
        architecture: build one, `restore_checkpoint` it, take `weights.model_arrays`).
    """
    if is_legacy(path):
        raise ValueError(f"{path} has the ordered-list layout; restore it into a model")
    reader = tf.train.load_checkpoint(path)
    # A checkpoint stores each variable once, under its shortest path from the root: in a
    # training checkpoint that is the optimizer's list of the variables it trains
    # (`optimizer/_trainable_variables/<i>`), not `model/<name>`. The object graph keeps
    # every path, so the names are read from it: the model's subtree, key by key.
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    found = {}
    stack = [(child.node_id, child.local_name) for child in graph.nodes[0].children
             if child.local_name == MODEL_KEY]
    while stack:
        node_id, name = stack.pop()
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == _VARIABLE_VALUE:
                found[name[len(MODEL_KEY) + 1:]] = attribute.checkpoint_key
        stack.extend((child.node_id, f"{name}/{child.local_name}") for child in node.children)
    return collections.OrderedDict((name, reader.get_tensor(found[name]))
                                   for name in sorted(found))


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
        restore_checkpoint(model, path)
    except (AssertionError, ValueError) as e:
        raise ValueError(f"checkpoint {path} does not match the model built from the config "
                         f"(model.* keys must be those it was trained with): {e}") from None
    return path


def write_run_files(cfg: Config, model_dir: str, label_map) -> None:
    """The resolved config (config.yaml) and labels.json, next to the checkpoints.

    Each is written whole (a temporary file moved over the old one): a kill leaves the old
    file or the new one, never half of one.
    """
    os.makedirs(model_dir, exist_ok=True)
    write_text_atomic(os.path.join(model_dir, "config.yaml"), cfg.to_yaml())
    write_text_atomic(os.path.join(model_dir, "labels.json"), label_map.to_json() + "\n")


def pin_checkpoint(prefix: str, folder: str) -> str:
    """Keeps checkpoint `prefix` in `folder` (its only checkpoint) out of any rotation.

    The files are hard-linked (copied where links are not possible), so the rotation's
    deletion of the original leaves this one whole. `folder` gets its own `checkpoint`
    index, so `--checkpoint=<folder>` names it.

    Returns:
      The pinned prefix, `<folder>/<basename of prefix>`.
    """
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):  # the previous pin
        os.remove(os.path.join(folder, old))
    for source in glob.glob(glob.escape(prefix) + ".*"):
        target = os.path.join(folder, os.path.basename(source))
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    pinned = os.path.join(folder, os.path.basename(prefix))
    tf.compat.v1.train.update_checkpoint_state(folder, pinned,
                                               all_model_checkpoint_paths=[pinned])
    return pinned
