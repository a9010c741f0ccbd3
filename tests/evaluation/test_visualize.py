"""Pictures: overlay colours and drawn boxes checked on tiny images."""

import numpy as np

from cornernet_tf.evaluation import visualize


def test_heatmap_overlay_colours_and_resizes():
    image = np.zeros((8, 8, 3), np.uint8)
    heat = np.zeros((2, 2, 3), np.float32)
    heat[0, 1, 2] = 1.0  # top-right output cell, class 2 -> top-right 4x4 image block
    out = visualize.heatmap_overlay(image, heat, alpha=1.0)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # probability 1 -> yellow (255, 255, 0) at full opacity; probability 0 keeps the image
    assert out[0:4, 4:8].tolist() == [[[255, 255, 0]] * 4] * 4
    assert out[4:8].max() == 0 and out[0:4, 0:4].max() == 0


def test_draw_detections_draws_the_box_outline():
    image = np.zeros((40, 40, 3), np.uint8)
    out = visualize.draw_detections(image, np.array([[10., 15., 30., 35.]]), np.array([0]),
                                    np.array([0.9]), names=["square"])
    colour = list(visualize.PALETTE[0])
    assert out[35, 20].tolist() == colour  # bottom edge
    assert out[25, 10].tolist() == colour  # left edge
    assert out[25, 20].tolist() == [0, 0, 0]  # inside stays untouched
    # below min_score nothing is drawn
    assert visualize.draw_detections(image, np.array([[1., 1., 5., 5.]]), np.array([0]),
                                     np.array([0.1]), min_score=0.5).max() == 0
