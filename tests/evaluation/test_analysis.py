"""Evaluation pictures: confusion matrix, PR curves and error ranking on hand-made cases.

Every expected number is worked out in the comments from the boxes below; IoU is
pycocotools' (intersection / union of the [x, y, w, h] rectangles).
"""

import contextlib
import io
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cornernet_tf.evaluation import analysis


def _coco(images, annotations, categories):
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _ann(ann_id, image_id, box, cat):
    return {"id": ann_id, "image_id": image_id, "bbox": box, "category_id": cat,
            "area": box[2] * box[3], "iscrowd": 0}


CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


@pytest.fixture
def scene():
    images = [{"id": 1, "file_name": "one.png", "width": 100, "height": 100},
              {"id": 2, "file_name": "two.png", "width": 100, "height": 100}]
    annotations = [_ann(1, 1, [10, 10, 20, 20], 1),  # A: found by d1
                   _ann(2, 1, [50, 50, 20, 20], 2),  # B: class b, detected as a (d2)
                   _ann(3, 1, [10, 60, 20, 20], 1),  # C: missed
                   _ann(4, 2, [30, 30, 20, 20], 2)]  # D: found by d6
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # d1 -> A
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.8},  # d2 on B
        {"image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10], "score": 0.7},   # d3 nothing
        # d5 duplicates A: IoU 380 / 420 = 0.905, but A is taken by d1 -> false positive
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.6},
        {"image_id": 1, "category_id": 1, "bbox": [10, 60, 20, 20], "score": 0.2},  # d4 < 0.3
        {"image_id": 2, "category_id": 2, "bbox": [31, 30, 20, 20], "score": 0.95},  # d6 -> D
    ]
    return _coco(images, annotations, CATS), detections


def test_pairwise_iou_matches_hand_computation():
    iou = analysis.pairwise_iou([[10, 10, 20, 20]], [[11, 10, 20, 20], [40, 40, 5, 5]])
    # overlap 19 x 20 = 380, union 400 + 400 - 380 = 420; the second box is disjoint
    np.testing.assert_allclose(iou, [[380 / 420, 0.0]])


def test_confusion_matrix_counts_matches_confusions_misses_and_false_positives(scene):
    gt, dets = scene
    matrix, labels = analysis.confusion_matrix(gt, dets, iou_threshold=0.5,
                                               score_threshold=0.3)
    assert labels == ["a", "b", "background"]
    expected = np.array([
        # predicted: a  b  bg
        [1, 0, 1],   # truth a: A found by d1; C missed
        [1, 1, 0],   # truth b: B detected as a (d2); D found by d6
        [1, 1, 0],   # background: d5 (duplicate of A) predicted a; d3 predicted b
    ])
    np.testing.assert_array_equal(matrix, expected)
    # d4 (score 0.2) would have found C: with the threshold lowered C moves to the diagonal
    matrix, _ = analysis.confusion_matrix(gt, dets, score_threshold=0.1)
    assert matrix[0].tolist() == [2, 0, 0]


def test_precision_recall_equals_coco_interpolation_by_hand():
    gt = _coco([{"id": 1, "file_name": "x.png", "width": 100, "height": 100}],
               [_ann(1, 1, [0, 0, 10, 10], 1), _ann(2, 1, [20, 20, 10, 10], 1)], CATS[:1])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},   # TP
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.8},  # FP
            {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.7}]  # TP
    curves = analysis.precision_recall(gt, dets)
    recall = curves["recall"]
    assert len(recall) == 101
    # After d1: recall 0.5, precision 1; after d3: recall 1.0, precision 2/3. COCO's
    # interpolated precision at recall r is the max precision at recall >= r.
    expected = np.where(recall <= 0.5 + 1e-9, 1.0, 2.0 / 3.0)
    np.testing.assert_allclose(curves["precision"][0.5][0], expected, atol=1e-9)
    np.testing.assert_allclose(curves["ap"][0.5][0], expected.mean(), atol=1e-9)
    assert curves["names"] == ["a"]


def test_image_errors_rank_the_worst_image_first(scene):
    gt, dets = scene
    rows = analysis.image_errors(gt, dets, score_threshold=0.3)
    assert [r["image_id"] for r in rows] == [1, 2]
    worst = rows[0]
    assert worst["missed"].tolist() == [1, 2]  # B (class b, no class-b detection) and C
    # d2 (wrong class), d3 and d5 among image 1's detections >= 0.3 (d1, d2, d3, d5)
    assert worst["false"].tolist() == [1, 2, 3]
    assert len(rows[1]["missed"]) == 0 and len(rows[1]["false"]) == 0


def test_pictures_are_written_with_both_colours(scene, tmp_path):
    gt, dets = scene
    for name in ("one.png", "two.png"):
        Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / name)
    row = analysis.image_errors(gt, dets)[0]
    tile = analysis.draw_errors(np.zeros((100, 100, 3), np.uint8), row, {1: "a", 2: "b"})
    assert tile[79, 20].tolist() == list(analysis.GROUND_TRUTH_COLOUR)  # C's bottom edge
    assert tile[10, 85].tolist() == list(analysis.PREDICTION_COLOUR)  # d3's top edge
    out = analysis.write_evaluation_pictures(gt, dets, str(tmp_path), str(tmp_path / "eval"),
                                             gallery_size=2)
    assert out["worst_image_ids"] == [1, 2]
    for key in ("pr_curves", "confusion_matrix", "worst_images"):
        assert os.path.getsize(out[key]) > 1000
        with Image.open(out[key]) as im:
            assert im.format == "PNG"
    with Image.open(out["worst_images"]) as im:
        assert im.size == (2 * 256, 256)


def test_pr_curves_of_a_split_lacking_the_first_class_warn_nothing(tmp_path):
    """A validation split without the model's first class (DeepForest's held-out trees:
    no "Alive", docs/real_data.md): its panel says so, the legend goes to the next one,
    and matplotlib has no "No artists with labels" warning to print."""
    import warnings
    import matplotlib.pyplot as plt
    recall = np.linspace(0, 1, 101)
    curves = {"recall": recall, "names": ["Alive", "Tree"],
              "precision": {iou: np.stack([np.full(101, -1.0), 1 - recall / 2])
                            for iou in analysis.PR_IOUS},
              "ap": {iou: np.array([-1.0, 0.75]) for iou in analysis.PR_IOUS}}
    titles = []
    real_savefig = plt.Figure.savefig

    def savefig(fig, *args, **kwargs):
        titles.extend((ax.get_title(), ax.get_legend() is not None) for ax in fig.axes)
        return real_savefig(fig, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.MonkeyPatch.context() as m:
            m.setattr(plt.Figure, "savefig", savefig)
            analysis.plot_precision_recall(curves, str(tmp_path / "pr.png"))
    assert titles == [("Alive (no ground truth)", False),
                      ("Tree  AP50/75 0.75/0.75", True)]


def test_best_f1_threshold_by_hand(scene):
    gt, dets = scene
    # By descending score (4 ground-truth boxes): d6 TP (D), d1 TP (A), d2 FP (class a on
    # B), d3 FP, d5 FP (A taken), d4 TP (C). Precision / recall / F1 at each score:
    #   0.95: 1/1, 1/4, 0.4    0.9: 2/2, 2/4, 2/3    0.8: 2/3, 2/4, 4/7
    #   0.7: 2/4, 2/4, 1/2     0.6: 2/5, 2/4, 4/9    0.2: 3/6, 3/4, 3/5
    best = analysis.best_f1_threshold(gt, dets)
    assert best["threshold"] == pytest.approx(0.9)
    assert best["f1"] == pytest.approx(2 / 3)
    assert (best["precision"], best["recall"]) == (pytest.approx(1.0), pytest.approx(0.5))
    # image 1 alone (3 boxes): 0.9: 1/1, 1/3 -> 0.5; 0.2: 2/5, 2/3 -> 0.5; 0.8: 1/2, 1/3 ->
    # 0.4. The tie goes to the higher threshold (fewer detections drawn).
    best = analysis.best_f1_threshold(gt, dets, image_ids=[1])
    assert (best["threshold"], best["f1"]) == (pytest.approx(0.9), pytest.approx(0.5))
    assert analysis.best_f1_threshold(gt, [])["threshold"] == 0.0


def test_gallery_draws_errors_thick_and_matches_thin(scene):
    gt, dets = scene
    red, green = list(analysis.PREDICTION_COLOUR), list(analysis.GROUND_TRUTH_COLOUR)
    black = [0, 0, 0]
    rows = {r["image_id"]: r for r in analysis.image_errors(gt, dets, score_threshold=0.3)}
    # PIL draws an outline of width w from the box edge inwards.
    tile = analysis.draw_errors(np.zeros((100, 100, 3), np.uint8), rows[1], {1: "a", 2: "b"})
    # C (10,60)-(30,80), missed: its bottom edge is 2 px (rows 80 and 79)
    assert tile[80, 20].tolist() == green and tile[79, 20].tolist() == green
    # d2 (50,50)-(70,70), false (class a on B): its bottom edge is 2 px, drawn over B's
    assert tile[70, 60].tolist() == red and tile[69, 60].tolist() == red
    tile = analysis.draw_errors(np.zeros((100, 100, 3), np.uint8), rows[2], {1: "a", 2: "b"})
    # D (30,30)-(50,50) found by d6 (31,30)-(51,50): both 1 px; right edges at 50 and 51
    assert tile[40, 50].tolist() == green and tile[40, 49].tolist() == black
    assert tile[40, 51].tolist() == red
    # nothing on image 2 is an error: no label box anywhere above the boxes
    assert not tile[:29].any()


def test_only_the_evaluated_images_count(scene):
    gt, dets = scene
    # image 2 alone: D found by d6, nothing else (image 1's misses and false detections
    # are not counted when it was not evaluated)
    matrix, _ = analysis.confusion_matrix(gt, dets, image_ids=[2])
    np.testing.assert_array_equal(matrix, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert [r["image_id"] for r in analysis.image_errors(gt, dets, image_ids=[2])] == [2]
    curves = analysis.precision_recall(gt, dets, image_ids=[2])
    assert curves["ap"][0.5][1] == pytest.approx(1.0)  # class b: one box, found first
