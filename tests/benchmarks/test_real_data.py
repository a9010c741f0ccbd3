"""benchmarks/real_data.py: the split of a VOC photo by box centre, and the scoring of
predict's JSON outputs against a VOC folder (classes by name)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import real_data

def test_split_part_keeps_the_boxes_whose_centre_is_inside_clipped_and_shifted():
    # centre x = (xmin - 1 + xmax) / 2, in pixel edges
    objects = [("Tree", [1, 1, 10, 10]),      # centre 5: left part
               ("Tree", [95, 5, 110, 20]),    # centre 102: right part
               ("Dead", [90, 30, 99, 40])]    # centre 94: left part, clipped at 96
    assert real_data.split_part(objects, 0, 96) == [("Tree", [1, 1, 10, 10]),
                                                     ("Dead", [90, 30, 96, 40])]
    # the right part starts at column 96 (VOC index 97): 95 -> 97 - 96 = 1, 110 -> 14
    assert real_data.split_part(objects, 96, 200) == [("Tree", [1, 5, 14, 20])]
    # rows too: a crop of rows 0..15 keeps the first box only
    assert real_data.split_part(objects, 0, 96, 0, 16) == [("Tree", [1, 1, 10, 10])]


def test_score_matches_by_name_and_counts_a_perfect_and_a_missed_box(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(voc / "a.png")
    # VOC [11, 11, 30, 20] is pixel-edge box [10, 10, 30, 20]; the second is never found
    real_data.write_voc(str(voc / "a.xml"), "a.png", 60, 40,
                        [("Tree", [11, 11, 30, 20]), ("Tree", [41, 21, 55, 35])])
    pred = tmp_path / "pred"
    pred.mkdir()
    detections = [{"name": "Tree", "score": 0.9, "box_xyxy": [10, 10, 30, 20]},
                  {"name": "Alive", "score": 0.8, "box_xyxy": [0, 0, 5, 5]}]
    (pred / "a.png.json").write_text(json.dumps(
        {"image": os.path.join("somewhere", "a.png"), "detections": detections}))
    (pred / ".cornernet-predict-outputs").write_text(json.dumps({"outputs": []}))
    [row] = real_data.score(str(voc), {"p": str(pred)}, max_dets=10)
    # one of two objects found at every IoU, precision 1 up to recall 0.5: COCO's
    # 101-point AP is 51/101, its recall 0.5
    assert row["ap"] == pytest.approx(51 / 101) and row["ap50"] == pytest.approx(51 / 101)
    assert row["ar"] == pytest.approx(0.5)
    assert (row["detections"], row["other_classes"]) == (1, 1)
