"""Corner prediction module (TL or BR) and its three heads (SPEC.md, Architecture).

`CornerModule` turns a backbone feature map into corner features:
    p1 = conv3x3(pool_channels)-BN-ReLU(x);  p2 = the same with its own weights
    s  = Pool_a(p1) + Pool_b(p2)   (top + left for "top_left", bottom + right for "bottom_right";
                                    p1 + p2 when corner pooling is off, the paper's ablation)
    h  = ReLU(BN(conv3x3(channels)(s)) + BN(conv1x1(channels)(x)))
    out = conv3x3(channels)-BN-ReLU(h)
`CornerHeads` maps those features to heatmap logits, embeddings and offsets, each head
conv(kernel_size, channels, bias)-ReLU -> conv1x1(k, bias). The model builds one module and
one set of heads per corner and per stack (no sharing).
"""

from __future__ import annotations

import keras

from cornernet_tf.modeling.layers.conv_bn import (ConvBN, pytorch_bias_initializer,
                                                  pytorch_kernel_initializer)
from cornernet_tf.modeling.layers.corner_pool import CornerPool

CORNERS = ("top_left", "bottom_right")

# -log((1 - 0.1) / 0.1): sigmoid(bias) = 0.1 at the start, so the focal loss of the
# overwhelmingly negative heatmap does not swamp the first iterations.
HEATMAP_BIAS_INIT = -2.19


@keras.saving.register_keras_serializable(package="cornernet_tf")
class CornerModule(keras.layers.Layer):
    """Corner pooling module: backbone features -> corner features.

    Input `x: [B, h, w, C_in]` in the compute dtype; output `[B, h, w, channels]`.

    Args:
      corner: "top_left" (top + left pooling) or "bottom_right" (bottom + right).
      channels: width of the module's output (256 in the reference).
      pool_channels: width of the two pooled branches (128 in the reference).
      corner_pooling: False replaces the pooling by the identity, s = p1 + p2 (ablation).
      corner_pool_impl: "auto" | "scan" | "doubling", passed to `CornerPool`.
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, corner: str = "top_left", channels: int = 256, pool_channels: int = 128,
                 corner_pooling: bool = True, corner_pool_impl: str = "auto",
                 sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        if corner not in CORNERS:
            raise ValueError(f"CornerModule: corner must be one of {CORNERS}, found {corner!r}")
        self.corner = corner
        self.channels = channels
        self.pool_channels = pool_channels
        self.corner_pooling = corner_pooling
        self.corner_pool_impl = corner_pool_impl
        self.sync_batchnorm = sync_batchnorm
        bn = dict(sync_batchnorm=sync_batchnorm)
        self.p1_conv = ConvBN(pool_channels, 3, 1, activation=True, **bn)
        self.p2_conv = ConvBN(pool_channels, 3, 1, activation=True, **bn)
        self.pool = (CornerPool(corner=corner, impl=corner_pool_impl) if corner_pooling
                     else None)
        self.p_conv = ConvBN(channels, 3, 1, activation=False, **bn)
        self.skip_conv = ConvBN(channels, 1, 1, activation=False, **bn)
        self.out_conv = ConvBN(channels, 3, 1, activation=True, **bn)

    def call(self, x, training=None):
        p1 = self.p1_conv(x, training=training)
        p2 = self.p2_conv(x, training=training)
        s = self.pool([p1, p2]) if self.pool is not None else p1 + p2
        h = keras.ops.relu(self.p_conv(s, training=training)
                           + self.skip_conv(x, training=training))
        return self.out_conv(h, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(corner=self.corner, channels=self.channels,
                      pool_channels=self.pool_channels, corner_pooling=self.corner_pooling,
                      corner_pool_impl=self.corner_pool_impl,
                      sync_batchnorm=self.sync_batchnorm)
        return config


def _head(channels: int, outputs: int, kernel_size: int, final_bias=None) -> list:
    """conv(kernel_size, channels, bias)-ReLU -> conv1x1(outputs, bias) in float32."""
    hidden = keras.layers.Conv2D(
        channels, kernel_size, padding="same", activation="relu",
        kernel_initializer=pytorch_kernel_initializer(),
        bias_initializer=pytorch_bias_initializer(channels * kernel_size * kernel_size))
    # float32 outputs: the losses and decode see full precision under mixed precision.
    final = keras.layers.Conv2D(
        outputs, 1, kernel_initializer=pytorch_kernel_initializer(),
        bias_initializer=final_bias or pytorch_bias_initializer(channels), dtype="float32")
    return [hidden, final]


@keras.saving.register_keras_serializable(package="cornernet_tf")
class CornerHeads(keras.layers.Layer):
    """The three heads of one corner type: heatmap logits, embedding, offset.

    Input `[B, h, w, channels]` (a `CornerModule` output). Returns a tuple
    `(heatmap [B, h, w, num_classes] float32 logits, embedding [B, h, w, 1] float32,
    offset [B, h, w, 2] float32 (x, y) sub-cell offsets in output-grid cells)`.

    Args:
      num_classes: heatmap channels, one per class.
      channels: width of the input and of each head's hidden conv.
      kernel_size: the hidden conv's kernel, 3 (CornerNet) or 1 (CornerNet-Squeeze).
    """

    def __init__(self, num_classes: int = 80, channels: int = 256, kernel_size: int = 3,
                 **kwargs):
        super().__init__(**kwargs)
        if kernel_size not in (1, 3):
            raise ValueError(f"CornerHeads: kernel_size must be 1 or 3, found {kernel_size!r}")
        self.num_classes = num_classes
        self.channels = channels
        self.kernel_size = kernel_size
        bias = keras.initializers.Constant(HEATMAP_BIAS_INIT)
        self.heatmap = _head(channels, num_classes, kernel_size, final_bias=bias)
        self.embedding = _head(channels, 1, kernel_size)
        self.offset = _head(channels, 2, kernel_size)

    def build(self, input_shape):
        # The bias init's fan-in assumes `channels` inputs; a mismatch is a wiring error.
        if input_shape[-1] is not None and input_shape[-1] != self.channels:
            raise ValueError(f"CornerHeads: expected {self.channels} input channels "
                             f"(the `channels` argument), found input shape {input_shape}")

    def call(self, x):
        outputs = []
        for hidden, final in (self.heatmap, self.embedding, self.offset):
            outputs.append(final(hidden(x)))
        return tuple(outputs)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels,
                      kernel_size=self.kernel_size)
        return config

