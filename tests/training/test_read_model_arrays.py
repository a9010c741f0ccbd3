"""A training checkpoint (model and optimizer) read by variable name, without a model.

A checkpoint stores each variable once, under its shortest path: in a training checkpoint
the optimizer's list of trained variables (`optimizer/_trainable_variables/<i>`) is shorter
than `model/<name>`, so the key listing alone does not name the trained variables; every
`--init_from=<a run folder>` read them through `read_model_arrays`.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from cornernet_tf import config as config_lib
from cornernet_tf.modeling import weights
from cornernet_tf.modeling.model import build_model
from cornernet_tf.training import checkpoints

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_run")


def test_a_checkpoint_with_its_optimizer_reads_every_variable_by_name(tmp_path):
    model = build_model(config_lib.load_config(os.path.join(LEGACY, "config.yaml")).model)
    checkpoints.restore_weights(model, LEGACY)  # trained values, not initialisers
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)  # as after the first training step
    path = checkpoints.checkpoint_manager(model, str(tmp_path), optimizer).save()

    listed = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    under_model = [k for k in listed if k.startswith("model/")]
    # the premise: the trained variables are stored under the optimizer's path
    assert len(under_model) == len(model.non_trainable_variables)
    assert len([k for k in listed if k.startswith("optimizer/_trainable_variables/")]) == \
        len(model.trainable_variables)

    arrays = checkpoints.read_model_arrays(path)
    named = weights.named_variables(model)
    assert sorted(arrays) == sorted(named) and len(named) == len(model.variables)
    for name, variable in named.items():
        np.testing.assert_array_equal(arrays[name], variable.numpy(), err_msg=name)
    # a trained kernel and a BN statistic, by the names init_from matches on
    kernel = model.tl_heads[0].heatmap[1].kernel.numpy()
    np.testing.assert_array_equal(arrays["tl_heads/0/heatmap/1/kernel"], kernel)
    assert arrays["backbone/stem/0/bn/moving_variance"].shape == (8,)
