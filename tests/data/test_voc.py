"""Pascal VOC folders: boxes, difficult objects as ignore regions, problems with file and
object index. Folders are written by hand in each test (tests/support/own_formats.py)."""

import os

import numpy as np
import pytest

from cornernet_tf.data import coco, voc
from tests.support.own_formats import voc_xml, write_image, write_voc


def test_boxes_classes_and_difficult_objects(tmp_path):
    ann, img = write_voc(str(tmp_path), {
        "a": (40, 30, [("dog", 1, 1, 10, 10, 0), ("cat", 5, 6, 40, 30, 1)]),
        "b": (20, 20, [("cat", 3, 4, 12, 20, 0)])})
    records, label_map, report = voc.load_voc(ann, img, ground_truth=True)
    # classes: the names in sorted order, category ids 1.. in that order
    assert label_map.names == ("cat", "dog") and label_map.category_ids == (1, 2)
    a, b = records
    assert (a.image_id, b.image_id) == (1, 2)  # XML files in name order
    assert a.path == os.path.join(img, "a.png") and (a.width, a.height) == (40, 30)
    # VOC pixels are 1-based: [xmin - 1, ymin - 1, xmax, ymax]
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 10]])
    np.testing.assert_array_equal(a.classes, [1])
    np.testing.assert_array_equal(a.ignore_boxes, [[4, 5, 40, 30]])  # the difficult cat
    np.testing.assert_array_equal(a.ignore_classes, [0])
    np.testing.assert_array_equal(b.boxes, [[2, 3, 12, 20]])
    assert (report.num_images, report.num_objects, report.num_ignore_regions) == (2, 2, 1)
    assert report.problems == []
    # evaluation: the difficult object is a crowd (ignore) region of its category
    crowd = [a for a in report.ground_truth["annotations"] if a["iscrowd"]]
    assert crowd == [{"id": 2, "image_id": 1, "category_id": 1, "bbox": [4.0, 5.0, 36.0, 25.0],
                      "area": 900.0, "iscrowd": 1}]


def test_images_beside_the_xml_or_in_a_sibling_folder(tmp_path):
    ann, _ = write_voc(str(tmp_path / "sibling"), {"a": (8, 8, [("x", 1, 1, 4, 4, 0)])})
    records, _, _ = voc.load_voc(ann, "")  # found in ../JPEGImages
    assert records[0].path == os.path.abspath(str(tmp_path / "sibling" / "JPEGImages" / "a.png"))
    beside = tmp_path / "beside"
    write_image(str(beside / "a.jpg.png"), 8, 8)
    (beside / "a.xml").write_text(voc_xml("a.jpg.png", 8, 8, [("x", 1, 1, 4, 4, 0)]))
    records, _, _ = voc.load_voc(str(beside), "")
    assert records[0].path == os.path.abspath(str(beside / "a.jpg.png"))


def test_each_bad_record_names_file_and_object(tmp_path):
    ann, img = write_voc(str(tmp_path), {
        "a": (20, 20, [("ok", 1, 1, 5, 5, 0), ("", 1, 1, 5, 5, 0), ("ok", "x", 1, 5, 5, 0),
                       ("ok", 8, 8, 4, 9, 0), ("ok", 30, 30, 40, 40, 0),
                       ("ok", 10, 10, 25, 15, 0)]),
        "b": (20, 20, [("ok", 1, 1, 5, 5, 0)])})
    (tmp_path / "Annotations" / "c.xml").write_text("<annotation><filename>c.png")  # cut off
    (tmp_path / "Annotations" / "d.xml").write_text(voc_xml("nowhere.png", 9, 9, []))
    (tmp_path / "Annotations" / "e.xml").write_text(
        '<!DOCTYPE a [<!ENTITY x "xx">]>' + voc_xml("b.png", 20, 20, []))
    (tmp_path / "Annotations" / "b.xml").write_text(voc_xml("b.png", 21, 20, []))  # wrong size
    records, _, report = voc.load_voc(ann, img)
    a_xml = os.path.join(ann, "a.xml")
    found = [(p.kind, p.file, p.at, p.image_id) for p in report.problems]
    assert found == [
        (coco.BAD_BOX, a_xml, "object 1", 1),  # no name
        (coco.BAD_BOX, a_xml, "object 2", 1),  # xmin not a number
        (coco.BAD_BOX, a_xml, "object 3", 1),  # xmax < xmin
        (coco.BOX_OUTSIDE_IMAGE, a_xml, "object 4", 1),
        (coco.BOX_CLIPPED, a_xml, "object 5", 1),  # kept, clipped at x = 20
        (coco.IMAGE_SIZE_MISMATCH, os.path.join(ann, "b.xml"), None, 2),
        (coco.BAD_ANNOTATION_FILE, os.path.join(ann, "c.xml"), None, 3),
        (coco.MISSING_FILE, os.path.join(ann, "d.xml"), None, 4),
        (coco.BAD_ANNOTATION_FILE, os.path.join(ann, "e.xml"), None, 5),
    ]
    assert "expected <bndbox> with numbers xmin, ymin, xmax, ymax, found ['x', '1', '5', '5']" \
        in report.problems[1].detail
    assert str(report.problems[0]).startswith(f"{a_xml}, object 1, image id 1: bad_box: "
                                              "expected a <name>")
    assert [r.image_id for r in records] == [1]
    np.testing.assert_array_equal(records[0].boxes, [[0, 0, 5, 5], [9, 9, 20, 15]])
    with pytest.raises(coco.DatasetError, match="strict mode"):
        voc.load_voc(ann, img, strict=True)
