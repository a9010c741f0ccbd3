"""Tests of cornernet_tf.inference.decode: hand-built heads with known corners, soft-NMS against an
independent numpy implementation of the reference's greedy Gaussian soft-NMS, flip merge,
TFLite builtins conversion."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.config.schema import DecodeConfig
from cornernet_tf.inference.decode import (batched_soft_nms, decode, decode_pairs, decode_with_flip,
                                           merge_detections)

BACKGROUND_LOGIT = -10.0  # sigmoid = 4.5e-5, below the 0.001 score floor
FAR_EMBEDDING = 100.0  # background corners never group with an object's corners


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def make_heads(images, h=16, w=16, c=3, background=BACKGROUND_LOGIT):
    """Heads for a batch; images: per image a list of objects
    (cls, (tl_x, tl_y), (br_x, br_y), (e_tl, e_br), logit), corners in continuous
    output-grid coordinates: the peak goes to cell floor(.), the offset is the remainder."""
    b = len(images)
    heads = {
        "tl_heatmap": np.full((b, h, w, c), background, np.float32),
        "br_heatmap": np.full((b, h, w, c), background, np.float32),
        "tl_embedding": np.full((b, h, w, 1), FAR_EMBEDDING, np.float32),
        "br_embedding": np.full((b, h, w, 1), -FAR_EMBEDDING, np.float32),
        "tl_offset": np.zeros((b, h, w, 2), np.float32),
        "br_offset": np.zeros((b, h, w, 2), np.float32),
    }
    for i, objects in enumerate(images):
        for cls, tl, br, (e_tl, e_br), logit in objects:
            for corner, (x, y), e in (("tl", tl, e_tl), ("br", br, e_br)):
                ix, iy = int(math.floor(x)), int(math.floor(y))
                heads[f"{corner}_heatmap"][i, iy, ix, cls] = logit
                heads[f"{corner}_embedding"][i, iy, ix, 0] = e
                heads[f"{corner}_offset"][i, iy, ix] = (x - ix, y - iy)
    return heads


def as_numpy(result):
    return {key: np.asarray(value) for key, value in result.items()}


# Three objects; A and C share class 0 but not their embeddings (distance 3 > 0.5), and
# A's box (x 2.25..8.75) does not overlap C's (x 9.5..14.5), so no soft-NMS decay:
# each scores exactly (s + s) / 2 = sigmoid(logit).
OBJ_A = (0, (2.25, 3.5), (8.75, 10.125), (0.0, 0.2), 4.0)
OBJ_B = (2, (5.5, 1.0), (12.0, 14.5), (1.0, 1.0), 3.0)
OBJ_C = (0, (9.5, 9.25), (14.5, 13.75), (3.0, 3.1), 2.0)
KW = dict(k=10, num_pairs=50, max_detections=8)
P = DecodeConfig(**KW)


def expected_rows(objects):
    """(box, score, class) per object, by descending score."""
    rows = [(list(tl) + list(br), sigmoid(logit), cls) for cls, tl, br, _, logit in objects]
    return sorted(rows, key=lambda r: -r[1])


def check_image(result, b, objects, n=KW["max_detections"]):
    rows = expected_rows(objects)
    m = len(rows)
    assert result["num_detections"][b] == m
    np.testing.assert_allclose(result["boxes"][b, :m], [r[0] for r in rows], atol=1e-6)
    np.testing.assert_allclose(result["scores"][b, :m], [r[1] for r in rows], rtol=1e-6)
    np.testing.assert_array_equal(result["classes"][b, :m], [r[2] for r in rows])
    # padding: boxes -1, scores 0, classes -1
    np.testing.assert_array_equal(result["boxes"][b, m:], -np.ones((n - m, 4)))
    np.testing.assert_array_equal(result["scores"][b, m:], np.zeros(n - m))
    np.testing.assert_array_equal(result["classes"][b, m:], -np.ones(n - m))


def test_decodes_three_objects_exactly():
    result = as_numpy(decode(make_heads([[OBJ_A, OBJ_B, OBJ_C]]), P))
    assert result["boxes"].shape == (1, 8, 4) and result["boxes"].dtype == np.float32
    assert result["scores"].shape == (1, 8) and result["scores"].dtype == np.float32
    assert result["classes"].shape == (1, 8) and result["classes"].dtype == np.int32
    assert result["num_detections"].shape == (1,) and result["num_detections"].dtype == np.int32
    check_image(result, 0, [OBJ_A, OBJ_B, OBJ_C])


def test_batch_of_two_static_and_dynamic_batch_agree():
    heads = make_heads([[OBJ_A, OBJ_B], [OBJ_C]])
    eager = as_numpy(decode(heads, P))  # static batch: unrolled soft-NMS
    spec = {key: tf.TensorSpec([None] + list(v.shape[1:]), tf.float32)
            for key, v in heads.items()}
    fn = tf.function(lambda x: decode(x, P), input_signature=[spec])  # tf.map_fn path
    traced = as_numpy(fn(heads))
    for result in (eager, traced):
        check_image(result, 0, [OBJ_A, OBJ_B])
        check_image(result, 1, [OBJ_C])


@pytest.mark.parametrize("objects, expected", [
    # classes differ: TL says class 0, BR says class 1
    ([(0, (2.5, 2.5), (9.5, 9.5), (0.0, 0.0), 3.0, 1)], 0),
    # |e_tl - e_br| = 0.6 > 0.5
    ([(0, (2.5, 2.5), (9.5, 9.5), (0.0, 0.6), 3.0, 0)], 0),
    # |e_tl - e_br| = 0.4 <= 0.5: grouped (control for the case above)
    ([(0, (2.5, 2.5), (9.5, 9.5), (0.0, 0.4), 3.0, 0)], 1),
    # br left of tl
    ([(0, (8.5, 2.5), (4.5, 9.5), (0.0, 0.0), 3.0, 0)], 0),
    # br above tl
    ([(0, (2.5, 8.5), (9.5, 4.5), (0.0, 0.0), 3.0, 0)], 0),
])
def test_rejects_invalid_pairs(objects, expected):
    # The BR corner's class is the last field; build TL and BR separately.
    heads = make_heads([[]], c=2)
    for tl_cls, tl, br, (e_tl, e_br), logit, br_cls in objects:
        heads["tl_heatmap"][0, int(tl[1]), int(tl[0]), tl_cls] = logit
        heads["tl_embedding"][0, int(tl[1]), int(tl[0]), 0] = e_tl
        heads["br_heatmap"][0, int(br[1]), int(br[0]), br_cls] = logit
        heads["br_embedding"][0, int(br[1]), int(br[0]), 0] = e_br
    result = as_numpy(decode(heads, P))
    assert result["num_detections"][0] == expected


def test_heatmap_nms_keeps_only_local_maxima():
    # Two TL peaks of class 0 in neighbouring cells (logits 4 and 3), one BR corner; all
    # embeddings 0. The 3x3 max-pool NMS removes the weaker TL corner -> one box; with a
    # 1x1 kernel both TL corners pair with the BR corner -> two boxes.
    heads = make_heads([[(0, (2.0, 2.0), (9.0, 9.0), (0.0, 0.0), 4.0)]], c=1)
    heads["tl_heatmap"][0, 2, 3, 0] = 3.0
    heads["tl_embedding"][0, 2, 3, 0] = 0.0
    assert as_numpy(decode(heads, DecodeConfig(nms_kernel=3, **KW)))["num_detections"][0] == 1
    result = as_numpy(decode(heads, DecodeConfig(nms_kernel=1, **KW)))
    assert result["num_detections"][0] == 2
    # the second box (3, 2, 9, 9) vs the first (2, 2, 9, 9): IoU = 42 / 49; its pair score
    # (sigmoid(3) + sigmoid(4)) / 2 is decayed by exp(-IoU^2 / 0.5)
    iou = (6 * 7) / (7 * 7)
    s2 = (sigmoid(3.0) + sigmoid(4.0)) / 2 * math.exp(-iou ** 2 / 0.5)
    np.testing.assert_allclose(result["scores"][0, :2], [sigmoid(4.0), s2], rtol=1e-5)


def test_nothing_found_keeps_fixed_shapes():
    heads = make_heads([[], []], background=-20.0)
    result = as_numpy(decode(heads, P))
    np.testing.assert_array_equal(result["num_detections"], [0, 0])
    np.testing.assert_array_equal(result["boxes"], -np.ones((2, 8, 4)))
    np.testing.assert_array_equal(result["scores"], np.zeros((2, 8)))
    np.testing.assert_array_equal(result["classes"], -np.ones((2, 8)))


def test_decode_pairs_marks_rejected_pairs():
    pairs = as_numpy(decode_pairs(make_heads([[OBJ_A]]), DecodeConfig(k=4, num_pairs=16)))
    assert pairs["boxes"].shape == (1, 16, 4)
    np.testing.assert_allclose(pairs["boxes"][0, 0], [2.25, 3.5, 8.75, 10.125], atol=1e-6)
    assert pairs["classes"][0, 0] == 0
    # Top 4 corners per type: A's corner and 3 background cells. Every pair with a background
    # corner is rejected by its embedding (TL background 100, BR background -100), so 1 of the
    # 16 pairs is valid; the rest have score 0 and class -1.
    np.testing.assert_allclose(pairs["scores"][0, 0], sigmoid(4.0), rtol=1e-6)
    np.testing.assert_array_equal(pairs["scores"][0, 1:], np.zeros(15))
    np.testing.assert_array_equal(pairs["classes"][0, 1:], -np.ones(15))


# ------------------------------------------------------------------------------------
# Soft-NMS against an independent implementation of the reference's greedy loop.

def numpy_soft_nms(boxes, scores, classes, sigma=0.5, floor=0.001):
    """Reference Gaussian soft-NMS, per class: take the best box, weight every other box by
    exp(-IoU^2 / sigma), drop boxes below the floor, repeat. Continuous IoU (no +1).
    Returns (index, final score) rows sorted by descending score."""
    kept = []
    for c in np.unique(classes):
        live = {i: float(scores[i]) for i in np.flatnonzero(classes == c)
                if scores[i] > floor}
        while live:
            best = max(live, key=live.get)
            kept.append((best, live.pop(best)))
            for j in list(live):
                live[j] *= math.exp(-iou(boxes[best], boxes[j]) ** 2 / sigma)
                if live[j] <= floor:
                    del live[j]
    return sorted(kept, key=lambda r: -r[1])


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def random_candidates(rng, n=60, classes=3, size=40.0):
    # clustered boxes so that many overlap
    centres = rng.uniform(5, size - 5, (6, 2))
    c = centres[rng.integers(0, 6, n)] + rng.normal(0, 2.0, (n, 2))
    wh = rng.uniform(3, 12, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    scores[:5] = 0.0005  # below the floor from the start
    return boxes, scores, rng.integers(0, classes, n).astype(np.int32)


def by_box(boxes, scores, classes, count):
    return {(int(classes[i]),) + tuple(np.round(boxes[i], 4)): float(scores[i])
            for i in range(count)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_nms_matches_numpy_reference(seed):
    boxes, scores, classes = random_candidates(np.random.default_rng(seed))
    expected = numpy_soft_nms(boxes, scores, classes)
    result = as_numpy(batched_soft_nms(boxes[None], scores[None], classes[None],
                                       DecodeConfig(max_detections=100)))
    count = result["num_detections"][0]
    assert count == len(expected)
    got = by_box(result["boxes"][0], result["scores"][0], result["classes"][0], count)
    want = {(int(classes[i]),) + tuple(np.round(boxes[i], 4)): s for i, s in expected}
    assert got.keys() == want.keys()
    for key in want:  # class tiling moves boxes to ~1e3: float32 IoU error ~1e-5
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6)
    assert np.all(np.diff(result["scores"][0, :count]) <= 1e-6)  # descending
    # top-N cut: the N best final scores
    top = as_numpy(batched_soft_nms(boxes[None], scores[None], classes[None],
                                    DecodeConfig(max_detections=10)))
    np.testing.assert_allclose(top["scores"][0], [s for _, s in expected[:10]], rtol=1e-4)


def test_soft_nms_convention_closed_form():
    # [0,0,10,10] and [0,0,10,5]: IoU = 50 / 100 = 0.5; reference weight exp(-0.5^2 / 0.5).
    # The same boxes in class 1 do not interact with class 0.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [0, 0, 10, 5]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 1], np.int32)
    result = as_numpy(batched_soft_nms(boxes[None], scores[None], classes[None],
                                       DecodeConfig(max_detections=4)))
    w = math.exp(-0.25 / 0.5)
    np.testing.assert_allclose(result["scores"][0], [0.9, 0.7, 0.8 * w, 0.6 * w], rtol=1e-6)
    np.testing.assert_array_equal(result["classes"][0], [0, 1, 0, 1])


def test_merge_detections_equals_soft_nms_of_the_union():
    boxes, scores, classes = random_candidates(np.random.default_rng(7))
    sets = [{"boxes": boxes[None, :25], "scores": scores[None, :25],
             "classes": classes[None, :25]},
            {"boxes": boxes[None, 25:], "scores": scores[None, 25:],
             "classes": classes[None, 25:]}]
    result = as_numpy(merge_detections(sets, DecodeConfig(max_detections=100)))
    expected = numpy_soft_nms(boxes, scores, classes)
    assert result["num_detections"][0] == len(expected)
    np.testing.assert_allclose(result["scores"][0, :len(expected)],
                               [s for _, s in expected], rtol=1e-4)
    with pytest.raises(ValueError, match="lacks"):
        merge_detections([{"boxes": boxes[None]}])


# ------------------------------------------------------------------------------------
# Flip test.

def test_flipped_detection_maps_back():
    w = 16
    box = (3.25, 2.5, 9.75, 11.0)  # original view, output-grid units
    # the same object in the flipped view: x -> w - x, so x1' = 16 - 9.75, x2' = 16 - 3.25
    flipped = (0, (w - box[2], box[1]), (w - box[0], box[3]), (0.0, 0.0), 3.0)
    result = as_numpy(decode_with_flip(make_heads([[]], c=1, background=-20.0),
                                       make_heads([[flipped]], c=1), P))
    assert result["num_detections"][0] == 1
    np.testing.assert_allclose(result["boxes"][0, 0], box, atol=1e-6)
    np.testing.assert_allclose(result["scores"][0, 0], sigmoid(3.0), rtol=1e-6)


def test_flip_merge_pools_both_views_and_soft_nms_decays_the_weaker():
    w = 16
    plain_box = (3.25, 2.5, 9.75, 11.0)
    flip_box = (3.5, 2.5, 9.75, 11.0)  # the flipped view sees it a quarter cell narrower
    plain = (0, plain_box[:2], plain_box[2:], (0.0, 0.0), 3.0)
    mirrored = (0, (w - flip_box[2], flip_box[1]), (w - flip_box[0], flip_box[3]),
                (0.0, 0.0), 2.0)
    result = as_numpy(decode_with_flip(make_heads([[plain]], c=1),
                                       make_heads([[mirrored]], c=1), P))
    assert result["num_detections"][0] == 2
    np.testing.assert_allclose(result["boxes"][0, :2], [plain_box, flip_box], atol=1e-6)
    overlap = iou(plain_box, flip_box)  # 6.25 * 8.5 / (6.5 * 8.5) = 0.9615
    np.testing.assert_allclose(result["scores"][0, :2],
                               [sigmoid(3.0), sigmoid(2.0) * math.exp(-overlap ** 2 / 0.5)],
                               rtol=1e-5)


# ------------------------------------------------------------------------------------
# Errors, TFLite.

def test_bad_inputs_raise_clear_errors():
    heads = make_heads([[]], h=4, w=4, c=2)
    with pytest.raises(KeyError, match="tl_offset"):
        decode({k: v for k, v in heads.items() if k != "tl_offset"})
    with pytest.raises(ValueError, match="k must be"):
        decode(heads, DecodeConfig(k=100))  # 4 * 4 * 2 = 32 cells
    with pytest.raises(ValueError, match="num_pairs"):
        decode(heads, DecodeConfig(k=4, num_pairs=17))
    with pytest.raises(ValueError, match="nms_kernel"):
        decode(heads, DecodeConfig(k=4, num_pairs=16, nms_kernel=2))
    bad = dict(heads, br_offset=heads["br_offset"][..., :1])
    with pytest.raises(ValueError, match="br_offset"):
        decode(bad, DecodeConfig(k=4, num_pairs=16))
    with pytest.raises(TypeError, match="DecodeConfig, found dict"):
        decode(heads, dict(k=4, num_pairs=16))  # parameters travel as one DecodeConfig
    with pytest.raises(TypeError, match=r"unknown parameters \['top_k'\]"):
        decode(heads, top_k=4)


def test_keyword_overrides_equal_the_dataclass():
    """DESIGN.md's call `decode(outputs, k=..., ...)` is the same decode as a DecodeConfig."""
    heads = make_heads([[OBJ_A, OBJ_B, OBJ_C]])
    by_keywords = as_numpy(decode(heads, **KW))
    by_config = as_numpy(decode(heads, P))
    for key in by_config:
        np.testing.assert_array_equal(by_keywords[key], by_config[key])
    base = DecodeConfig(k=10, num_pairs=50, max_detections=20)
    fewer = as_numpy(decode(heads, base, max_detections=8))  # an override on given params
    np.testing.assert_array_equal(fewer["boxes"], by_config["boxes"])


def test_tflite_builtins_conversion_matches_tf(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(3)
    heads = make_heads([[(0, (1.25, 1.5), (6.5, 5.75), (0.0, 0.1), 3.0),
                         (1, (2.5, 0.25), (7.75, 7.5), (1.0, 1.2), 2.5)]], h=8, w=8, c=2)
    # noisy background so that many pairs compete
    heads["tl_heatmap"] += rng.uniform(0, 6, heads["tl_heatmap"].shape).astype(np.float32)
    heads["br_heatmap"] += rng.uniform(0, 6, heads["br_heatmap"].shape).astype(np.float32)
    for key in ("tl_embedding", "br_embedding"):
        heads[key] = rng.uniform(0, 1.5, heads[key].shape).astype(np.float32)
    for key in ("tl_offset", "br_offset"):
        heads[key] = rng.uniform(0, 1, heads[key].shape).astype(np.float32)
    kw = dict(k=8, num_pairs=30, max_detections=6)
    specs = {key: tf.TensorSpec(value.shape, tf.float32, name=key) for key, value in heads.items()}

    module = tf.Module()
    module.run = tf.function(lambda x: decode(x, DecodeConfig(**kw)), input_signature=[specs])
    path = str(tmp_path / "decode")
    tf.saved_model.save(module, path, signatures=module.run.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    interpreter = Interpreter(model_content=converter.convert())
    got = interpreter.get_signature_runner()(**heads)
    want = as_numpy(module.run(heads))
    assert want["num_detections"][0] >= 3  # the test exercises real soft-NMS work
    got = {key: got[key] for key in want}
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-5)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-7)
