"""Pictures of an evaluation: precision-recall curves, a confusion matrix, the worst images.

    gt = coco_metrics.load_coco("instances_val.json")      # pycocotools COCO
    paths = write_evaluation_pictures(gt, results, image_dir, "runs/x/eval")

Inputs are what evaluation already has: the ground truth as a pycocotools COCO and the
detections as COCO result dicts (`[x, y, w, h]` original-image pixels, dataset category
ids). Everything here is host-side numpy, pycocotools and matplotlib (the plotting library
of the scientific-Python ecosystem; TensorBoard's PR-curve plugin needs TF summaries and
a running server, which an evaluation folder should not). Box conversions and IoU are
`boxes.py`'s, in float64: the same intersection-over-union of COCO `[x, y, w, h]`
rectangles that COCOeval computes, so "matched at IoU 0.5" means here what it means in
the AP50 the table reports (tests/test_analysis.py checks a value by hand).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

import matplotlib
import tensorflow as tf

matplotlib.use("Agg")  # files only; never a window (CI and servers have no display)
import matplotlib.pyplot as plt  # noqa: E402

from cornernet_tf import boxes as box_lib  # noqa: E402
from cornernet_tf.evaluation import metrics as evaluation  # noqa: E402
from cornernet_tf.evaluation import visualize  # noqa: E402

BACKGROUND = "background"
GROUND_TRUTH_COLOUR = (0, 200, 0)  # green: ground truth in the gallery
PREDICTION_COLOUR = (230, 25, 75)  # red: detections in the gallery
PR_IOUS = (0.5, 0.75)


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------

def pairwise_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair, as COCOeval computes it.

    Args:
      boxes_a: [N, 4] float COCO `[x, y, w, h]`.
      boxes_b: [M, 4] float COCO `[x, y, w, h]`.

    Returns:
      [N, M] float64.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_lib.compute_iou(_xywh_to_xyxy(a), _xywh_to_xyxy(b))


def match_greedy(iou: np.ndarray, scores: np.ndarray, allowed: Optional[np.ndarray] = None,
                 threshold: float = 0.5) -> np.ndarray:
    """COCO-style greedy matching: detections by descending score take their best free box.

    Args:
      iou: [D, G] IoU of detections with ground-truth boxes.
      scores: [D] detection scores.
      allowed: [D, G] bool, which pairs may match (e.g. same class); default all.
      threshold: the smallest IoU of a match.

    Returns:
      [D] int: the matched ground-truth index per detection, -1 for none.
    """
    num_dets, num_gt = iou.shape
    matched = np.full(num_dets, -1, np.int64)
    taken = np.zeros(num_gt, bool)
    ok = np.ones_like(iou, bool) if allowed is None else np.asarray(allowed, bool)
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(ok[d] & ~taken & (iou[d] >= threshold), iou[d], -1.0)
        if num_gt and candidates.max() >= threshold:
            g = int(candidates.argmax())
            matched[d] = g
            taken[g] = True
    return matched


def _per_image(coco_gt: COCO, detections: Sequence[dict], score_threshold: float,
               image_ids: Optional[Sequence[int]] = None):
    """Yields (image id, gt [G,4] xywh, gt category ids [G], det [D,4], det cats [D], scores [D]).

    Crowd ground truth is left out, as COCOeval leaves it out of the misses.
    """
    by_image: dict = {}
    for det in detections:
        if det["score"] >= score_threshold:
            by_image.setdefault(det["image_id"], []).append(det)
    for image_id in sorted(coco_gt.getImgIds() if image_ids is None else image_ids):
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        dets = by_image.get(image_id, [])
        yield (image_id,
               np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
               np.array([a["category_id"] for a in anns], np.int64),
               np.array([d["bbox"] for d in dets], np.float64).reshape(-1, 4),
               np.array([d["category_id"] for d in dets], np.int64),
               np.array([d["score"] for d in dets], np.float64))


def confusion_matrix(coco_gt: COCO, detections: Sequence[dict], iou_threshold: float = 0.5,
                     score_threshold: float = 0.3,
                     image_ids: Optional[Sequence[int]] = None) -> tuple[np.ndarray, list]:
    """Ground-truth class vs predicted class at an IoU, with background on both axes.

    Detections scoring >= score_threshold are matched to ground truth of any class (greedy,
    by score, one detection per box; a same-class box is preferred when both overlap
    enough). A matched pair counts at [true class, predicted class]; an unmatched detection
    at [background, predicted class] (a false positive); an unmatched ground-truth box at
    [true class, background] (a miss).

    Args:
      coco_gt: the ground truth.
      detections: COCO result dicts.
      iou_threshold: the smallest IoU of a match.
      score_threshold: detections below are ignored.
      image_ids: the images evaluated (default: every image of the ground truth).

    Returns:
      (matrix [K + 1, K + 1] int64, rows ground truth and columns predictions, index K is
      background; labels [K + 1]: category names in `coco_gt.getCatIds()` order, then
      "background").
    """
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    for _, gt, gt_cats, det, det_cats, scores in _per_image(coco_gt, detections,
                                                            score_threshold, image_ids):
        iou = pairwise_iou(det, gt)
        same = det_cats[:, None] == gt_cats[None, :]
        # Same-class matches first (they are what AP counts), then cross-class confusions.
        matched = match_greedy(iou, scores, same, iou_threshold)
        free_gt = np.ones(len(gt), bool)
        free_gt[matched[matched >= 0]] = False
        rest = matched < 0
        allowed = np.broadcast_to(free_gt[None, :], iou.shape) & rest[:, None]
        cross = match_greedy(iou, scores, allowed, iou_threshold)
        matched = np.where(rest, cross, matched)
        for d, g in enumerate(matched):
            row = index[int(gt_cats[g])] if g >= 0 else bg
            matrix[row, index[int(det_cats[d])]] += 1
        hit = np.zeros(len(gt), bool)
        hit[matched[matched >= 0]] = True
        for g in np.flatnonzero(~hit):
            matrix[index[int(gt_cats[g])], bg] += 1
    labels = [coco_gt.cats[c].get("name", str(c)) for c in cat_ids] + [BACKGROUND]
    return matrix, labels


def precision_recall(coco_gt: COCO, detections: Sequence[dict], max_dets: int = 100,
                     image_ids: Optional[Sequence[int]] = None) -> dict:
    """COCOeval's interpolated precision-recall curves per class at IoU 0.5 and 0.75.

    Args:
      coco_gt: the ground truth.
      detections: COCO result dicts.
      max_dets: detections per image counted (COCOeval's largest maxDets).
      image_ids: the images evaluated (default: every image of the ground truth).

    Returns:
      {"recall": [R] the 101 recall thresholds, "precision": {iou: [K, R]} (-1 where a class
      has no ground truth), "ap": {iou: [K]}, "names": [K] category names}.
    """
    cat_ids = sorted(coco_gt.getCatIds())  # COCOeval's class axis follows this order
    evaluator = evaluation.run_cocoeval(coco_gt, detections, max_dets=max_dets,
                                        image_ids=image_ids)
    # precision: [T IoUs, R recall thresholds, K classes, A areas, M maxDets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    out = {"recall": np.asarray(evaluator.params.recThrs), "precision": {}, "ap": {},
           "names": [coco_gt.cats[c].get("name", str(c)) for c in cat_ids]}
    for iou in PR_IOUS:
        t = int(np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))[0])
        curves = precision[t].T  # [K, R]
        out["precision"][iou] = curves
        out["ap"][iou] = np.array([c[c > -1].mean() if (c > -1).any() else -1.0
                                   for c in curves])
    return out


def image_errors(coco_gt: COCO, detections: Sequence[dict], iou_threshold: float = 0.5,
                 score_threshold: float = 0.3, image_ids: Optional[Sequence[int]] = None) -> list:
    """Misses and false detections per image (same-class greedy matching at an IoU).

    Returns:
      list of {"image_id", "missed": [G] indices into the image's non-crowd annotations,
      "false": [D] indices into its detections >= score_threshold, "gt": [G, 4],
      "gt_cats", "det": [D, 4], "det_cats", "scores"}, worst first (most misses + false
      detections; ties by image id).
    """
    rows = []
    for image_id, gt, gt_cats, det, det_cats, scores in _per_image(coco_gt, detections,
                                                                   score_threshold, image_ids):
        matched = match_greedy(pairwise_iou(det, gt), scores,
                               det_cats[:, None] == gt_cats[None, :], iou_threshold)
        hit = np.zeros(len(gt), bool)
        hit[matched[matched >= 0]] = True
        rows.append({"image_id": image_id, "missed": np.flatnonzero(~hit),
                     "false": np.flatnonzero(matched < 0), "gt": gt, "gt_cats": gt_cats,
                     "det": det, "det_cats": det_cats, "scores": scores})
    rows.sort(key=lambda r: (-(len(r["missed"]) + len(r["false"])), r["image_id"]))
    return rows


def best_f1_threshold(coco_gt: COCO, detections: Sequence[dict], iou_threshold: float = 0.5,
                      image_ids: Optional[Sequence[int]] = None) -> dict:
    """The score threshold at which precision and recall balance best (largest F1).

    Detections are matched to ground truth of their class once, greedily by descending
    score (as `image_errors`); a detection's match does not depend on detections scoring
    below it, so counting true positives down the sorted scores gives precision and recall
    at every threshold in one pass.

    Returns:
      {"threshold": the score of the best F1 (0.0 with no detection), "f1", "precision",
      "recall", "iou_threshold"}.
    """
    scores, hits, num_gt = [], [], 0
    for _, gt, gt_cats, det, det_cats, det_scores in _per_image(coco_gt, detections, -np.inf,
                                                                image_ids):
        num_gt += len(gt)
        matched = match_greedy(pairwise_iou(det, gt), det_scores,
                               det_cats[:, None] == gt_cats[None, :], iou_threshold)
        scores.append(det_scores)
        hits.append(matched >= 0)
    best = {"threshold": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0,
            "iou_threshold": iou_threshold}
    if not scores or not sum(len(s) for s in scores) or not num_gt:
        return best
    scores, hits = np.concatenate(scores), np.concatenate(hits)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], np.cumsum(hits[order])
    # a threshold keeps every detection scoring >= it: evaluate at the last of each score
    last = np.r_[scores[1:] != scores[:-1], True]
    kept = np.arange(1, len(scores) + 1)[last]
    tp, thresholds = tp[last], scores[last]
    precision, recall = tp / kept, tp / num_gt
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    i = int(np.argmax(f1))
    best.update(threshold=float(thresholds[i]), f1=float(f1[i]),
                precision=float(precision[i]), recall=float(recall[i]))
    return best


# --------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------

def plot_precision_recall(curves: dict, path: str) -> str:
    """One small panel per class: precision vs recall at IoU 0.5 and 0.75, AP in the title."""
    names = curves["names"]
    cols = min(len(names), 5)
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.7 * rows), squeeze=False)
    legend = False  # on the first panel with curves (a class without ground truth has none)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        titles = []
        for iou, style in zip(PR_IOUS, ("-", "--")):
            p = curves["precision"][iou][k]
            if (p > -1).any():
                ax.plot(curves["recall"], np.maximum(p, 0), style, label=f"IoU {iou}")
                titles.append(f"{curves['ap'][iou][k]:.2f}")
        ax.set_title(f"{names[k]}  AP50/75 " + "/".join(titles) if titles
                     else f"{names[k]} (no ground truth)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if titles and not legend:
            legend = True
            ax.legend(fontsize=7, loc="lower left")
            ax.set_xlabel("recall", fontsize=7)
            ax.set_ylabel("precision", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str,
                   iou_threshold: float = 0.5, score_threshold: float = 0.3) -> str:
    """The confusion matrix as a heat map with counts, rows normalised for the colour."""
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(matrix / totals, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(f"IoU >= {iou_threshold}, score >= {score_threshold}", fontsize=9)
    if len(labels) <= 30:
        for (r, c), n in np.ndenumerate(matrix):
            if n:
                ax.text(c, r, str(n), ha="center", va="center", fontsize=7,
                        color="white" if n / totals[r, 0] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] COCO xywh -> [N, 4] float64 xyxy (boxes.py, host-side)."""
    return box_lib.xywh_to_xyxy(np.asarray(boxes, np.float64).reshape(-1, 4), dtype=tf.float64)


def draw_errors(image: np.ndarray, row: dict, names: dict) -> np.ndarray:
    """One gallery tile: ground truth in green, detections in red.

    Errors are drawn thick and labelled (a missed box with its class, a false detection
    with its class and score); what was found is drawn thin and unlabelled, so that a
    busy image still shows its errors.

    Args:
      image: [H, W, 3] uint8 RGB, the original image.
      row: one entry of `image_errors`.
      names: {category id: name}.

    Returns:
      [H, W, 3] uint8 RGB.
    """
    missed = np.zeros(len(row["gt"]), bool)
    missed[np.asarray(row["missed"], np.int64)] = True
    false = np.zeros(len(row["det"]), bool)
    false[np.asarray(row["false"], np.int64)] = True
    gt_labels = [names.get(int(c), str(c)) if m else ""
                 for c, m in zip(row["gt_cats"], missed)]
    det_labels = [f"{names.get(int(c), str(c))} {s:.2f}" if f else ""
                  for c, s, f in zip(row["det_cats"], row["scores"], false)]
    out = visualize.draw_boxes(image, _xywh_to_xyxy(row["gt"]), gt_labels,
                               GROUND_TRUTH_COLOUR, widths=np.where(missed, 2, 1))
    return visualize.draw_boxes(out, _xywh_to_xyxy(row["det"]), det_labels,
                                PREDICTION_COLOUR, widths=np.where(false, 2, 1))


def write_gallery(coco_gt: COCO, rows: Sequence[dict], image_dir: str, path: str,
                  count: int = 8, tile: int = 256) -> tuple[str, list]:
    """The `count` images with the most errors, drawn and tiled into one PNG.

    Returns:
      (path, the image ids shown, worst first).
    """
    from PIL import Image  # Pillow is a dependency of matplotlib and of the package

    names = {c: coco_gt.cats[c].get("name", str(c)) for c in coco_gt.getCatIds()}
    shown, tiles = [], []
    for row in rows[:count]:
        info = coco_gt.imgs[row["image_id"]]
        with Image.open(os.path.join(image_dir, info["file_name"])) as im:
            image = np.asarray(im.convert("RGB"))
        picture = Image.fromarray(draw_errors(image, row, names))
        scale = tile / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)),
                                  max(1, round(picture.height * scale))), Image.BILINEAR)
        canvas = Image.new("RGB", (tile, tile), (255, 255, 255))
        canvas.paste(picture, (0, 0))
        tiles.append(canvas)
        shown.append(row["image_id"])
    cols = min(4, max(1, len(tiles)))
    grid = Image.new("RGB", (cols * tile, max(1, math.ceil(len(tiles) / cols)) * tile),
                     (255, 255, 255))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * tile, (i // cols) * tile))
    grid.save(path)
    return path, shown


def write_evaluation_pictures(coco_gt: COCO, detections: Sequence[dict], image_dir: str,
                              output_dir: str, score_threshold: Optional[float] = None,
                              gallery_size: int = 8, max_dets: int = 100,
                              image_ids: Optional[Sequence[int]] = None) -> dict:
    """Writes pr_curves.png, confusion_matrix.png (+ .json) and worst_images.png.

    Args:
      coco_gt: the ground truth the metrics were computed on.
      detections: COCO result dicts.
      image_dir: where the ground truth's `file_name`s are.
      output_dir: the evaluation folder (created if missing).
      score_threshold: detections below are left out of the confusion matrix and gallery
        (the PR curves use every detection, as AP does); None or negative: the threshold of
        the best F1 at IoU 0.5 (`best_f1_threshold`).
      gallery_size: images in the gallery.
      max_dets: detections per image for the PR curves.
      image_ids: the images evaluated (default: every image of the ground truth).

    Returns:
      {"pr_curves", "confusion_matrix", "confusion_matrix_json", "worst_images"}: paths,
      "worst_image_ids", "score_threshold" (the one used) and "best_f1" (its F1, precision
      and recall at IoU 0.5).
    """
    import json

    os.makedirs(output_dir, exist_ok=True)
    best = best_f1_threshold(coco_gt, detections, image_ids=image_ids)
    if score_threshold is None or score_threshold < 0:
        score_threshold = best["threshold"]
    curves = precision_recall(coco_gt, detections, max_dets=max_dets, image_ids=image_ids)
    matrix, labels = confusion_matrix(coco_gt, detections, score_threshold=score_threshold,
                                      image_ids=image_ids)
    rows = image_errors(coco_gt, detections, score_threshold=score_threshold,
                        image_ids=image_ids)
    out = {"pr_curves": plot_precision_recall(curves, os.path.join(output_dir,
                                                                   "pr_curves.png")),
           "confusion_matrix": plot_confusion(matrix, labels,
                                              os.path.join(output_dir, "confusion_matrix.png"),
                                              score_threshold=round(score_threshold, 3))}
    json_path = os.path.join(output_dir, "confusion_matrix.json")
    with open(json_path, "w") as f:
        json.dump({"labels": labels, "rows": "ground truth", "columns": "predicted",
                   "iou_threshold": 0.5, "score_threshold": score_threshold,
                   "best_f1": best, "matrix": matrix.tolist()}, f, indent=1)
    out["confusion_matrix_json"] = json_path
    out["worst_images"], out["worst_image_ids"] = write_gallery(
        coco_gt, rows, image_dir, os.path.join(output_dir, "worst_images.png"),
        count=gallery_size)
    out["score_threshold"], out["best_f1"] = float(score_threshold), best
    return out
