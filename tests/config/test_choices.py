"""The config's allowed values are exactly what the implementing modules accept.

`config.py` validates string options against tuples defined once in TensorFlow-free
`choices` modules (and the backbone table); these tests check each implementation accepts
every listed value and rejects an unlisted one, so the two cannot drift apart.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.data import images as preprocess
from cornernet_tf.training import loop as training
from cornernet_tf.config.presets import BACKBONES
from cornernet_tf.config.choices import PRECISIONS, SCHEDULES, STRATEGIES
from cornernet_tf.config.schema import ConfigError, load_config
from cornernet_tf.config.choices import EVAL_RESIZE_MODES
from cornernet_tf.config.choices import CORNER_POOL_IMPLS
from cornernet_tf.modeling.layers.corner_pool import CornerPool, directional_pool


def test_every_corner_pool_impl_is_implemented_and_exact():
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 5, 4, 2)), tf.float32)
    # top: reverse cumulative max along H, written out with numpy.
    expected = np.maximum.accumulate(x.numpy()[:, ::-1], axis=1)[:, ::-1]
    for impl in CORNER_POOL_IMPLS:
        np.testing.assert_array_equal(directional_pool(x, "top", impl=impl).numpy(), expected)
    with pytest.raises(ValueError, match="impl"):
        CornerPool(impl="cummax")
    with pytest.raises(ConfigError, match="model.corner_pool_impl.*cummax.*auto, scan"):
        load_config(None, ["model.corner_pool_impl=cummax"])


def test_every_eval_resize_mode_is_implemented():
    image = tf.zeros((30, 40, 3), tf.uint8)
    for mode in EVAL_RESIZE_MODES:
        resized, transform = preprocess.fit_to_input(image, (32, 32), mode=mode)
        assert resized.shape[-1] == 3 and transform.shape == (4,)
    with pytest.raises(ConfigError, match="data.eval_resize.*stretch.*resize_pad, pad127"):
        load_config(None, ["data.eval_resize=stretch"])


def test_training_choices_are_implemented():
    for schedule in SCHEDULES:
        assert float(training.CornerNetSchedule(1e-3, 10, schedule=schedule)(0)) > 0
    with pytest.raises(ValueError, match="linear"):
        training.CornerNetSchedule(1e-3, 10, schedule="linear")
    for policy in PRECISIONS:
        assert keras.mixed_precision.Policy(policy).name == policy
    with pytest.raises(ValueError, match="tpu"):
        training.get_strategy("tpu")
    assert "default" in STRATEGIES
    assert isinstance(training.get_strategy("default"), tf.distribute.Strategy)


def test_backbones_come_from_the_table():
    assert set(BACKBONES) == {"hourglass104", "hourglass52", "squeeze"}
    # SPEC.md: stride 4 for the hourglasses (511 -> 128), 8 for Squeeze (511 -> 64).
    assert {name: row.stride for name, row in BACKBONES.items()} == {
        "hourglass104": 4, "hourglass52": 4, "squeeze": 8}
    assert load_config(None, ["model.backbone=squeeze"]).model.output_size == (64, 64)
    assert load_config(None, ["model.backbone=hourglass52"]).model.resolved("stacks") == 1
