"""The key constants are the names the producers really emit and the consumers really read.

Golden names come from DESIGN.md (the head dict of "Tensors", the `encode_targets` outputs of
"Public names" and the serving contract); the other tests check that the model, the target
encoder, the loss, decode and the serving graph produce or demand exactly those keys.
"""

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import keys
from cornernet_tf.config.schema import DecodeConfig, load_config
from cornernet_tf.data.targets import encode_targets
from cornernet_tf.inference.decode import decode
from cornernet_tf.inference.detector import build_detector
from cornernet_tf.losses import compute_normalizers, cornernet_loss
from cornernet_tf.modeling.model import build_model

NUM_CLASSES = 3
TINY = ["model.backbone=hourglass52", f"model.num_classes={NUM_CLASSES}", "model.input_size=32",
        "model.stem_channels=8", "model.channels=[8, 8]", "model.blocks=[1, 1]",
        "model.head_channels=8", "model.pool_channels=4", "decode.k=8", "decode.num_pairs=16",
        "decode.max_detections=5"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, TINY)


@pytest.fixture(scope="module")
def model(cfg):
    return build_model(cfg.model)


def test_names_are_the_design_contract():
    assert keys.HEAD_KEYS == ("tl_heatmap", "br_heatmap", "tl_embedding", "br_embedding",
                              "tl_offset", "br_offset")
    assert set(keys.TARGET_KEYS) == {"tl_heatmap", "br_heatmap", "tl_index", "br_index",
                                     "tl_offset", "br_offset", "mask", "num_objects"}
    assert keys.DETECTION_OUTPUT_KEYS == ("detection_boxes", "detection_scores",
                                          "detection_classes", "num_detections")
    # Each tuple names distinct tensors.
    for group in (keys.HEAD_KEYS, keys.TARGET_KEYS, keys.NORMALIZER_KEYS, keys.LOSS_KEYS,
                  keys.DETECTION_OUTPUT_KEYS):
        assert len(set(group)) == len(group), group


def test_model_returns_exactly_the_head_keys(model):
    for stack in model(np.zeros((1, 32, 32, 3), np.float32), training=True):
        assert tuple(stack) == keys.HEAD_KEYS


def _targets(num_objects=1):
    boxes = tf.constant([[2.0, 3.0, 20.0, 25.0]] * num_objects, tf.float32)
    classes = tf.constant([1] * num_objects, tf.int32)
    return encode_targets(boxes, classes, NUM_CLASSES, 32, 8, max_objects=4)


def test_encode_targets_returns_exactly_the_target_keys():
    assert set(_targets()) == set(keys.TARGET_KEYS)


def test_loss_reads_the_loss_target_keys_and_returns_the_loss_keys(model):
    targets = {k: v[None] for k, v in _targets().items()}
    outputs = model(np.zeros((1, 32, 32, 3), np.float32), training=True)
    assert tuple(cornernet_loss(outputs, targets)) == keys.LOSS_KEYS
    assert set(compute_normalizers(targets)) == set(keys.NORMALIZER_KEYS)
    # Every loss target is demanded (a key the encoder renamed would fail here)...
    for key in keys.LOSS_TARGET_KEYS:
        partial = {k: v for k, v in targets.items() if k != key}
        with pytest.raises(KeyError, match=key):
            cornernet_loss(outputs, partial)
    # ...and every head too.
    for key in keys.HEAD_KEYS:
        with pytest.raises(KeyError, match=key):
            cornernet_loss([{k: v for k, v in outputs[0].items() if k != key}], targets)
    # num_objects is a target the pipeline drops: the loss must not need it.
    assert set(keys.TARGET_KEYS) - set(keys.LOSS_TARGET_KEYS) == {keys.NUM_OBJECTS}
    without = {k: v for k, v in targets.items() if k != keys.NUM_OBJECTS}
    assert tuple(cornernet_loss(outputs, without)) == keys.LOSS_KEYS


def test_decode_and_serving_return_the_detection_keys(model, cfg):
    heads = model(np.zeros((1, 32, 32, 3), np.float32), training=False)[-1]
    assert set(decode(heads, DecodeConfig(k=8, num_pairs=16, max_detections=5))) == {
        keys.BOXES, keys.SCORES, keys.CLASSES, keys.NUM_DETECTIONS}
    served = build_detector(model, cfg).serve_images(
        tf.zeros((1, 20, 30, 3), tf.uint8))
    assert set(served) == set(keys.DETECTION_OUTPUT_KEYS)
