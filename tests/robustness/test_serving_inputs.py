"""The bad-input corpus through the exported signatures (`serving_default`, `serving_bytes`).

Every image case of `tests/robustness/corpus.py` is sent as bytes, alone and at index 2 of
a batch of 3 (the others readable): readable cases are answered, unreadable ones refused
with a message naming the batch index where the graph can check it (format, size) and the
decoder's own message for a corrupt body of a known format. Tensor inputs of the wrong
dtype, rank or channel count, empty batches and images above export.max_image_pixels get
a message saying what was expected. The TFLite runner's cases are in
tests/export/test_tflite.py (wrong dtype, rank, batch, size, channels).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.export import saved_model
from tests.robustness import corpus
from tests.support.export_models import N, label_map, tiny_config, tiny_model

NOT_AN_IMAGE = "not a JPEG, PNG, GIF, BMP or WebP image"
UNREADABLE = {  # case -> the words of its refusal
    "zero_byte": "image {i} of the batch: " + NOT_AN_IMAGE + r" \(found 0 bytes",
    "text": "image {i} of the batch: " + NOT_AN_IMAGE + r" \(found 210 bytes",
    "tiff": "image {i} of the batch: " + NOT_AN_IMAGE,
    "header_100000": "image {i} of the batch: 100000 x 100000 = 10000000000 pixels \\(from "
                     "its header\\) exceed the limit of 50000000 pixels \\(config key "
                     "export.max_image_pixels\\)",
    # a corrupt body of a known format: the decoder's message (no index: see the module doc)
    "truncated_jpeg": "Invalid JPEG data",
    "bad_crc": "Invalid PNG",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(serving_default, serving_bytes, {case: bytes}) of the tiny model's SavedModel."""
    root = tmp_path_factory.mktemp("serving_inputs")
    cfg = tiny_config()
    loaded = tf.saved_model.load(saved_model.export_saved_model(
        tiny_model(cfg), cfg, str(root / "export"), label_map()))
    folder = str(root / "images")
    files = corpus.write_images(folder)
    data = {case: open(os.path.join(folder, name), "rb").read() for case, name in files.items()}
    assert set(corpus.UNREADABLE) == set(UNREADABLE)
    return loaded.signatures["serving_default"], loaded.signatures["serving_bytes"], data


@pytest.mark.parametrize("case", corpus.READABLE)
def test_readable_images_are_answered(served, case):
    _, serving_bytes, data = served
    out = serving_bytes(images=tf.constant([data["ok_rgb"], data[case]]))
    assert out["detection_boxes"].shape == (2, N, 4)
    n = int(out["num_detections"][1])
    boxes = out["detection_boxes"][1, :n].numpy()
    assert n > 0 and np.all((boxes >= 0) & (boxes <= 1))


@pytest.mark.parametrize("case", corpus.UNREADABLE)
def test_unreadable_images_are_refused_naming_the_index(served, case):
    _, serving_bytes, data = served
    for batch, index in (([data[case]], 0), ([data["ok_rgb"], data["gray"], data[case]], 2)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=UNREADABLE[case].format(i=index)):
            serving_bytes(images=tf.constant(batch))


def test_tensor_inputs_of_the_wrong_kind(served):
    serving_default, serving_bytes, data = served
    cases = [
        (serving_default, tf.zeros([1, 8, 8, 3], tf.float32), "expected to be a uint8 tensor"),
        (serving_default, tf.zeros([8, 8, 3], tf.uint8), "must be 4-dimensional"),
        (serving_default, tf.zeros([1, 8, 8, 1], tf.uint8),
         r"expected uint8 \[B, H, W, 3\] RGB \(3 channels\)"),
        (serving_default, tf.zeros([1, 8, 8, 4], tf.uint8),
         r"expected uint8 \[B, H, W, 3\] RGB \(3 channels\)"),
        (serving_default, tf.zeros([1, 0, 8, 3], tf.uint8),
         "images must have height and width >= 1"),
        (serving_bytes, tf.zeros([1], tf.uint8), "expected to be a string tensor"),
        (serving_bytes, tf.constant([[data["ok_rgb"]]]),
         r"\[1,1\] is not compatible with expected shape \[\?\]"),
    ]
    for signature, value, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signature(images=value)


def test_empty_batches_give_empty_outputs(served):
    serving_default, serving_bytes, _ = served
    for out in (serving_default(images=tf.zeros([0, 8, 8, 3], tf.uint8)),
                serving_bytes(images=tf.zeros([0], tf.string))):
        assert out["detection_boxes"].shape == (0, N, 4)
        assert out["num_detections"].shape == (0,)


def test_header_claims_above_the_limit_are_refused_before_decoding(served):
    # 8000 x 7000 = 56 MP (just above 50 MP) in a header with no pixel data: refused by the
    # size in the header, so the missing data is never looked at; a 7000 x 7000 header
    # (49 MP, under the limit) reaches the decoder, which finds no data.
    _, serving_bytes, _ = served
    above = corpus.png_header(8000, 7000) + corpus._png_chunk(b"IEND", b"")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image 0 of the batch: 7000 x 8000 = 56000000 pixels"):
        serving_bytes(images=tf.constant([above]))
    under = corpus.png_header(7000, 7000) + corpus._png_chunk(b"IEND", b"")
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        serving_bytes(images=tf.constant([under]))
    assert "exceed the limit" not in str(e.value)
