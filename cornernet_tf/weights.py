"""Model variables by name: the checkpoint layout, and any checkpoint read as name -> array.

A variable's name is its attribute path in the model, the same in every process and for
every construction order: `backbone/stem/0/conv/kernel`, `tl_modules/1/p1_conv/bn/moving_mean`,
`br_heads/0/heatmap/1/bias` (the heatmap head's output conv, one column per class). Keras'
own `variable.path` cannot serve: it holds auto-numbered layer names (`conv2d_57`) that
depend on how many layers the process built before.

Checkpoints hold the model under `model/<name>` (nested `tf.train.Checkpoint` objects, one
per path component), so `tf.train.load_checkpoint(path).get_variable_to_shape_map()` lists
`model/backbone/stem/0/conv/kernel/.ATTRIBUTES/VARIABLE_VALUE`. Checkpoints written before
this layout (up to commit ac9b80c) hold the ordered list `model.variables` under
`model_variables/<i>`; `is_legacy` tells them apart and `checkpoint_tree` reads both.
"""

from __future__ import annotations

import collections
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

MODEL_KEY = "model"  # checkpoint key of the name-keyed model variables
LEGACY_KEY = "model_variables"  # the ordered-list layout written up to commit ac9b80c
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def named_variables(model: keras.layers.Layer) -> "collections.OrderedDict[str, tf.Variable]":
    """Every variable of a built model under its attribute path, in `model.variables` order.

    Raises:
      ValueError: a variable is not reachable through public attributes (a layer kept in a
        private attribute or a dict), so it would be missing from checkpoints.
    """
    found = {}
    _walk(model, "", found)
    by_id = {id(v): name for name, v in found.items()}
    missing = [v.path for v in model.variables if id(v) not in by_id]
    if missing or len(by_id) != len(found):
        raise ValueError(f"internal: {len(missing)} model variables have no attribute path "
                         f"(e.g. {missing[:3]}), or one is reached twice")
    return collections.OrderedDict((by_id[id(v)], v) for v in model.variables)


def _walk(layer: keras.layers.Layer, prefix: str, out: dict) -> None:
    for v in list(layer._trainable_variables) + list(layer._non_trainable_variables):
        out[prefix + v.name] = v
    for attr, value in vars(layer).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            _walk(value, f"{prefix}{attr}/", out)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    _walk(item, f"{prefix}{attr}/{i}/", out)


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


def checkpoint_tree(model: keras.Model, optimizer=None, legacy: bool = False
                    ) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of every model variable (BN statistics too) and the optimizer.

    A Keras 3 model is not a trackable object graph for tf.train.Checkpoint (a checkpoint
    of `model=model` holds no model weights), so the variables are tracked by name here.

    Args:
      model: a built CornerNet.
      optimizer: also checkpoint its state (Adam moments, iterations).
      legacy: the layout of checkpoints written up to commit ac9b80c (`model.variables`
        as an ordered list), to read them.
    """
    items = ({LEGACY_KEY: list(model.variables)} if legacy
             else {MODEL_KEY: _nested(named_variables(model))})
    if optimizer is not None:
        items["optimizer"] = optimizer
    return tf.train.Checkpoint(**items)


def is_legacy(path: str) -> bool:
    """Whether the checkpoint at prefix `path` has the ordered-list layout."""
    keys = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    return any(k.startswith(LEGACY_KEY + "/") for k in keys)


def restore(model: keras.Model, path: str, optimizer=None, partial: bool = True) -> None:
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
    status = checkpoint_tree(model, optimizer, legacy=is_legacy(path)).restore(path)
    if partial:
        status.expect_partial()
    status.assert_existing_objects_matched()


def read_arrays(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """The model variables of a name-keyed checkpoint as name -> array (nothing built).

    Raises:
      ValueError: the checkpoint has the legacy layout (its names need a model of its
        architecture: build one, `restore` it and take `named_variables`).
    """
    reader = tf.train.load_checkpoint(path)
    if is_legacy(path):
        raise ValueError(f"{path} has the ordered-list layout; restore it into a model")
    prefix = MODEL_KEY + "/"
    out = collections.OrderedDict()
    for key in sorted(reader.get_variable_to_shape_map()):
        if key.startswith(prefix) and key.endswith(_VALUE_SUFFIX):
            out[key[len(prefix):-len(_VALUE_SUFFIX)]] = reader.get_tensor(key)
    return out


def model_arrays(model: keras.Model) -> "collections.OrderedDict[str, np.ndarray]":
    """name -> numpy value of every variable of a built model."""
    return collections.OrderedDict((n, v.numpy()) for n, v in named_variables(model).items())


def shapes(arrays: dict, names: Optional[list] = None) -> dict:
    """name -> shape list, for reports."""
    return {n: list(np.shape(arrays[n])) for n in (names if names is not None else arrays)}
