"""The box contract: format conversions keep -1 padding; values checked by hand."""

import numpy as np
import tensorflow as tf

from cornernet_tf import boxes as box_lib


def test_xywh_round_trip_keeps_padding():
    xywh = tf.constant([[10., 20., 30., 40.], [-1., -1., -1., -1.]])
    xyxy = box_lib.xywh_to_xyxy(xywh)
    # x2 = 10 + 30, y2 = 20 + 40; the padding row is untouched
    np.testing.assert_allclose(xyxy.numpy(), [[10, 20, 40, 60], [-1, -1, -1, -1]])
    np.testing.assert_allclose(box_lib.xyxy_to_xywh(xyxy).numpy(), xywh.numpy())


def test_normalized_yxyx():
    b = tf.constant([[[20., 10., 60., 30.], [-1., -1., -1., -1.]]])
    out = box_lib.xyxy_to_normalized_yxyx(b, 100, 200).numpy()
    # ymin = 10/100, xmin = 20/200, ymax = 30/100, xmax = 60/200
    np.testing.assert_allclose(out[0, 0], [0.1, 0.1, 0.3, 0.3])
    np.testing.assert_allclose(out[0, 1], [-1, -1, -1, -1])


def test_valid_mask_and_pad():
    b = tf.constant([[0., 0., 5., 5.], [3., 3., 3., 9.], [-1., -1., -1., -1.]])
    assert box_lib.valid_mask(b).numpy().tolist() == [True, False, False]
    padded, classes, dropped = box_lib.pad_boxes(b[:1], tf.constant([2]), 3)
    assert padded.shape == (3, 4) and classes.numpy().tolist() == [2, -1, -1]
    assert int(dropped) == 0
    _, classes, dropped = box_lib.pad_boxes(b, tf.constant([0, 1, 2]), 2)
    assert classes.numpy().tolist() == [0, 1] and int(dropped) == 1
