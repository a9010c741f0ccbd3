"""Format detection, classes matched by name across splits, conversion to COCO json."""

import json
import os

import numpy as np
import pytest

from cornernet_tf.data import coco, sources
from cornernet_tf.errors import UserError
from tests.support.own_formats import write_image, write_voc, write_yolo


def _coco_split(folder, categories, annotations):
    """A one-image COCO split (10x10) with the given categories and (category_id, bbox)."""
    write_image(os.path.join(folder, "im.png"), 10, 10)
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "im.png", "width": 10, "height": 10}],
                   "categories": [{"id": i, "name": n} for i, n in categories],
                   "annotations": [{"id": k, "image_id": 1, "category_id": c, "bbox": b,
                                    "iscrowd": 0} for k, (c, b) in enumerate(annotations, 1)]},
                  f)
    return path, folder


def test_detect_format(tmp_path):
    voc_ann, _ = write_voc(str(tmp_path / "v"), {"a": (8, 8, [])})
    yolo_labels, _ = write_yolo(str(tmp_path / "y"), "train", ["c"], {"a": (8, 8, "")})
    coco_json, _ = _coco_split(str(tmp_path / "c"), [(1, "c")], [])
    assert sources.detect_format(voc_ann) == "voc"
    assert sources.detect_format(yolo_labels) == "yolo"  # empty label files still say YOLO
    assert sources.detect_format(coco_json) == "coco"
    assert sources.detect_format(coco_json, "voc") == "voc"  # data.format wins
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="found a folder with neither .xml nor .txt files"):
        sources.detect_format(str(tmp_path / "e"), key="data.val_annotations")
    with pytest.raises(UserError, match=r"a Pascal VOC root\? give its Annotations folder"):
        sources.detect_format(str(tmp_path / "v"))
    with pytest.raises(FileNotFoundError, match="data.val_annotations"):
        sources.detect_format(str(tmp_path / "nope"), key="data.val_annotations")


def test_val_categories_in_another_order_are_matched_by_name(tmp_path):
    model = coco.LabelMap([1, 2], ["Dead", "Tree"])
    # the val file lists Tree first, with id 1: by position it would be "Dead"
    ann, img = _coco_split(str(tmp_path), [(1, "Tree"), (2, "Dead")],
                           [(1, [0, 0, 4, 4]), (2, [5, 5, 4, 4])])
    records, label_map, report = sources.load_dataset(ann, img, ground_truth=True,
                                                      label_map=model)
    assert label_map == model
    np.testing.assert_array_equal(records[0].classes, [1, 0])  # Tree -> 1, Dead -> 0
    # the ground truth speaks the model's category ids: Tree is id 2 there
    assert [a["category_id"] for a in report.ground_truth["annotations"]] == [2, 1]
    assert report.ground_truth["categories"] == [{"id": 1, "name": "Dead"},
                                                 {"id": 2, "name": "Tree"}]


def test_missing_class_is_said_and_unknown_class_is_an_error(tmp_path, capsys):
    model = coco.LabelMap([1, 2, 3], ["a", "b", "c"])
    ann, img = _coco_split(str(tmp_path / "sub"), [(7, "c")], [(7, [0, 0, 4, 4])])
    records, _, _ = sources.load_dataset(ann, img, label_map=model)
    assert records[0].classes.tolist() == [2]
    assert f"{ann}: no category for the model's classes ['a', 'b']: they have no ground " \
           f"truth here and are scored as absent" in capsys.readouterr().out
    ann, img = _coco_split(str(tmp_path / "unknown"), [(1, "a"), (2, "zebra")], [])
    with pytest.raises(coco.DatasetError, match=r"categories 'zebra' \(id 2\) are not among the "
                                                r"model's classes \['a', 'b', 'c'\]"):
        sources.load_dataset(ann, img, label_map=model)
    # the same for a VOC split: names are all there is
    voc_ann, voc_img = write_voc(str(tmp_path / "v"), {"a": (8, 8, [("zebra", 1, 1, 4, 4, 0)])})
    with pytest.raises(coco.DatasetError, match="'zebra'"):
        sources.load_dataset(voc_ann, voc_img, label_map=model)


def test_convert_to_coco_never_writes_over_a_file(tmp_path):
    ann, img = write_voc(str(tmp_path / "v"), {
        "a": (20, 10, [("dog", 2, 3, 10, 8, 0), ("cat", 1, 1, 5, 5, 1)])})
    out = str(tmp_path / "out" / "train.json")
    result = sources.convert_to_coco(ann, img, out)
    with open(out) as f:
        data = json.load(f)
    assert data["images"] == [{"id": 1, "width": 20, "height": 10, "file_name": "a.png"}]
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    # dog: [2-1, 3-1, 10, 8] xyxy -> COCO [1, 2, 9, 6]; the difficult cat: iscrowd 1
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in data["annotations"]] == [
        (2, [1.0, 2.0, 9.0, 6.0], 0), (1, [0.0, 0.0, 5.0, 5.0], 1)]
    assert (result["num_images"], result["num_objects"], result["num_ignore_regions"]) == (1, 1, 1)
    # the written json reads back as the same records
    again, label_map, _ = sources.load_dataset(out, img)
    np.testing.assert_array_equal(again[0].boxes, [[1, 2, 10, 8]])
    assert label_map.names == ("cat", "dog")
    before = os.path.getmtime(out)
    with pytest.raises(UserError, match="never writes over a file"):
        sources.convert_to_coco(ann, img, out)
    assert os.path.getmtime(out) == before
