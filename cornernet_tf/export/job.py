"""`--mode=export`'s last stage: a restored model -> SavedModel [-> TFLite + parity].

The composition root (`run.export`) restores the model, builds its detector and picks the
images; this writes the files:

    result = run.export(cfg, model_dir="runs/quickstart", export_dir="export")
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


def write_exports(model, cfg, export_dir: str, label_map, detector, checkpoint: str,
                  tflite_modes: Sequence[str], parity_paths: Sequence[str],
                  calibration_paths: Sequence[str], verbose: bool = True,
                  best_f1: Optional[dict] = None) -> dict:
    """Writes the SavedModel and the TFLite files of a restored model, with parity checks.

    Args:
      model: the restored CornerNet.
      cfg: resolved Config (export.name, export.representative_images, decode, model).
      export_dir: root of the exports (`<export_dir>/<export.name>/<version>/`).
      label_map: the run's LabelMap (written beside the model as labels.json).
      detector: `build_detector(model, cfg)`, the graph both formats export.
      checkpoint: the checkpoint restored (reported).
      tflite_modes: TFLite conversions to make ([]: none).
      parity_paths: validation images the TFLite files are compared on with the SavedModel.
      calibration_paths: training images for full int8 calibration.
      verbose: print what was written.

    Returns:
      dict: "checkpoint", "saved_model" (version folder), "tflite": {mode: {"path",
      "bytes", "parity"}}.
    """
    from cornernet_tf.export import saved_model, tflite
    from cornernet_tf.training.checkpoints import os_error_text

    path = saved_model.export_saved_model(model, cfg, export_dir, label_map, detector=detector,
                                          best_f1=best_f1)
    result = dict(checkpoint=checkpoint, saved_model=path, tflite={})
    if verbose:
        print(f"SavedModel (from {checkpoint}) written to {path}", flush=True)
    if not tflite_modes:
        return result

    import tensorflow as tf
    serving = tf.saved_model.load(path).signatures["serving_default"]

    def saved_model_fn(batch):
        return {k: v.numpy() for k, v in serving(images=tf.constant(batch)).items()}

    check = _tflite_inputs(parity_paths, cfg.model.input_size)
    for mode in tflite_modes:
        out = os.path.join(path, f"{cfg.export.name}_{mode}.tflite")
        try:
            tflite.convert(model, cfg, mode, out, representative_images=lambda: _tflite_inputs(
                calibration_paths, cfg.model.input_size), detector=detector)
        except OSError as e:  # a full disk while writing the flatbuffer: no partial file
            if os.path.lexists(out):
                os.remove(out)
            raise saved_model.ExportWriteError(
                f"export: writing {out} failed: {os_error_text(e)}; the partial file was "
                f"removed (the SavedModel {path} is complete)\nfree space and export again "
                f"(a new version)") from e
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
