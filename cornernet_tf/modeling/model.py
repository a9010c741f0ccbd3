"""The CornerNet Keras model: images in, raw heads per stack out (SPEC.md, Architecture).

    model = build_model(cfg.model)            # built: variables exist
    outputs = model(images, training=True)    # list, one dict per stack
    outputs[-1][keys.TL_HEATMAP]              # [B, h, w, C] float32 logits

In inference (`training=False`) only the last stack's heads run and the list has one dict.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from cornernet_tf import compat
from cornernet_tf.modeling.backbones.hourglass import HourglassBackbone
from cornernet_tf.config.presets import BACKBONES, WIDTH_FIELDS, check_grid
from cornernet_tf.config.schema import LossConfig, ModelConfig
from cornernet_tf.modeling.layers.heads import CornerHeads, CornerModule
from cornernet_tf.keys import (BR_EMBEDDING, BR_HEATMAP, BR_OFFSET, LOSS_KEYS, TL_EMBEDDING,
                               TL_HEATMAP, TL_OFFSET, TOTAL_LOSS)
from cornernet_tf.losses import compute_normalizers, cornernet_loss

# Per-channel RGB statistics of COCO images scaled to [0, 1] (the reference's values).
IMAGE_MEAN = (0.47026115, 0.44719302, 0.40789654)
IMAGE_STD = (0.27809835, 0.27408164, 0.28863828)


@keras.saving.register_keras_serializable(package="cornernet_tf")
class CornerNet(compat.SkipBuiltSymbolicBuild, keras.Model):
    """CornerNet: hourglass backbone, then per stack a TL and a BR corner module with heads.

    `call(images)`: images `[B, H, W, 3]` float32 RGB in [0, 255] (normalised inside).
    Returns a list with one dict per stack (training=True) or only the last stack
    (training=False), keys `keys.HEAD_KEYS`: heatmaps `[B, h, w, num_classes]` float32 logits,
    embeddings `[B, h, w, 1]` float32, offsets `[B, h, w, 2]` float32, where h, w are H, W
    reduced by ceil(n / 2) per stride-2 stage (stride 4, or 8 for "squeeze": 511 -> 128 / 64).

    Args:
      num_classes: object classes (heatmap channels).
      backbone: a row of `backbones.presets.BACKBONES` ("hourglass104", "hourglass52",
        "squeeze"): fixes the block type, up-sampling, stem depth, heads' kernel and the
        defaults of the widths below.
      stacks, stem_channels, channels, blocks, head_channels, pool_channels: architecture
        (see `cornernet_tf.config.schema.ModelConfig`); None takes the backbone preset's value.
      corner_pooling: False replaces corner pooling by the identity (the paper's ablation).
      corner_pool_impl: "auto" | "scan" | "doubling", passed to `CornerPool`.
      sync_batchnorm: synchronized BN across replicas.

    Raises:
      ValueError: unknown backbone or invalid architecture values.
    """

    def __init__(self, num_classes: int = 80, backbone: str = "hourglass104",
                 stacks: Optional[int] = None, stem_channels: Optional[int] = None,
                 channels: Optional[Sequence[int]] = None, blocks: Optional[Sequence[int]] = None,
                 head_channels: Optional[int] = None, pool_channels: Optional[int] = None,
                 corner_pooling: bool = True, corner_pool_impl: str = "auto",
                 sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        if backbone not in BACKBONES:
            raise ValueError(f"CornerNet: backbone must be one of {tuple(BACKBONES)}, "
                             f"found {backbone!r}")
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"CornerNet: num_classes must be a positive integer, "
                             f"found {num_classes!r}")
        preset = BACKBONES[backbone]
        given = dict(stacks=stacks, stem_channels=stem_channels, channels=channels,
                     blocks=blocks, head_channels=head_channels, pool_channels=pool_channels)
        widths = {k: getattr(preset, k) if v is None else v for k, v in given.items()}
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.stacks = int(widths["stacks"])
        self.stem_channels = int(widths["stem_channels"])
        self.channels = tuple(int(c) for c in widths["channels"])
        self.blocks = tuple(int(b) for b in widths["blocks"])
        self.head_channels = int(widths["head_channels"])
        self.pool_channels = int(widths["pool_channels"])
        self.corner_pooling = corner_pooling
        self.corner_pool_impl = corner_pool_impl
        self.sync_batchnorm = sync_batchnorm
        self.backbone = HourglassBackbone(
            stacks=self.stacks, stem_channels=self.stem_channels, channels=self.channels,
            blocks=self.blocks, out_channels=self.head_channels, block=preset.block,
            upsample=preset.upsample, stem_residuals=preset.stem_residuals,
            sync_batchnorm=sync_batchnorm)
        module = dict(channels=self.head_channels, pool_channels=self.pool_channels,
                      corner_pooling=corner_pooling, corner_pool_impl=corner_pool_impl,
                      sync_batchnorm=sync_batchnorm)
        heads = dict(num_classes=num_classes, channels=self.head_channels,
                     kernel_size=preset.head_kernel_size)
        self.tl_modules = [CornerModule("top_left", **module) for _ in range(self.stacks)]
        self.br_modules = [CornerModule("bottom_right", **module) for _ in range(self.stacks)]
        self.tl_heads = [CornerHeads(**heads) for _ in range(self.stacks)]
        self.br_heads = [CornerHeads(**heads) for _ in range(self.stacks)]
        # One running mean per loss term, shown by fit (created here: state after build
        # is not allowed).
        self.loss_trackers = {key: keras.metrics.Mean(name=key) for key in LOSS_KEYS}

    @property
    def stride(self) -> int:
        """Input pixels per output-grid cell (4, or 8 for "squeeze")."""
        return self.backbone.stride

    def build(self, input_shape):
        """Creates every variable, all stacks' heads included, by a symbolic forward.

        Raises:
          ValueError: the input size gives an output grid the hourglass cannot halve
            len(channels) - 1 times.
        """
        try:
            check_grid(tuple(input_shape[1:3]), self.stride, levels=len(self.channels) - 1)
        except ValueError as e:
            raise ValueError(f"CornerNet: {e}") from None
        self.compute_outputs(keras.KerasTensor(tuple(input_shape), dtype="float32"),
                             all_stacks=True)

    def normalize(self, images):
        """`[B, H, W, 3]` RGB in [0, 255] -> (images / 255 - mean) / std, float32."""
        images = keras.ops.cast(images, "float32")
        mean = keras.ops.array([255.0 * m for m in IMAGE_MEAN], dtype="float32")
        std = keras.ops.array([255.0 * s for s in IMAGE_STD], dtype="float32")
        # A division, not a product with 1/std: Keras 3.15 marks KerasTensor * constant as
        # sparse during the symbolic build.
        return (images - mean) / std

    def compute_outputs(self, images, all_stacks: bool, training=None) -> list:
        """Raw heads of all stacks (`all_stacks=True`) or of the last one only.

        Args:
          images: `[B, H, W, 3]` float32 RGB in [0, 255].
          all_stacks: run every stack's heads (training, intermediate supervision) or only
            the last stack's (inference; the earlier stacks' backbone still runs).
          training: BN mode.

        Returns:
          A list of dicts (keys `keys.HEAD_KEYS`), one per stack run, outer to last.
        """
        features = self.backbone(self.normalize(images), training=training)
        chosen = range(self.stacks) if all_stacks else [self.stacks - 1]
        outputs = []
        for i in chosen:
            tl_heatmap, tl_embedding, tl_offset = self.tl_heads[i](
                self.tl_modules[i](features[i], training=training))
            br_heatmap, br_embedding, br_offset = self.br_heads[i](
                self.br_modules[i](features[i], training=training))
            outputs.append({TL_HEATMAP: tl_heatmap, BR_HEATMAP: br_heatmap,
                            TL_EMBEDDING: tl_embedding, BR_EMBEDDING: br_embedding,
                            TL_OFFSET: tl_offset, BR_OFFSET: br_offset})
        return outputs

    def call(self, images, training=False):
        return self.compute_outputs(images, all_stacks=bool(training), training=training)

    # ----------------------------------------------------------------------------------
    # Training: a custom step whose loss and gradients do not depend on how the global
    # batch is split over replicas (SPEC.md, Losses).
    # ----------------------------------------------------------------------------------
    def compile(self, optimizer="adam", *, loss_config: Optional[LossConfig] = None, **kwargs):
        """Keras compile with CornerNet's loss weights (no `loss=`: the loss is built in).

        Args:
          optimizer: a Keras optimizer (Adam in the reference recipe). Under the
            `mixed_float16` policy Keras wraps it in a LossScaleOptimizer.
          loss_config: the `LossConfig` of `cornernet_loss` (`cfg.loss`; None: its
            defaults, the reference's weights).
          **kwargs: other `keras.Model.compile` arguments (e.g. steps_per_execution).
        """
        if "loss" in kwargs:
            raise ValueError("CornerNet.compile: the loss is built in (focal + pull/push + "
                             "offset); pass its weights, not loss=")
        if loss_config is not None and not isinstance(loss_config, LossConfig):
            raise TypeError(f"CornerNet.compile: loss_config must be a LossConfig, found "
                            f"{type(loss_config).__name__}")
        super().compile(optimizer=optimizer, **kwargs)
        self.loss_config = loss_config or LossConfig()

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def loss_terms(self, images, targets, training: bool) -> tuple[dict, dict]:
        """This replica's share of every loss term, normalised with global counts.

        The counts that normalise the loss (positive heatmap entries, objects, images) are
        summed over all replicas, so each replica's loss is its share of the global-batch
        loss and the replicas' gradients sum (as the optimizer all-reduces them) to the
        single-replica gradient.

        Args:
          images: [b, H, W, 3] float32 RGB 0..255, this replica's part of the batch.
          targets: dict of `encode_targets` outputs batched to b (see data/pipeline.py).
          training: BN mode.

        Returns:
          (local terms, global terms): dicts keyed by LOSS_KEYS; the global ones are the
          all-reduced sums, equal on every replica (for reporting).
        """
        ctx = tf.distribute.get_replica_context()
        normalizers = compute_normalizers(targets)
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            normalizers = {k: ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)
                           for k, v in normalizers.items()}
        outputs = self.compute_outputs(images, all_stacks=True, training=training)
        terms = cornernet_loss(outputs, targets, getattr(self, "loss_config", None),
                               normalizers=normalizers)
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            totals = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                    [tf.stop_gradient(terms[k]) for k in LOSS_KEYS])
            return terms, dict(zip(LOSS_KEYS, totals))
        return terms, {k: tf.stop_gradient(v) for k, v in terms.items()}

    def _report(self, terms: dict) -> dict:
        for key, tracker in self.loss_trackers.items():
            tracker.update_state(terms[key])
        results = {key: tracker.result() for key, tracker in self.loss_trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 averages per-replica logs of this strategy with
            # `strategy.reduce("MEAN", v, axis=0)`, which needs an axis: [1] per replica
            # reduces to the scalar (the values are the same global terms on every replica).
            results = {key: tf.reshape(value, [1]) for key, value in results.items()}
        return results

    def train_step(self, data):
        # (images, targets) from fit; train_on_batch passes (images, targets, None).
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            terms, global_terms = self.loss_terms(images, targets, training=True)
            scaled = self.optimizer.scale_loss(terms[TOTAL_LOSS])
        variables = self.trainable_variables
        gradients = self._mask_frozen(tape.gradient(scaled, variables), variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._report(global_terms)

    def freeze(self, variables, until_step: int = 0) -> None:
        """Keeps `variables` unchanged by training steps (before step `until_step`; 0: always).

        Their gradients are replaced by zeros, so Adam's moments stay zero and its update
        is exactly zero; the optimizer keeps one state for every trainable variable, so
        checkpoints and resuming do not depend on the freeze (train.freeze, README
        "Fine-tune on your classes"). Call before the first `fit`.
        """
        self._frozen = ({id(v) for v in variables}, int(until_step))

    def _mask_frozen(self, gradients: list, variables: list) -> list:
        frozen, until = getattr(self, "_frozen", (set(), 0))
        if not frozen:
            return gradients
        active = (tf.constant(True) if until <= 0
                  else self.optimizer.iterations < tf.cast(until, self.optimizer.iterations.dtype))
        return [tf.where(active, tf.zeros_like(g), g) if id(v) in frozen and g is not None
                else g for g, v in zip(gradients, variables)]

    def test_step(self, data):
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        _, global_terms = self.loss_terms(images, targets, training=False)
        return self._report(global_terms)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, backbone=self.backbone_name,
                      stacks=self.stacks, stem_channels=self.stem_channels,
                      channels=list(self.channels), blocks=list(self.blocks),
                      head_channels=self.head_channels, pool_channels=self.pool_channels,
                      corner_pooling=self.corner_pooling,
                      corner_pool_impl=self.corner_pool_impl,
                      sync_batchnorm=self.sync_batchnorm)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_model(model_config: ModelConfig) -> CornerNet:
    """Maps a `ModelConfig` to a built `CornerNet` (variables created, no forward pass run).

    Args:
      model_config: `cornernet_tf.config.schema.ModelConfig`; None architecture fields take the
        backbone preset's values.

    Returns:
      A CornerNet built for `[None, *model_config.input_size, 3]` inputs.

    Raises:
      ValueError: unknown backbone or invalid architecture values.
    """
    widths = {name: getattr(model_config, name) for name in WIDTH_FIELDS}  # None: the preset
    model = CornerNet(num_classes=model_config.num_classes, backbone=model_config.backbone,
                      corner_pooling=model_config.corner_pooling,
                      corner_pool_impl=model_config.corner_pool_impl,
                      sync_batchnorm=model_config.sync_batchnorm, **widths)
    height, width = model_config.input_size
    model.build((None, height, width, 3))
    return model
