"""Ground truth of CornerNet for one image: corner heatmaps, offsets, embedding indices, mask.

Numerics follow SPEC.md (Ground truth), which restates the reference implementation
(princeton-vl/CornerNet `sample/coco.py`) with the corrected Gaussian radius:

* ratio `r = output / input` per axis (128 / 511 for CornerNet511, not 1/4);
* boxes clipped to `[0, input - 1]`, boxes with width or height <= 0 after clipping dropped;
* corner cell `floor(x * r)`, offset `x * r - floor(x * r)` for both TL and BR;
* embedding index `iy * W + ix` (row-major over the output grid);
* an unnormalised Gaussian of radius `R = max(0, int(gaussian_radius(h, w, 0.3)))`, with
  `h, w` the box size in output cells rounded up, sigma `(2R + 1) / 6`, written into the
  class channel with an element-wise maximum (two same-class objects both keep their 1.0).

Objects beyond the `max_objects` slots (the reference drops them, `max_tag_len`) are drawn
into the heatmaps all the same: their corners are positives of the focal loss, never
background. Only the slot targets (indices, offsets, mask: the embedding and offset losses)
hold the first `max_objects`. The heatmaps are drawn in chunks of `_DRAW_CHUNK` objects, so
the memory of drawing does not grow with the number of objects.

`encode_targets` is pure TensorFlow with fixed output shapes, so it runs inside
`tf.data.Dataset.map` and under `tf.function`. Per-box scalar arithmetic (ratios, floors,
ceilings, radii) is done in float64 like the reference's NumPy code, so cells and radii
agree with it bit for bit; the heatmaps themselves are float32.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from cornernet_tf.keys import (BR_HEATMAP, BR_INDEX, BR_OFFSET, HEATMAP_IGNORE, MASK,
                               NUM_OBJECTS, TL_HEATMAP, TL_INDEX, TL_OFFSET)
from cornernet_tf.data.images import size_pair

# The reference zeroes Gaussian values below eps * max. For a (2R+1)^2 kernel with
# sigma = (2R+1)/6 the smallest value is exp(-36 R^2 / (2 (2R+1)^2)) >= exp(-9), so the
# rule never fires; it is kept so the kernel is the reference's by construction.
_GAUSSIAN_EPS = float(np.finfo(np.float32).eps)

# Objects drawn at once: a [chunk, h, w] float32 block (4 MiB at a 128 x 128 grid).
_DRAW_CHUNK = 64

SizeLike = Union[int, Sequence[int]]


def gaussian_radius(height, width, min_overlap: float = 0.3):
    """Largest corner displacement keeping IoU >= `min_overlap` with the true box.

    The minimum of the three cases of the CornerNet paper (both corners inside, both
    outside, one of each), with the corrected quadratic roots (SPEC.md, Ground truth). The
    formula is symmetric in height and width. The caller truncates: `R = max(0, int(r))`.
    Sample values (h x w -> int(r)): 8x8 -> 1, 16x16 -> 3, 32x32 -> 7, 64x64 -> 14,
    128x128 -> 28, 16x64 -> 5.

    Args:
      height: box height in output-grid cells (python number, or a float tensor of any
        shape; tensors are dispatched to `gaussian_radius_tf`).
      width: box width in output-grid cells, same kind and shape as `height`.
      min_overlap: IoU threshold t, 0 < t < 1.

    Returns:
      The untruncated radius: a python float, or a tensor shaped like the inputs.

    Raises:
      ValueError: `min_overlap` outside (0, 1) or a negative python size.
    """
    if tf.is_tensor(height) or tf.is_tensor(width) or tf.is_tensor(min_overlap):
        return gaussian_radius_tf(height, width, min_overlap)
    t = _check_overlap(min_overlap)
    h, w = float(height), float(width)
    if h < 0 or w < 0 or not (math.isfinite(h) and math.isfinite(w)):
        raise ValueError(f"gaussian_radius: expected finite non-negative height and width, "
                         f"found height={height!r}, width={width!r}")
    return _radius(h, w, t, math.sqrt, max, min)


def gaussian_radius_tf(height: tf.Tensor, width: tf.Tensor, min_overlap: float = 0.3) -> tf.Tensor:
    """Graph version of `gaussian_radius` (same formula, element-wise).

    Args:
      height: [...] float tensor, box heights in output-grid cells (float64 recommended:
        the reference computes radii in float64 and truncates them).
      width: [...] float tensor of the same shape and dtype.
      min_overlap: python float IoU threshold, 0 < t < 1.

    Returns:
      [...] untruncated radii, dtype of `height`.
    """
    t = _check_overlap(min_overlap)
    h = tf.convert_to_tensor(height)
    if not h.dtype.is_floating:
        h = tf.cast(h, tf.float64)
    w = tf.cast(width, h.dtype)
    return _radius(h, w, t, tf.sqrt, tf.maximum, tf.minimum)


def _radius(h, w, t: float, sqrt, maximum, minimum):
    """The formula, once, for python floats (math) and tensors (tf): the smallest root of
    the paper's three cases, with the corrected quadratic roots (SPEC.md, Ground truth)."""
    b = h + w
    r1 = (b - sqrt(b * b - 4.0 * w * h * (1.0 - t) / (1.0 + t))) / 2.0
    # r2's discriminant equals 4 (h - w)^2 + 16 t w h >= 0; the max guards rounding.
    r2 = (2.0 * b - sqrt(maximum(4.0 * b * b - 16.0 * (1.0 - t) * w * h, 0.0))) / 8.0
    r3 = (-2.0 * t * b + sqrt(4.0 * t * t * b * b + 16.0 * t * (1.0 - t) * w * h)) / (8.0 * t)
    return minimum(minimum(r1, r2), r3)


def encode_targets(boxes: tf.Tensor, classes: tf.Tensor, num_classes: int, input_size: SizeLike,
                   output_size: SizeLike, max_objects: int = 128,
                   ignore_boxes: Optional[tf.Tensor] = None,
                   ignore_classes: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
    """Builds the CornerNet training targets of one image.

    Args:
      boxes: [N, 4] float32 `[x1, y1, x2, y2]` in network-input pixels; N may be 0 and
        dynamic. Rows with class < 0, x2 <= x1 or y2 <= y1 (e.g. `-1` padding) are ignored.
      classes: [N] int 0-based class ids; -1 marks padding.
      num_classes: C, channels of the heatmaps.
      input_size: (height, width) of the network input, or one int for a square.
      output_size: (h, w) of the heads' grid, or one int for a square.
      max_objects: M, slots of the index/offset/mask targets; the first M valid objects
        (in input order) get one, the others are in the heatmaps and `num_objects` only.
      ignore_boxes: optional [K, 4] float32 `[x1, y1, x2, y2]` input pixels of ignore
        regions (e.g. Pascal VOC "difficult" objects); K may be 0 and dynamic.
      ignore_classes: [K] int 0-based classes of `ignore_boxes` (-1: padding). In the
        region's class channel, the heatmap cells from `floor(x1 * r)` to `floor(x2 * r)`
        (and the same in y), borders included, become `HEATMAP_IGNORE` (no loss), except
        cells at exactly 1 (another object's corner stays a corner).

    Returns:
      Dict with
        tl_heatmap, br_heatmap: [h, w, C] float32 Gaussian targets in [0, 1], 1 at corners,
          `HEATMAP_IGNORE` (-1) in ignore regions;
        tl_index, br_index: [M] int32 corner cell `iy * w + ix` (0 in empty slots);
        tl_offset, br_offset: [M, 2] float32 `(x, y)` sub-cell offsets in [0, 1);
        mask: [M] float32, 1 for the slots holding an object;
        num_objects: [] int32 valid objects before truncation to M.

    Raises:
      ValueError: bad python arguments or statically wrong tensor ranks.
      tf.errors.InvalidArgumentError (at run time): boxes and classes disagree in length,
        or a valid box has a class id >= num_classes.
    """
    in_h, in_w = size_pair(input_size, "input_size", "encode_targets")
    out_h, out_w = size_pair(output_size, "output_size", "encode_targets")
    num_classes = _positive_int(num_classes, "num_classes")
    max_objects = _positive_int(max_objects, "max_objects")
    boxes, classes = _check_objects(boxes, classes)

    x1, y1, x2, y2, valid, num_objects = _clip_and_filter(boxes, classes, in_h, in_w,
                                                          num_classes)  # [N] each
    # The first M valid objects, in input order, in fixed slots.
    slots, mask = _compact_valid(valid, max_objects, (x1, y1, x2, y2))  # [M] each, mask [M]

    ratio_x, ratio_y = out_w / in_w, out_h / in_h
    # Heatmaps: every valid object, with or without a slot.
    radius = tf.cast(_corner_radius(x1, y1, x2, y2, ratio_x, ratio_y, valid), tf.float32)  # [N]
    outputs = {MASK: tf.cast(mask, tf.float32), NUM_OBJECTS: num_objects}
    corners = (((TL_HEATMAP, TL_INDEX, TL_OFFSET), (x1, y1), slots[:2]),
               ((BR_HEATMAP, BR_INDEX, BR_OFFSET), (x2, y2), slots[2:]))
    for (heatmap_key, index_key, offset_key), (x, y), (slot_x, slot_y) in corners:
        _, _, outputs[index_key], outputs[offset_key] = _corner_cells(
            slot_x * ratio_x, slot_y * ratio_y, out_w, mask)
        cx, cy, _, _ = _corner_cells(x * ratio_x, y * ratio_y, out_w, valid)
        outputs[heatmap_key] = _draw_heatmap(cx, cy, radius, classes, valid, num_classes,
                                             out_h, out_w)
    if ignore_boxes is not None:
        ignored = _ignore_cells(ignore_boxes, ignore_classes, in_h, in_w, num_classes,
                                ratio_x, ratio_y, out_h, out_w)  # [h, w, C] bool
        for key in (TL_HEATMAP, BR_HEATMAP):
            heatmap = outputs[key]
            outputs[key] = tf.where(ignored & (heatmap < 1.0), HEATMAP_IGNORE, heatmap)
    return outputs


def _ignore_cells(boxes, classes, in_h: int, in_w: int, num_classes: int, ratio_x: float,
                  ratio_y: float, out_h: int, out_w: int) -> tf.Tensor:
    """[h, w, C] bool: the output cells covered by an ignore region of each class.

    Args:
      boxes: [K, 4] xyxy input pixels; classes: [K] int (-1: padding).
      in_h, in_w, out_h, out_w: input and output grid sizes; ratio_x, ratio_y: out / in.
      num_classes: C.
    """
    if classes is None:
        raise ValueError("encode_targets: ignore_boxes needs ignore_classes")
    boxes, classes = _check_objects(boxes, classes)
    x1, y1, x2, y2, valid, _ = _clip_and_filter(boxes, classes, in_h, in_w, num_classes)
    # Cells from the one holding the TL corner to the one holding the BR corner.
    lo_x, hi_x = tf.floor(x1 * ratio_x), tf.floor(x2 * ratio_x)  # [K] float64
    lo_y, hi_y = tf.floor(y1 * ratio_y), tf.floor(y2 * ratio_y)
    xs = tf.range(out_w, dtype=tf.float64)[None, :]  # [1, w]
    ys = tf.range(out_h, dtype=tf.float64)[None, :]  # [1, h]
    in_x = (xs >= lo_x[:, None]) & (xs <= hi_x[:, None])  # [K, w]
    in_y = (ys >= lo_y[:, None]) & (ys <= hi_y[:, None])  # [K, h]
    cells = tf.cast(in_y[:, :, None] & in_x[:, None, :], tf.int32)  # [K, h, w]
    segments = tf.where(valid, classes, num_classes)  # padding -> dropped segment C
    per_class = tf.math.unsorted_segment_max(cells, segments, num_classes + 1)[:num_classes]
    return tf.transpose(per_class > 0, [1, 2, 0])  # [h, w, C]


def _positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"encode_targets: {name} must be a positive int, found {value!r}")
    return int(value)


def _check_objects(boxes, classes) -> tuple[tf.Tensor, tf.Tensor]:
    """boxes [N, 4] (any float dtype) and classes [N] as int32, with static rank checks."""
    boxes = tf.convert_to_tensor(boxes)
    classes = tf.convert_to_tensor(classes)
    if boxes.shape.rank != 2 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"encode_targets: boxes must be [N, 4] (x1, y1, x2, y2), found shape "
                         f"{boxes.shape}")
    if classes.shape.rank != 1:
        raise ValueError(f"encode_targets: classes must be [N], found shape {classes.shape}")
    return boxes, tf.cast(classes, tf.int32)


def _clip_and_filter(boxes: tf.Tensor, classes: tf.Tensor, in_h: int, in_w: int,
                     num_classes: int):
    """Clips boxes to [0, input - 1] and marks the valid ones (SPEC.md, Ground truth).

    Args:
      boxes: [N, 4] xyxy input pixels.
      classes: [N] int32, -1 for padding.
      in_h, in_w: network input size.
      num_classes: C; a valid box with a class >= C fails at run time.

    Returns:
      (x1, y1, x2, y2) [N] float64 clipped, valid [N] bool (class >= 0 and positive size
      after clipping), num_objects [] int32 (count of valid).
    """
    checks = [tf.debugging.assert_equal(
        tf.shape(boxes)[0], tf.shape(classes)[0],
        message="encode_targets: boxes [N, 4] and classes [N] must have the same N")]
    with tf.control_dependencies(checks):
        b = tf.cast(boxes, tf.float64)  # [N, 4]
    x1 = tf.clip_by_value(b[:, 0], 0.0, in_w - 1.0)
    y1 = tf.clip_by_value(b[:, 1], 0.0, in_h - 1.0)
    x2 = tf.clip_by_value(b[:, 2], 0.0, in_w - 1.0)
    y2 = tf.clip_by_value(b[:, 3], 0.0, in_h - 1.0)
    valid = (classes >= 0) & (x2 > x1) & (y2 > y1)  # [N]
    class_check = tf.debugging.assert_less(
        tf.where(valid, classes, 0), num_classes,
        message=f"encode_targets: a box has a class id >= num_classes ({num_classes}); "
                f"classes must be 0-based contiguous ids (or -1 for padding)")
    with tf.control_dependencies([class_check]):
        num_objects = tf.reduce_sum(tf.cast(valid, tf.int32))
    return x1, y1, x2, y2, valid, num_objects


def _compact_valid(valid: tf.Tensor, max_objects: int, values: Sequence[tf.Tensor]):
    """Moves the first M valid rows, in order, into M fixed slots.

    Args:
      valid: [N] bool.
      max_objects: M.
      values: [N] tensors to compact.

    Returns:
      (compacted values, each [M] with 0 in empty slots; mask [M] bool, slots holding an
      object). Rows past the first M valid ones go to a dummy slot M that is sliced away.
    """
    rank = tf.cumsum(tf.cast(valid, tf.int32)) - 1  # [N]
    keep = valid & (rank < max_objects)
    slot = tf.where(keep, rank, max_objects)[:, None]  # [N, 1]

    def compact(v: tf.Tensor) -> tf.Tensor:
        return tf.scatter_nd(slot, v, [max_objects + 1])[:max_objects]

    return [compact(v) for v in values], compact(tf.cast(keep, tf.int32)) > 0


def _corner_radius(x1, y1, x2, y2, ratio_x: float, ratio_y: float, mask: tf.Tensor):
    """R = max(0, floor(gaussian_radius(ceil(h * r), ceil(w * r)))) per slot, 0 when empty.

    Args:
      x1, y1, x2, y2: [M] float64 input pixels.
      ratio_x, ratio_y: output / input per axis.
      mask: [M] bool.

    Returns:
      [M] float64 integral radii in output-grid cells.
    """
    # Box size in output cells, rounded up, sets the radius (reference: math.ceil).
    box_w = tf.math.ceil((x2 - x1) * ratio_x)
    box_h = tf.math.ceil((y2 - y1) * ratio_y)
    radius = tf.maximum(tf.floor(gaussian_radius_tf(box_h, box_w)), 0.0)  # [M] float64
    return tf.where(mask, radius, 0.0)


def _corner_cells(fx: tf.Tensor, fy: tf.Tensor, out_w: int, mask: tf.Tensor):
    """Cell, embedding index and sub-cell offset of corners at output-grid positions.

    Args:
      fx, fy: [M] float64 corner positions in output-grid units.
      out_w: w of the grid (row-major index y * w + x).
      mask: [M] bool.

    Returns:
      (cx, cy) [M] float32 integral cells; index [M] int32 (0 in empty slots); offset
      [M, 2] float32 (x, y) in [0, 1) (0 in empty slots).
    """
    cx, cy = tf.floor(fx), tf.floor(fy)
    offset = tf.stack([fx - cx, fy - cy], axis=-1)  # [M, 2]
    ix, iy = tf.cast(cx, tf.int32), tf.cast(cy, tf.int32)
    index = tf.where(mask, iy * out_w + ix, 0)
    offset = tf.where(mask[:, None], tf.cast(offset, tf.float32), 0.0)
    return tf.cast(cx, tf.float32), tf.cast(cy, tf.float32), index, offset


def _draw_heatmap(cx: tf.Tensor, cy: tf.Tensor, radius: tf.Tensor, classes: tf.Tensor,
                  mask: tf.Tensor, num_classes: int, out_h: int, out_w: int) -> tf.Tensor:
    """Max-combines one Gaussian per object into its class channel, `_DRAW_CHUNK` at a time.

    Args:
      cx, cy: [N] float32 corner cells (integral values) on the output grid.
      radius: [N] float32 integral radii R >= 0.
      classes: [N] int32 class of each row.
      mask: [N] bool, rows holding an object.
      num_classes: C.
      out_h, out_w: grid size.

    Returns:
      [out_h, out_w, C] float32 heatmap.
    """
    n = tf.shape(cx)[0]
    chunks = (n + _DRAW_CHUNK - 1) // _DRAW_CHUNK
    pad = chunks * _DRAW_CHUNK - n

    def chunked(v: tf.Tensor) -> tf.Tensor:  # [N] -> [chunks, _DRAW_CHUNK], mask pads False
        return tf.reshape(tf.pad(v, [[0, pad]]), [chunks, _DRAW_CHUNK])

    cx, cy, radius, classes, mask = (chunked(v) for v in (cx, cy, radius, classes, mask))

    def draw(i, heatmap):
        per_class = _draw_chunk(cx[i], cy[i], radius[i], classes[i], mask[i], num_classes,
                                out_h, out_w)
        return i + 1, tf.maximum(heatmap, per_class)

    # The background is 0; parallel_iterations=1 keeps one chunk's block alive at a time.
    _, heatmap = tf.while_loop(lambda i, _: i < chunks, draw,
                               (tf.constant(0), tf.zeros([num_classes, out_h, out_w])),
                               parallel_iterations=1)
    return tf.transpose(heatmap, [1, 2, 0])


def _draw_chunk(cx, cy, radius, classes, mask, num_classes: int, out_h: int,
                out_w: int) -> tf.Tensor:
    """[C, h, w] max of the Gaussians of up to `_DRAW_CHUNK` objects ([K] arguments)."""
    sigma = (2.0 * radius + 1.0) / 6.0  # [K]
    two_sigma2 = (2.0 * sigma * sigma)[:, None]  # [K, 1]
    # The kernel is separable: exp(-(dx^2 + dy^2) / 2s^2) = gx(dx) * gy(dy), and the
    # (2R+1)^2 square is |dx| <= R and |dy| <= R; cells off the grid simply do not exist.
    dx = tf.range(out_w, dtype=tf.float32)[None, :] - cx[:, None]  # [K, w]
    dy = tf.range(out_h, dtype=tf.float32)[None, :] - cy[:, None]  # [K, h]
    gx = tf.where(tf.abs(dx) <= radius[:, None], tf.exp(-dx * dx / two_sigma2), 0.0)
    gy = tf.where(tf.abs(dy) <= radius[:, None], tf.exp(-dy * dy / two_sigma2), 0.0)
    gaussians = gy[:, :, None] * gx[:, None, :]  # [K, h, w], peak exactly 1 at the corner
    gaussians = tf.where(gaussians < _GAUSSIAN_EPS, 0.0, gaussians)
    # Empty rows go to an extra segment C that is dropped.
    segments = tf.where(mask, classes, num_classes)  # [K]
    per_class = tf.math.unsorted_segment_max(gaussians, segments, num_classes + 1)
    # Classes without objects come back as the lowest float; the caller's max with 0 fixes.
    return per_class[:num_classes]  # [C, h, w]


def _check_overlap(min_overlap) -> float:
    t = float(min_overlap)
    if not 0.0 < t < 1.0:
        raise ValueError(f"gaussian_radius: min_overlap must be in (0, 1), found {min_overlap!r}")
    return t
