"""Tests of the hourglass building blocks against numpy references written here.

Reference semantics (PyTorch, what the authors' code runs): a k x k conv with stride s pads
(k - 1) // 2 zeros on every side, so n -> floor((n + 2p - k) / s) + 1 = ceil(n / 2) for s = 2.
A freshly initialised BN in inference mode is y = x / sqrt(1 + 1e-5) (mean 0, var 1,
gamma 1, beta 0).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.modeling.backbones.hourglass import (FireModule, HourglassBackbone,
                                                       HourglassModule, ResidualBlock)
from cornernet_tf.modeling.layers.conv_bn import ConvBN

BN_SCALE = 1.0 / math.sqrt(1.0 + 1e-5)


def np_conv(x, kernel, stride=1, pad=0):
    """Cross-correlation, x [B, H, W, Ci], kernel [k, k, Ci, Co], symmetric zero padding."""
    k = kernel.shape[0]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            y[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return y


def np_depthwise(x, kernel, stride=1, pad=0):
    """Depthwise cross-correlation, kernel [k, k, C, 1]."""
    full = np.zeros(kernel.shape[:2] + (kernel.shape[2], kernel.shape[2]))
    for c in range(kernel.shape[2]):
        full[:, :, c, c] = kernel[:, :, c, 0]
    return np_conv(x, full, stride, pad)


def relu(x):
    return np.maximum(x, 0.0)


def random_input(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


def n_params(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


@pytest.mark.parametrize("size,kernel_size", [((9, 7), 3), ((8, 10), 3), ((11, 12), 7),
                                               ((9, 8), 1)])
def test_stride2_conv_pads_symmetrically_like_pytorch(size, kernel_size):
    # Even sizes are where TF "SAME" differs: it pads 0 before and 1 after, shifting the grid.
    x = random_input((2,) + size + (3,))
    layer = ConvBN(4, kernel_size, strides=2, activation=False)
    y = keras.ops.convert_to_numpy(layer(x, training=False))
    assert y.shape == (2, math.ceil(size[0] / 2), math.ceil(size[1] / 2), 4)
    kernel = keras.ops.convert_to_numpy(layer.conv.kernel)
    expected = np_conv(x, kernel, stride=2, pad=(kernel_size - 1) // 2) * BN_SCALE
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_residual_block_matches_numpy_with_identity_skip():
    x = random_input((1, 6, 5, 4), seed=1)
    block = ResidualBlock(4)
    y = keras.ops.convert_to_numpy(block(x, training=False))
    assert block.skip is None  # same width, stride 1
    k1 = keras.ops.convert_to_numpy(block.conv1.conv.kernel)
    k2 = keras.ops.convert_to_numpy(block.conv2.conv.kernel)
    h = relu(np_conv(x, k1, pad=1) * BN_SCALE)
    expected = relu(np_conv(h, k2, pad=1) * BN_SCALE + x)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_residual_block_projection_skip_shapes_and_params():
    x = random_input((2, 9, 10, 4))
    block = ResidualBlock(8, strides=2)
    y = block(x, training=False)
    assert tuple(y.shape) == (2, 5, 5, 8)
    assert block.skip is not None
    # conv3x3 4->8, BN(8) gamma+beta, conv3x3 8->8, BN, conv1x1 4->8, BN; no conv biases.
    assert n_params(block) == 9 * 4 * 8 + 16 + 9 * 8 * 8 + 16 + 4 * 8 + 16


def test_fire_module_matches_numpy_with_skip():
    x = random_input((1, 5, 6, 8), seed=2)
    fire = FireModule(8)
    y = keras.ops.convert_to_numpy(fire(x, training=False))
    w_sq = keras.ops.convert_to_numpy(fire.squeeze.conv.kernel)
    w_1x1 = keras.ops.convert_to_numpy(fire.expand_1x1.kernel)
    w_dw = keras.ops.convert_to_numpy(fire.expand_3x3.kernel)
    s = np_conv(x, w_sq) * BN_SCALE  # no ReLU after the squeeze BN
    expand = np.concatenate([np_conv(s, w_1x1), np_depthwise(s, w_dw, pad=1)], axis=-1)
    expected = relu(expand * BN_SCALE + x)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_fire_module_stride2_shapes_params_and_no_skip():
    x = random_input((2, 9, 9, 6), seed=3)
    fire = FireModule(8, strides=2)
    y = keras.ops.convert_to_numpy(fire(x, training=False))
    assert y.shape == (2, 5, 5, 8)
    assert y.min() >= 0.0
    # squeeze 1x1 6->4 + BN(4), expand 1x1 4->4, depthwise 3x3 on 4 channels, BN(8).
    assert n_params(fire) == 6 * 4 + 8 + 4 * 4 + 9 * 4 + 16
    w_sq = keras.ops.convert_to_numpy(fire.squeeze.conv.kernel)
    w_1x1 = keras.ops.convert_to_numpy(fire.expand_1x1.kernel)
    w_dw = keras.ops.convert_to_numpy(fire.expand_3x3.kernel)
    s = np_conv(x, w_sq) * BN_SCALE
    expand = np.concatenate([np_conv(s, w_1x1, stride=2),
                             np_depthwise(s, w_dw, stride=2, pad=1)], axis=-1)
    np.testing.assert_allclose(y, relu(expand * BN_SCALE), rtol=1e-4, atol=1e-5)


def test_fire_module_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        FireModule(7)


def test_pytorch_default_init_bounds():
    # PyTorch: kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); a depthwise 3x3
    # kernel has fan_in 9 (one input channel per group), so bound 1/3.
    fire = FireModule(64)
    fire.build((None, 8, 8, 64))
    fire(np.zeros((1, 8, 8, 64), "float32"))
    dw = np.abs(keras.ops.convert_to_numpy(fire.expand_3x3.kernel))
    assert dw.max() <= 1.0 / 3.0 and dw.max() > 0.3
    conv = ConvBN(64, 3)
    conv(np.zeros((1, 4, 4, 32), "float32"))
    k = np.abs(keras.ops.convert_to_numpy(conv.conv.kernel))
    bound = 1.0 / math.sqrt(9 * 32)
    assert k.max() <= bound and k.max() > 0.9 * bound


def test_transposed_upsampling_aligns_with_pytorch_padding_1():
    # PyTorch ConvTranspose2d(k=4, s=2, p=1): out[o] += x[i] * w[k] for o = 2 i + k - 1.
    module = HourglassModule((4, 4), (1, 1), block="fire", upsample="transpose")
    x = random_input((1, 4, 6, 4), seed=4)
    module(np.zeros((1, 8, 8, 4), "float32"))
    up = module.up2
    y = keras.ops.convert_to_numpy(up(x))
    kernel = keras.ops.convert_to_numpy(up.kernel)  # [kh, kw, out, in]
    bias = keras.ops.convert_to_numpy(up.bias)
    expected = np.zeros((1, 8, 12, 4)) + bias
    for i in range(4):
        for j in range(6):
            for ky in range(4):
                for kx in range(4):
                    oy, ox = 2 * i + ky - 1, 2 * j + kx - 1
                    if 0 <= oy < 8 and 0 <= ox < 12:
                        expected[0, oy, ox] += kernel[ky, kx] @ x[0, i, j]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block,upsample", [("residual", "nearest"), ("fire", "transpose")])
def test_hourglass_module_keeps_shape_and_counts_blocks(block, upsample):
    module = HourglassModule((8, 12, 16), (1, 2, 3), block=block, upsample=upsample)
    y = module(random_input((2, 8, 12, 8)), training=False)
    assert tuple(y.shape) == (2, 8, 12, 8)
    # Level 0: up1 1 + low1 1 + low3 1; level 1: 2 + 2 + 2; innermost: 3 -> 12 blocks.
    cls = ResidualBlock if block == "residual" else FireModule

    def count(m):
        inner = m.low2 if isinstance(m.low2[0], cls) else []
        nested = count(m.low2[0]) if isinstance(m.low2[0], HourglassModule) else 0
        blocks = m.up1 + m.low1 + inner + m.low3
        assert all(isinstance(b, cls) for b in blocks)
        return len(blocks) + nested

    assert count(module) == 12
    # The innermost blocks run at channels[-1] = 16, down two stride-2 levels.
    inner = module.low2[0].low2
    assert len(inner) == 3 and all(b.filters == 16 for b in inner)


def test_hourglass_module_nearest_merge_is_up1_plus_upsampled_low3():
    module = HourglassModule((4, 4), (1, 1))
    x = random_input((1, 4, 4, 4), seed=5)
    y = keras.ops.convert_to_numpy(module(x, training=False))
    up1 = keras.ops.convert_to_numpy(module.up1[0](x, training=False))
    low = x
    for layer in module.low1 + module.low2 + module.low3:
        low = layer(low, training=False)
    low = keras.ops.convert_to_numpy(low)
    assert low.shape == (1, 2, 2, 4)
    expected = up1 + low.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_hourglass_module_rejects_sizes_it_cannot_halve():
    module = HourglassModule((4, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError, match="multiples of 4"):
        module(np.zeros((1, 6, 8, 4), "float32"))


def test_levels_must_match():
    with pytest.raises(ValueError, match="channels=\\[4, 8, 8\\], blocks=\\[1, 1\\]"):
        HourglassModule((4, 8, 8), (1, 1))
    with pytest.raises(ValueError, match="block must be one of"):
        HourglassModule((4, 8), (1, 1), block="dense")


@pytest.mark.parametrize("block,upsample,stem_residuals,size,grid", [
    ("residual", "nearest", 1, (64, 96), (16, 24)),
    ("fire", "transpose", 2, (63, 64), (8, 8)),
])
def test_backbone_returns_one_feature_map_per_stack(block, upsample, stem_residuals, size,
                                                    grid):
    backbone = HourglassBackbone(stacks=2, stem_channels=8, channels=(8, 12, 16),
                                 blocks=(1, 1, 1), out_channels=12, block=block,
                                 upsample=upsample, stem_residuals=stem_residuals)
    features = backbone(random_input((1,) + size + (3,)), training=False)
    assert len(features) == 2
    for f in features:
        assert tuple(f.shape) == (1,) + grid + (12,)
    assert backbone.stride == 2 ** (1 + stem_residuals)
    # Inter-stack connection exists only between stacks.
    assert len(backbone.inters) == len(backbone.inters_) == len(backbone.cnvs_) == 1


def test_layer_configs_round_trip():
    for layer in (ConvBN(8, 7, 2, activation=False, sync_batchnorm=True),
                  ResidualBlock(8, 2), FireModule(8, 2),
                  HourglassModule((8, 12), (2, 3), block="fire", upsample="transpose"),
                  HourglassBackbone(stacks=1, stem_channels=8, channels=(8, 12), blocks=(1, 1),
                                    out_channels=8, stem_residuals=2)):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_strided_1x1_conv_gradient_closed_form():
    # y = BN_SCALE * conv1x1(x[:, ::2, ::2]) in inference mode, so d sum(y) / dx is
    # BN_SCALE * sum_o kernel[ci, o] at even (row, col) and 0 elsewhere. (TF 2.21's oneDNN
    # strided 1x1 conv gradient corrupted the heap on this shape: 16x16x8.)
    layer = ConvBN(8, 1, strides=2, activation=False)
    x = tf.constant(random_input((1, 16, 16, 8), seed=6))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=False)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    assert tuple(y.shape) == (1, 8, 8, 8)
    per_channel = keras.ops.convert_to_numpy(layer.conv.kernel)[0, 0].sum(axis=1) * BN_SCALE
    expected = np.zeros((1, 16, 16, 8), np.float32)
    expected[:, ::2, ::2, :] = per_channel
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
