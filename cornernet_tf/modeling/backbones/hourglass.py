"""Hourglass backbones: Hourglass-104, Hourglass-52 and CornerNet-Squeeze (SPEC.md, Architecture).

Building blocks, each a plain Keras layer with explicit keyword arguments, on top of
`layers.conv_bn.ConvBN` (conv -> BN -> ReLU with PyTorch's padding and initialisation):

- `ResidualBlock`: conv3x3-BN-ReLU, conv3x3-BN, + skip (identity, or conv1x1-BN when the
  stride or the width changes), ReLU.
- `FireModule`: CornerNet-Squeeze's block (squeeze 1x1, expand 1x1 || depthwise 3x3).
- `HourglassModule`: one recursive hourglass; going down is a stride-2 block, coming up is
  nearest x2 upsampling (or a 4x4/2 transposed conv for Squeeze), then up1 + up2.
- `HourglassBackbone`: stem, stacked modules and the inter-stack connections; returns one
  feature map per stack.

Which of these a backbone uses (block type, up-sampling, stem depth) and its default widths
are in the table `config/presets.py`.
"""

from __future__ import annotations

from typing import Sequence

import keras

from cornernet_tf.config.presets import BLOCK_TYPES, UPSAMPLE_TYPES, stride_of
from cornernet_tf.modeling.layers.conv_bn import (ConvBN, batch_norm, check_positive,
                                                  padding_layers, pytorch_bias_initializer,
                                                  pytorch_kernel_initializer, subsample)

@keras.saving.register_keras_serializable(package="cornernet_tf")
class ResidualBlock(keras.layers.Layer):
    """The hourglass residual block: ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + skip(x)).

    Input `[B, H, W, C_in]`, output `[B, ceil(H / strides), ceil(W / strides), filters]`.
    The skip is the identity when strides == 1 and C_in == filters, else conv1x1/strides-BN.

    Args:
      filters: output channels.
      strides: 1 or 2 (stride of the first 3x3 conv and of the skip conv).
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, filters: int, strides: int = 1, sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        check_positive("ResidualBlock", filters=filters, strides=strides)
        self.filters = filters
        self.strides = strides
        self.sync_batchnorm = sync_batchnorm
        self.conv1 = ConvBN(filters, 3, strides, activation=True, sync_batchnorm=sync_batchnorm)
        self.conv2 = ConvBN(filters, 3, 1, activation=False, sync_batchnorm=sync_batchnorm)
        self.skip = None

    def build(self, input_shape):
        # The skip's existence depends on the input width, known only here.
        if self.strides != 1 or input_shape[-1] != self.filters:
            self.skip = ConvBN(self.filters, 1, self.strides, activation=False,
                               sync_batchnorm=self.sync_batchnorm)

    def call(self, x, training=None):
        y = self.conv2(self.conv1(x, training=training), training=training)
        skip = x if self.skip is None else self.skip(x, training=training)
        return keras.ops.relu(y + skip)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides,
                      sync_batchnorm=self.sync_batchnorm)
        return config


@keras.saving.register_keras_serializable(package="cornernet_tf")
class FireModule(keras.layers.Layer):
    """CornerNet-Squeeze's fire module (SPEC.md, CornerNet-Squeeze).

    squeeze = BN(conv1x1(C_in -> filters/2)) (no ReLU);
    expand = concat[conv1x1/strides(filters/2 -> filters/2),
                    depthwise conv3x3/strides(filters/2)] -> BN(filters);
    output = ReLU(expand + x) if strides == 1 and C_in == filters, else ReLU(expand).
    Input `[B, H, W, C_in]`, output `[B, ceil(H / strides), ceil(W / strides), filters]`.

    Args:
      filters: output channels, even.
      strides: 1 or 2 (stride of both expand convs).
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, filters: int, strides: int = 1, sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        check_positive("FireModule", filters=filters, strides=strides)
        if filters % 2:
            raise ValueError(f"FireModule: filters must be even (two halves), found {filters}")
        self.filters = filters
        self.strides = strides
        self.sync_batchnorm = sync_batchnorm
        half = filters // 2
        self.squeeze = ConvBN(half, 1, 1, activation=False, sync_batchnorm=sync_batchnorm)
        self.expand_1x1 = keras.layers.Conv2D(half, 1, use_bias=False,  # see subsample
                                              kernel_initializer=pytorch_kernel_initializer())
        self.pad_3x3, padding = padding_layers(3, strides)
        self.expand_3x3 = keras.layers.DepthwiseConv2D(
            3, strides=strides, padding=padding, use_bias=False,
            depthwise_initializer=pytorch_kernel_initializer("fan_out"))
        self.bn = batch_norm(sync_batchnorm)
        self.use_skip = None

    def build(self, input_shape):
        self.use_skip = self.strides == 1 and input_shape[-1] == self.filters

    def call(self, x, training=None):
        s = self.squeeze(x, training=training)
        d = s
        for layer in self.pad_3x3:
            d = layer(d)
        y = keras.ops.concatenate([self.expand_1x1(subsample(s, self.strides)),
                                   self.expand_3x3(d)], axis=-1)
        y = self.bn(y, training=training)
        return keras.ops.relu(y + x if self.use_skip else y)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides,
                      sync_batchnorm=self.sync_batchnorm)
        return config


def _make_block(block: str, filters: int, strides: int, sync_batchnorm: bool):
    cls = ResidualBlock if block == "residual" else FireModule
    return cls(filters, strides=strides, sync_batchnorm=sync_batchnorm)


def _check_levels(owner: str, channels: Sequence[int], blocks: Sequence[int]) -> None:
    if len(channels) < 2 or len(blocks) != len(channels):
        raise ValueError(f"{owner}: channels and blocks need one entry per level (at least 2, "
                         f"same length); found channels={list(channels)}, "
                         f"blocks={list(blocks)}")
    for c, b in zip(channels, blocks):
        check_positive(owner, channels=c, blocks=b)


@keras.saving.register_keras_serializable(package="cornernet_tf")
class HourglassModule(keras.layers.Layer):
    """One hourglass of len(channels) - 1 down-sampling levels.

    For level widths c0, c1 (outer, next) and n = blocks[0]:
    up1 = n blocks(c0); low1 = block(c1, stride 2) + (n - 1) blocks(c1);
    low2 = the inner hourglass (channels[1:], blocks[1:]), or blocks[1] blocks(c1) at the
    innermost level; low3 = (n - 1) blocks(c1) + block(c0); up2 = upsample(low3) (nearest x2,
    or ConvTranspose 4x4/2 with bias for Squeeze); output up1 + up2.
    Input and output `[B, H, W, channels[0]]`; H and W must be multiples of
    2 ** (len(channels) - 1).

    Args:
      channels: widths per level, outer to inner.
      blocks: blocks per level, outer to inner (the last entry: the innermost stage).
      block: "residual" (Hourglass) or "fire" (Squeeze).
      upsample: "nearest" or "transpose".
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int], block: str = "residual",
                 upsample: str = "nearest", sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        _check_levels("HourglassModule", channels, blocks)
        if block not in BLOCK_TYPES:
            raise ValueError(f"HourglassModule: block must be one of {BLOCK_TYPES}, "
                             f"found {block!r}")
        if upsample not in UPSAMPLE_TYPES:
            raise ValueError(f"HourglassModule: upsample must be one of {UPSAMPLE_TYPES}, "
                             f"found {upsample!r}")
        self.channels = tuple(int(c) for c in channels)
        self.blocks = tuple(int(b) for b in blocks)
        self.block = block
        self.upsample = upsample
        self.sync_batchnorm = sync_batchnorm
        c0, c1 = self.channels[:2]
        n = self.blocks[0]

        def make(filters, strides=1):
            return _make_block(block, filters, strides, sync_batchnorm)

        self.up1 = [make(c0) for _ in range(n)]
        self.low1 = [make(c1, 2)] + [make(c1) for _ in range(n - 1)]
        if len(self.channels) > 2:
            self.low2 = [HourglassModule(self.channels[1:], self.blocks[1:], block=block,
                                         upsample=upsample, sync_batchnorm=sync_batchnorm)]
        else:
            self.low2 = [make(c1) for _ in range(self.blocks[1])]
        self.low3 = [make(c1) for _ in range(n - 1)] + [make(c0)]
        if upsample == "nearest":
            self.up2 = keras.layers.UpSampling2D(2, interpolation="nearest")
        else:
            # PyTorch ConvTranspose2d(k=4, s=2, p=1): output 2n, one pixel cropped per side,
            # which is what Keras "same" does for these sizes. fan_in = c0 * 4 * 4 for both.
            self.up2 = keras.layers.Conv2DTranspose(
                c0, 4, strides=2, padding="same", use_bias=True,
                kernel_initializer=pytorch_kernel_initializer(),
                bias_initializer=pytorch_bias_initializer(c0 * 16))

    def build(self, input_shape):
        # up1 + up2 only line up when every level halves exactly.
        multiple = 2 ** (len(self.channels) - 1)
        sizes = [n for n in input_shape[1:3] if n is not None]
        if any(n % multiple for n in sizes):
            raise ValueError(
                f"HourglassModule: feature map height and width must be multiples of "
                f"{multiple} for {len(self.channels) - 1} down-sampling levels; found input "
                f"shape {tuple(input_shape)}. Choose an input size whose output grid is a "
                f"multiple of {multiple} (e.g. 511 -> 128 at stride 4).")

    def call(self, x, training=None):
        up1 = x
        for layer in self.up1:
            up1 = layer(up1, training=training)
        low = x
        for layer in self.low1 + self.low2 + self.low3:
            low = layer(low, training=training)
        return up1 + self.up2(low)

    def get_config(self):
        config = super().get_config()
        config.update(channels=list(self.channels), blocks=list(self.blocks), block=self.block,
                      upsample=self.upsample, sync_batchnorm=self.sync_batchnorm)
        return config


@keras.saving.register_keras_serializable(package="cornernet_tf")
class HourglassBackbone(keras.layers.Layer):
    """Stem, stacked hourglass modules and inter-stack connections.

    stem: conv7x7/2(stem_channels)-BN-ReLU, residual/2(channels[0]), then
    (stem_residuals - 1) more residual/2(channels[0]): stride 2 ** (1 + stem_residuals).
    Per stack i: cnv_i = conv3x3(out_channels)-BN-ReLU(hourglass_i(inter)); between stacks
    inter = Residual(ReLU(conv1x1-BN(inter) + conv1x1-BN(cnv_i))).

    Input `[B, H, W, 3]` normalised images (float); output a list of `stacks` feature maps
    `[B, H', W', out_channels]`, H' = H reduced by ceil(n / 2) per stride-2 stage.
    H' and W' must be multiples of 2 ** (len(channels) - 1).

    Args:
      stacks: number of hourglass modules.
      stem_channels: width of the 7x7 stem conv.
      channels: widths per hourglass level, outer to inner.
      blocks: blocks per level, outer to inner.
      out_channels: width of the per-stack feature maps (the heads' input).
      block: "residual" (Hourglass-104/52) or "fire" (Squeeze).
      upsample: "nearest" or "transpose".
      stem_residuals: stride-2 residual blocks after the stem conv (1, or 2 for Squeeze).
      sync_batchnorm: synchronized BN across replicas.
    """

    def __init__(self, stacks: int = 2, stem_channels: int = 128,
                 channels: Sequence[int] = (256, 256, 384, 384, 384, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2, 2, 4), out_channels: int = 256,
                 block: str = "residual", upsample: str = "nearest", stem_residuals: int = 1,
                 sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        check_positive("HourglassBackbone", stacks=stacks, stem_channels=stem_channels,
                        out_channels=out_channels, stem_residuals=stem_residuals)
        _check_levels("HourglassBackbone", channels, blocks)
        self.stacks = stacks
        self.stem_channels = stem_channels
        self.channels = tuple(int(c) for c in channels)
        self.blocks = tuple(int(b) for b in blocks)
        self.out_channels = out_channels
        self.block = block
        self.upsample = upsample
        self.stem_residuals = stem_residuals
        self.sync_batchnorm = sync_batchnorm
        c0 = self.channels[0]
        bn = dict(sync_batchnorm=sync_batchnorm)
        self.stem = [ConvBN(stem_channels, 7, 2, **bn)] + [
            ResidualBlock(c0, 2, **bn) for _ in range(stem_residuals)]
        self.hourglasses = [HourglassModule(self.channels, self.blocks, block=block,
                                            upsample=upsample, **bn) for _ in range(stacks)]
        self.cnvs = [ConvBN(out_channels, 3, 1, **bn) for _ in range(stacks)]
        self.inters_ = [ConvBN(c0, 1, 1, activation=False, **bn) for _ in range(stacks - 1)]
        self.cnvs_ = [ConvBN(c0, 1, 1, activation=False, **bn) for _ in range(stacks - 1)]
        self.inters = [ResidualBlock(c0, 1, **bn) for _ in range(stacks - 1)]

    @property
    def stride(self) -> int:
        """Input pixels per output cell."""
        return stride_of(self.stem_residuals)

    def call(self, images, training=None):
        inter = images
        for layer in self.stem:
            inter = layer(inter, training=training)
        features = []
        for i in range(self.stacks):
            cnv = self.cnvs[i](self.hourglasses[i](inter, training=training), training=training)
            features.append(cnv)
            if i < self.stacks - 1:
                inter = keras.ops.relu(self.inters_[i](inter, training=training)
                                       + self.cnvs_[i](cnv, training=training))
                inter = self.inters[i](inter, training=training)
        return features

    def get_config(self):
        config = super().get_config()
        config.update(stacks=self.stacks, stem_channels=self.stem_channels,
                      channels=list(self.channels), blocks=list(self.blocks),
                      out_channels=self.out_channels, block=self.block,
                      upsample=self.upsample, stem_residuals=self.stem_residuals,
                      sync_batchnorm=self.sync_batchnorm)
        return config
