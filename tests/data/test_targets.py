"""Tests of cornernet_tf.data.targets against an independent NumPy reading of SPEC.md."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.data.targets import encode_targets, gaussian_radius
from cornernet_tf.keys import TARGET_KEYS


# ----------------------------------------------------------------------------------------
# Independent NumPy implementation of SPEC.md "Ground truth" (loops, float64, slicing).
# ----------------------------------------------------------------------------------------

def _np_radius(h, w, t=0.3):
    """SPEC.md radius formula, written out again with numpy."""
    r1 = ((h + w) - np.sqrt((h + w) ** 2 - 4 * w * h * (1 - t) / (1 + t))) / 2
    r2 = (2 * (h + w) - np.sqrt(4 * (h + w) ** 2 - 16 * (1 - t) * w * h)) / 8
    r3 = (-2 * t * (h + w)
          + np.sqrt(4 * t ** 2 * (h + w) ** 2 + 16 * t * (1 - t) * w * h)) / (8 * t)
    return max(0, int(min(r1, r2, r3)))


def _np_draw(heatmap, cx, cy, radius):
    """(2R+1)^2 Gaussian, sigma (2R+1)/6, max-written at (cy, cx), cut at the borders."""
    d = 2 * radius + 1
    sigma = d / 6
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    h, w = heatmap.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y, x = cy + dy, cx + dx
            if 0 <= y < h and 0 <= x < w:
                heatmap[y, x] = max(heatmap[y, x], g[dy + radius, dx + radius])


def _np_targets(boxes, classes, num_classes, input_hw, output_hw, max_objects):
    in_h, in_w = input_hw
    out_h, out_w = output_hw
    rx, ry = out_w / in_w, out_h / in_h
    out = {
        "tl_heatmap": np.zeros((num_classes, out_h, out_w)),
        "br_heatmap": np.zeros((num_classes, out_h, out_w)),
        "tl_index": np.zeros(max_objects, np.int64), "br_index": np.zeros(max_objects, np.int64),
        "tl_offset": np.zeros((max_objects, 2)), "br_offset": np.zeros((max_objects, 2)),
        "mask": np.zeros(max_objects),
    }
    count = 0
    for box, c in zip(np.asarray(boxes, np.float64), classes):
        x1, x2 = np.clip(box[[0, 2]], 0, in_w - 1)
        y1, y2 = np.clip(box[[1, 3]], 0, in_h - 1)
        if c < 0 or x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        count += 1
        k = count - 1
        radius = _np_radius(math.ceil((y2 - y1) * ry), math.ceil((x2 - x1) * rx))
        for name, x, y in (("tl", x1, y1), ("br", x2, y2)):
            fx, fy = x * rx, y * ry
            ix, iy = int(fx), int(fy)
            # every object is drawn; only the first max_objects get a slot
            _np_draw(out[f"{name}_heatmap"][c], ix, iy, radius)
            if k < max_objects:
                out[f"{name}_offset"][k] = (fx - ix, fy - iy)
                out[f"{name}_index"][k] = iy * out_w + ix
        if k < max_objects:
            out["mask"][k] = 1
    out["tl_heatmap"] = out["tl_heatmap"].transpose(1, 2, 0)
    out["br_heatmap"] = out["br_heatmap"].transpose(1, 2, 0)
    out["num_objects"] = count
    return out


def _random_boxes(rng, n, in_h, in_w, allow_outside=True):
    lo = -20 if allow_outside else 0
    x1 = rng.uniform(lo, in_w - 2, n)
    y1 = rng.uniform(lo, in_h - 2, n)
    x2 = x1 + rng.uniform(1, in_w * 0.8, n)
    y2 = y1 + rng.uniform(1, in_h * 0.8, n)
    return np.stack([x1, y1, x2, y2], 1).astype(np.float32)


def _assert_matches(got, want):
    for key in ("tl_heatmap", "br_heatmap", "tl_offset", "br_offset", "mask"):
        np.testing.assert_allclose(got[key].numpy(), want[key], atol=1e-6, err_msg=key)
    for key in ("tl_index", "br_index"):
        np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=key)
    assert int(got["num_objects"]) == want["num_objects"]


# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw, expected", [
    # SPEC.md sample values (h x w -> R).
    ((8, 8), 1), ((16, 16), 3), ((32, 32), 7), ((64, 64), 14), ((128, 128), 28),
    ((16, 64), 5), ((64, 16), 5),  # the formula is symmetric in h and w
])
def test_radius_sample_values(hw, expected):
    assert int(gaussian_radius(*hw)) == expected
    h, w = (tf.constant(float(v), tf.float64) for v in hw)
    as_tensor = gaussian_radius(h, w)
    assert int(as_tensor.numpy()) == expected


def test_radius_rejects_bad_overlap():
    with pytest.raises(ValueError, match="min_overlap"):
        gaussian_radius(8, 8, min_overlap=1.5)


@pytest.mark.parametrize("input_hw, output_hw, num_classes", [
    ((511, 511), (128, 128), 3),  # CornerNet511: ratio 128/511, not 1/4
    ((67, 91), (17, 23), 4),  # non-square, catches swapped axes
])
def test_matches_numpy_reference_on_random_boxes(input_hw, output_hw, num_classes):
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 12, *input_hw)
    classes = rng.integers(0, num_classes, 12).astype(np.int32)
    got = encode_targets(boxes, classes, num_classes, input_hw, output_hw, max_objects=16)
    _assert_matches(got, _np_targets(boxes, classes, num_classes, input_hw, output_hw, 16))
    assert got["tl_heatmap"].shape == (*output_hw, num_classes)
    assert got["tl_offset"].shape == (16, 2)


def test_single_box_golden_values():
    # Box (100.3, 40.9)-(300.7, 200.2) at 511 -> 128, r = 128/511:
    # TL: 100.3 r = 25.1241 -> cell 25, offset 0.1241; 40.9 r = 10.2450 -> cell 10.
    # BR: 300.7 r = 75.3237 -> cell 75; 200.2 r = 50.1480 -> cell 50.
    # Size: w = ceil(200.4 r) = ceil(50.20) = 51, h = ceil(159.3 r) = ceil(39.90) = 40;
    # with h + w = 91, t = 0.3: r1 = (91 - sqrt(8281 - 8160 * 0.7 / 1.3)) / 2 = 14.33,
    # r2 = (182 - sqrt(33124 - 11.2 * 2040)) / 8 = 10.08, r3 = (-54.6 + sqrt(2981.16
    # + 3.36 * 2040)) / 2.4 = 18.57 -> R = int(10.08) = 10.
    r = 128 / 511
    boxes = np.array([[100.3, 40.9, 300.7, 200.2]], np.float32)
    b = boxes.astype(np.float64)[0]
    got = encode_targets(boxes, np.array([2], np.int32), 3, 511, 128, max_objects=4)
    assert got["tl_index"].numpy()[0] == 10 * 128 + 25
    assert got["br_index"].numpy()[0] == 50 * 128 + 75
    np.testing.assert_allclose(got["tl_offset"].numpy()[0], [b[0] * r - 25, b[1] * r - 10],
                               atol=1e-6)
    np.testing.assert_allclose(got["br_offset"].numpy()[0], [b[2] * r - 75, b[3] * r - 50],
                               atol=1e-6)
    np.testing.assert_array_equal(got["mask"].numpy(), [1, 0, 0, 0])
    tl = got["tl_heatmap"].numpy()
    assert tl[10, 25, 2] == 1.0 and tl[..., :2].max() == 0.0
    # R = 10: sigma = 21 / 6; the cell 10 right and 10 down holds exp(-200 / (2 sigma^2)),
    # the cell 11 to the right is outside the square.
    sigma = 21 / 6
    np.testing.assert_allclose(tl[20, 35, 2], np.exp(-200 / (2 * sigma ** 2)), rtol=1e-5)
    np.testing.assert_allclose(tl[10, 15, 2], np.exp(-100 / (2 * sigma ** 2)), rtol=1e-5)
    assert tl[10, 36, 2] == 0.0 and tl[10, 14, 2] == 0.0


def test_overlapping_same_class_boxes_keep_both_peaks():
    boxes = np.array([[40, 40, 200, 200], [48, 44, 210, 190]], np.float32)
    classes = np.array([1, 1], np.int32)
    got = encode_targets(boxes, classes, 2, 511, 128, max_objects=4)
    want = _np_targets(boxes, classes, 2, (511, 511), (128, 128), 4)
    _assert_matches(got, want)
    tl = got["tl_heatmap"].numpy()[..., 1]
    cells = [(int(y * 128 / 511), int(x * 128 / 511)) for x, y in boxes[:, :2]]
    assert cells[0] != cells[1]
    assert tl[cells[0]] == 1.0 and tl[cells[1]] == 1.0  # max, not overwrite or sum
    assert (tl == 1.0).sum() == 2
    assert tl.max() == 1.0


def test_zero_boxes():
    got = encode_targets(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), 3, 64, 16, 8)
    assert got["tl_heatmap"].shape == (16, 16, 3)
    for key in ("tl_heatmap", "br_heatmap", "tl_offset", "br_offset", "mask"):
        assert not got[key].numpy().any(), key
    assert int(got["num_objects"]) == 0


def test_more_boxes_than_max_objects():
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 11, 64, 64, allow_outside=False)
    classes = rng.integers(0, 2, 11).astype(np.int32)
    got = encode_targets(boxes, classes, 2, 64, 16, max_objects=4)
    assert got["mask"].numpy().sum() == 4
    assert int(got["num_objects"]) == 11
    _assert_matches(got, _np_targets(boxes, classes, 2, (64, 64), (16, 16), 4))
    # The first four objects get the slots; all eleven corners are heatmap peaks (no object
    # beyond the slots is trained as background).
    first_four = _np_targets(boxes[:4], classes[:4], 2, (64, 64), (16, 16), 4)
    for key in ("tl_index", "br_index", "tl_offset", "br_offset", "mask"):
        np.testing.assert_allclose(got[key].numpy(), first_four[key], atol=1e-6, err_msg=key)
    ix, iy = (boxes[:, 0] * 16 / 64).astype(int), (boxes[:, 1] * 16 / 64).astype(int)
    np.testing.assert_allclose(got["tl_heatmap"].numpy()[iy, ix, classes], 1.0)


def test_many_objects_are_drawn_in_chunks_like_one_by_one():
    """More objects than one drawing chunk (64): the heatmap of 150 objects on 3 slots."""
    rng = np.random.default_rng(11)
    boxes = _random_boxes(rng, 150, 96, 80)
    classes = rng.integers(0, 3, 150).astype(np.int32)
    got = encode_targets(boxes, classes, 3, (96, 80), (24, 20), max_objects=3)
    _assert_matches(got, _np_targets(boxes, classes, 3, (96, 80), (24, 20), 3))


def test_padding_and_degenerate_rows_are_ignored():
    rng = np.random.default_rng(5)
    real = _random_boxes(rng, 3, 64, 64, allow_outside=False)
    real_classes = np.array([0, 2, 1], np.int32)
    padded = np.concatenate([
        [[-1, -1, -1, -1]], real[:2], [[10, 10, 10, 30]],  # x2 == x1
        [[5, 5, 20, 20]], real[2:], [[-1, -1, -1, -1]]]).astype(np.float32)
    padded_classes = np.array([-1, 0, 2, 1, -1, 1, -1], np.int32)  # [5,5,20,20] has class -1
    got = encode_targets(padded, padded_classes, 3, 64, 16, max_objects=8)
    _assert_matches(got, _np_targets(real, real_classes, 3, (64, 64), (16, 16), 8))
    assert int(got["num_objects"]) == 3


def test_box_clipped_to_input():
    # x2 beyond the image clips to 510 (cell int(510 r) = 127, offset 510 r - 127).
    box = np.array([[-30, 100, 900, 200]], np.float32)
    got = encode_targets(box, np.array([0]), 1, 511, 128, 2)
    r = 128 / 511
    assert got["tl_index"].numpy()[0] == int(100 * r) * 128 + 0
    assert got["br_index"].numpy()[0] == int(200 * r) * 128 + 127
    np.testing.assert_allclose(got["br_offset"].numpy()[0, 0], 510 * r - 127, atol=1e-6)


def test_graph_mode_dynamic_n_in_dataset():
    rng = np.random.default_rng(11)
    sets = [_random_boxes(rng, n, 64, 96) for n in (0, 3, 7)]
    classes = [rng.integers(0, 2, len(b)).astype(np.int32) for b in sets]
    ds = tf.data.Dataset.from_generator(
        lambda: zip(sets, classes),
        output_signature=(tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)))
    ds = ds.map(lambda b, c: encode_targets(b, c, 2, (64, 96), (16, 24), max_objects=8))
    assert set(ds.element_spec) == set(TARGET_KEYS)
    assert ds.element_spec["tl_heatmap"].shape == (16, 24, 2)
    assert ds.element_spec["tl_index"].shape == (8,)
    for got, b, c in zip(ds, sets, classes):
        _assert_matches(got, _np_targets(b, c, 2, (64, 96), (16, 24), 8))


def test_class_out_of_range_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        encode_targets(np.array([[0, 0, 30, 30]], np.float32), np.array([5]), 3, 64, 16)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        encode_targets(np.zeros((2, 5), np.float32), np.zeros((2,), np.int32), 3, 64, 16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same N"):
        encode_targets(np.zeros((2, 4), np.float32), np.zeros((3,), np.int32), 3, 64, 16)


def test_ignore_regions_mark_their_cells_in_their_class_channel():
    # 16x16 input, 4x4 grid (r = 1/4). Object of class 1 at [4, 4, 12, 12]: 2x2 cells,
    # radius int(gaussian_radius(2, 2)) = 0, so its TL corner is the single cell (1, 1) and
    # its BR corner the cell (3, 3). Ignore region of class 1 at [4, 4, 11, 8]: cells x from
    # floor(1) = 1 to floor(2.75) = 2, y from floor(1) = 1 to floor(2) = 2. Padding row (-1).
    t = encode_targets(tf.constant([[4.0, 4.0, 12.0, 12.0]]), tf.constant([1]), 2, 16, 4,
                       max_objects=2,
                       ignore_boxes=tf.constant([[4.0, 4.0, 11.0, 8.0], [-1, -1, -1, -1]]),
                       ignore_classes=tf.constant([1, -1]))
    expected_tl = np.zeros((4, 4, 2), np.float32)
    expected_tl[1:3, 1:3, 1] = -1.0  # ignored (HEATMAP_IGNORE) ...
    expected_tl[1, 1, 1] = 1.0  # ... except the object's corner, which stays a corner
    np.testing.assert_array_equal(t["tl_heatmap"].numpy(), expected_tl)
    expected_br = np.zeros((4, 4, 2), np.float32)
    expected_br[1:3, 1:3, 1] = -1.0
    expected_br[3, 3, 1] = 1.0
    np.testing.assert_array_equal(t["br_heatmap"].numpy(), expected_br)
    assert t["mask"].numpy().tolist() == [1.0, 0.0]  # ignore regions take no object slot
