"""Tests of the corner pooling module and the three corner heads."""

import math

import keras
import numpy as np
import pytest

from cornernet_tf.modeling.layers.corner_pool import CornerPool
from cornernet_tf.modeling.layers.heads import HEATMAP_BIAS_INIT, CornerHeads, CornerModule


def random_input(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


def n_params(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def run(layer, x):
    return keras.ops.convert_to_numpy(layer(x, training=False))


def test_corner_module_shape_and_params():
    module = CornerModule("top_left", channels=16, pool_channels=8)
    y = run(module, random_input((2, 12, 10, 24)))
    assert y.shape == (2, 12, 10, 16)
    assert y.min() >= 0.0  # ends in ReLU
    # p1, p2: 3x3 24->8 + BN(8); p_conv 3x3 8->16 + BN; skip 1x1 24->16 + BN;
    # out 3x3 16->16 + BN. BN counts gamma + beta; convs before BN have no bias.
    expected = 2 * (9 * 24 * 8 + 16) + (9 * 8 * 16 + 32) + (24 * 16 + 32) + (9 * 16 * 16 + 32)
    assert n_params(module) == expected


@pytest.mark.parametrize("impl", ["scan", "doubling"])
def test_corner_pool_impl_is_passed_through(impl):
    module = CornerModule("bottom_right", channels=8, pool_channels=4, corner_pool_impl=impl)
    assert isinstance(module.pool, CornerPool)
    assert module.pool.corner == "bottom_right" and module.pool.impl == impl


def _far_effect(module, row, col, probe):
    """Whether a large bump at input (row, col) changes the output at `probe`."""
    x = random_input((1, 16, 16, 8), seed=1)
    bumped = x.copy()
    bumped[0, row, col, :] += 100.0
    before, after = run(module, x), run(module, bumped)
    return not np.allclose(before[0][probe], after[0][probe])


def test_pooling_direction_reaches_far_positions():
    # Receptive field without pooling: p conv (1) + p_conv (1) + out conv (1) = 3 cells, so a
    # bump at row 15 cannot reach row 0 locally. Top pooling (max over rows below) carries it
    # up column 8; bottom pooling carries values downwards only.
    kwargs = dict(channels=8, pool_channels=8)
    tl = CornerModule("top_left", **kwargs)
    br = CornerModule("bottom_right", **kwargs)
    plain = CornerModule("top_left", corner_pooling=False, **kwargs)
    assert _far_effect(tl, 15, 8, (0, 8))
    assert not _far_effect(br, 15, 8, (0, 8))
    assert _far_effect(br, 0, 8, (15, 8))  # bottom pooling: max over rows above
    assert _far_effect(br, 8, 0, (8, 15))  # right pooling: max over columns to the left
    assert _far_effect(tl, 8, 15, (8, 0))  # left pooling: max over columns to the right
    assert not _far_effect(plain, 15, 8, (0, 8))
    assert _far_effect(plain, 15, 8, (13, 8))  # local effects remain


def test_corner_pooling_off_is_p1_plus_p2():
    # Same weights, pooling on vs off: outputs differ, and the off variant equals the
    # module with both branches summed by hand.
    x = random_input((1, 8, 8, 8), seed=2)
    on = CornerModule("top_left", channels=8, pool_channels=4)
    off = CornerModule("top_left", channels=8, pool_channels=4, corner_pooling=False)
    run(on, x), run(off, x)
    off.set_weights(on.get_weights())
    assert off.pool is None
    y_off = run(off, x)
    assert not np.allclose(run(on, x), y_off)
    p = run(on.p1_conv, x) + run(on.p2_conv, x)
    h = np.maximum(run(on.p_conv, p) + run(on.skip_conv, x), 0.0)
    np.testing.assert_allclose(y_off, run(on.out_conv, h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_heads_shapes_dtypes_and_params(kernel_size):
    heads = CornerHeads(num_classes=5, channels=16, kernel_size=kernel_size)
    heatmap, embedding, offset = heads(random_input((2, 6, 7, 16)))
    assert tuple(heatmap.shape) == (2, 6, 7, 5)
    assert tuple(embedding.shape) == (2, 6, 7, 1)
    assert tuple(offset.shape) == (2, 6, 7, 2)
    for t in (heatmap, embedding, offset):
        assert keras.backend.standardize_dtype(t.dtype) == "float32"
    # Per head: hidden conv (k*k*16*16 + 16 bias), final 1x1 (16*out + out bias).
    k2 = kernel_size * kernel_size
    assert n_params(heads) == sum(k2 * 16 * 16 + 16 + 16 * out + out for out in (5, 1, 2))


def test_heatmap_bias_init_and_pytorch_bias_bounds():
    heads = CornerHeads(num_classes=80, channels=64)
    heads(np.zeros((1, 4, 4, 64), "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(heads.heatmap[1].bias),
                                  np.full(80, -2.19, np.float32))
    # The reference rounds -log((1 - 0.1) / 0.1) = -2.1972 to two decimals.
    assert math.isclose(HEATMAP_BIAS_INIT, -math.log((1 - 0.1) / 0.1), abs_tol=1e-2)
    for hidden, final in (heads.embedding, heads.offset):
        # PyTorch bias default U(+-1/sqrt(fan_in)); fan_in 3*3*64 and 64.
        assert np.abs(keras.ops.convert_to_numpy(hidden.bias)).max() <= 1 / math.sqrt(576)
        assert np.abs(keras.ops.convert_to_numpy(final.bias)).max() <= 1 / math.sqrt(64)


def test_heads_reject_wrong_input_width():
    heads = CornerHeads(num_classes=3, channels=16)
    with pytest.raises(ValueError, match="expected 16 input channels"):
        heads(np.zeros((1, 4, 4, 8), "float32"))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="corner must be one of"):
        CornerModule("top_right")
    with pytest.raises(ValueError, match="kernel_size must be 1 or 3"):
        CornerHeads(kernel_size=5)


def test_configs_round_trip():
    for layer in (CornerModule("bottom_right", channels=8, pool_channels=4,
                               corner_pooling=False, corner_pool_impl="scan",
                               sync_batchnorm=True),
                  CornerHeads(num_classes=7, channels=8, kernel_size=1)):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()



def test_batch_norm_training_pass_equals_keras_batch_normalization():
    """The fused training pass gives Keras' outputs, gradients and moving statistics."""
    import tensorflow as tf

    from cornernet_tf.modeling.layers.conv_bn import BatchNorm, batch_norm
    x = tf.random.normal([2, 9, 7, 5], 3.0, 2.0, seed=1)
    upstream = tf.random.normal(x.shape, seed=2)
    ours = batch_norm()
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    assert isinstance(ours, BatchNorm)
    rng = np.random.default_rng(0)
    initial = [rng.uniform(0.5, 1.5, 5).astype(np.float32) for _ in range(4)]
    for layer in (ours, reference):
        layer.build(x.shape)
        for weight, value in zip(layer.weights, initial):  # gamma, beta, mean, variance
            weight.assign(value)
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for name, a, b in zip(["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"],
                          *results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5,
                                   err_msg=name)
    # Moving statistics by hand: momentum 0.9 towards the batch's (biased) moments.
    flat = x.numpy().reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(np.asarray(ours.moving_mean),
                               0.9 * initial[2] + 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.moving_variance),
                               0.9 * initial[3] + 0.1 * flat.var(0), rtol=1e-5)
    # Inference is Keras' own path on the moving statistics, which it leaves unchanged.
    before = ours.moving_mean.numpy().copy()
    np.testing.assert_allclose(ours(x, training=False), reference(x, training=False),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(before, ours.moving_mean.numpy())
