"""COCO detection metrics via pycocotools: results in COCO format, the 12 COCOeval numbers.

    results = eval_runner.detections_to_coco(...)  # numpy in, COCO result dicts out
    metrics = coco_evaluate("instances_val.json", results)
    print(format_coco_table(metrics))

Detections become COCO result dicts (dataset category ids, [x, y, w, h] boxes) in
`eval_runner.detections_to_coco`, through boxes.py. This module imports no TensorFlow; running a model
(a checkpoint or an exported file) over the validation split is `evaluation/runner.py`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The 12 COCOeval summary numbers, in COCOeval's order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# name -> (average precision?, IoU threshold or None for .50:.95, area range, maxDets slot)
_SUMMARY = {
    "AP": (True, None, "all", 2), "AP50": (True, 0.5, "all", 2),
    "AP75": (True, 0.75, "all", 2), "APs": (True, None, "small", 2),
    "APm": (True, None, "medium", 2), "APl": (True, None, "large", 2),
    "AR1": (False, None, "all", 0), "AR10": (False, None, "all", 1),
    "AR100": (False, None, "all", 2), "ARs": (False, None, "small", 2),
    "ARm": (False, None, "medium", 2), "ARl": (False, None, "large", 2),
}
_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


GroundTruth = Union[str, os.PathLike, dict, COCO]


def load_ground_truth(ground_truth: GroundTruth) -> COCO:
    """A pycocotools COCO of a json path or a COCO instances dict (loaded quietly), or the
    COCO given.

    The dict is what `data.coco.load_coco(ground_truth=True)` keeps in its report
    (`report.ground_truth`): the ground truth as the loader kept it, so that boxes and
    images it reported and dropped are not scored as misses. (Not `data.coco.load_coco`
    itself, which reads and validates a dataset into records.)

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: a dict without the lists "images", "annotations", "categories".
    """
    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, dict):
        missing = [k for k in ("images", "annotations", "categories")
                   if not isinstance(ground_truth.get(k), list)]
        if missing:
            raise ValueError(f"load_ground_truth: a COCO instances dict needs the lists "
                             f"{missing}; found keys {sorted(ground_truth)}")
        coco = COCO()
        coco.dataset = ground_truth
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    path = os.fspath(ground_truth)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO ground-truth json not found: {path!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def coco_evaluate(ground_truth: GroundTruth, detections: Sequence[dict],
                  max_dets: int = 100, image_ids: Optional[Iterable[int]] = None,
                  per_class: bool = False) -> dict:
    """COCO bbox metrics of detections against ground truth (pycocotools COCOeval).

    Args:
      ground_truth: COCO instances json path, a COCO instances dict (e.g. the loader's
        kept ground truth, `load_ground_truth`), or a pycocotools COCO.
      detections: COCO result dicts {"image_id": int, "category_id": int (dataset id),
        "bbox": [x, y, w, h] original-image pixels, "score": float}. Not modified.
      max_dets: detections per image counted; COCOeval's maxDets becomes
        [1, 10, max_dets]. AP, AP50, AP75, APs/m/l and AR100, ARs/m/l are then measured
        at max_dets (the key "AR100" keeps its standard name; see "max_dets").
      image_ids: evaluate only these images (e.g. a subset that was run); default: every
        image of the ground truth (an image without detections counts its objects as
        missed).
      per_class: also return "per_class_AP": {category name: AP@[.5:.95]}.

    Returns:
      dict of the 12 floats by name (METRIC_NAMES; -1.0 where COCOeval has nothing to
      average, e.g. APs without small objects) and "max_dets": int.

    Raises:
      ValueError: max_dets < 1, a detection lacks a key or has a malformed bbox, or names
        an image or category id that the ground truth does not have.
    """
    if int(max_dets) < 1:
        raise ValueError(f"coco_evaluate: max_dets must be >= 1, found {max_dets}")
    coco_gt = load_ground_truth(ground_truth)
    _check_detections(coco_gt, detections)
    evaluator = run_cocoeval(coco_gt, detections, max_dets, image_ids)
    metrics = {name: _summary_value(evaluator, *_SUMMARY[name]) for name in METRIC_NAMES}
    metrics["max_dets"] = int(max_dets)
    if per_class:
        metrics["per_class_AP"] = _per_class_ap(evaluator, coco_gt)
    return metrics


def run_cocoeval(coco_gt: COCO, detections: Sequence[dict], max_dets: int = 100,
                 image_ids: Optional[Iterable[int]] = None) -> COCOeval:
    """COCOeval (bbox) evaluated and accumulated, quietly; the one place it is set up.

    Args:
      coco_gt: the ground truth.
      detections: COCO result dicts (checked by the caller).
      max_dets: COCOeval's maxDets becomes [1, 10, max_dets].
      image_ids: evaluate only these images; default every image of the ground truth.

    Returns:
      the COCOeval, with `eval["precision"]` [T, R, K, A, M] and `eval["recall"]`.

    Raises:
      ValueError: an image id that the ground truth does not have.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(detections)))
        else:  # loadRes cannot take an empty list; an empty result set scores 0 recall
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                               "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                               "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, int(max_dets)]
        if image_ids is not None:
            ids = sorted({int(i) for i in image_ids})
            unknown = sorted(set(ids) - set(coco_gt.getImgIds()))
            if unknown:
                raise ValueError(f"coco_evaluate: image_ids {unknown[:10]} are not in the "
                                 f"ground truth")
            evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _per_class_ap(evaluator: COCOeval, coco_gt: COCO) -> dict:
    """{category name: AP@[.5:.95]} (-1.0 for a category with no ground truth)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area=all, maxDets
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        name = coco_gt.cats[cat_id].get("name", str(cat_id))
        out[name] = float(np.mean(values)) if values.size else -1.0
    return out


def _summary_value(evaluator: COCOeval, precision: bool, iou: Optional[float], area: str,
                   slot: int) -> float:
    """One COCOeval summary number: the mean over the entries that exist (> -1)."""
    params = evaluator.params
    a = params.areaRngLbl.index(area)
    values = evaluator.eval["precision" if precision else "recall"]
    # precision: [T IoUs, R recall points, K classes, A areas, M maxDets]; recall: [T, K, A, M]
    values = values[..., a, slot]
    if iou is not None:
        values = values[np.flatnonzero(np.isclose(params.iouThrs, iou))]
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def _check_detections(coco_gt: COCO, detections: Sequence[dict]) -> None:
    if not isinstance(detections, (list, tuple)):
        raise ValueError(f"coco_evaluate: detections must be a list of dicts, found "
                         f"{type(detections).__name__}")
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for i, det in enumerate(detections):
        missing = [k for k in _DETECTION_KEYS if k not in det]
        if missing:
            raise ValueError(f"coco_evaluate: detection {i} lacks {missing}; expected keys "
                             f"{list(_DETECTION_KEYS)}, found {sorted(det)}")
        if len(det["bbox"]) != 4:
            raise ValueError(f"coco_evaluate: detection {i} bbox must be [x, y, w, h], "
                             f"found {det['bbox']}")
        if det["image_id"] not in image_ids:
            raise ValueError(f"coco_evaluate: detection {i} has image_id {det['image_id']}, "
                             f"which is not in the ground truth")
        if det["category_id"] not in category_ids:
            raise ValueError(f"coco_evaluate: detection {i} has category_id "
                             f"{det['category_id']}, not in the ground truth's "
                             f"{sorted(category_ids)} (is the label map right?)")


def format_coco_table(metrics: dict) -> str:
    """The standard 12-line COCOeval summary of a `coco_evaluate` result."""
    max_dets = int(metrics.get("max_dets", 100))
    slots = (1, 10, max_dets)
    lines = []
    for name in METRIC_NAMES:
        precision, iou, area, slot = _SUMMARY[name]
        title = "Average Precision  (AP)" if precision else "Average Recall     (AR)"
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | "
                     f"maxDets={slots[slot]:>3d} ] = {metrics[name]:0.3f}")
    return "\n".join(lines)
