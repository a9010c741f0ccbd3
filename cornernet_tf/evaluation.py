"""COCO detection metrics via pycocotools: results in COCO format, the 12 COCOeval numbers.

    results = detections_to_coco(boxes, scores, classes, num_detections, image_ids,
                                 category_ids)          # numpy in, list of dicts out
    metrics = coco_evaluate("instances_val.json", results)
    print(format_coco_table(metrics))

This module is the COCO edge of the package: 0-based contiguous classes become dataset
category ids here, boxes become [x, y, w, h]. It imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
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


def load_coco(ground_truth: Union[str, os.PathLike, COCO]) -> COCO:
    """A pycocotools COCO of a json path (loaded quietly), or the COCO given.

    Raises:
      FileNotFoundError: the path does not exist.
    """
    if isinstance(ground_truth, COCO):
        return ground_truth
    path = os.fspath(ground_truth)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO ground-truth json not found: {path!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def coco_evaluate(ground_truth: Union[str, os.PathLike, COCO], detections: Sequence[dict],
                  max_dets: int = 100, image_ids: Optional[Iterable[int]] = None,
                  per_class: bool = False) -> dict:
    """COCO bbox metrics of detections against ground truth (pycocotools COCOeval).

    Args:
      ground_truth: COCO instances json path, or a pycocotools COCO.
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
    coco_gt = load_coco(ground_truth)
    _check_detections(coco_gt, detections)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
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
    metrics = {name: _summary_value(evaluator, *_SUMMARY[name]) for name in METRIC_NAMES}
    metrics["max_dets"] = int(max_dets)
    if per_class:
        metrics["per_class_AP"] = _per_class_ap(evaluator, coco_gt)
    return metrics


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


def detections_to_coco(boxes, scores, classes, num_detections, image_ids: Sequence[int],
                       category_ids: Sequence[int]) -> list:
    """Padded batch detections to COCO result dicts, padding dropped.

    Args:
      boxes: [B, N, 4] xyxy in original-image pixels (numpy or tensors).
      scores: [B, N] float.
      classes: [B, N] int, 0-based contiguous; rows with a negative class are padding.
      num_detections: [B] int, valid rows per image (rows past it are padding).
      image_ids: [B] dataset image ids.
      category_ids: the label map: category_ids[c] is the dataset category id of class c.

    Returns:
      list of {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}.

    Raises:
      ValueError: inconsistent shapes, or a class outside the label map.
    """
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float64)
    classes = np.asarray(classes).astype(np.int64)
    num_detections = np.asarray(num_detections).astype(np.int64).reshape(-1)
    image_ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]
    category_ids = [int(c) for c in category_ids]
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"detections_to_coco: boxes must be [B, N, 4], found {boxes.shape}")
    if scores.shape != boxes.shape[:2] or classes.shape != boxes.shape[:2]:
        raise ValueError(f"detections_to_coco: scores {scores.shape} and classes "
                         f"{classes.shape} must be [B, N] = {boxes.shape[:2]}")
    if len(num_detections) != boxes.shape[0] or len(image_ids) != boxes.shape[0]:
        raise ValueError(f"detections_to_coco: num_detections ({len(num_detections)}) and "
                         f"image_ids ({len(image_ids)}) need one entry per image "
                         f"({boxes.shape[0]})")
    results = []
    for b, image_id in enumerate(image_ids):
        for i in range(min(int(num_detections[b]), boxes.shape[1])):
            c = int(classes[b, i])
            if c < 0:
                continue
            if c >= len(category_ids):
                raise ValueError(f"detections_to_coco: image {image_id} row {i} has class {c}, "
                                 f"but the label map has {len(category_ids)} classes")
            x1, y1, x2, y2 = (float(v) for v in boxes[b, i])
            results.append({"image_id": image_id, "category_id": category_ids[c],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[b, i])})
    return results


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


# --------------------------------------------------------------------------------------
# Running a model over the evaluation split (TensorFlow imported here, not at module load)
# --------------------------------------------------------------------------------------

def oracle_heads(heads: dict, targets: list, oracle: str, offset: float = -100.0) -> dict:
    """Replaces predicted heads by ground truth, for the paper's error analysis (Table 7).

    Args:
      heads: one stack's raw heads, numpy or tensors, batch B.
      targets: B dicts from `encode_targets` (numpy) for the images of the batch.
      oracle: "heatmaps" (GT heatmaps), "heatmaps+offsets" (and GT offsets at the GT
        corners), "all" (and embeddings: object k gets value 2k at both corners).
      offset: the embedding value away from the ground-truth corners (far from every
        object's 2k, so background cells never pair with a true corner).

    Returns:
      heads with the chosen maps replaced (heatmaps as logits of the clipped Gaussians).
    """
    out = {k: np.array(v) for k, v in heads.items()}
    eps = 1e-4
    for b, t in enumerate(targets):
        for corner in ("tl", "br"):
            y = np.clip(t[f"{corner}_heatmap"], eps, 1 - eps)
            out[f"{corner}_heatmap"][b] = np.log(y / (1 - y))
            h, w = y.shape[:2]
            valid = np.flatnonzero(t["mask"] > 0)
            rows, cols = np.divmod(t[f"{corner}_index"][valid], w)
            if oracle in ("heatmaps+offsets", "all"):
                out[f"{corner}_offset"][b, rows, cols] = t[f"{corner}_offset"][valid]
            if oracle == "all":
                out[f"{corner}_embedding"][b] = offset
                out[f"{corner}_embedding"][b, rows, cols, 0] = 2.0 * np.arange(len(valid))
    return out


def run_evaluation(model, cfg, output_dir: str, max_images: int = 0, oracle: str = "none",
                   batch_size: int = 8, verbose: bool = True) -> dict:
    """Detects on the validation split, writes COCO results and metrics, returns metrics.

    Args:
      model: a CornerNet (only the last stack's heads are used).
      cfg: resolved Config (data.val_*, decode, evaluate.flip_test).
      output_dir: `detections.json` and `metrics.json` are written here.
      max_images: evaluate the first N images only (0: all).
      oracle: "none" or an error-analysis mode (see `oracle_heads`; no flip test and no
        multi-scale then).
      batch_size: images per forward pass.
      verbose: print the COCO table and per-class AP.

    Returns:
      the metrics dict of `coco_evaluate` (with "per_class_AP"), plus "images",
      "seconds" and "oracle".
    """
    import time

    import tensorflow as tf

    from cornernet_tf.data import pipeline
    from cornernet_tf.data.augment import boxes_to_original
    from cornernet_tf.data.targets import encode_targets
    from cornernet_tf.decode import (decode, decode_kwargs_from_config, decode_pairs,
                                     decode_with_flip, flip_boxes, merge_detections)

    start = time.time()
    records, label_map, _ = pipeline.load_split(cfg.data, "val")
    if max_images:
        records = records[:max_images]
    by_id = {int(r.image_id): r for r in records}
    dataset = pipeline.build_dataset(cfg.data, cfg.model, "val", training=False,
                                     batch_size=batch_size, records=records)
    kwargs = decode_kwargs_from_config(cfg.decode)
    flip = cfg.evaluate.flip_test

    @tf.function(reduce_retracing=True)
    def forward(images):
        heads = model(images, training=False)[-1]
        flipped = model(images[:, :, ::-1], training=False)[-1] if flip else heads
        return heads, flipped

    scales = tuple(cfg.evaluate.scales)
    multi_scale = scales != (1.0,) and oracle == "none"
    multiple = 2 ** (len(cfg.model.resolved("channels")) - 1)  # grid cells the hourglass halves

    def scaled_size(n: int, s: float) -> int:
        """An input size near n * s whose output grid the hourglass can halve."""
        if s == 1.0:
            return n
        stride = cfg.model.stride
        return max(multiple, int(round(n * s / stride / multiple)) * multiple) * stride

    @tf.function(reduce_retracing=True)
    def multi_scale_fn(images):
        # The reference's multi-scale test: pre-NMS pairs of every scale (and flip) mapped to
        # network-input pixels, pooled, one soft-NMS (decode.merge_detections).
        in_h, in_w = images.shape[1], images.shape[2]
        pair_kwargs = {k: kwargs[k] for k in ("k", "ae_threshold", "nms_kernel", "num_pairs")}
        sets = []
        for s in scales:
            size = [scaled_size(in_h, s), scaled_size(in_w, s)]
            x = images if size == [in_h, in_w] else tf.image.resize(images, size)
            for flipped in ((False, True) if flip else (False,)):
                heads = model(x[:, :, ::-1] if flipped else x, training=False)[-1]
                out_h, out_w = heads["tl_heatmap"].shape[1:3]
                c = decode_pairs(heads, **pair_kwargs)
                boxes = flip_boxes(c["boxes"], out_w) if flipped else c["boxes"]
                to_input = tf.constant([in_w / out_w, in_h / out_h] * 2, tf.float32)
                sets.append(dict(c, boxes=boxes * to_input))
        return merge_detections(sets, max_detections=kwargs["max_detections"],
                                soft_nms_sigma=kwargs["soft_nms_sigma"],
                                score_threshold=kwargs["score_threshold"])

    @tf.function(reduce_retracing=True)
    def decode_fn(heads, flipped):
        return decode_with_flip(heads, flipped, **kwargs) if flip else decode(heads, **kwargs)

    results = []
    for images, meta in dataset:
        in_h, in_w = int(images.shape[1]), int(images.shape[2])
        if multi_scale:
            det = multi_scale_fn(images)  # boxes already in network-input pixels
            boxes = boxes_to_original(det["boxes"], meta["transform"], meta["original_size"])
            results += detections_to_coco(boxes.numpy(), det["scores"].numpy(),
                                          det["classes"].numpy(), det["num_detections"].numpy(),
                                          meta["image_id"].numpy(), label_map.category_ids)
            continue
        heads, flipped = forward(images)
        in_h, in_w = int(images.shape[1]), int(images.shape[2])
        out_h, out_w = (int(d) for d in heads["tl_heatmap"].shape[1:3])
        if oracle != "none":
            targets = []
            for b, image_id in enumerate(meta["image_id"].numpy()):
                r = by_id[int(image_id)]
                sy, sx, oy, ox = meta["transform"][b].numpy()
                boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4) * [sx, sy, sx, sy] + \
                    [ox, oy, ox, oy]
                t = encode_targets(boxes, np.asarray(r.classes, np.int32), cfg.model.num_classes,
                                   (in_h, in_w), (out_h, out_w),
                                   max_objects=max(len(r.classes), 1))
                targets.append({k: v.numpy() for k, v in t.items()})
            heads = {k: tf.constant(v) for k, v in oracle_heads(heads, targets, oracle).items()}
            det = decode(heads, **kwargs)  # ground truth has no flipped view to merge
        else:
            det = decode_fn(heads, flipped)
        scale = tf.constant([in_w / out_w, in_h / out_h, in_w / out_w, in_h / out_h])
        boxes = boxes_to_original(det["boxes"] * scale, meta["transform"],
                                  meta["original_size"])
        results += detections_to_coco(boxes.numpy(), det["scores"].numpy(),
                                      det["classes"].numpy(), det["num_detections"].numpy(),
                                      meta["image_id"].numpy(), label_map.category_ids)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "detections.json"), "w", encoding="utf-8") as f:
        json.dump(results, f)
    val_annotations = pipeline.split_files(cfg.data, "val")[0]
    metrics = coco_evaluate(val_annotations, results, max_dets=max(100, cfg.decode.max_detections),
                            image_ids=list(by_id), per_class=True)
    metrics.update(images=len(records), seconds=time.time() - start, oracle=oracle,
                   scales=list(scales) if multi_scale else [1.0],
                   flip_test=flip)
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    if verbose:
        title = f"COCO bbox on {len(records)} images of {val_annotations}"
        if oracle != "none":
            title += f" (oracle: ground-truth {oracle})"
        print(title)
        print(format_coco_table(metrics))
        if metrics["max_dets"] > 100:
            print(f"(maxDets raised to decode.max_detections = {metrics['max_dets']})")
        print("per-class AP: " + ", ".join(f"{k} {v:.3f}"
                                           for k, v in metrics["per_class_AP"].items()))
        print(f"wrote {os.path.join(output_dir, 'detections.json')} and "
              f"{os.path.join(output_dir, 'metrics.json')}")
    return metrics
