"""Conv -> BN -> ReLU with PyTorch's numerics, and the initialisers every layer shares.

- `ConvBN`: conv (no bias) -> BN -> optional ReLU; stride-2 convs pad explicitly and
  symmetrically by (k - 1) // 2 like PyTorch, so n -> ceil(n / 2) with the same sampling grid
  as the reference (on even sizes TF "SAME" pads only at the bottom/right instead).
- Initialisation follows PyTorch's defaults (the reference trains from scratch): kernels
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = VarianceScaling(1/3, "fan_in", "uniform"), biases
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

The backbones (`backbones/hourglass.py`) and the corner modules (`layers/heads.py`) build on
these; this module imports neither.
"""

from __future__ import annotations

import math

import keras

from cornernet_tf import compat

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 (weight of the new batch statistics)
_BN_EPSILON = 1e-5


def pytorch_kernel_initializer(mode: str = "fan_in") -> keras.initializers.Initializer:
    """PyTorch's default conv kernel init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan)).

    Args:
      mode: "fan_in" for Conv2D / Conv2DTranspose kernels. Keras computes a depthwise
        kernel's fan_in as in_channels * k * k, PyTorch as k * k (one input channel per
        group); Keras' "fan_out" of a depthwise kernel is depth_multiplier * k * k, which
        equals PyTorch's fan_in for multiplier 1, so depthwise kernels use "fan_out".
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode=mode,
                                              distribution="uniform")


def pytorch_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


@keras.saving.register_keras_serializable(package="cornernet_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training pass is TensorFlow's fused kernel.

    Keras 3 normalises in training with separate ops (moments, then subtract, scale and
    shift), each a pass over the activation, and differentiates through all of them.
    `FusedBatchNormV3` does the forward in one op and has a one-op gradient. Measured on
    CornerNet-Squeeze's gradient step at 511, batch 2: see docs/benchmarks.md, section
    speed_notes. The results are Keras': the moving variance keeps Keras' biased batch
    variance (the fused op returns the unbiased one; it is scaled back by (n - 1) / n), and
    the fused op's epsilon floor (1.001e-5, for cuDNN) moves the output by < 1e-6 relative
    at unit variance. Inference, masks, synchronized BN and non-float32 inputs (mixed
    precision) take Keras' own path, so exported graphs are unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None or self.synchronized
                or self.renorm or keras.backend.backend() != "tensorflow"
                or inputs.dtype != "float32" or len(inputs.shape) != 4
                or self.axis not in (-1, 3)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf
        outputs, mean, variance = compat.fused_batch_norm_training(inputs, self.gamma,
                                                                   self.beta, self.epsilon)
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * tf.maximum(n - 1.0, 1.0) / n  # unbiased -> Keras' biased
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m))
        return outputs


def batch_norm(sync_batchnorm: bool = False) -> keras.layers.BatchNormalization:
    """BN with PyTorch's numerics (momentum 0.1 there, 0.9 here; epsilon 1e-5)."""
    return BatchNorm(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, synchronized=sync_batchnorm)


def subsample(x, strides: int):
    """x[:, ::s, ::s, :]: a strided 1x1 conv equals a 1x1 conv on this (n -> ceil(n / s)).

    Used instead of Conv2D(1, strides=2): with TF 2.21's oneDNN CPU kernels the gradient of
    a strided 1x1 conv corrupts the heap when in_channels < 16 (e.g. 16x16x8; likely
    uxlfoundation/oneDNN#6035, the reduce-to-unit-stride path of 1x1 convs).
    """
    return x if strides == 1 else x[:, ::strides, ::strides, :]


def padding_layers(kernel_size: int, strides: int) -> tuple[list, str]:
    """Explicit symmetric padding for strided convs, "same" (symmetric) for stride 1."""
    pad = (kernel_size - 1) // 2
    if strides == 1 or pad == 0:
        return [], "same" if strides == 1 else "valid"
    return [keras.layers.ZeroPadding2D(padding=pad)], "valid"


def check_positive(owner: str, **values) -> None:
    """Raises ValueError naming `owner` and the argument unless every value is an int > 0."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}: {name} must be a positive integer, found {value!r}")


@keras.saving.register_keras_serializable(package="cornernet_tf")
class ConvBN(keras.layers.Layer):
    """Conv2D (no bias) -> BatchNormalization -> optional ReLU.

    Input `[B, H, W, C_in]`, output `[B, ceil(H / strides), ceil(W / strides), filters]`,
    in the compute dtype.

    Args:
      filters: output channels.
      kernel_size: odd square kernel size.
      strides: 1 or 2; strided convs pad (kernel_size - 1) // 2 on every side, then "valid".
      activation: apply ReLU after BN.
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 activation: bool = True, sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        check_positive("ConvBN", filters=filters, kernel_size=kernel_size, strides=strides)
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvBN: kernel_size must be odd, found {kernel_size}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.activation = activation
        self.sync_batchnorm = sync_batchnorm
        self.pad, padding = padding_layers(kernel_size, strides)
        # 1x1 strided convs subsample first (see subsample), then convolve with stride 1.
        conv_strides = 1 if kernel_size == 1 else strides
        self.conv = keras.layers.Conv2D(filters, kernel_size, strides=conv_strides,
                                        padding=padding, use_bias=False,
                                        kernel_initializer=pytorch_kernel_initializer())
        self.bn = batch_norm(sync_batchnorm)

    def call(self, x, training=None):
        for layer in self.pad:
            x = layer(x)
        if self.kernel_size == 1:
            x = subsample(x, self.strides)
        x = self.bn(self.conv(x), training=training)
        return keras.ops.relu(x) if self.activation else x

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      activation=self.activation, sync_batchnorm=self.sync_batchnorm)
        return config
