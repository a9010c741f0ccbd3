"""TFLite conversion (fp32, fp16, dynamic int8, full int8) with decode inside, and parity.

The TFLite graph takes uint8 `[1, in_h, in_w, 3]`: the image fitted on the device as the
SavedModel fits it in its graph (aspect kept, zero-padded bottom/right;
`preprocess.tflite_input`), with boxes normalised to that input, which
`preprocess.tflite_boxes_to_original` maps back to the image. It returns the serving
contract's outputs. It is converted from a SavedModel written with that fixed signature,
with `supported_ops = [TFLITE_BUILTINS]` only: a graph that needs Flex (select TF) ops fails
the conversion, because edge runtimes (ai-edge-litert among them) have no Flex delegate.
Full int8 (`int8`) quantises the network only (convs with BN folded, residual adds, corner
pooling) and keeps the decode (ops under `serving.DECODE_SCOPE`) in float32 builtins.

After conversion `check_parity` runs the `.tflite` under `ai_edge_litert` and the
SavedModel on the same images and compares matched detections.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from cornernet_tf import boxes as box_lib
from cornernet_tf import console
from cornernet_tf.config.choices import TFLITE_MODES
from cornernet_tf.export.saved_model import write_archive
from cornernet_tf.inference.detector import DECODE_SCOPE, build_detector
from cornernet_tf.compat import tflite_ops_details
from cornernet_tf.inference.exported import TFLiteDetector
from cornernet_tf.keys import (DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES,
                               NUM_DETECTIONS)

# Parity tolerances per mode: (max |score difference| and min IoU of a matched detection,
# max fraction of compared detections outside either). `check_parity` compares reference
# detections scoring >= min_score (0.1) + the score tolerance; unmatched ones count as
# outliers. fp32 agrees to float round-off; the quantised modes flip a few corners and
# pairings (near-tied peaks, embedding distances near ae_threshold), so they allow a
# fraction of outliers. The figures these were chosen from: docs/measurements.md.
# One entry per mode of TFLITE_MODES.
TOLERANCES = {
    "fp32": (1e-4, 0.99, 0.0),
    "fp16": (0.02, 0.9, 0.05),
    "dynamic_int8": (0.1, 0.7, 0.1),
    "int8": (0.15, 0.5, 0.15),
}


class TFLiteExportError(RuntimeError):
    """Conversion needed non-builtin ops, or parity is outside the mode's tolerance."""


def convert(model, cfg, mode: str, output_path: str,
            representative_images: Optional[Callable[[], Iterable[np.ndarray]]] = None,
            detector=None) -> str:
    """Converts the serving graph (network + decode) to a TFLite flatbuffer.

    Args:
      model: trained CornerNet.
      cfg: resolved Config (input size, decode parameters, export threshold).
      mode: "fp32" | "fp16" | "dynamic_int8" (int8 weights, float activations) | "int8"
        (int8 network, float32 decode).
      output_path: the `.tflite` file to write.
      representative_images: for "int8", a callable returning an iterable of uint8
        [in_h, in_w, 3] images from the training data (calibration).
      detector: `build_detector(model, cfg)` (None: built here).

    Returns:
      output_path.

    Raises:
      TFLiteExportError: conversion needs ops outside the TFLite builtins.
      ValueError: unknown mode, or int8 without representative images.
    """
    if mode not in TFLITE_MODES:
        raise ValueError(f"export.tflite: {mode!r} is not one of {', '.join(TFLITE_MODES)}")
    in_h, in_w = cfg.model.input_size
    fns = detector or build_detector(model, cfg)
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
            # int8 kernels where they exist; the decode stays float (see _quantize_network).
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with console.native_stderr_filtered():  # the converter's "NodeDef mentions" lines
                if mode == "int8":
                    flatbuffer = _quantize_network(converter, dataset)
                else:
                    flatbuffer = converter.convert()
        except Exception as e:  # the converter raises ConverterError and friends
            raise TFLiteExportError(
                f"TFLite conversion ({mode}) failed; the graph must use TFLite builtin ops only "
                f"(no Flex delegate on edge devices): {e}") from e
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "wb") as f:
        f.write(flatbuffer)
    return output_path


# Op types of the decode that the network never uses: kept float by type as well as by name.
_FLOAT_OP_TYPES = ["TOPK_V2"]


def _quantize_network(converter, dataset) -> bytes:
    """Full-integer conversion of the network only; the decode stays float32.

    The converter alone would also quantise the decode's arithmetic (box mapping,
    clipping, masks) with calibrated int8 ranges, collapsing the boxes. Here the model is
    calibrated once, then quantised with every op under the serving graph's
    `DECODE_SCOPE` (and the signature outputs) denylisted, through the public
    `tf.lite.experimental.QuantizationDebugger`: convs (BN folded), residual adds and
    corner pooling run int8, the heads are dequantised, and sigmoid, heatmap NMS, top-k,
    gathers, pairing, soft-NMS and the box mapping run float32 builtins.

    Args:
      converter: a TFLiteConverter set up for full-integer quantisation.
      dataset: the representative dataset (callable returning an iterator of input dicts).

    Returns:
      the flatbuffer bytes.
    """
    with warnings.catch_warnings():  # it builds a (deprecated) tf.lite.Interpreter inside
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=_FLOAT_OP_TYPES))
    calibrated = Interpreter(model_content=debugger.calibrated_model)
    names = {t["index"]: t["name"] for t in calibrated.get_tensor_details()}
    outputs = {d["index"] for d in calibrated.get_output_details()}
    denylisted = sorted({names[i] for op in tflite_ops_details(calibrated) for i in op["outputs"]
                         if DECODE_SCOPE in names[i] or i in outputs})
    if not denylisted:
        raise TFLiteExportError(f"int8: no op named under {DECODE_SCOPE!r} in the converted "
                                "graph; the decode would be quantised")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=_FLOAT_OP_TYPES, denylisted_nodes=denylisted)
    return debugger.get_nondebug_quantized_model()


def compare_detections(reference: dict, other: dict, min_score: float = 0.1) -> dict:
    """Matches `other`'s detections to `reference`'s one to one, one image.

    Reference detections are taken in descending score; each takes the not yet matched
    detection of `other` with the same class and the highest IoU (all of `other`'s
    detections are candidates, whatever their score).

    Args:
      reference, other: output dicts with batch 1 (the serving contract's keys).
      min_score: reference detections scoring below are not compared.

    Returns:
      dict: "compared" (reference detections at or above min_score), "matched" (of them,
      with a same-class match of IoU > 0), "score_diffs" [compared] |score difference| with
      the match (the reference score when unmatched), "ious" [compared] (0 when unmatched),
      "max_score_diff", "min_iou" (0.0 / 1.0 when nothing was compared).
    """
    def take(d):
        n = int(d[NUM_DETECTIONS][0])
        return (d[DETECTION_BOXES][0, :n], d[DETECTION_SCORES][0, :n],
                d[DETECTION_CLASSES][0, :n])

    rb, rs, rc = take(reference)
    ob, os_, oc = take(other)
    order = np.argsort(-rs, kind="stable")
    order = order[rs[order] >= min_score]
    # normalised yxyx both sides; [compared, M]
    iou = box_lib.compute_iou(rb[order], ob) * (rc[order][:, None] == oc[None, :])
    diffs = rs[order].astype(np.float64)
    ious = np.zeros(len(order))
    free = np.ones(len(os_), bool)
    for i in range(len(order)):
        candidates = np.where(free, iou[i], -1.0)
        if len(candidates) and candidates.max() > 0:
            j = int(candidates.argmax())
            free[j] = False
            ious[i] = candidates[j]
            diffs[i] = abs(float(rs[order[i]]) - float(os_[j]))
    return dict(compared=len(order), matched=int((ious > 0).sum()), score_diffs=diffs,
                ious=ious, max_score_diff=float(diffs.max()) if len(order) else 0.0,
                min_iou=float(ious.min()) if len(order) else 1.0)


def check_parity(saved_model_fn: Callable[[np.ndarray], dict], tflite_path: str,
                 images: Iterable[np.ndarray], mode: str, min_score: float = 0.1) -> dict:
    """Runs both models on the images; raises when parity is outside the mode's tolerance.

    Reference detections scoring below `min_score` plus the mode's score tolerance are not
    compared: whether such a detection clears `min_score` on either side is a coin toss.
    A compared detection is an outlier when its score differs by more than the tolerance
    or its matched box has a lower IoU (unmatched: IoU 0); the check fails when more than
    the mode's outlier fraction of the compared detections are outliers.

    Args:
      saved_model_fn: uint8 [1, h, w, 3] -> output dict of numpy arrays (the SavedModel's
        `serving_default`).
      tflite_path: the converted file.
      images: uint8 [h, w, 3] images at the network input size.
      mode: the conversion mode (selects the tolerance).
      min_score: detections below (plus the score tolerance) are not compared.

    Returns:
      dict: "images", "compared", "outliers", "max_score_diff", "min_iou" (worst over the
      compared detections), "reference_detections" and "tflite_detections" (all
      detections of each side), "checked" (False when no reference detection cleared the
      score gate: parity was not verified, and the caller must say so), "tolerance"
      (max_score_diff, min_iou, max_outlier_fraction).

    Raises:
      TFLiteExportError: parity is off by more than TOLERANCES[mode], or the SavedModel
        returned no detection at all (both sides empty is not a pass).
    """
    max_diff, min_iou, max_outliers = TOLERANCES[mode]
    detector = TFLiteDetector(tflite_path)
    worst = dict(images=0, compared=0, outliers=0, max_score_diff=0.0, min_iou=1.0,
                 reference_detections=0, tflite_detections=0)
    for image in images:
        batch = np.asarray(image, np.uint8)[None]
        reference, other = saved_model_fn(batch), detector(batch)
        result = compare_detections(reference, other, min_score + max_diff)
        worst["reference_detections"] += int(reference[NUM_DETECTIONS][0])
        worst["tflite_detections"] += int(other[NUM_DETECTIONS][0])
        worst["images"] += 1
        worst["compared"] += result["compared"]
        worst["outliers"] += int(np.sum((result["score_diffs"] > max_diff)
                                        | (result["ious"] < min_iou)))
        worst["max_score_diff"] = max(worst["max_score_diff"], result["max_score_diff"])
        worst["min_iou"] = min(worst["min_iou"], result["min_iou"])
    worst["tolerance"] = dict(max_score_diff=max_diff, min_iou=min_iou,
                              max_outlier_fraction=max_outliers)
    if worst["reference_detections"] == 0:  # "0 of 0 detections differ" is no pass
        raise TFLiteExportError(
            f"TFLite {mode} parity could not be checked: the SavedModel returned no "
            f"detection at all on the {worst['images']} parity images (the .tflite returned "
            f"{worst['tflite_detections']}); expected some. An export.score_threshold above "
            f"every score, or a broken model, gives this ({tflite_path})")
    # Detections exist but none clears the gate (a barely trained model): not verified,
    # and the result says so ("checked": False) for the caller to report.
    worst["checked"] = worst["compared"] > 0
    if worst["outliers"] > max_outliers * worst["compared"]:
        raise TFLiteExportError(
            f"TFLite {mode} parity is off: {worst['outliers']} of {worst['compared']} detections "
            f"(scoring >= {min_score + max_diff:.3g}, {worst['images']} images) differ in score "
            f"by more than {max_diff} or have a matched-box IoU below {min_iou} (allowed: "
            f"{max_outliers:.0%}); worst score difference {worst['max_score_diff']:.4g}, worst "
            f"IoU {worst['min_iou']:.4f} ({tflite_path})")
    return worst
