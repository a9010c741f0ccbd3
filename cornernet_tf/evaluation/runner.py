"""COCO AP of a model on the validation split: a checkpoint's CornerNet or an exported file.

    metrics = run_evaluation(model, cfg, "runs/quickstart/eval")            # checkpoint
    metrics = evaluate_export("export/quickstart/1", cfg, "runs/quickstart/eval/saved_model")

Both measure the shipped path. A checkpoint is run through `inference/detector.py`'s
`DetectionFunctions.detect` (the function behind the exported signatures, here with the
evaluation's flip test and scales) on inputs fitted by `image_lib.fit_to_input`, and its
contract outputs are scored like an export's. `evaluate_export` runs the file itself, one
image per call as a server or a device would, and adds latency and file size. The metrics
(pycocotools, no TensorFlow) are in `evaluation.py`.

What is scored is said: the ground truth is the one the loader kept (`load_coco`'s
`report.ground_truth`: boxes and images it reported and dropped are not counted as misses),
and only the images that could be read are scored. The report and `metrics.json` give the
number of images scored, each image that could not be read (file, image id, the decoder's
message) and the ground truth left out, by reason. With `data.strict` an unreadable image
is an error; a split with no readable image is always one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf import keys
from cornernet_tf.data import images as image_lib
from cornernet_tf.inference import preprocess
from cornernet_tf.data import image_files, pipeline
from cornernet_tf.data.coco import DatasetError, LabelMap
from cornernet_tf.data.targets import encode_targets
from cornernet_tf.config.schema import load_config
from cornernet_tf.errors import UserError
from cornernet_tf.evaluation import analysis
from cornernet_tf.config.choices import ORACLES
from cornernet_tf.evaluation.metrics import coco_evaluate, format_coco_table, load_ground_truth
from cornernet_tf.inference.exported import ExportedDetector
from cornernet_tf.inference.detector import build_detector



def evaluation_views(cfg, oracle: str = "none") -> tuple[tuple, bool]:
    """(scales, flip_test) an evaluation runs: the config's, or one plain view for an oracle.

    Raises:
      ValueError: unknown oracle.
    """
    if oracle not in ORACLES:
        raise ValueError(f"evaluate.oracle: expected one of {ORACLES}, found {oracle!r}")
    views = oracle == "none"
    return (tuple(cfg.evaluate.scales) if views else (1.0,)), bool(cfg.evaluate.flip_test) and views


def run_evaluation(model, cfg, output_dir: str, max_images: int = 0, oracle: str = "none",
                   batch_size: int = 8, verbose: bool = True, split: Optional[tuple] = None,
                   detector=None, label_map=None) -> dict:
    """Detects on the validation split, writes COCO results and metrics, returns metrics.

    Args:
      model: a CornerNet (only the last stack's heads are used).
      cfg: resolved Config (data.val_*, data.eval_resize, decode, evaluate).
      output_dir: `detections.json` and `metrics.json` are written here.
      max_images: evaluate the first N images only (0: all).
      oracle: "none" or an error-analysis mode (see `oracle_heads`; no flip test and no
        multi-scale then).
      batch_size: images per forward pass.
      verbose: print the COCO table and per-class AP.
      split: the validation split loaded once by the caller, (records, label_map, report)
        of `pipeline.load_split(..., ground_truth=True)`; None: loaded here.
      detector: `build_detector(model, cfg, score_threshold=0.0, flip_test=..., scales=...)`
        with the views of `evaluation_views(cfg, oracle)`; None: built here.
      label_map: the model's classes (a run's labels.json), which the split's categories
        are matched to by name when it is loaded here; None: the train split's categories.

    Returns:
      the metrics dict of `coco_evaluate` (with "per_class_AP"), plus "images" (scored),
      "images_listed", "unreadable_images", "excluded_ground_truth" (see `_score`),
      "seconds", "oracle", "scales" and "flip_test" (the views actually used).

    Raises:
      ValueError: unknown oracle.
      DatasetError: the split has no readable image; with data.strict, any dataset problem
        or unreadable image.
    """
    scales, flip = evaluation_views(cfg, oracle)
    views = oracle == "none"
    start = time.time()
    records, label_map, report = _val_records(cfg, max_images, split, label_map)
    fns = detector or build_detector(model, cfg, score_threshold=0.0, flip_test=flip,
                                     scales=scales)
    dataset = pipeline.build_dataset(cfg.data, cfg.model, "val", training=False,
                                     batch_size=batch_size, records=records)
    if views:
        results, scored = _detect_split(fns, dataset, label_map)
    else:
        results, scored = _detect_split_with_oracle(fns, dataset, records, cfg, oracle,
                                                    label_map)
    metrics = _score(cfg, results, records, scored, report, output_dir)
    metrics.update(seconds=time.time() - start, oracle=oracle, scales=list(scales),
                   flip_test=flip)
    _write_json(metrics, output_dir, "metrics.json")
    if verbose:
        title = f"COCO bbox on {metrics['images']} images of {cfg.data.val_annotations}"
        if oracle != "none":
            title += f" (oracle: ground-truth {oracle})"
        _print_report(title, metrics, output_dir)
    return metrics


def evaluate_export(model_path: str, cfg, output_dir: str, max_images: int = 0,
                    verbose: bool = True, split: Optional[tuple] = None) -> dict:
    """COCO AP of an exported file (SavedModel folder or .tflite) on the validation split.

    Each image is read by `image_lib.read_image` and given to the export alone, as
    `predict` does (SavedModel: `serving_default`; TFLite: fitted on the host by
    `preprocess.tflite_input`). The exported graph is single scale without flip.

    Args:
      model_path: SavedModel version folder or .tflite file, labels.json beside it.
      cfg: resolved Config (data.val_*, decode.max_detections).
      output_dir: `detections.json` and `metrics.json` are written here.
      max_images: the first N images only (0: all).
      verbose: print the COCO table, latency and size.
      split: the validation split loaded once by the caller (see `run_evaluation`), its
        classes matched to the export's labels.json.

    Returns:
      the `coco_evaluate` metrics plus "model", "format", "bytes" (file size),
      "latency_ms" (median per image, end to end, after one warm-up call),
      "latency_ms_mean", "images" (scored), "images_listed", "unreadable_images",
      "excluded_ground_truth", "seconds".

    Raises:
      FileNotFoundError: model_path is neither a SavedModel folder nor a .tflite file.
      DatasetError: the split has a category the export's labels.json does not name.
      ExportMismatchError: the export has no labels.json and its config.yaml another class
        count than the split.
      DatasetError: the split has no readable image; with data.strict, any dataset problem
        or unreadable image.
    """
    start = time.time()
    exported_labels = _export_labels(model_path)
    records, label_map, report = _val_records(cfg, max_images, split, exported_labels)
    if exported_labels is None:
        _check_export_class_count(model_path, label_map)  # before the (slow) load
    detector = ExportedDetector(model_path)
    results, latencies, scored = [], [], set()
    for r in records:
        try:
            image = image_lib.read_image(r.path).numpy()
        except (tf.errors.OpError, UserError, ValueError):  # skipped, listed by _score
            continue
        scored.add(int(r.image_id))
        if not latencies:
            detector(image)  # warm-up: graph tracing, interpreter allocation
        t0 = time.perf_counter()
        out = detector(image)
        latencies.append(time.perf_counter() - t0)
        boxes, scores, classes, num = preprocess.contract_to_pixels(out, [image.shape[:2]])
        results += detections_to_coco(boxes, scores, classes, num, [r.image_id],
                                      label_map.category_ids)
    metrics = _score(cfg, results, records, scored, report, output_dir)
    metrics.update(model=model_path, format=detector.format, bytes=export_bytes(model_path),
                   latency_ms=float(np.median(latencies) * 1e3) if latencies else -1.0,
                   latency_ms_mean=float(np.mean(latencies) * 1e3) if latencies else -1.0,
                   seconds=time.time() - start, oracle="none", scales=[1.0],
                   flip_test=False)
    _write_json(metrics, output_dir, "metrics.json")
    if verbose:
        _print_report(f"COCO bbox of {model_path} on {metrics['images']} images of "
                      f"{cfg.data.val_annotations}", metrics, output_dir)
        print(f"latency {metrics['latency_ms']:.1f} ms per image (median; mean "
              f"{metrics['latency_ms_mean']:.1f} ms), {metrics['format']} size "
              f"{metrics['bytes'] / 1e6:.2f} MB")
    return metrics


def export_bytes(model_path: str) -> int:
    """Size of an export: the .tflite file, or a SavedModel's own files (saved_model.pb,
    fingerprint, variables, assets; not other files kept in the folder, e.g. .tflite)."""
    if not os.path.isdir(model_path):
        return os.path.getsize(model_path)
    total = 0
    for name in ("saved_model.pb", "fingerprint.pb", "variables", "assets"):
        path = os.path.join(model_path, name)
        if os.path.isfile(path):
            total += os.path.getsize(path)
        for folder, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


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
    corners = ((keys.TL_HEATMAP, keys.TL_INDEX, keys.TL_OFFSET, keys.TL_EMBEDDING),
               (keys.BR_HEATMAP, keys.BR_INDEX, keys.BR_OFFSET, keys.BR_EMBEDDING))
    for b, t in enumerate(targets):
        for heatmap, index, offsets, embedding in corners:
            y = np.clip(t[heatmap], eps, 1 - eps)
            out[heatmap][b] = np.log(y / (1 - y))
            h, w = y.shape[:2]
            valid = np.flatnonzero(t[keys.MASK] > 0)
            rows, cols = np.divmod(t[index][valid], w)
            if oracle in ("heatmaps+offsets", "all"):
                out[offsets][b, rows, cols] = t[offsets][valid]
            if oracle == "all":
                out[embedding][b] = offset
                out[embedding][b, rows, cols, 0] = 2.0 * np.arange(len(valid))
    return out


# ------------------------------------------------------------------------------- steps

def _val_records(cfg, max_images: int, split: Optional[tuple] = None, label_map=None):
    """(records, label_map, report) of the validation split (`split`, or loaded here with
    its classes matched by name to `label_map`, the model's; None: the train split's), the
    first max_images if > 0; the report keeps the ground truth the loader kept.

    Raises:
      DatasetError: no usable image, or none that decodes (`pipeline.require_decodable`).
    """
    if split is None:
        no_validation = pipeline.validation_split(cfg.data)
        if no_validation:
            raise UserError(f"no validation split to evaluate on: {no_validation}; set "
                            f"data.val_annotations and data.val_images")
        split = pipeline.load_split(cfg.data, "val", ground_truth=True, label_map=label_map)
    records, label_map, report = split
    records = records[:max_images] if max_images else records
    pipeline.require_decodable(records, "val", cfg.data.val_annotations, report)
    return records, label_map, report


def _detect_split(fns, dataset, label_map) -> tuple[list, set]:
    """(COCO results of `fns.detect` over the eval pipeline's batches, the image ids that
    came out of the pipeline)."""
    detect = tf.function(fns.detect)  # one trace per input shape (decode needs static grids)
    results, scored = [], set()
    for images, meta in dataset:
        sizes = tf.cast(meta["original_size"], tf.float32)
        out = detect(images, meta["transform"], sizes)
        results += _batch_to_coco(out, meta, label_map)
        scored.update(int(i) for i in meta["image_id"].numpy())
    return results, scored


def _detect_split_with_oracle(fns, dataset, records, cfg, oracle: str,
                              label_map) -> tuple[list, set]:
    """COCO results with heads replaced by ground truth (`oracle_heads`), then the same
    decode and box mapping (`fns.postprocess`), and the image ids scored."""
    by_id = {int(r.image_id): r for r in records}
    heads_fn = tf.function(fns.heads)
    results, scored = [], set()
    for images, meta in dataset:
        scored.update(int(i) for i in meta["image_id"].numpy())
        heads = heads_fn(images)
        input_hw = tuple(int(d) for d in images.shape[1:3])
        grid_hw = tuple(int(d) for d in heads[keys.TL_HEATMAP].shape[1:3])
        targets = [_network_targets(by_id[int(i)], t, cfg.model.num_classes, input_hw, grid_hw)
                   for i, t in zip(meta["image_id"].numpy(), meta["transform"].numpy())]
        heads = {k: tf.constant(v) for k, v in oracle_heads(heads, targets, oracle).items()}
        out = fns.postprocess(heads, input_hw, meta["transform"],
                              tf.cast(meta["original_size"], tf.float32))
        results += _batch_to_coco(out, meta, label_map)
    return results, scored


def _network_targets(record, transform, num_classes: int, input_hw, grid_hw) -> dict:
    """`encode_targets` (numpy) of a record's boxes mapped into the network input."""
    sy, sx, oy, ox = transform
    boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4) * [sx, sy, sx, sy] + \
        [ox, oy, ox, oy]
    t = encode_targets(boxes, np.asarray(record.classes, np.int32), num_classes, input_hw,
                       grid_hw, max_objects=max(len(record.classes), 1))
    return {k: v.numpy() for k, v in t.items()}


def _batch_to_coco(outputs: dict, meta: dict, label_map) -> list:
    """Contract outputs of a batch -> COCO result dicts (original-image pixels)."""
    outputs = {k: v.numpy() for k, v in outputs.items()}
    boxes, scores, classes, num = preprocess.contract_to_pixels(
        outputs, meta["original_size"].numpy())
    return detections_to_coco(boxes, scores, classes, num, meta["image_id"].numpy(),
                              label_map.category_ids)


def _export_labels(model_path: str):
    """The export's classes (its labels.json), or None without one (then the train
    split's classes are taken)."""
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "labels.json")
    return LabelMap.from_json(path) if os.path.isfile(path) else None


class ExportMismatchError(UserError, ValueError):
    """An export evaluated on a split with other classes (a user error: exit 2)."""


def _check_export_class_count(model_path: str, label_map) -> None:
    """An export without labels.json has the split's class count (its config.yaml's)."""
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    hint = ("evaluate an export with the config (and dataset) it was trained with, or "
            "export the model trained on this split")
    config_path = os.path.join(folder, "config.yaml")
    if os.path.isfile(config_path):
        classes = load_config(config_path).model.num_classes
        if classes and classes != len(label_map.category_ids):  # 0: from the dataset
            raise ExportMismatchError(
                f"{config_path}: the export has {classes} classes, the validation split "
                f"{len(label_map.category_ids)}; {hint}")


def _score(cfg, results: list, records: list, scored: set, report,
           output_dir: str) -> dict:
    """Writes detections.json and returns the COCO metrics over the images scored.

    Args:
      results: COCO result dicts.
      records: the records evaluated.
      scored: the image ids that were read and run (the others could not be decoded).
      report: the split's DatasetReport, with the kept ground truth.
      output_dir: where detections.json goes.

    Returns:
      the `coco_evaluate` metrics against the kept ground truth, plus "images" (scored),
      "images_listed" (records), "unreadable_images" ([{"image_id", "file", "reason"}])
      and "excluded_ground_truth" (`_excluded_ground_truth`).

    Raises:
      DatasetError: no image scored, or, with data.strict, an unreadable image.
    """
    _write_json(results, output_dir, "detections.json")
    unreadable = [{"image_id": r.image_id, "file": r.path,
                   "reason": image_files.decode_problem(r.path) or "not decoded"}
                  for r in records if int(r.image_id) not in scored]
    where = f"the 'val' split ({cfg.data.val_annotations})"
    listing = "; ".join(f"{u['file']} (image id {u['image_id']}): {u['reason']}"
                        for u in unreadable[:5])
    if not scored:
        raise DatasetError(f"{where}: none of its {len(records)} images could be read; "
                           f"first: {listing}")
    if unreadable and cfg.data.strict:
        raise DatasetError(f"data.strict: {len(unreadable)} images of {where} could not be "
                           f"read: {listing}")
    image_ids = sorted(int(r.image_id) for r in records if int(r.image_id) in scored)
    ground_truth = load_ground_truth(report.ground_truth)
    max_dets = max(100, cfg.decode.max_detections)
    metrics = coco_evaluate(ground_truth, results, max_dets=max_dets, image_ids=image_ids,
                            per_class=True)
    metrics.update(images=len(image_ids), images_listed=len(records),
                   unreadable_images=unreadable,
                   excluded_ground_truth=_excluded_ground_truth(report, ground_truth,
                                                                unreadable))
    if cfg.evaluate.pictures:
        metrics["pictures"] = analysis.write_evaluation_pictures(
            ground_truth, results, cfg.data.val_images,
            output_dir, score_threshold=cfg.evaluate.picture_score_threshold,
            max_dets=max_dets, image_ids=image_ids)
    return metrics


def _excluded_ground_truth(report, ground_truth, unreadable: list) -> dict:
    """The json's ground truth that was not scored, by reason.

    Returns:
      {"annotations_dropped": {problem kind: count} (boxes the loader reported and dropped),
       "images_dropped": {problem kind: count} (images the loader dropped),
       "annotations_of_dropped_images": int, "unreadable_images": int,
       "annotations_of_unreadable_images": int (objects, crowd regions not counted)}.
    """
    excluded = report.excluded()
    ids = [u["image_id"] for u in unreadable]
    boxes = sum(1 for a in ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=ids))
                if not a.get("iscrowd")) if ids else 0
    return {"annotations_dropped": excluded["annotations"],
            "images_dropped": excluded["images"],
            "annotations_of_dropped_images": excluded["annotations_of_dropped_images"],
            "unreadable_images": len(ids), "annotations_of_unreadable_images": boxes}


def _exclusion_lines(metrics: dict) -> list:
    """What was not scored, in words (empty when everything was)."""
    lines = []
    if metrics["unreadable_images"]:
        lines.append(f"{len(metrics['unreadable_images'])} of {metrics['images_listed']} "
                     f"images could not be read and were not scored:")
        lines += [f"  {u['file']} (image id {u['image_id']}): {u['reason']}"
                  for u in metrics["unreadable_images"][:20]]
        if len(metrics["unreadable_images"]) > 20:
            lines.append(f"  ... and {len(metrics['unreadable_images']) - 20} more "
                         f"(metrics.json lists them all)")
    x = metrics["excluded_ground_truth"]
    parts = []
    if x["annotations_dropped"]:
        parts.append(f"{sum(x['annotations_dropped'].values())} boxes the loader dropped ("
                     + ", ".join(f"{k}={v}" for k, v in x["annotations_dropped"].items()) + ")")
    if x["images_dropped"]:
        parts.append(f"{x['annotations_of_dropped_images']} annotations of "
                     f"{sum(x['images_dropped'].values())} images the loader dropped ("
                     + ", ".join(f"{k}={v}" for k, v in x["images_dropped"].items()) + ")")
    if x["unreadable_images"]:
        parts.append(f"{x['annotations_of_unreadable_images']} boxes of the "
                     f"{x['unreadable_images']} unreadable images")
    if parts:
        lines.append("ground truth not scored (not counted as misses): " + "; ".join(parts))
    return lines


def _write_json(value, output_dir: str, name: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, name), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1 if name == "metrics.json" else None)


def _print_report(title: str, metrics: dict, output_dir: str) -> None:
    print(title)
    for line in _exclusion_lines(metrics):
        print(line)
    print(format_coco_table(metrics))
    if metrics["max_dets"] > 100:
        print(f"(maxDets raised to decode.max_detections = {metrics['max_dets']})")
    print("per-class AP: " + ", ".join(f"{k} {v:.3f}"
                                       for k, v in metrics["per_class_AP"].items()))
    print(f"wrote {os.path.join(output_dir, 'detections.json')} and "
          f"{os.path.join(output_dir, 'metrics.json')}")
    if "pictures" in metrics:
        names = [os.path.basename(metrics["pictures"][k])
                 for k in ("pr_curves", "confusion_matrix", "worst_images")]
        print(f"pictures: {', '.join(names)} in {output_dir}")


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
    xywh = box_lib.xyxy_to_xywh(boxes, dtype=tf.float64)  # [B, N, 4] COCO x, y, w, h
    results = []
    for b, image_id in enumerate(image_ids):
        for i in range(min(int(num_detections[b]), boxes.shape[1])):
            c = int(classes[b, i])
            if c < 0:
                continue
            if c >= len(category_ids):
                raise ValueError(f"detections_to_coco: image {image_id} row {i} has class {c}, "
                                 f"but the label map has {len(category_ids)} classes")
            results.append({"image_id": image_id, "category_id": category_ids[c],
                            "bbox": [float(v) for v in xywh[b, i]],
                            "score": float(scores[b, i])})
    return results
