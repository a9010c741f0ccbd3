"""YOLO folders: normalised boxes to pixels, names files, problems with file and line."""

import os

import numpy as np
import pytest

from cornernet_tf.data import coco, yolo
from tests.support.own_formats import write_image, write_yolo


def test_boxes_from_normalised_lines_and_negatives(tmp_path):
    labels, images = write_yolo(str(tmp_path), "train", ["car", "tree"], {
        # 40x20 image: centre (0.5, 0.5) size (0.5, 0.5) -> x 10..30, y 5..15
        "a": (40, 20, "1 0.5 0.5 0.5 0.5\n0 0.25 0.75 0.1 0.2\n"),
        "b": (10, 10, None),  # no label file: a negative
        "c": (10, 10, "")})  # empty label file: a negative
    records, label_map, report = yolo.load_yolo(labels, images, ground_truth=True)
    assert label_map.names == ("car", "tree") and label_map.category_ids == (1, 2)
    assert [r.image_id for r in records] == [1, 2, 3]
    # second line: cx 10, cy 15, w 4, h 4 pixels -> [8, 13, 12, 17]
    np.testing.assert_allclose(records[0].boxes, [[10, 5, 30, 15], [8, 13, 12, 17]])
    np.testing.assert_array_equal(records[0].classes, [1, 0])
    assert (report.num_objects, report.num_negative_images, report.problems) == (2, 2, [])
    assert report.ground_truth["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 10.0]


def test_a_box_on_the_border_rounded_to_six_decimals_is_no_clipping(tmp_path):
    """Normalised coordinates are written rounded (ultralytics: 6 digits): a box touching
    the border overshoots it by the rounding error only. Found on DeepForest's tree crowns
    (docs/real_data.md), where each crop's border trees were reported as clipped."""
    labels, images = write_yolo(str(tmp_path), "train", ["tree"], {
        # 128x128: cx 0.132812 * 128 = 16.999936, w 0.265625 * 128 = 34 -> x1 = -0.000064;
        # cy 0.101562 * 128 = 12.999936, h 0.203125 * 128 = 26 -> y1 = -0.000064
        "a": (128, 128, "0 0.132812 0.101562 0.265625 0.203125\n"
                        # cx 0.890625 * 128 = 114, w 0.21875 * 128 = 28 -> x2 = 128 exactly;
                        # cy 0.9296875 * 128 = 119, h 0.140625 * 128 = 18 -> y2 = 128
                        "0 0.890625 0.9296875 0.21875 0.140625\n"
                        # a real overshoot: x1 = 0.5 * 128 - 0.5 * 130 = -1 pixel
                        "0 0.5 0.5 1.015625 0.5\n")})
    records, _, report = yolo.load_yolo(labels, images)
    np.testing.assert_allclose(records[0].boxes, [[0, 0, 34, 26], [100, 110, 128, 128],
                                                  [0, 32, 128, 96]], atol=1e-3)
    assert [(p.kind, p.at) for p in report.problems] == [(coco.BOX_CLIPPED, "line 3")]


def test_names_from_classes_txt_or_data_yaml_list(tmp_path):
    labels, images = write_yolo(str(tmp_path / "t"), "train", ["b", "a"],
                                {"x": (8, 8, "1 .5 .5 .5 .5\n")}, names_file="classes.txt")
    records, label_map, _ = yolo.load_yolo(labels, images)
    assert label_map.names == ("b", "a")  # the file's order, not sorted
    assert records[0].classes.tolist() == [1]
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "data.yaml").write_text("names: [p, q, r]\n")
    assert yolo.read_names(str(tmp_path / "y"))[0] == ["p", "q", "r"]
    (tmp_path / "y" / "data.yaml").write_text("names: 7\n")
    with pytest.raises(coco.DatasetError, match="expected 'names:' as a list"):
        yolo.read_names(str(tmp_path / "y"))
    with pytest.raises(coco.DatasetError, match="no class names for the YOLO labels"):
        yolo.read_names(str(tmp_path / "t" / "images"))  # nothing in it nor above


def test_each_bad_line_names_file_and_line(tmp_path):
    labels, images = write_yolo(str(tmp_path), "train", ["car"], {
        "a": (10, 10, "0 .5 .5 .2 .2\n0 .5 .5\n\nx .5 .5 .2 .2\n3 .5 .5 .2 .2\n"
                      "0 .5 .5 0 .2\n0 1.5 1.5 .2 .2\n0 .9 .5 .4 .2\n")})
    with open(os.path.join(labels, "orphan.txt"), "w") as f:
        f.write("0 .5 .5 .1 .1\n")
    write_image(os.path.join(images, "broken.png"), 4, 4)
    with open(os.path.join(images, "broken.png"), "wb") as f:
        f.write(b"not an image")
    records, _, report = yolo.load_yolo(labels, images)
    a_txt = os.path.join(labels, "a.txt")
    found = [(p.kind, p.file, p.at) for p in report.problems]
    assert found == [
        (coco.BAD_BOX, a_txt, "line 2"),  # 3 fields
        (coco.BAD_BOX, a_txt, "line 4"),  # class not an integer (line 3 is blank)
        (coco.UNKNOWN_CATEGORY, a_txt, "line 5"),  # class 3 of 1 name
        (coco.BAD_BOX, a_txt, "line 6"),  # zero width
        (coco.BOX_OUTSIDE_IMAGE, a_txt, "line 7"),
        (coco.BOX_CLIPPED, a_txt, "line 8"),  # x 7..11 clipped at 10
        (coco.UNREADABLE_IMAGE, report.source, None),  # broken.png
        (coco.MISSING_FILE, os.path.join(labels, "orphan.txt"), None),
    ]
    assert "expected 5 fields 'class cx cy w h', found 3" in report.problems[0].detail
    assert "class 3 is not an index of the 1 names (0..0)" in report.problems[2].detail
    np.testing.assert_allclose(records[0].boxes, [[4, 4, 6, 6], [7, 4, 10, 6]], atol=1e-5)
