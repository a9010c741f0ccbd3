"""The image path of inference, defined once: decode, fit to the network, map boxes back.

Evaluation (`eval_runner.py`), the serving graph (`export/serving.py`, hence the SavedModel
and the TFLite file) and `predict` all go through these functions, so the AP that
`--mode=evaluate` reports is measured on the arithmetic that ships:

    image = read_image(path)                          # [H, W, 3] uint8 RGB
    inputs, transform = fit_to_input(image, (h, w))   # [h, w, 3] float32, (sy, sx, oy, ox)
    ...network + decode -> boxes [B, N, 4] xyxy...
    detection_boxes = boxes_to_original(boxes, transforms, sizes, ratio)  # normalised yxyx
    boxes, scores, classes, n = contract_to_pixels(outputs, sizes)         # host side

The coordinate map of `fit_to_input` is `network_xy = original_xy * scale + offset`, with
`transform = (scale_y, scale_x, offset_y, offset_x)`.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf import keys
from cornernet_tf.data.choices import EVAL_RESIZE_MODES

SizeLike = Union[int, Sequence[int]]

# How an image is fitted to the network at test time (`data.eval_resize`); the tuple lives
# in the TensorFlow-free data/choices.py so that config validation can read it.
EVAL_MODES = EVAL_RESIZE_MODES


def size_pair(size: SizeLike, name: str, where: str) -> tuple[int, int]:
    """(height, width) of an int (a square) or a pair of positive ints.

    Args:
      size: an int, or a sequence of two ints.
      name: what the size is, for the message (e.g. "input_size").
      where: the function or config key that received it.

    Raises:
      ValueError: not an int or a pair, or a side < 1.
    """
    try:
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            pair = (int(size), int(size))
        else:
            pair = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{where}: {name} must be a positive int or (height, width), "
                         f"found {size!r}")
    return pair


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> [H, W, 3] uint8 RGB, the one decoder of the package.

    Used by the training and evaluation pipelines (files), predict and evaluation of exports
    (files) and the `serving_bytes` signature (request bytes), so every path sees the same
    pixels: grayscale is replicated to 3 channels, an alpha channel is dropped, a 16-bit
    PNG keeps its high byte (v * 255 / 65535 rounded down, i.e. v >> 8; TensorFlow's
    `convert_image_dtype` rule), a GIF gives its first frame.

    Args:
      data: [] string, JPEG, PNG, GIF, BMP or WebP bytes.

    Returns:
      [H, W, 3] uint8.
    """
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def read_image(path) -> tf.Tensor:
    """An image file -> [H, W, 3] uint8 RGB (`decode_image` of its bytes)."""
    return decode_image(tf.io.read_file(path))


def fit_to_input(images: tf.Tensor, input_size: SizeLike, mode: str = "resize_pad", *,
                 scale: float = 1.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Fits one image, or a batch of same-size images, to the network.

    Modes:
      resize_pad: scale by min(h / H, w / W) (aspect kept), bilinear, zero-pad bottom/right
        to exactly `input_size`. Used by evaluation, the SavedModel and the TFLite host side.
      pad127: the reference's test input: the image at `scale` times its resolution (1: no
        resize), zero-padded CENTRED to `(H' | 127, W' | 127)` where H', W' = floor(H *
        scale), floor(W * scale); e.g. 480x640 -> 511x767 (`input_size` unused). Every
        n | 127 is 128k - 1, which a stride-4 hourglass maps to a grid of (n + 1) / 4. The
        size varies per image: evaluation only (the exported graph needs a fixed grid).

    Args:
      images: [H, W, 3] or [B, H, W, 3], uint8 or float RGB in [0, 255]; H, W (and the
        channels) may be dynamic.
      input_size: (h, w) of the network input, or one int.
      mode: one of EVAL_MODES.
      scale: pad127 only, the multi-scale test factor.

    Returns:
      images: [(B,) h, w, 3] float32 (resize_pad) or [(B,) H'|127, W'|127, 3] (pad127).
      transform: [4] float32 (scale_y, scale_x, offset_y, offset_x), the same for every
        image of a batch; `network_xy = original_xy * scale + offset`.

    Raises:
      ValueError: unknown mode, bad size or scale, rank not 3 or 4, channels known and not 3.
      tf.errors.InvalidArgumentError (at run time): an empty image, or channels not 3.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"fit_to_input: mode must be one of {EVAL_MODES}, found {mode!r}")
    if not scale > 0:
        raise ValueError(f"fit_to_input: scale must be positive, found {scale!r}")
    images = _check_images(images)
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    if mode == "resize_pad":
        in_h, in_w = size_pair(input_size, "input_size", "fit_to_input")
        ratio = tf.minimum(in_h / hf, in_w / wf)
        new_h = tf.clip_by_value(tf.cast(tf.round(hf * ratio), tf.int32), 1, in_h)
        new_w = tf.clip_by_value(tf.cast(tf.round(wf * ratio), tf.int32), 1, in_w)
        resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
        out = tf.image.pad_to_bounding_box(resized, 0, 0, in_h, in_w)
        out = tf.ensure_shape(out, [*([None] * (images.shape.rank - 3)), in_h, in_w, 3])
        offset_y = offset_x = tf.constant(0, tf.int32)
    else:
        new_h = tf.cast(tf.floor(hf * scale), tf.int32)
        new_w = tf.cast(tf.floor(wf * scale), tf.int32)
        resized = images
        if scale != 1.0:
            resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
        pad_h, pad_w = tf.bitwise.bitwise_or(new_h, 127), tf.bitwise.bitwise_or(new_w, 127)
        # The reference's centring: the image centre n // 2 lands on the canvas centre.
        offset_y, offset_x = pad_h // 2 - new_h // 2, pad_w // 2 - new_w // 2
        out = tf.image.pad_to_bounding_box(resized, offset_y, offset_x, pad_h, pad_w)
    transform = tf.stack([tf.cast(new_h, tf.float32) / hf, tf.cast(new_w, tf.float32) / wf,
                          tf.cast(offset_y, tf.float32), tf.cast(offset_x, tf.float32)])
    return out, transform


def _check_images(images: tf.Tensor) -> tf.Tensor:
    """[(B,) H, W, 3] checked (rank and channels statically, channels and size at run
    time), as float32."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4) or images.shape[-1] not in (None, 3):
        raise ValueError(f"fit_to_input: images must be [H, W, 3] or [B, H, W, 3] RGB, found "
                         f"shape {images.shape}")
    shape = tf.shape(images)
    # A loaded signature called with a tensor does not check its [None, None, None, 3]:
    # a 4-channel image would otherwise fail later in a reshape with no hint.
    checks = [tf.debugging.assert_equal(
                  shape[-1], 3, message="images: expected uint8 [B, H, W, 3] RGB (3 channels); "
                                        "the last dimension found is"),
              tf.debugging.assert_positive(
                  shape[-3:-1],
                  message="images must have height and width >= 1 (an empty image was given)")]
    with tf.control_dependencies(checks):
        return tf.cast(images, tf.float32)


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
