"""Tests of the CornerNet model: outputs per stack, building, saving, precision, sizes."""

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.config.schema import ModelConfig
from cornernet_tf.keys import (BR_EMBEDDING, BR_HEATMAP, BR_OFFSET, HEAD_KEYS, TL_EMBEDDING,
                               TL_HEATMAP, TL_OFFSET)
from cornernet_tf.modeling.model import CornerNet, build_model

TINY = dict(stem_channels=8, channels=(8, 12, 16), blocks=(1, 1, 1), head_channels=8,
            pool_channels=4)
NUM_CLASSES = 3


def tiny_config(**overrides):
    fields = dict(backbone="hourglass104", num_classes=NUM_CLASSES, input_size=(64, 64),
                  stacks=2, **TINY)
    fields.update(overrides)
    return ModelConfig(**fields)


def images(shape=(2, 64, 64), seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(0.0, 255.0, size=shape + (3,)).astype("float32")


def numpy_outputs(outputs):
    return [{k: keras.ops.convert_to_numpy(v) for k, v in d.items()} for d in outputs]


def assert_same_outputs(a, b):
    assert len(a) == len(b)
    for da, db in zip(numpy_outputs(a), numpy_outputs(b)):
        assert da.keys() == db.keys()
        for key in da:
            np.testing.assert_array_equal(da[key], db[key], err_msg=key)


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config())


@pytest.mark.parametrize("backbone,stacks,grid", [
    ("hourglass104", 2, 16),  # stride 4: 64 -> 32 -> 16
    ("hourglass52", 1, 16),
    ("squeeze", 2, 8),  # stride 8: 64 -> 32 -> 16 -> 8
])
def test_outputs_per_stack_shapes_and_dtypes(backbone, stacks, grid):
    net = build_model(tiny_config(backbone=backbone, stacks=stacks))
    outputs = net(images(), training=True)
    assert len(outputs) == stacks
    expected = {TL_HEATMAP: NUM_CLASSES, BR_HEATMAP: NUM_CLASSES, TL_EMBEDDING: 1,
                BR_EMBEDDING: 1, TL_OFFSET: 2, BR_OFFSET: 2}
    for stack in outputs:
        assert set(stack) == set(HEAD_KEYS)
        for key, depth in expected.items():
            assert tuple(stack[key].shape) == (2, grid, grid, depth), key
            assert keras.backend.standardize_dtype(stack[key].dtype) == "float32", key
    assert net.stride == (8 if backbone == "squeeze" else 4)


def test_non_square_input(model):
    # 48 x 80 -> 12 x 20 cells at stride 4 (both multiples of 4 for 2 levels).
    outputs = model(images((1, 48, 80)), training=True)
    assert tuple(outputs[0][TL_HEATMAP].shape) == (1, 12, 20, NUM_CLASSES)
    assert tuple(outputs[1][BR_OFFSET].shape) == (1, 12, 20, 2)


def test_inference_runs_only_the_last_stack(model):
    x = images()
    inference = model(x, training=False)
    assert isinstance(inference, list) and len(inference) == 1
    assert len(model(x)) == 1  # the default is inference
    # The one dict is the last stack's heads (same BN mode, every stack computed).
    everything = model.compute_outputs(x, all_stacks=True, training=False)
    assert len(everything) == 2
    assert_same_outputs(inference, everything[-1:])
    assert not np.allclose(keras.ops.convert_to_numpy(everything[0][TL_HEATMAP]),
                           keras.ops.convert_to_numpy(everything[1][TL_HEATMAP]))


def test_build_model_creates_all_variables(model):
    assert model.built
    # Every stack's heads exist although a build never runs training mode.
    for heads in model.tl_heads + model.br_heads:
        assert heads.built
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(heads.heatmap[1].bias),
                                      np.full(NUM_CLASSES, -2.19, np.float32))
    before = [w.path for w in model.weights]
    model(images((1, 64, 64)), training=True)
    assert [w.path for w in model.weights] == before  # no variable created by a call


def test_output_grid_matches_config(model):
    cfg = tiny_config(input_size=(63, 57))  # ceil twice: 63 -> 32 -> 16, 57 -> 29 -> 15
    assert cfg.output_size == (16, 15)
    with pytest.raises(ValueError, match=r"input size \[63, 57\] gives a 16x15 output grid"):
        build_model(cfg)
    outputs = model(images((1, 61, 64)))
    assert tuple(outputs[0][TL_HEATMAP].shape)[1:3] == (16, 16)


def test_normalization():
    net = CornerNet(num_classes=1, backbone="hourglass52", **TINY)
    pixel = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    mean = np.array([0.47026115, 0.44719302, 0.40789654])
    std = np.array([0.27809835, 0.27408164, 0.28863828])
    expected = (pixel / 255.0 - mean) / std
    np.testing.assert_allclose(keras.ops.convert_to_numpy(net.normalize(pixel)), expected,
                               rtol=1e-6)


def test_keras_save_load_round_trip(model, tmp_path):
    path = str(tmp_path / "cornernet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, CornerNet)
    assert loaded.get_config() == model.get_config()
    x = images(seed=1)
    assert_same_outputs(loaded(x), model(x))
    assert len(loaded(x, training=True)) == 2


def test_weights_round_trip(model, tmp_path):
    path = str(tmp_path / "cornernet.weights.h5")
    model.save_weights(path)
    other = build_model(tiny_config())
    x = images(seed=2)
    assert not np.allclose(keras.ops.convert_to_numpy(other(x)[0][TL_HEATMAP]),
                           keras.ops.convert_to_numpy(model(x)[0][TL_HEATMAP]))
    other.load_weights(path)
    assert_same_outputs(other(x), model(x))


def reverse_cummax(x, axis):
    """max over i' >= i along `axis` (SPEC.md: the top and left pools), in numpy."""
    return np.flip(np.maximum.accumulate(np.flip(x, axis), axis=axis), axis)


def test_corner_pooling_off_is_the_module_with_identity_pooling(model):
    plain = build_model(tiny_config(corner_pooling=False))
    assert plain.get_config()["corner_pooling"] is False
    x = images(seed=3)
    model(x)
    plain(x)
    plain.set_weights(model.get_weights())  # pooling has no weights: same variables
    # Each module, written out from SPEC.md with the pooled model's own sublayers:
    #   out = out_conv(relu(p_conv(s) + skip_conv(f))), s = p1 + p2 without pooling and
    #   s = top(p1) + left(p2) (reverse cumulative maxima, numpy) with it.
    m, p = model.tl_modules[0], plain.tl_modules[0]
    channels = m.p1_conv.conv.kernel.shape[2]
    f = tf.constant(np.random.RandomState(4).normal(size=(2, 16, 16, channels)), tf.float32)
    p1 = m.p1_conv(f, training=False).numpy()
    p2 = m.p2_conv(f, training=False).numpy()

    def module(s):
        h = tf.nn.relu(m.p_conv(tf.constant(s), training=False)
                       + m.skip_conv(f, training=False))
        return m.out_conv(h, training=False).numpy()

    identity = module(p1 + p2)
    pooled = module(reverse_cummax(p1, 1) + reverse_cummax(p2, 2))
    np.testing.assert_allclose(p(f, training=False).numpy(), identity, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m(f, training=False).numpy(), pooled, rtol=1e-5, atol=1e-5)
    assert not np.allclose(identity, pooled, rtol=1e-3, atol=1e-3)
    # and the whole network uses the module: its heatmaps differ with the pooling off
    a = keras.ops.convert_to_numpy(plain(x)[0][TL_HEATMAP])
    b = keras.ops.convert_to_numpy(model(x)[0][TL_HEATMAP])
    assert a.shape == b.shape and not np.allclose(a, b)


def test_sync_batchnorm_and_impl_are_passed_down():
    net = build_model(tiny_config(stacks=1, sync_batchnorm=True, corner_pool_impl="scan"))
    assert net.tl_modules[0].p1_conv.bn.synchronized
    assert net.backbone.stem[0].bn.synchronized
    assert net.br_modules[0].pool.impl == "scan"
    assert len(net(images((1, 64, 64)), training=True)) == 1


def test_training_outputs_reach_every_trainable_variable(model):
    # Intermediate supervision: each stack's heads (and the whole backbone) get gradients.
    x = tf.constant(images((1, 64, 64)))
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        total = tf.add_n([tf.reduce_sum(d[k]) for d in outputs for k in HEAD_KEYS])
    grads = tape.gradient(total, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing
    assert all(np.isfinite(keras.ops.convert_to_numpy(g)).all() for g in grads)


def test_traces_under_tf_function(model):
    fn = tf.function(lambda x: model(x, training=False))
    outputs = fn(tf.constant(images((1, 64, 64))))
    assert tuple(outputs[0][TL_HEATMAP].shape) == (1, 16, 16, NUM_CLASSES)


def test_mixed_precision_heads_are_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        net = build_model(tiny_config(stacks=1))
        features = net.backbone(net.normalize(images((1, 64, 64))), training=False)
        outputs = net(images((1, 64, 64)))
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(features[0].dtype) == "float16"
    for key in HEAD_KEYS:
        assert keras.backend.standardize_dtype(outputs[0][key].dtype) == "float32", key
    assert keras.backend.standardize_dtype(net.tl_heads[0].heatmap[0].kernel.dtype) == "float32"


def test_invalid_backbone():
    with pytest.raises(ValueError, match="backbone must be one of"):
        CornerNet(backbone="resnet50")


def _trainable(net, layers=None):
    weights = net.trainable_weights if layers is None else \
        [w for layer in layers for w in layer.trainable_weights]
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.mark.slow
def test_reference_parameter_counts_and_output_grids():
    # SPEC.md: Hourglass-104 201.0M trainable parameters in the training graph (PyTorch
    # counts conv weights/biases and BN weight+bias = Keras' trainable weights; BN moving
    # statistics are buffers there), 194.4M without the first stack's heads;
    # CornerNet-Squeeze 31.8M. Built symbolically, no 511x511 forward pass.
    hourglass = build_model(ModelConfig(backbone="hourglass104", num_classes=80))
    total = _trainable(hourglass)
    first = _trainable(hourglass, [hourglass.tl_modules[0], hourglass.br_modules[0],
                                   hourglass.tl_heads[0], hourglass.br_heads[0]])
    assert abs(total - 201.0e6) <= 0.001 * 201.0e6, total
    assert abs(total - first - 194.4e6) <= 0.001 * 194.4e6, total - first
    grid = hourglass.compute_outputs(keras.KerasTensor((1, 511, 511, 3)), all_stacks=False)
    assert tuple(grid[0][TL_HEATMAP].shape) == (1, 128, 128, 80)
    del hourglass

    squeeze = build_model(ModelConfig(backbone="squeeze", num_classes=80))
    total = _trainable(squeeze)
    assert abs(total - 31.8e6) <= 0.001 * 31.8e6, total
    grid = squeeze.compute_outputs(keras.KerasTensor((1, 511, 511, 3)), all_stacks=False)
    assert tuple(grid[0][BR_HEATMAP].shape) == (1, 64, 64, 80)


# Checkpoints are the ordered list `model.variables` (training.training_checkpoint), so a
# refactoring must keep every variable, its creation order and its shape. Golden values:
# count and sha256 (first 16 hex digits) of ";".join(str(tuple(v.shape)) for v in variables),
# recorded on the code before the backbone table and ConvBN moved (commit b7e605e).
@pytest.mark.parametrize("backbone,count,digest", [
    ("hourglass104", 378, "d4bc74fd5dcd421f"),
    ("hourglass52", 189, "f735cecab412dc50"),
    ("squeeze", 375, "aa02836093333476"),
])
def test_variable_order_and_shapes_are_the_checkpoint_layout(backbone, count, digest):
    net = build_model(tiny_config(backbone=backbone, stacks=None, input_size=(64, 64)))
    shapes = ";".join(f"{tuple(v.shape)}" for v in net.variables)
    assert len(net.variables) == count
    assert hashlib.sha256(shapes.encode()).hexdigest()[:16] == digest
