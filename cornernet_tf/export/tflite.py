"""TFLite conversion (fp32, fp16, dynamic int8, full int8) with decode inside, and parity.

The TFLite graph takes uint8 `[1, in_h, in_w, 3]` (resize on the device beforehand; the
normalised output boxes do not change under a plain resize) and returns the serving
contract's outputs. It is converted from a SavedModel written with that fixed signature,
with `supported_ops = [TFLITE_BUILTINS]` only: a graph that needs Flex (select TF) ops fails
the conversion, because edge runtimes (ai-edge-litert among them) have no Flex delegate.

After conversion `check_parity` runs the `.tflite` under `ai_edge_litert` and the
SavedModel on the same images and compares matched detections.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from cornernet_tf.export.saved_model import write_archive
from cornernet_tf.export.serving import build_detection_functions

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")

# Parity tolerances per mode: (max |score difference| of matched detections,
# min IoU of matched boxes). fp32 must agree to float round-off (measured on the tests'
# tiny model: score difference <= 1.2e-6, IoU >= 0.99999). The quantised values are not
# yet backed by a model with confident detections. Measured so far, detections scoring
# >= 0.1 against the SavedModel on 50 quickstart validation images after 1500 training
# steps (every score ~0.10, near-ties): dynamic_int8 max score difference 0.095
# (median 0.031) but min IoU 0.0 (near-tied corners reorder); full int8 matched no box
# (its boxes collapse towards 0: the decode arithmetic after top-k is quantised too),
# so the int8 gate fails there. On the tests' random tiny model dynamic_int8 reaches score
# differences of 0.2-0.7.
TOLERANCES = {
    "fp32": (1e-4, 0.99),
    "fp16": (0.02, 0.9),
    "dynamic_int8": (0.1, 0.7),
    "int8": (0.2, 0.5),
}


class TFLiteExportError(RuntimeError):
    """Conversion needed non-builtin ops, or parity is outside the mode's tolerance."""


def convert(model, cfg, mode: str, output_path: str,
            representative_images: Optional[Callable[[], Iterable[np.ndarray]]] = None) -> str:
    """Converts the serving graph (network + decode) to a TFLite flatbuffer.

    Args:
      model: trained CornerNet.
      cfg: resolved Config (input size, decode parameters, export threshold).
      mode: "fp32" | "fp16" | "dynamic_int8" | "int8".
      output_path: the `.tflite` file to write.
      representative_images: for "int8", a callable returning an iterable of uint8
        [in_h, in_w, 3] images from the training data (calibration).

    Returns:
      output_path.

    Raises:
      TFLiteExportError: conversion needs ops outside the TFLite builtins.
      ValueError: unknown mode, or int8 without representative images.
    """
    if mode not in TOLERANCES:
        raise ValueError(f"export.tflite: {mode!r} is not one of {', '.join(TOLERANCES)}")
    in_h, in_w = cfg.model.input_size
    fns = build_detection_functions(model, cfg)
    spec = tf.TensorSpec([1, in_h, in_w, 3], tf.uint8, name="images")
    with tempfile.TemporaryDirectory() as tmp:
        write_archive(model, {"serving_default": (fns.serve_fixed, [spec])}, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif mode == "int8":
            if representative_images is None:
                raise ValueError("export.tflite=int8 needs representative images "
                                 "(export.representative_images from the training data)")

            def dataset():
                for image in representative_images():
                    yield {"images": np.asarray(image, np.uint8)[None]}

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = dataset
            # int8 kernels where they exist; decode's ops (top-k, NMS, gathers) stay float.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as e:  # the converter raises ConverterError and friends
            raise TFLiteExportError(
                f"TFLite conversion ({mode}) failed; the graph must use TFLite builtin ops only "
                f"(no Flex delegate on edge devices): {e}") from e
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "wb") as f:
        f.write(flatbuffer)
    return output_path


def op_names(path: str) -> list[str]:
    """The distinct op names of a .tflite file (Flex ops show as 'Flex...' / 'DELEGATE')."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


class TFLiteDetector:
    """Runs an exported .tflite with ai_edge_litert; call with uint8 [1, h, w, 3]."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        shape = self.runner.get_input_details()["images"]["shape"]
        self.input_size = (int(shape[1]), int(shape[2]))

    def __call__(self, images: np.ndarray) -> dict:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"TFLite model expects uint8 [1, {self.input_size[0]}, "
                             f"{self.input_size[1]}, 3]; found {images.dtype} {list(images.shape)}")
        out = self.runner(images=images)
        return {k: np.asarray(out[k]) for k in OUTPUT_KEYS}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [N,4] vs [M,4] boxes in any (min, min, max, max) order -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def compare_detections(reference: dict, other: dict, min_score: float = 0.1) -> dict:
    """Matches `other`'s detections to `reference`'s (same class, best IoU), one image.

    Args:
      reference, other: output dicts with batch 1 (the serving contract's keys).
      min_score: reference detections below are not compared (their order is noise).

    Returns:
      dict: "matched" (count), "compared" (reference detections above min_score),
      "max_score_diff", "min_iou" (1.0 / 0.0 when nothing was compared).
    """
    def take(d):
        n = int(d["num_detections"][0])
        return (d["detection_boxes"][0, :n], d["detection_scores"][0, :n],
                d["detection_classes"][0, :n])

    rb, rs, rc = take(reference)
    ob, os_, oc = take(other)
    keep = rs >= min_score
    rb, rs, rc = rb[keep], rs[keep], rc[keep]
    if len(rs) == 0:
        return dict(matched=0, compared=0, max_score_diff=0.0, min_iou=1.0)
    if len(os_) == 0:
        return dict(matched=0, compared=len(rs), max_score_diff=float(rs.max()), min_iou=0.0)
    iou = _iou(rb, ob) * (rc[:, None] == oc[None, :])
    best = iou.argmax(axis=1)
    ious = iou[np.arange(len(rb)), best]
    diffs = np.abs(rs - os_[best])
    return dict(matched=int((ious > 0).sum()), compared=len(rs),
                max_score_diff=float(diffs.max()), min_iou=float(ious.min()))


def check_parity(saved_model_fn: Callable[[np.ndarray], dict], tflite_path: str,
                 images: Iterable[np.ndarray], mode: str, min_score: float = 0.1) -> dict:
    """Runs both models on the images; raises when parity is outside the mode's tolerance.

    Args:
      saved_model_fn: uint8 [1, h, w, 3] -> output dict of numpy arrays (the SavedModel's
        `serving_default`).
      tflite_path: the converted file.
      images: uint8 [h, w, 3] images at the network input size.
      mode: the conversion mode (selects the tolerance).
      min_score: detections below are not compared.

    Returns:
      dict: "images", "compared", "max_score_diff", "min_iou", "tolerance".

    Raises:
      TFLiteExportError: parity is off by more than TOLERANCES[mode].
    """
    detector = TFLiteDetector(tflite_path)
    worst = dict(images=0, compared=0, max_score_diff=0.0, min_iou=1.0)
    for image in images:
        batch = np.asarray(image, np.uint8)[None]
        result = compare_detections(saved_model_fn(batch), detector(batch), min_score)
        worst["images"] += 1
        worst["compared"] += result["compared"]
        worst["max_score_diff"] = max(worst["max_score_diff"], result["max_score_diff"])
        worst["min_iou"] = min(worst["min_iou"], result["min_iou"])
    max_diff, min_iou = TOLERANCES[mode]
    worst["tolerance"] = dict(max_score_diff=max_diff, min_iou=min_iou)
    if worst["max_score_diff"] > max_diff or worst["min_iou"] < min_iou:
        raise TFLiteExportError(
            f"TFLite {mode} parity is off: max score difference {worst['max_score_diff']:.4g} "
            f"(allowed {max_diff}), min matched-box IoU {worst['min_iou']:.4f} (allowed "
            f">= {min_iou}) over {worst['compared']} detections on {worst['images']} images "
            f"({tflite_path})")
    return worst
