"""`--mode=export`: checkpoint -> SavedModel (TF Serving layout) [-> TFLite + parity].

    result = export_model(cfg, model_dir="runs/quickstart", export_dir="export")
    result["saved_model"]   # export/quickstart/1
    result["tflite"]        # {"int8": {"path": ..., "parity": {...}, "bytes": ...}}
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from cornernet_tf.data import images as image_lib
from cornernet_tf.inference import preprocess


def _tflite_inputs(paths: Sequence[str], size) -> list[np.ndarray]:
    """Images as a TFLite file receives them: uint8 [h, w, 3] fitted by
    `preprocess.tflite_input` (aspect kept, zero-padded), the host side of predict and
    evaluation of .tflite files."""
    return [preprocess.tflite_input(image_lib.read_image(p).numpy(), size)[0][0]
            for p in paths]


def run_best_f1(model_dir: str) -> Optional[dict]:
    """The best-F1 operating point of the run's evaluation (`<model_dir>/eval/metrics.json`,
    written by `--mode=evaluate` with evaluate.pictures), or None when there is none.

    Returns:
      {"threshold", "f1", "precision", "recall", "iou_threshold", "source"} or None.
    """
    path = os.path.join(model_dir, "eval", "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            best = json.load(f)["pictures"]["best_f1"]
        threshold = float(best["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not 0.0 < threshold <= 1.0:  # 0.0: the evaluation had no detection
        return None
    return dict(best, threshold=threshold, source=path)


def export_model(cfg, model_dir: str, export_dir: str = "export",
                 checkpoint: Optional[str] = None, tflite_modes: Optional[Sequence[str]] = None,
                 parity_images: int = 4, verbose: bool = True) -> dict:
    """Restores the trained model and writes the configured exports.

    Args:
      cfg: resolved Config (export.name, export.tflite, decode, model).
      model_dir: where training wrote checkpoints and labels.json.
      export_dir: root of the exports.
      checkpoint: a specific checkpoint path (default: the newest in model_dir).
      tflite_modes: TFLite conversions to make (default: [cfg.export.tflite] unless "none").
      parity_images: validation images used for the TFLite parity check.
      verbose: print what was written.

    Returns:
      dict: "checkpoint", "saved_model" (version folder), "tflite": {mode: {"path",
      "bytes", "parity"}}.
    """
    from cornernet_tf.data import coco, pipeline
    from cornernet_tf.export import saved_model, tflite
    from cornernet_tf.modeling.model import build_model
    from cornernet_tf.data.resolve import resolve_dataset_dependent
    from cornernet_tf.training.checkpoints import restore_weights

    cfg = resolve_dataset_dependent(cfg, run_dir=model_dir)
    model = build_model(cfg.model)
    restored = restore_weights(model, model_dir, checkpoint)
    labels_path = os.path.join(model_dir, "labels.json")
    if os.path.isfile(labels_path):
        label_map = coco.LabelMap.from_json(labels_path)
    else:
        label_map = pipeline.load_split(cfg.data, "train", check_images="none")[1]
    path = saved_model.export_saved_model(model, cfg, export_dir, label_map,
                                          best_f1=run_best_f1(model_dir))
    result = dict(checkpoint=restored, saved_model=path, tflite={})
    if verbose:
        print(f"SavedModel (from {restored}) written to {path}", flush=True)
    if tflite_modes is None:
        tflite_modes = [] if cfg.export.tflite == "none" else [cfg.export.tflite]
    if not tflite_modes:
        return result

    import tensorflow as tf
    serving = tf.saved_model.load(path).signatures["serving_default"]

    def saved_model_fn(batch):
        return {k: v.numpy() for k, v in serving(images=tf.constant(batch)).items()}

    val_records = pipeline.load_split(cfg.data, "val", check_images="none")[0]
    check = _tflite_inputs([r.path for r in val_records[:parity_images]], cfg.model.input_size)
    train_records = pipeline.load_split(cfg.data, "train", check_images="none")[0]
    calibration_paths = [r.path for r in train_records[:cfg.export.representative_images]]
    for mode in tflite_modes:
        out = os.path.join(path, f"{cfg.export.name}_{mode}.tflite")
        tflite.convert(model, cfg, mode, out, representative_images=lambda: _tflite_inputs(
            calibration_paths, cfg.model.input_size))
        parity = tflite.check_parity(saved_model_fn, out, check, mode)
        result["tflite"][mode] = dict(path=out, bytes=os.path.getsize(out), parity=parity)
        if verbose and not parity["checked"]:
            print(f"TFLite {mode} written to {out} ({os.path.getsize(out) / 1e6:.2f} MB); parity "
                  f"vs SavedModel NOT verified: of the SavedModel's "
                  f"{parity['reference_detections']} detections on {parity['images']} images, "
                  f"none scored above the comparison gate (an untrained model?)", flush=True)
        elif verbose:
            print(f"TFLite {mode} written to {out} ({os.path.getsize(out) / 1e6:.2f} MB); parity "
                  f"vs SavedModel on {parity['images']} images: max score difference "
                  f"{parity['max_score_diff']:.2g}, min matched IoU {parity['min_iou']:.3f}, "
                  f"{parity['outliers']} of {parity['compared']} detections outside the "
                  f"{mode} tolerance (allowed fraction "
                  f"{parity['tolerance']['max_outlier_fraction']})", flush=True)
    return result
