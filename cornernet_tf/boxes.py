"""The box contract of the package, and the one place keras-cv is used.

Inside the package boxes are `[x1, y1, x2, y2]` float32 in pixels of the tensor they refer
to, padded with rows of -1 to a fixed count per image (DESIGN.md, Tensors). A row is valid
when x2 > x1 and y2 > y1. Every function here keeps padding rows (all four values -1) as
-1, works on dense tensors inside `tf.function` and a SavedModel, and the ones the exported
graph uses convert to TFLite builtins (tests/test_boxes.py runs them under ai_edge_litert).
Given numpy arrays while executing eagerly, a function returns numpy arrays, so host-side
code (COCO json, TFLite parity) calls the same functions as the graphs.

What keras-cv 0.9 (`keras_cv.bounding_box`) does here, and where it cannot serve (measured
with keras-cv 0.9.0, TF 2.21, float32 unless said):

| function | backed by | why not keras-cv, where not |
|---|---|---|
| `convert_format`, `xywh_to_xyxy`, `xyxy_to_xywh` | `convert_format` | (keras-cv scales -1 rows like boxes: `[-1]*4` xywh -> `[-1, -1, -2, -2]`; the rows are restored here) |
| `xyxy_to_yxyx`, `yxyx_to_xyxy` | own (a gather) | keras-cv reorders with `ops.split` + `concatenate` (and `expand_dims` for [N, 4]); in the full-int8 TFLite export the quantiser made those outputs int8 inside the float decode, where the soft-NMS and the serving graph need these permutations (tests/export/test_tflite.py full-int8 test failed with int8 tensors `detection_decode/split...`, `detection_decode/ExpandDims1`); a gather stays float |
| `xyxy_to_normalized_yxyx`, `normalized_yxyx_to_xyxy` | own | the permutation above, and keras-cv's `rel_yxyx` takes one image shape per call (`image_shape` of shape [B, 3] raises "image_shape.shape should be (3)"); a serving batch has one size per image |
| `clip_boxes` | own | `clip_to_image` goes through `rel_xyxy` (x / W * W): it moved 218 of 400000 in-range float32 coordinates by 1 ulp at W = 510, which can move a corner to the next output cell; it also needs a classes dict |
| `flip_horizontal` | own | keras-cv has no box flip outside its random `RandomFlip` layer |
| `compute_iou` | own | `compute_iou` divides by union + 1e-7: two identical 1-pixel boxes of a 511-pixel image in the serving contract's normalised coordinates score 0.975, below the fp32 TFLite parity floor of 0.99 |
| `valid_mask`, `is_padding`, `pad_boxes` | own | keras-cv has no dense -1 row test or fixed-count padding (its `to_dense` pads ragged tensors) |
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from keras_cv import bounding_box

PAD_VALUE = -1.0


def _numpy_in_numpy_out(fn):
    """Returns numpy arrays when the first argument is a numpy array and TF runs eagerly."""

    @functools.wraps(fn)
    def wrapper(boxes, *args, **kwargs):
        out = fn(boxes, *args, **kwargs)
        if isinstance(boxes, np.ndarray) and tf.executing_eagerly():
            return out.numpy()
        return out

    return wrapper


def _as_float(boxes, dtype=None) -> tf.Tensor:
    boxes = tf.convert_to_tensor(boxes)
    if dtype is not None:
        return tf.cast(boxes, dtype)
    return boxes if boxes.dtype.is_floating else tf.cast(boxes, tf.float32)


@_numpy_in_numpy_out
def is_padding(boxes) -> tf.Tensor:
    """Which rows are padding (all four values -1).

    Args:
      boxes: [..., 4] float, any box format.

    Returns:
      [..., 1] bool, True on padding rows (keeps the last axis, to broadcast over it).
    """
    boxes = _as_float(boxes)
    return tf.reduce_all(tf.equal(boxes, tf.constant(PAD_VALUE, boxes.dtype)), axis=-1,
                         keepdims=True)


@_numpy_in_numpy_out
def valid_mask(boxes) -> tf.Tensor:
    """Which rows are real boxes.

    Args:
      boxes: [..., 4] float xyxy (or yxyx: the test is the same), padding rows -1.

    Returns:
      [...] bool: x2 > x1 and y2 > y1 (padding rows and degenerate boxes are False).
    """
    return tf.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])


@_numpy_in_numpy_out
def convert_format(boxes, source: str, target: str, images=None, image_shape=None,
                   dtype=tf.float32) -> tf.Tensor:
    """keras-cv box-format conversion that keeps -1 padding rows as -1.

    Args:
      boxes: [B, N, 4] or [N, 4] float in `source` format (keras-cv names: "xyxy",
        "xywh", "yxyx", "rel_yxyx", ...), padding rows all -1.
      source, target: keras-cv format names.
      images, image_shape: needed by keras-cv for relative formats (one shape per call).
      dtype: computation and output dtype (float64 keeps host-side COCO numbers exact).

    Returns:
      boxes in `target` format, same shape, `dtype`; padding rows stay -1.
    """
    boxes = _as_float(boxes, dtype)
    out = bounding_box.convert_format(boxes, source=source, target=target, images=images,
                                      image_shape=image_shape, dtype=boxes.dtype)
    return tf.where(is_padding(boxes), tf.constant(PAD_VALUE, out.dtype), out)


def xywh_to_xyxy(boxes, dtype=tf.float32) -> tf.Tensor:
    """COCO `[x, y, w, h]` -> `[x1, y1, x2, y2]` (keras-cv).

    Args:
      boxes: [N, 4] or [B, N, 4] float; padding rows -1.
      dtype: computation and output dtype.

    Returns:
      same shape, `dtype`; padding rows stay -1.
    """
    return convert_format(boxes, "xywh", "xyxy", dtype=dtype)


def xyxy_to_xywh(boxes, dtype=tf.float32) -> tf.Tensor:
    """`[x1, y1, x2, y2]` -> COCO `[x, y, w, h]` (keras-cv).

    Args:
      boxes: [N, 4] or [B, N, 4] float; padding rows -1.
      dtype: computation and output dtype.

    Returns:
      same shape, `dtype`; padding rows stay -1.
    """
    return convert_format(boxes, "xyxy", "xywh", dtype=dtype)


@_numpy_in_numpy_out
def xyxy_to_yxyx(boxes) -> tf.Tensor:
    """`[x1, y1, x2, y2]` -> `[y1, x1, y2, x2]`, a gather (a permutation keeps -1 rows).

    Not keras-cv (measured, module docstring): its `ops.split` / `expand_dims` reorder is
    quantised to int8 by the full-int8 TFLite converter inside the float decode.

    Args:
      boxes: [..., 4] float.

    Returns:
      same shape and dtype.
    """
    return tf.gather(_as_float(boxes), [1, 0, 3, 2], axis=-1)


@_numpy_in_numpy_out
def yxyx_to_xyxy(boxes) -> tf.Tensor:
    """`[y1, x1, y2, x2]` -> `[x1, y1, x2, y2]` (the same gather: the permutation is its own
    inverse).

    Args:
      boxes: [..., 4] float.

    Returns:
      same shape and dtype.
    """
    return tf.gather(_as_float(boxes), [1, 0, 3, 2], axis=-1)


def _size4(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """`[h, w, h, w]` broadcast against yxyx boxes: [..., 4] from per-image sizes."""
    h = tf.cast(height, boxes.dtype)
    w = tf.cast(width, boxes.dtype)
    h, w = h + tf.zeros_like(w), w + tf.zeros_like(h)
    return tf.stack([h, w, h, w], axis=-1)


@_numpy_in_numpy_out
def xyxy_to_normalized_yxyx(boxes, height, width) -> tf.Tensor:
    """Pixels `[x1, y1, x2, y2]` -> `[ymin, xmin, ymax, xmax]` in [0, 1] (TF OD API order).

    Not keras-cv (measured, module docstring): its `rel_yxyx` takes one image shape per
    call, and its reorder is quantised to int8 by the full-int8 TFLite converter.

    Args:
      boxes: [..., N, 4] float32 pixels of images of size height x width.
      height, width: scalars, or per-image tensors broadcastable to boxes[..., 0]
        (e.g. [B, 1] for boxes [B, N, 4]).

    Returns:
      [..., N, 4] float32 (not clipped); padding rows stay -1.
    """
    boxes = _as_float(boxes, tf.float32)
    out = xyxy_to_yxyx(boxes) / _size4(boxes, height, width)
    return tf.where(is_padding(boxes), tf.constant(PAD_VALUE), out)


@_numpy_in_numpy_out
def normalized_yxyx_to_xyxy(boxes, height, width) -> tf.Tensor:
    """`[ymin, xmin, ymax, xmax]` in [0, 1] -> pixels `[x1, y1, x2, y2]` (inverse of the above).

    Args:
      boxes: [..., N, 4] float32 normalised yxyx (the serving contract's `detection_boxes`).
      height, width: image size in pixels: scalars or tensors broadcastable to
        boxes[..., 0].

    Returns:
      [..., N, 4] float32 pixels; padding rows stay -1.
    """
    boxes = _as_float(boxes, tf.float32)
    out = yxyx_to_xyxy(boxes * _size4(boxes, height, width))
    return tf.where(is_padding(boxes), tf.constant(PAD_VALUE), out)


@_numpy_in_numpy_out
def clip_boxes(boxes, height, width) -> tf.Tensor:
    """Clips xyxy boxes to `[0, width] x [0, height]`; padding rows stay -1.

    Boxes that become empty are kept (test with `valid_mask`). For pixel-index boxes
    (augmentation: corners are pixel centres, the last one W - 1) pass W - 1 and H - 1;
    for edge coordinates (COCO, original-image detections) pass W and H.

    Args:
      boxes: [..., N, 4] float xyxy.
      height, width: upper limits, scalars or tensors broadcastable to boxes[..., 0].

    Returns:
      [..., N, 4] clipped boxes, the dtype of `boxes`.
    """
    boxes = _as_float(boxes)
    h = tf.cast(height, boxes.dtype)
    w = tf.cast(width, boxes.dtype)
    h, w = h + tf.zeros_like(w), w + tf.zeros_like(h)
    clipped = tf.clip_by_value(boxes, tf.zeros([], boxes.dtype), tf.stack([w, h, w, h], -1))
    return tf.where(is_padding(boxes), tf.constant(PAD_VALUE, boxes.dtype), clipped)


@_numpy_in_numpy_out
def flip_horizontal(boxes, width) -> tf.Tensor:
    """Mirrors xyxy boxes left-right in a frame `width` wide: x -> width - x, x1/x2 swap.

    `width` is the frame's extent in the boxes' own convention: W for edge coordinates
    (decode's output grid, x in [0, W], the reference's `out_width - x`), W - 1 for
    pixel-index coordinates (training augmentation, boxes in [0, W - 1], the reference's
    `width - x - 1`).

    Args:
      boxes: [..., 4] float xyxy; padding rows -1.
      width: scalar (python number or tensor).

    Returns:
      [..., 4] mirrored boxes, the dtype of `boxes`; padding rows stay -1.
    """
    boxes = _as_float(boxes)
    width = tf.cast(width, boxes.dtype)
    flipped = tf.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0],
                        boxes[..., 3]], axis=-1)
    return tf.where(is_padding(boxes), tf.constant(PAD_VALUE, boxes.dtype), flipped)


@_numpy_in_numpy_out
def compute_iou(boxes1, boxes2) -> tf.Tensor:
    """Pairwise IoU, `intersection / max(union, 1e-12)`; padding rows give 0.

    Args:
      boxes1: [N, 4] or [B, N, 4] float, corners in xyxy or yxyx (the same for both
        arguments; IoU does not depend on the axis order).
      boxes2: [M, 4] or [B, M, 4], same format and dtype.

    Returns:
      [N, M] or [B, N, M] IoU in [0, 1], the dtype of the boxes.
    """
    a = _as_float(boxes1)[..., :, None, :]  # [..., N, 1, 4]
    b = tf.cast(boxes2, a.dtype)[..., None, :, :]  # [..., 1, M, 4]
    extent = tf.maximum(tf.minimum(a[..., 2:], b[..., 2:]) - tf.maximum(a[..., :2], b[..., :2]),
                        tf.zeros([], a.dtype))  # [..., N, M, 2]
    inter = extent[..., 0] * extent[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # [..., N, 1]
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # [..., 1, M]
    iou = inter / tf.maximum(area_a + area_b - inter, tf.constant(1e-12, a.dtype))
    padding = tf.logical_or(is_padding(a)[..., 0], is_padding(b)[..., 0])  # [..., N, M]
    return tf.where(padding, tf.zeros([], a.dtype), iou)


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
