"""Tests of cornernet_tf.data.augment: boxes follow the pixels, reference crop, flip."""

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.data import augment
from cornernet_tf.data.augment import train_augment

NO_COLOUR = dict(color_jitter=0.0, lighting_std=0.0)


def _box_image(height, width, box):
    """uint8 image, zero except the pixels [x1, x2) x [y1, y2) of `box` set to 255 in red."""
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = [int(v) for v in box]
    image[y1:y2, x1:x2, 0] = 255
    return image


def _mask_extent(image):
    """(x1, y1, x2, y2) edges of the pixels above half intensity in the red channel."""
    ys, xs = np.nonzero(image[..., 0] > 127.5)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_box_follows_mask_through_crop_resize_flip():
    rng = np.random.default_rng(0)
    checked = flipped = 0
    for trial in range(24):
        height, width = rng.integers(90, 220, 2)
        x1, y1 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        box = [x1, y1, rng.integers(x1 + 20, width), rng.integers(y1 + 20, height)]
        image = _box_image(height, width, box)
        args = (image, np.array([box], np.float32), np.array([3], np.int32), (96, 112))
        seed = tf.constant([trial, 17])
        out, boxes, classes = train_augment(*args, crop_border=32, seed=seed, **NO_COLOUR)
        out, boxes = out.numpy(), boxes.numpy()
        # The same seed without flipping gives the same crop: a difference means a flip.
        unflipped = train_augment(*args, crop_border=32, seed=seed, flip=False, **NO_COLOUR)[0]
        assert out.shape == (96, 112, 3) and out.dtype == np.float32
        extent = _mask_extent(out)
        if classes.numpy()[0] == -1:
            # Box left the crop: nothing of it (beyond a resampling fringe) is visible.
            np.testing.assert_array_equal(boxes[0], [-1, -1, -1, -1])
            assert extent is None or min(extent[2] - extent[0], extent[3] - extent[1]) <= 2
            continue
        checked += 1
        flipped += not np.array_equal(out, unflipped.numpy())
        assert classes.numpy()[0] == 3
        assert (boxes[0] >= 0).all() and boxes[0][2] <= 111 and boxes[0][3] <= 95
        # Tolerance 2.5 px: the flip maps pixel indices (x' = W - 1 - x) while the mask
        # extent is in edges (1 px); bilinear resampling moves an edge by up to 0.5 px; and
        # the reference window [c - n // 2, c + n // 2) leaves the last canvas column/row of
        # an odd-sided canvas empty, cutting the mask of a box clipped there (<= 1 px).
        np.testing.assert_allclose(boxes[0], extent, atol=2.5, err_msg=f"trial {trial}")
    assert checked >= 12 and 1 <= flipped < checked  # both cases exercised


def test_reference_crop_is_exact_when_centre_is_forced():
    # Image 257 x 257 with border 128: 257 - 128 > 128, so b = 128 and the centre range
    # [128, 257 - 128) holds one value, 128. Input 100 and scale 1 give a 100 x 100
    # canvas; the window is [128 - 50, 128 + 50) = [78, 178) and, being the input size
    # already, the bilinear resize is the identity. Boxes shift by 50 - 128 = -78.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (257, 257, 3)).astype(np.uint8)
    boxes = np.array([[100, 90, 150, 160], [0, 0, 50, 50], [170, 60, 240, 120],
                      [-1, -1, -1, -1]], np.float32)
    classes = np.array([0, 1, 2, -1], np.int32)
    out, out_boxes, out_classes = train_augment(
        image, boxes, classes, 100, crop_scales=(1.0,), crop_border=128, flip=False,
        seed=tf.constant([5, 6]), **NO_COLOUR)
    np.testing.assert_allclose(out.numpy(), image[78:178, 78:178].astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(out_boxes.numpy(), [
        [22, 12, 72, 82],  # inside: shifted by -78
        [-1, -1, -1, -1],  # [0, 50) lies left of the window: gone
        [92, 0, 99, 42],  # [92, -18, 162, 42] clipped to [0, 99]
        [-1, -1, -1, -1]])  # padding stays padding
    np.testing.assert_array_equal(out_classes.numpy(), [0, -1, 2, -1])


def test_crop_border_halving_matches_reference_rule():
    # Reference _get_border: i = 1; while size - border // i <= border // i: i *= 2.
    def reference(border, size):
        i = 1
        while size - border // i <= border // i:
            i *= 2
        return border // i

    for border in (128, 100, 32, 7, 0):
        for size in (1, 2, 3, 50, 100, 129, 256, 257, 640):
            got = int(augment._border(border, tf.constant(size)))
            assert got == reference(border, size), (border, size)


def test_no_random_crop_pastes_whole_image_centred():
    # 60 x 100 image, square input 50: canvas 100 x 100, the image's centre row 30 on
    # canvas row 50 -> rows shift by 20; then resize 100 -> 50 halves everything.
    image = _box_image(60, 100, [10, 10, 90, 50])
    out, boxes, _ = train_augment(image, np.array([[10, 10, 90, 50]], np.float32),
                                  np.array([0], np.int32), 50, random_crop=False, flip=False,
                                  **NO_COLOUR)
    np.testing.assert_allclose(boxes.numpy()[0], [5, 15, 45, 35], atol=1e-5)
    np.testing.assert_allclose(_mask_extent(out.numpy()), [5, 15, 45, 35], atol=1)


def test_flip_in_augment_mirrors_image_and_boxes():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    boxes = np.array([[3, 5, 20, 40], [-1, -1, -1, -1]], np.float32)
    seen = set()
    for s in range(8):
        out, out_boxes, _ = train_augment(image, boxes, np.array([1, -1]), 64,
                                          random_crop=False, seed=tf.constant([s, 0]), **NO_COLOUR)
        out = out.numpy()
        if np.allclose(out, image[:, ::-1], atol=1e-3):
            seen.add("flip")
            np.testing.assert_allclose(out_boxes.numpy(), [[43, 5, 60, 40], [-1, -1, -1, -1]])
        else:
            seen.add("keep")
            np.testing.assert_allclose(out, image, atol=1e-3)
            np.testing.assert_allclose(out_boxes.numpy(), boxes)
    assert seen == {"flip", "keep"}


def test_deterministic_with_seed():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (150, 120, 3)).astype(np.uint8)
    boxes = np.array([[10, 20, 100, 130]], np.float32)
    classes = np.array([0], np.int32)
    run = lambda s: train_augment(image, boxes, classes, 64, crop_border=16,  # noqa: E731
                                  seed=tf.constant(s))
    a, b, c = run([1, 2]), run([1, 2]), run([9, 9])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_colour_jitter_keeps_gray_gray_and_stays_in_range():
    # On a uniform gray image contrast and saturation blend with the same gray, so only
    # brightness acts: the output is gray * a, a in [0.6, 1.4].
    image = np.full((32, 32, 3), 100, np.uint8)
    ratios = []
    for s in range(12):
        out, _, _ = train_augment(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                  32, random_crop=False, lighting_std=0.0, seed=tf.constant([s, 3]))
        out = out.numpy()
        np.testing.assert_allclose(out, out[0, 0, 0], rtol=1e-5)
        ratios.append(out[0, 0, 0] / 100)
    assert 0.6 - 1e-5 <= min(ratios) and max(ratios) <= 1.4 + 1e-5
    assert max(ratios) - min(ratios) > 0.2  # the factors do vary


def test_lighting_adds_one_pca_colour_shift():
    # Lighting only: out - in is one RGB vector for every pixel, delta / 255 = V (lambda *
    # alpha); recovering alpha with the orthonormal V must give N(0, 0.1)-sized numbers.
    image = np.full((16, 16, 3), 128, np.uint8)
    out, _, _ = train_augment(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), 16,
                              random_crop=False, flip=False, color_jitter=0.0, lighting_std=0.1,
                              seed=tf.constant([4, 2]))
    delta = out.numpy() - 128.0
    np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape), atol=1e-4)
    vectors = np.array(augment.EIGEN_VECTORS_RGB)
    alpha = vectors.T @ (delta[0, 0] / 255.0) / np.array(augment.EIGEN_VALUES)
    assert np.abs(alpha).max() < 0.6 and np.abs(alpha).max() > 0


def test_eigenvectors_are_reference_bgr_rows_reversed():
    # Reference (princeton-vl/CornerNet db/coco.py), rows B, G, R; columns = components.
    bgr = np.array([[-0.58752847, -0.69563484, 0.41340352],
                    [-0.5832747, 0.00994535, -0.81221408],
                    [-0.56089297, 0.71832671, 0.41158938]])
    np.testing.assert_array_equal(np.array(augment.EIGEN_VECTORS_RGB), bgr[::-1])
    np.testing.assert_allclose(bgr.T @ bgr, np.eye(3), atol=1e-6)  # orthonormal columns


def test_graph_mode_dynamic_image_in_dataset():
    images = [np.zeros((h, w, 3), np.uint8) for h, w in ((70, 90), (130, 60))]
    boxes = [np.array([[5, 5, 40, 40]], np.float32),
             np.array([[1, 2, 50, 100], [-1] * 4], np.float32)]
    classes = [np.array([0], np.int32), np.array([1, -1], np.int32)]
    ds = tf.data.Dataset.from_generator(
        lambda: zip(images, boxes, classes),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)))
    ds = ds.map(lambda i, b, c: train_augment(i, b, c, (48, 64), crop_border=16))
    assert ds.element_spec[0].shape == (48, 64, 3)
    for (image, out_boxes, out_classes), c in zip(ds, classes):
        assert image.shape == (48, 64, 3)
        assert out_boxes.shape == (len(c), 4) and out_classes.shape == (len(c),)
        assert out_classes.numpy()[-1] == c[-1] or out_classes.numpy()[-1] == -1


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        train_augment(np.zeros((10, 10), np.uint8), np.zeros((0, 4), np.float32),
                      np.zeros((0,), np.int32), 8)
    with pytest.raises(ValueError, match="color_jitter"):
        train_augment(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4), np.float32),
                      np.zeros((0,), np.int32), 8, color_jitter=1.5)
