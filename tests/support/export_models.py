"""The tiny export model shared by tests/export: config, weights, label map, noise images."""

import keras
import numpy as np
import tensorflow as tf

from cornernet_tf.config.schema import load_config
from cornernet_tf.data.coco import LabelMap
from cornernet_tf.modeling.model import build_model

N = 20  # decode.max_detections of the tiny config


def tiny_config(name="tiny", extra=()):
    """A 64x64, 3-class, one-stack hourglass (output grid 16x16)."""
    return load_config(None, [
        "model.backbone=hourglass52", "model.num_classes=3", "model.input_size=[64,64]",
        "model.stacks=1", "model.stem_channels=16", "model.channels=[16,16,24]",
        "model.blocks=[1,1,1]", "model.head_channels=16", "model.pool_channels=8",
        "decode.k=20", "decode.num_pairs=100", f"decode.max_detections={N}",
        f"export.name={name}", *extra])


def tiny_model(cfg, seed=0):
    """The tiny CornerNet with heatmap heads rescaled so that peaks stand out.

    Random weights give heatmap logits of std ~0.01 around the -2.19 prior (scores tie near
    0.1). The final heatmap conv is rescaled per class to logits of std 2 around -3 on a
    noise image, and the embeddings are zeroed so that every geometrically valid pair
    groups: detections then have distinct scores spread over (0, 1).
    """
    keras.utils.set_random_seed(seed)
    model = build_model(cfg.model)
    probe = np.random.default_rng(seed).integers(0, 256, (1, *cfg.model.input_size, 3))
    heads = model(tf.constant(probe, tf.float32), training=False)[-1]
    for key, head in (("tl_heatmap", model.tl_heads[-1]), ("br_heatmap", model.br_heads[-1])):
        kernel, bias = head.heatmap[1].weights
        logits = heads[key].numpy().reshape(-1, cfg.model.num_classes)
        mean, std = logits.mean(0), logits.std(0)
        kernel.assign(kernel * (2.0 / std))
        bias.assign((bias - mean) * (2.0 / std) - 3.0)
        emb_kernel, emb_bias = head.embedding[1].weights
        emb_kernel.assign(tf.zeros_like(emb_kernel))
        emb_bias.assign(tf.zeros_like(emb_bias))
    return model


def label_map():
    return LabelMap([7, 3, 11], ["triangle", "circle", "square"])


def noise_image(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
