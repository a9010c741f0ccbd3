"""Evaluation scores the ground truth the loader kept: dropped boxes are not misses."""

import json

import numpy as np
import pytest
from PIL import Image

from cornernet_tf.data import coco
from cornernet_tf.evaluation.metrics import coco_evaluate, load_ground_truth

GOOD = {  # image id -> its good COCO boxes [x, y, w, h] (64 x 64 images)
    1: [[2, 3, 20, 10], [30, 30, 12, 25]], 2: [[0, 0, 63, 63], [10, 40, 5, 7]],
    3: [[8, 8, 16, 16], [40, 2, 20, 30]], 4: [[1, 50, 30, 9], [33, 33, 22, 22]],
    5: [[12, 20, 40, 40], [5, 5, 9, 9]]}
BAD = [(1, [5, 5, 0, 8]),  # zero width
       (2, [70, 5, 10, 10]),  # right of the 64-pixel-wide image
       (3, [float("nan"), 1, 3, 5])]  # not a number


def _dataset(tmp_path, bad=BAD, clipped=True):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id in GOOD:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64,
                       "height": 64})
    boxes = [(i, b) for i in GOOD for b in GOOD[i]] + list(bad)
    if clipped:
        boxes.append((4, [58, 58, 10, 10]))  # kept, clipped to [58, 58, 6, 6]
    for k, (image_id, bbox) in enumerate(boxes, start=1):
        annotations.append({"id": k, "image_id": image_id, "category_id": 1, "bbox": bbox,
                            "area": 100.0, "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 5, "category_id": 1, "bbox": [50, 50, 14, 14],
                        "area": 196.0, "iscrowd": 1})  # a crowd region: stays an ignore region
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return str(path), str(folder)


def _perfect(extra=()):
    """One detection per good box, exactly on it, distinct scores."""
    boxes = [(i, b) for i in GOOD for b in GOOD[i]] + list(extra)
    return [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in b],
             "score": 1.0 - 0.01 * k} for k, (i, b) in enumerate(boxes)]


def test_perfect_detections_of_the_kept_boxes_score_one(tmp_path):
    path, folder = _dataset(tmp_path)
    records, _, report = coco.load_coco(path, folder, ground_truth=True)
    assert report.excluded()["annotations"] == {coco.BAD_BOX: 2, coco.BOX_OUTSIDE_IMAGE: 1}
    truth = report.ground_truth
    # 10 good boxes + the clipped one, then the crowd region; the clipped box as clipped
    assert [a["iscrowd"] for a in truth["annotations"]] == [0] * 11 + [1]
    assert [58.0, 58.0, 6.0, 6.0] in [a["bbox"] for a in truth["annotations"]]
    assert sorted(im["id"] for im in truth["images"]) == [1, 2, 3, 4, 5]
    # Perfect detections of every kept box: precision 1 at every recall, AP 1 exactly.
    metrics = coco_evaluate(truth, _perfect(extra=[(4, [58, 58, 6, 6])]))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    # The detection on the crowd region is ignored, not a false positive.
    on_crowd = _perfect(extra=[(4, [58, 58, 6, 6])]) + [
        {"image_id": 5, "category_id": 1, "bbox": [50, 50, 14, 14], "score": 0.995}]
    assert coco_evaluate(load_ground_truth(truth), on_crowd)["AP"] == pytest.approx(1.0)


def test_the_raw_json_counts_the_dropped_boxes_as_misses(tmp_path):
    # What evaluation used to score: the json itself. Without the NaN box (whose IoU
    # COCOeval cannot compare) and the clipped one, the 10 good boxes are found and the 2
    # bad ones missed: precision 1 up to recall 10/12, 0 beyond, at every IoU. COCOeval
    # averages precision over 101 recall points 0, 0.01, ..., 1: the 84 points up to 0.83
    # have precision 1, so AP = 84 / 101 = 0.8317.
    path, folder = _dataset(tmp_path, bad=BAD[:2], clipped=False)
    assert coco_evaluate(path, _perfect())["AP"] == pytest.approx(84 / 101)
    _, _, report = coco.load_coco(path, folder, ground_truth=True)
    assert coco_evaluate(report.ground_truth, _perfect())["AP"] == pytest.approx(1.0)


def test_bad_crowd_regions_are_reported_and_left_out(tmp_path):
    path, folder = _dataset(tmp_path, bad=[])
    data = json.load(open(path))
    data["annotations"] += [
        {"id": 100, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 4], "iscrowd": 1},
        {"id": 101, "image_id": 1, "category_id": 8, "bbox": [1, 1, 4, 4], "iscrowd": 1},
        {"id": 102, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 5]}]  # no "area"
    with open(path, "w") as f:
        json.dump(data, f)
    _, _, report = coco.load_coco(path, folder, ground_truth=True)
    assert [(p.kind, p.annotation_id) for p in report.problems if p.kind != coco.BOX_CLIPPED] \
        == [(coco.BAD_BOX, 100), (coco.UNKNOWN_CATEGORY, 101)]
    assert sum(a["iscrowd"] for a in report.ground_truth["annotations"]) == 1
    # an annotation without "area" gets its box's, 4 x 5 (COCOeval reads "area")
    assert [a["area"] for a in report.ground_truth["annotations"]
            if a["bbox"] == [1.0, 1.0, 4.0, 5.0]] == [20.0]


def test_load_ground_truth_refuses_a_dict_without_the_lists():
    with pytest.raises(ValueError, match=r"needs the lists \['annotations', 'categories'\]"):
        load_ground_truth({"images": []})
