"""The one COCO json reader: top-level checks, and the counts `resolve` reads off a file."""

import json
import subprocess
import sys

import pytest

from cornernet_tf.data import coco, coco_json, resolve
from cornernet_tf.config.schema import DataConfig


def write(tmp_path, data, name="a.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_top_level_problems_are_dataset_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_json.read_instances_json(str(tmp_path / "nope.json"))
    bad = write(tmp_path, "{not json", "bad.json")
    with pytest.raises(coco_json.DatasetError, match=r"bad.json: not valid json"):
        coco_json.read_instances_json(bad)
    deep = write(tmp_path, "[" * 100000 + "]" * 100000, "deep.json")
    with pytest.raises(coco_json.DatasetError, match=r"deep.json: not valid json: nested deeper"):
        coco_json.read_instances_json(deep)
    partial = write(tmp_path, {"images": [], "categories": []}, "partial.json")
    with pytest.raises(coco_json.DatasetError,
                       match=r"partial.json: expected .* list 'annotations'; found "
                             r"\['categories', 'images'\]"):
        coco_json.read_instances_json(partial)
    # only the keys asked for are required
    assert coco_json.read_instances_json(partial, keys=("categories",))["categories"] == []


def test_every_reader_goes_through_it(tmp_path):
    """The loader, the categories reader and resolve's count path report the same problem
    the same way (they used to parse the json three times, one without the nesting guard)."""
    deep = write(tmp_path, "[" * 100000 + "]" * 100000, "deep.json")
    (tmp_path / "img").mkdir()
    for read in (lambda: coco.load_coco(deep, str(tmp_path / "img")),
                 lambda: coco.read_categories(deep),
                 lambda: resolve.dataset_counts(DataConfig(train_annotations=deep))):
        with pytest.raises(coco.DatasetError, match=r"deep.json: not valid json: nested deeper"):
            read()
    assert coco.DatasetError is coco_json.DatasetError


def test_counts_follow_what_the_loader_keeps():
    data = {
        "categories": [{"id": 1, "name": "a"}, {"id": "2", "name": "b"}, {"id": True},
                       "junk"],
        "images": [{"id": 10}, {"id": 11}, {"id": 12}, {"id": None}],
        "annotations": (
            [{"image_id": 11, "category_id": 1}] * 3  # image 11: 3 objects
            + [{"image_id": 10, "category_id": "2"}] * 2  # image 10: 2
            + [{"image_id": 10, "category_id": 1, "iscrowd": 1}] * 5  # crowd: not objects
            + [{"image_id": 10, "category_id": 7}] * 5  # unknown category
            + [{"image_id": 99, "category_id": 1}] * 5  # unknown image
            + [{"image_id": 12, "category_id": 1}] * 3  # a tie with 11: the first counted
        ),
    }
    assert coco_json.instance_counts(data) == (2, 3, 11)
    empty = {"categories": [{"id": 1}], "images": [{"id": "b"}, {"id": "a"}], "annotations": []}
    assert coco_json.instance_counts(empty) == (1, 0, "a")
    assert coco_json.instance_counts({"categories": [], "images": [], "annotations": []}) \
        == (0, 0, "-")


def test_the_count_path_does_not_import_tensorflow(tmp_path):
    path = write(tmp_path, {"categories": [{"id": 1}], "images": [{"id": 1}],
                            "annotations": [{"image_id": 1, "category_id": 1}] * 4})
    code = ("import sys; from cornernet_tf.data import resolve; "
            "from cornernet_tf.config.schema import DataConfig; "
            f"c = resolve.dataset_counts(DataConfig(train_annotations={path!r})); "
            "print(c.num_classes, c.max_objects, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "4", "False"]
