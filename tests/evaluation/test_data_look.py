"""The data look: counts, busiest images, box sizes against the network, its files."""

import os

import numpy as np
import pytest
from PIL import Image

from cornernet_tf.config import load_config
from cornernet_tf.data import coco
from cornernet_tf.errors import UserError
from cornernet_tf.evaluation import data_look
from tests.support.own_formats import write_image


def _records(tmp_path):
    """Two images: a 200x100 one with 3 objects, a 50x50 one with 1 and an ignore region."""
    a = write_image(str(tmp_path / "a.png"), 200, 100)
    b = write_image(str(tmp_path / "b.png"), 50, 50)
    return [
        coco.ImageRecord(1, a, 200, 100, np.array([[0, 0, 2, 2], [0, 0, 40, 10], [0, 0, 100, 100]],
                                                  np.float32), np.array([0, 1, 1], np.int32)),
        coco.ImageRecord(2, b, 50, 50, np.array([[10, 10, 20, 30]], np.float32),
                         np.array([0], np.int32), np.array([[0, 0, 5, 5]], np.float32),
                         np.array([1], np.int32))]


def test_sides_and_summary_numbers(tmp_path):
    records = _records(tmp_path)
    native, fitted = data_look.box_sides(records, (64, 64))
    # sqrt(w*h): 2, sqrt(400) = 20, 100, sqrt(200); fitted x min(64/100, 64/200) = 0.32 for
    # the 200x100 image, x 64/50 = 1.28 for the 50x50 one
    np.testing.assert_allclose(native, [2, 20, 100, np.sqrt(200)])
    np.testing.assert_allclose(fitted, [0.64, 6.4, 32, np.sqrt(200) * 1.28])
    text, numbers = data_look.summarize(records, ["cat", "dog"], "ann", (64, 64), 4, 2)
    assert numbers["objects_per_class"] == {"cat": 2, "dog": 2}
    assert numbers["images_per_class"] == {"cat": 2, "dog": 1}
    assert numbers["objects_per_image"] == [3, 1]
    assert numbers["busiest"][0] == (3, 1, records[0].path)
    # below one output cell (4 px): native 2; fitted 0.64. Above the 64 px input: native 100.
    assert numbers["below_one_cell"] == (1, 1) and numbers["above_input"] == (1, 0)
    assert "ann: 2 images, 4 objects, 1 ignore regions, 0 images without objects" in text
    assert ("data.max_objects=2: 1 images have more; 1 objects beyond it (in training: corner "
            "heatmaps only, no embedding or offset targets)") in text
    assert "busiest images: 3 objects in image id 1 (a.png)" in text


def test_files_written_and_a_users_folder_refused(tmp_path):
    records = _records(tmp_path)
    cfg = load_config(None, ["model.backbone=hourglass52", "model.input_size=[64,64]",
                             "model.channels=[16,16,16]", "model.blocks=[1,1,1]",
                             "model.num_classes=2",
                             "data.max_objects=3", "data.train_annotations=ann"])
    label_map = coco.LabelMap([1, 2], ["cat", "dog"])
    out = str(tmp_path / "look")
    result = data_look.inspect_data(cfg, out, {"train": (records, label_map)})
    assert sorted(os.listdir(out)) == sorted(data_look.FILES)
    with Image.open(os.path.join(out, "samples.png")) as picture:
        assert picture.size == (2 * 256, 256)  # two tiles in one row
    assert result["train"]["objects_per_image"] == [3, 1]
    data_look.inspect_data(cfg, out, {"train": (records, label_map)})  # its own files: again
    (tmp_path / "look" / "notes.txt").write_text("mine")
    with pytest.raises(UserError,
                       match=r"holds files the data look did not write \(\['notes.txt'\]\)"):
        data_look.inspect_data(cfg, out, {"train": (records, label_map)})
    assert (tmp_path / "look" / "notes.txt").read_text() == "mine"
