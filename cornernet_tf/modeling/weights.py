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


def _layer_tree(model: keras.layers.Layer) -> list:
    """[(path, layer, parent path)] of every layer reachable through public attributes
    (lists and tuples of layers included), parents first; the model's path is ""."""
    out, pending = [], [("", model, None)]
    while pending:
        path, layer, parent = pending.pop(0)
        out.append((path, layer, parent))
        for attr, value in vars(layer).items():
            if attr.startswith("_"):
                continue
            items = ([(attr, value)] if isinstance(value, keras.layers.Layer) else
                     [(f"{attr}/{i}", x) for i, x in enumerate(value)]
                     if isinstance(value, (list, tuple)) else [])
            pending += [(f"{path}{name}/", x, path) for name, x in items
                        if isinstance(x, keras.layers.Layer)]
        # A Sequential or functional model keeps its layers in `layers` only.
        reached = {id(x) for _, x, p in out + pending if p == path}
        pending += [(f"{path}layers/{i}/", x, path) for i, x in
                    enumerate(getattr(layer, "layers", None) or []) if id(x) not in reached]
    return out


def named_layers(model: keras.layers.Layer) -> "collections.OrderedDict":
    """Every layer reachable through public attributes, under its attribute path ending in
    "/" ("" for the model itself), parents before children."""
    return collections.OrderedDict((path, layer) for path, layer, _ in _layer_tree(model))


def named_variables(model: keras.layers.Layer) -> "collections.OrderedDict":
    """Every variable of a built model under its attribute path, in `model.variables` order.

    A layer's own variables (those of none of its sub-layers) carry their `add_weight`
    name: `kernel`, `gamma`, `moving_mean`, ...

    Raises:
      ValueError: a variable is not reachable through public attributes (a layer kept in a
        private attribute or a dict), so it would be missing from checkpoints.
    """
    tree = _layer_tree(model)
    inner: dict = {}  # path -> ids of the variables of its sub-layers
    for path, layer, parent in tree:
        if parent is not None:
            inner.setdefault(parent, set()).update(id(w) for w in layer.weights)
    found: dict = {}
    for path, layer, _ in tree:
        for v in layer.weights:
            if id(v) not in inner.get(path, ()):
                found[path + v.name] = v
    by_id = {id(v): name for name, v in found.items()}
    missing = [v.path for v in model.variables if id(v) not in by_id]
    if missing or len(by_id) != len(found):
        raise ValueError(f"internal: {len(missing)} model variables have no attribute path "
                         f"(e.g. {missing[:3]}), or one is reached twice")
    return collections.OrderedDict((by_id[id(v)], v) for v in model.variables)


def model_arrays(model: keras.Model) -> "collections.OrderedDict[str, np.ndarray]":
    """name -> numpy value of every variable of a built model."""
    return collections.OrderedDict((n, v.numpy()) for n, v in named_variables(model).items())
