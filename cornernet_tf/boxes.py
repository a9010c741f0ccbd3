"""The box contract of the package, and the one place keras-cv is used.

Inside the package boxes are `[x1, y1, x2, y2]` float32 in pixels of the tensor they refer
to, padded with rows of -1 to a fixed count per image (DESIGN.md, Tensors). A row is valid
when x2 > x1 and y2 > y1; padding rows are kept as -1 through every conversion here
(keras-cv's `convert_format` would scale them like real boxes).
"""

from __future__ import annotations

import tensorflow as tf
from keras_cv import bounding_box

PAD_VALUE = -1.0


def valid_mask(boxes: tf.Tensor) -> tf.Tensor:
    """Which rows are real boxes.

    Args:
      boxes: [..., 4] float xyxy, padding rows -1.

    Returns:
      [...] bool: x2 > x1 and y2 > y1 (padding rows and degenerate boxes are False).
    """
    return tf.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])


def convert_format(boxes: tf.Tensor, source: str, target: str, images=None,
                   image_shape=None) -> tf.Tensor:
    """keras-cv box-format conversion that keeps -1 padding rows as -1.

    Args:
      boxes: [B, N, 4] or [N, 4] float32 in `source` format (keras-cv names: "xyxy",
        "xywh", "yxyx", "rel_yxyx", ...), padding rows all -1.
      source, target: keras-cv format names.
      images, image_shape: needed by keras-cv for relative formats.

    Returns:
      boxes in `target` format, same shape; padding rows stay -1.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    is_pad = tf.reduce_all(tf.equal(boxes, PAD_VALUE), axis=-1, keepdims=True)
    out = bounding_box.convert_format(boxes, source=source, target=target, images=images,
                                      image_shape=image_shape)
    return tf.where(is_pad, tf.constant(PAD_VALUE, out.dtype), out)


def xywh_to_xyxy(boxes: tf.Tensor) -> tf.Tensor:
    """COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]`; [..., 4] float32, padding kept."""
    return convert_format(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: tf.Tensor) -> tf.Tensor:
    """`[x1, y1, x2, y2]` -> COCO `[x, y, w, h]`; [..., 4] float32, padding kept."""
    return convert_format(boxes, "xyxy", "xywh")


def xyxy_to_normalized_yxyx(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Pixels `[x1, y1, x2, y2]` -> `[ymin, xmin, ymax, xmax]` in [0, 1] (TF OD API order).

    Args:
      boxes: [..., 4] float32 pixels of an image of size height x width.
      height, width: scalars or tensors broadcastable to boxes[..., 0].

    Returns:
      [..., 4] float32; padding rows stay -1.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    is_pad = tf.reduce_all(tf.equal(boxes, PAD_VALUE), axis=-1, keepdims=True)
    out = tf.stack([boxes[..., 1] / h, boxes[..., 0] / w, boxes[..., 3] / h, boxes[..., 2] / w],
                   axis=-1)
    return tf.where(is_pad, tf.constant(PAD_VALUE), out)


def pad_boxes(boxes: tf.Tensor, classes: tf.Tensor, count: int):
    """Pads or truncates one image's boxes to a fixed count.

    Args:
      boxes: [N, 4] float32 xyxy. classes: [N] int32.
      count: the fixed row count M.

    Returns:
      (boxes [M, 4] with -1 rows, classes [M] with -1, num_dropped scalar int32: the rows
      beyond M that were cut, so the caller can report them).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)[:count]
    n = tf.shape(tf.convert_to_tensor(classes))[0]
    classes = tf.cast(classes, tf.int32)[:count]
    pad = count - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, pad], [0, 0]], constant_values=PAD_VALUE)
    classes = tf.pad(classes, [[0, pad]], constant_values=-1)
    boxes.set_shape([count, 4])
    classes.set_shape([count])
    return boxes, classes, tf.maximum(n - count, 0)
