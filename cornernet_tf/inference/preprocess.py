"""Mapping the network's outputs back to the image, and the host side of the TFLite file.

Reading an image and fitting it to the network are `data/images.py` (the training and
evaluation pipelines use them too); this module holds the inverse, which only inference
needs. Evaluation (`evaluation/runner.py`), the serving graph (`inference/detector.py`,
hence the SavedModel and the TFLite file) and `predict` all go through these functions, so
the AP that `--mode=evaluate` reports is measured on the arithmetic that ships:

    image = read_image(path)                          # [H, W, 3] uint8 RGB
    inputs, transform = fit_to_input(image, (h, w))   # [h, w, 3] float32, (sy, sx, oy, ox)
    ...network + decode -> boxes [B, N, 4] xyxy...
    detection_boxes = boxes_to_original(boxes, transforms, sizes, ratio)  # normalised yxyx
    boxes, scores, classes, n = contract_to_pixels(outputs, sizes)         # host side

The coordinate map of `fit_to_input` is `network_xy = original_xy * scale + offset`, with
`transform = (scale_y, scale_x, offset_y, offset_x)`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf import keys
from cornernet_tf.data.images import SizeLike, fit_to_input, size_pair


def boxes_to_original(boxes: tf.Tensor, transforms: tf.Tensor, sizes: tf.Tensor,
                      ratio: Sequence[float] = (1.0, 1.0)) -> tf.Tensor:
    """Network boxes -> normalised [ymin, xmin, ymax, xmax] of the original images.

    This is the serving contract's `detection_boxes` (DESIGN.md) before padding rows are
    zeroed: `(boxes / ratio - offset) / scale / size`, clipped to [0, 1] (the image's
    edges, as COCO boxes). Slice-free (a gather to yxyx first, then broadcasts): TFLite's
    int8 quantizer re-quantizes a float tensor that feeds slices even when they are kept
    float, which would collapse the boxes of a full-int8 model.

    Args:
      boxes: [B, N, 4] float32 xyxy in units of `ratio` x network-input pixels (the output
        grid: ratio = output / input size; network-input pixels: 1).
      transforms: [B, 4] float32 (scale_y, scale_x, offset_y, offset_x) of `fit_to_input`.
      sizes: [B, 2] float32 (H, W) of the original images.
      ratio: (ratio_y, ratio_x), python floats.

    Returns:
      [B, N, 4] float32 in [0, 1]; rows of padding are not meaningful (mask them by
      num_detections).
    """
    yxyx = box_lib.xyxy_to_yxyx(boxes)  # [B, N, 4] (a gather: no slices)
    per_pixel = tf.constant([ratio[0], ratio[1]] * 2, tf.float32)
    transforms = tf.cast(transforms, tf.float32)
    scale = tf.tile(transforms[:, :2], [1, 2])[:, None, :]  # [B, 1, 4] sy, sx, sy, sx
    offset = tf.tile(transforms[:, 2:], [1, 2])[:, None, :]  # [B, 1, 4] oy, ox, oy, ox
    size = tf.tile(tf.cast(sizes, tf.float32), [1, 2])[:, None, :]  # [B, 1, 4] H, W, H, W
    return tf.clip_by_value((yxyx / per_pixel - offset) / scale / size, 0.0, 1.0)


def tflite_input(image: np.ndarray, input_size: SizeLike) -> tuple[np.ndarray, np.ndarray]:
    """The host side of the TFLite file: one image fitted as the SavedModel fits it.

    The TFLite graph takes a fixed uint8 [1, h, w, 3]; this is `fit_to_input` (resize_pad)
    rounded to uint8, so a TFLite file sees what the SavedModel sees (up to that rounding;
    none when the image already has the input size).

    Args:
      image: [H, W, 3] uint8 RGB.
      input_size: (h, w) of the TFLite input.

    Returns:
      (inputs [1, h, w, 3] uint8, transform [4] float32 of `fit_to_input`).
    """
    fitted, transform = fit_to_input(image, input_size, "resize_pad")
    inputs = tf.cast(tf.clip_by_value(tf.round(fitted), 0.0, 255.0), tf.uint8)
    return inputs.numpy()[None], transform.numpy()


def tflite_boxes_to_original(outputs: dict, transform: np.ndarray, input_size: SizeLike,
                             height: int, width: int) -> dict:
    """TFLite outputs (boxes normalised to the fitted input) -> boxes of the original image.

    Args:
      outputs: the contract dict of a TFLite run on `tflite_input`, batch 1.
      transform: [4] from `tflite_input`.
      input_size: (h, w) of the TFLite input.
      height, width: the original image's size.

    Returns:
      the same dict with `detection_boxes` [1, N, 4] normalised to the original image by
      `boxes_to_original` (zeros past num_detections, as the SavedModel returns them).
    """
    in_h, in_w = size_pair(input_size, "input_size", "tflite_boxes_to_original")
    boxes = np.asarray(outputs[keys.DETECTION_BOXES], np.float32)  # [1, N, 4] yxyx, input
    xyxy = box_lib.normalized_yxyx_to_xyxy(boxes, in_h, in_w)
    mapped = boxes_to_original(tf.constant(xyxy), tf.constant(transform[None], tf.float32),
                               tf.constant([[float(height), float(width)]])).numpy()
    n = int(np.asarray(outputs[keys.NUM_DETECTIONS]).reshape(-1)[0])
    mapped[:, n:] = 0.0
    return dict(outputs, **{keys.DETECTION_BOXES: mapped})


def contract_to_pixels(outputs: dict, sizes) -> tuple:
    """Serving-contract outputs -> xyxy pixel boxes of the originals and 0-based classes.

    Args:
      outputs: `detection_boxes` [B, N, 4] normalised yxyx, `detection_scores` [B, N],
        `detection_classes` [B, N] 1-based label ids (float), `num_detections` [B].
      sizes: [B, 2] (H, W) of the original images.

    Returns:
      (boxes [B, N, 4] float64 xyxy pixels, scores [B, N], classes [B, N] int64 0-based
      with -1 past num_detections, num_detections [B] int64), numpy.
    """
    boxes = np.asarray(outputs[keys.DETECTION_BOXES], np.float32)
    sizes = np.asarray(sizes, np.float32).reshape(-1, 2)
    pixels = box_lib.normalized_yxyx_to_xyxy(boxes, sizes[:, 0, None], sizes[:, 1, None])
    pixels = pixels.astype(np.float64)
    num = np.asarray(outputs[keys.NUM_DETECTIONS]).astype(np.int64).reshape(-1)
    classes = np.rint(np.asarray(outputs[keys.DETECTION_CLASSES])).astype(np.int64) - 1
    filled = np.arange(boxes.shape[1])[None, :] < num[:, None]
    return pixels, np.asarray(outputs[keys.DETECTION_SCORES]), np.where(filled, classes, -1), num
