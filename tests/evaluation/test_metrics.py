"""Tests of cornernet_tf.evaluation.metrics on a tiny hand-made COCO ground truth."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cornernet_tf.evaluation.runner import detections_to_coco
from cornernet_tf.evaluation.metrics import METRIC_NAMES, coco_evaluate, format_coco_table

# Category ids are not contiguous (1 and 3) on purpose: class 0 -> 1, class 1 -> 3.
CATEGORY_IDS = [1, 3]
# (image_id, category_id, [x, y, w, h]); areas: 10000 large, 2500 medium, 400 small.
OBJECTS = [
    (1, 1, [0.0, 0.0, 100.0, 100.0]),
    (1, 1, [120.0, 120.0, 50.0, 50.0]),
    (1, 3, [150.0, 20.0, 20.0, 20.0]),
    (2, 3, [30.0, 40.0, 100.0, 100.0]),
]


@pytest.fixture()
def gt_path(tmp_path):
    data = {
        "images": [{"id": 1, "width": 200, "height": 200, "file_name": "1.jpg"},
                   {"id": 2, "width": 200, "height": 200, "file_name": "2.jpg"}],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
        "annotations": [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for i, (img, cat, box) in enumerate(OBJECTS)],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def perfect(score=0.9):
    return [{"image_id": img, "category_id": cat, "bbox": list(box), "score": score}
            for img, cat, box in OBJECTS]


def test_perfect_detections_score_one(gt_path):
    metrics = coco_evaluate(gt_path, perfect())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm",
                 "ARl"):
        assert metrics[name] == pytest.approx(1.0), name
    # AR1: one detection per image and category. Category 1 has 2 objects in image 1 -> 1/2;
    # category 3 has one object in each image -> 1. Mean over categories: 0.75.
    assert metrics["AR1"] == pytest.approx(0.75)
    assert metrics["max_dets"] == 100
    assert set(metrics) == set(METRIC_NAMES) | {"max_dets"}


def test_shifted_boxes_pass_iou_050_but_not_075(gt_path):
    # Each box moved right by 20% of its width: IoU = (w - 0.2w) h / ((w + 0.2w) h)
    # = 0.8 / 1.2 = 0.667, which passes the thresholds 0.50, 0.55, 0.60, 0.65 and fails
    # 0.70 ... 0.95. So AP50 = 1, AP75 = 0 and AP (mean over the 10 thresholds) = 4 / 10.
    shifted = perfect()
    for det in shifted:
        det["bbox"][0] += 0.2 * det["bbox"][2]
    metrics = coco_evaluate(gt_path, shifted)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.4)


def test_matches_pycocotools_summary_and_table(gt_path):
    # A mixed result: one miss, one false positive, one poor box; compare with COCOeval's
    # own summarize() at its default maxDets [1, 10, 100].
    dets = perfect()[:3] + [
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 50.0], "score": 0.95},
        {"image_id": 2, "category_id": 3, "bbox": [40.0, 40.0, 100.0, 100.0], "score": 0.4}]
    dets[1]["score"] = 0.3
    metrics = coco_evaluate(COCO_quiet(gt_path), dets)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO(gt_path)
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
        out.truncate(0)
        out.seek(0)
        ev.summarize()
    np.testing.assert_allclose([metrics[n] for n in METRIC_NAMES], ev.stats, atol=1e-12)
    assert 0.0 < metrics["AP"] < 1.0
    assert format_coco_table(metrics).splitlines() == out.getvalue().strip("\n").splitlines()


def COCO_quiet(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def test_max_dets_above_100(gt_path):
    metrics = coco_evaluate(gt_path, perfect(), max_dets=300)
    assert metrics["max_dets"] == 300
    assert metrics["AP"] == pytest.approx(1.0)  # not COCOeval's -1 for a missing 100 slot
    assert metrics["AR100"] == pytest.approx(1.0)
    assert "maxDets=300" in format_coco_table(metrics)


def test_empty_detections_and_image_subset(gt_path):
    metrics = coco_evaluate(gt_path, [])
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
    # only image 2 evaluated: the misses of image 1 do not count
    metrics = coco_evaluate(gt_path, perfect()[3:], image_ids=[2])
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["APs"] == -1.0  # no small object in image 2


def test_bad_detections_raise(gt_path):
    with pytest.raises(ValueError, match="category_id 2"):
        coco_evaluate(gt_path, [dict(perfect()[0], category_id=2)])
    with pytest.raises(ValueError, match="image_id 9"):
        coco_evaluate(gt_path, [dict(perfect()[0], image_id=9)])
    with pytest.raises(ValueError, match="lacks"):
        coco_evaluate(gt_path, [{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_evaluate("nope.json", [])


def test_detections_to_coco_round_trip(gt_path):
    # Padded batch of 2 images, N = 4: image 1 has 3 detections, image 2 has 1; rows past
    # num_detections (and a row with class -1) are padding.
    boxes = np.full((2, 4, 4), -1.0, np.float32)
    classes = np.full((2, 4), -1, np.int32)
    scores = np.zeros((2, 4), np.float32)
    rows = {1: 0, 2: 0}
    for img, cat, (x, y, w, h) in OBJECTS:
        b = img - 1
        boxes[b, rows[img]] = (x, y, x + w, y + h)
        classes[b, rows[img]] = CATEGORY_IDS.index(cat)
        scores[b, rows[img]] = 0.8
        rows[img] += 1
    results = detections_to_coco(boxes, scores, classes, [3, 2], [1, 2], CATEGORY_IDS)
    assert len(results) == 4  # image 2's second row has class -1: dropped
    assert sorted((r["image_id"], r["category_id"], tuple(r["bbox"])) for r in results) == \
        sorted((img, cat, tuple(box)) for img, cat, box in OBJECTS)
    assert all(isinstance(r["score"], float) and r["score"] == pytest.approx(0.8)
               for r in results)
    json.dumps(results)  # plain python types
    assert coco_evaluate(gt_path, results)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="label map has 1 classes"):
        detections_to_coco(boxes, scores, classes, [3, 1], [1, 2], [1])
