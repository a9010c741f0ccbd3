"""Model variables by name: the key of checkpoints and of `--init_from`.

A variable's name is its attribute path in the model, the same in every process and for
every construction order: `backbone/stem/0/conv/kernel`, `tl_modules/1/p1_conv/bn/moving_mean`,
`br_heads/0/heatmap/1/bias` (the heatmap head's output conv, one column per class). Keras'
own `variable.path` cannot serve: it holds auto-numbered layer names (`conv2d_57`) that
depend on how many layers the process built before. Checkpoints store each variable under
`model/<name>` (`cornernet_tf.training.checkpoints`).
"""

from __future__ import annotations

import collections

import keras
import numpy as np


def named_variables(model: keras.layers.Layer) -> "collections.OrderedDict":
    """Every variable of a built model under its attribute path, in `model.variables` order.

    Raises:
      ValueError: a variable is not reachable through public attributes (a layer kept in a
        private attribute or a dict), so it would be missing from checkpoints.
    """
    found: dict = {}
    _walk(model, "", found)
    by_id = {id(v): name for name, v in found.items()}
    missing = [v.path for v in model.variables if id(v) not in by_id]
    if missing or len(by_id) != len(found):
        raise ValueError(f"internal: {len(missing)} model variables have no attribute path "
                         f"(e.g. {missing[:3]}), or one is reached twice")
    return collections.OrderedDict((by_id[id(v)], v) for v in model.variables)


def _walk(layer: keras.layers.Layer, prefix: str, out: dict) -> None:
    # A layer's own variables (kernel, gamma, moving_mean, ...) carry their add_weight name.
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


def model_arrays(model: keras.Model) -> "collections.OrderedDict[str, np.ndarray]":
    """name -> numpy value of every variable of a built model."""
    return collections.OrderedDict((n, v.numpy()) for n, v in named_variables(model).items())
