"""COCO reading: category map, crowd handling, each kind of bad record, strict mode."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cornernet_tf.data import coco


def _png(path, width, height):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def _write(tmp_path, images, annotations, categories=None, make_files=True):
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if make_files:
        for im in images:
            name = im.get("file_name")
            if isinstance(name, str) and "/" not in name and isinstance(im.get("width"), int) \
                    and im["width"] > 0 and isinstance(im.get("height"), int) and im["height"] > 0:
                _png(str(image_dir / name), im["width"], im["height"])
    categories = categories or [{"id": 1, "name": "a"}, {"id": 5, "name": "b"},
                                {"id": 90, "name": "c"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return str(path), str(image_dir)


def _image(image_id, w=40, h=30, name=None):
    return {"id": image_id, "file_name": name or f"{image_id}.png", "width": w, "height": h}


def _ann(ann_id, image_id, bbox, category_id=1, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "iscrowd": iscrowd}


def test_category_map_and_boxes(tmp_path):
    path, image_dir = _write(
        tmp_path, [_image(7), _image(3)],
        [_ann(1, 7, [1, 2, 10, 5], 90), _ann(2, 7, [0, 0, 4, 4], 5), _ann(3, 3, [5, 5, 2, 2], 1)],
        categories=[{"id": 90, "name": "c"}, {"id": 1, "name": "a"}, {"id": 5, "name": "b"}])
    records, label_map, report = coco.load_coco(path, image_dir)
    # Classes follow increasing category id: 1 -> 0, 5 -> 1, 90 -> 2.
    assert label_map.category_ids == (1, 5, 90)
    assert [label_map.to_class(c) for c in (1, 5, 90)] == [0, 1, 2]
    assert label_map.names == ("a", "b", "c")
    assert label_map.to_category_id(2) == 90
    assert [r.image_id for r in records] == [3, 7]  # sorted by image id
    r7 = records[1]
    assert r7.path == os.path.join(image_dir, "7.png") and os.path.isabs(r7.path)
    assert (r7.width, r7.height) == (40, 30)
    # COCO [x, y, w, h] -> [x1, y1, x2, y2]: [1, 2, 10, 5] -> [1, 2, 11, 7].
    np.testing.assert_array_equal(r7.boxes, np.array([[1, 2, 11, 7], [0, 0, 4, 4]], np.float32))
    assert r7.boxes.dtype == np.float32 and r7.classes.dtype == np.int32
    np.testing.assert_array_equal(r7.classes, [2, 1])
    assert report.problems == [] and report.num_objects == 3 and report.num_images == 2


def test_label_map_json_round_trip(tmp_path):
    label_map = coco.LabelMap([90, 1, 5], ["c", "a", "b"])
    written = label_map.write(str(tmp_path / "labels.json"))
    entries = json.loads(open(written).read())["classes"]
    assert entries[0] == {"class": 0, "category_id": 1, "name": "a"}
    assert coco.LabelMap.from_json(written) == label_map
    assert coco.LabelMap.from_json(label_map.to_json()) == label_map


def test_crowd_ignored_and_negatives_kept(tmp_path):
    path, image_dir = _write(
        tmp_path, [_image(1), _image(2)],
        [_ann(1, 1, [0, 0, 5, 5]), _ann(2, 1, [0, 0, 20, 20], iscrowd=1)])
    records, _, report = coco.load_coco(path, image_dir)
    assert len(records) == 2
    assert len(records[0].classes) == 1  # the crowd box is not an object
    assert records[1].boxes.shape == (0, 4)  # image without annotations: a negative
    assert report.num_crowd_ignored == 1 and report.num_negative_images == 1
    assert report.problems == []  # crowd boxes are ignored by design, not a problem
    assert "1 crowd annotations ignored" in report.summary()


@pytest.mark.parametrize("case", [
    "missing_file", "box_clipped", "box_outside", "zero_size", "nan", "inf",
    "unknown_category", "duplicate_image", "duplicate_annotation", "bad_width",
    "missing_height", "dotdot", "absolute", "unknown_image", "unreadable"])
def test_each_bad_record_is_reported(tmp_path, case):
    images, anns = [_image(1), _image(2)], [_ann(10, 1, [2, 2, 5, 5])]
    kept_images, kept_objects = 2, 1
    if case == "missing_file":
        images.append(_image(3))
        expect = (coco.MISSING_FILE, 3, None)
    elif case == "box_clipped":
        anns.append(_ann(11, 2, [30, 20, 20, 20]))  # reaches x=50 > width 40, y=40 > 30
        expect, kept_objects = (coco.BOX_CLIPPED, 2, 11), 2
    elif case == "box_outside":
        anns.append(_ann(11, 2, [50, 5, 5, 5]))
        expect = (coco.BOX_OUTSIDE_IMAGE, 2, 11)
    elif case == "zero_size":
        anns.append(_ann(11, 2, [1, 1, 0, 5]))
        expect = (coco.BAD_BOX, 2, 11)
    elif case == "nan":
        anns.append(_ann(11, 2, [float("nan"), 1, 3, 5]))
        expect = (coco.BAD_BOX, 2, 11)
    elif case == "inf":
        anns.append(_ann(11, 2, [1, 1, float("inf"), 5]))
        expect = (coco.BAD_BOX, 2, 11)
    elif case == "unknown_category":
        anns.append(_ann(11, 2, [1, 1, 3, 5], category_id=4))
        expect = (coco.UNKNOWN_CATEGORY, 2, 11)
    elif case == "duplicate_image":
        images.append(_image(1, name="other.png"))
        expect = (coco.DUPLICATE_IMAGE_ID, 1, None)
    elif case == "duplicate_annotation":
        anns.append(_ann(10, 2, [1, 1, 3, 5]))
        expect = (coco.DUPLICATE_ANNOTATION_ID, 2, 10)
    elif case == "bad_width":
        images.append(_image(3, w=0))
        expect = (coco.BAD_IMAGE_SIZE, 3, None)
    elif case == "missing_height":
        images.append({"id": 3, "file_name": "1.png", "width": 40})
        expect = (coco.BAD_IMAGE_SIZE, 3, None)
    elif case == "dotdot":
        images.append(_image(3, name="../secret.png"))
        _png(str(tmp_path / "secret.png"), 40, 30)  # exists, but outside the image folder
        expect = (coco.UNSAFE_FILE_NAME, 3, None)
    elif case == "absolute":
        _png(str(tmp_path / "abs.png"), 40, 30)
        images.append(_image(3, name=str(tmp_path / "abs.png")))
        expect = (coco.UNSAFE_FILE_NAME, 3, None)
    elif case == "unknown_image":
        anns.append(_ann(11, 99, [1, 1, 3, 5]))
        expect = (coco.UNKNOWN_IMAGE_ID, 99, 11)
    else:  # unreadable
        images.append(_image(3))
    path, image_dir = _write(tmp_path, images, anns)
    if case == "missing_file":
        os.remove(os.path.join(image_dir, "3.png"))
    if case == "unreadable":
        with open(os.path.join(image_dir, "3.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not really a png")
        expect = (coco.UNREADABLE_IMAGE, 3, None)

    records, _, report = coco.load_coco(path, image_dir)
    assert [(p.kind, p.image_id, p.annotation_id) for p in report.problems] == [expect]
    problem = report.problems[0]
    assert problem.file == path
    text = str(problem)
    assert f"image id {expect[1]}" in text
    if expect[2] is not None:
        assert f"annotation id {expect[2]}" in text
    assert f"{expect[0]}=1" in report.summary()
    assert len(records) == kept_images
    assert sum(len(r.classes) for r in records) == kept_objects
    if case == "box_clipped":
        np.testing.assert_array_equal(records[1].boxes, [[30, 20, 40, 30]])
    # Strict mode raises on everything that dropped data, and lists the problem.
    if case == "box_clipped":
        coco.load_coco(path, image_dir, strict=True)  # repaired, not dropped: no error
    else:
        with pytest.raises(coco.DatasetError, match=f"image id {expect[1]}"):
            coco.load_coco(path, image_dir, strict=True)


def test_strict_message_lists_first_problems_and_counts(tmp_path):
    anns = [_ann(100 + i, 1, [1, 1, 3, 5], category_id=4) for i in range(25)]
    path, image_dir = _write(tmp_path, [_image(1)], anns)
    with pytest.raises(coco.DatasetError) as info:
        coco.load_coco(path, image_dir, strict=True)
    message = str(info.value)
    assert "unknown_category=25" in message
    assert "annotation id 119" in message and "annotation id 120" not in message  # first 20
    assert "... and 5 more problems" in message


def test_image_size_mismatch_reported(tmp_path):
    path, image_dir = _write(tmp_path, [_image(1)], [])
    _png(os.path.join(image_dir, "1.png"), 41, 30)  # file is 41 wide, json says 40
    records, _, report = coco.load_coco(path, image_dir)
    assert records == [] and report.problems[0].kind == coco.IMAGE_SIZE_MISMATCH
    assert "41x30" in str(report.problems[0]) and "40x30" in str(report.problems[0])


def test_not_a_coco_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(coco.DatasetError, match="annotations"):
        coco.load_coco(str(path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco.load_coco(str(tmp_path / "nope.json"), str(tmp_path))
