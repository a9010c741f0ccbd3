"""Training augmentation, with boxes following every geometric op.

(Test-time fitting to the network is `data/images.py`'s `fit_to_input`.)

Training (`train_augment`) reproduces the reference sampler of CornerNet
(princeton-vl/CornerNet `sample/coco.py` and `sample/utils.py`; SPEC.md, Training recipe):

1. Random crop. A scale s is drawn from `crop_scales`; the crop canvas is
   `int(input_h * s) x int(input_w * s)` pixels of the ORIGINAL image (its size depends on
   the network input size, not on the image size). Its centre `(cty, ctx)` is drawn
   uniformly from the integers of `[b, H - b)` x `[b, W - b)` where, per axis, b is
   `crop_border` integer-halved until `size - b > b`. The image window
   `[ctx - cw // 2, ctx + cw // 2)` (clipped to the image) is pasted on a zero canvas so that
   the centre lands on canvas pixel `cw // 2`; boxes shift by `cw // 2 - ctx`. (For an odd
   side the window is one pixel short, so the canvas's last column/row stays zero; kept as
   in the reference.)
   Without random crop the reference pastes the whole image on a centred square canvas of
   side `max(H, W)` instead (generalised here to the input aspect ratio).
2. Bilinear resize of the canvas to the input size (half-pixel centres, like cv2); boxes
   scale by `input / canvas` per axis.
3. Boxes clipped to `[0, w - 1] x [0, h - 1]`; boxes with width or height <= 0 become
   `[-1, -1, -1, -1]` with class -1 (the package's padding convention).
4. Horizontal flip with p = 0.5: `x' = w - 1 - x`, x1 and x2 swapped.
5. On the image scaled to [0, 1]: brightness, contrast and saturation in random order, each
   factor `1 + U(-j, j)`; then PCA lighting noise. The output is rescaled to [0, 255] and
   clipped there (the reference does not clip; values beyond the range a camera can
   produce are not worth learning, and serving inputs are uint8).

Randomness: with `seed` (a [2] int tensor) every draw is a stateless op of a sub-seed
split from it, so the output is a pure function of (inputs, seed). Without it, a seed is
drawn with `tf.random.uniform`, which follows `tf.random.set_seed`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf.data.images import SizeLike, size_pair

# PCA of COCO pixel colours on [0, 1] images, from the reference (db/coco.py). The
# reference image is BGR (cv2) and applies `image += eig_vec @ (eig_val * alpha)`, so the
# ROWS of its matrix are the channels B, G, R and its COLUMNS the principal components
# (column 0, all ~-0.58, is luminance and pairs with the largest eigenvalue). Our images
# are RGB, so the rows are reversed; columns and eigenvalues are unchanged.
EIGEN_VALUES = (0.2141788, 0.01817699, 0.00341571)
EIGEN_VECTORS_RGB = (
    (-0.56089297, 0.71832671, 0.41158938),  # R (reference row 2)
    (-0.5832747, 0.00994535, -0.81221408),  # G (reference row 1)
    (-0.58752847, -0.69563484, 0.41340352),  # B (reference row 0)
)
# cv2.COLOR_BGR2GRAY weights, the reference's grayscale, in RGB order.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# Independent streams split from the seed: scale, centre y, centre x, flip, jitter order,
# jitter factors, lighting.
_NUM_STREAMS = 7


def train_augment(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, input_size: SizeLike,
                  *, random_crop: bool = True,
                  crop_scales: Sequence[float] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
                  crop_border: int = 128, flip: bool = True, color_jitter: float = 0.4,
                  lighting_std: float = 0.1, seed: Optional[tf.Tensor] = None,
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The reference training augmentation of one image (module docstring has the steps).

    Args:
      image: [H, W, 3] uint8 or float RGB in [0, 255]; H and W may be dynamic.
      boxes: [N, 4] float32 `[x1, y1, x2, y2]` in image pixels; `-1` rows are padding.
      classes: [N] int 0-based ids; -1 marks padding.
      input_size: network input (h, w), or one int for a square.
      random_crop: reference random crop; False pastes the whole image on a centred canvas.
      crop_scales: crop canvas side = int(input side * s), s drawn uniformly from these.
      crop_border: b of the crop-centre range `[b, size - b)`, halved until it fits.
      flip: horizontal flip with probability 0.5.
      color_jitter: j of the brightness/contrast/saturation factors 1 + U(-j, j); 0 = off.
      lighting_std: std of the PCA lighting coefficients; 0 = off.
      seed: optional [2] int32/int64 tensor; deterministic (stateless) draws when given.

    Returns:
      image: [h, w, 3] float32 RGB in [0, 255].
      boxes: [N, 4] float32 in network-input pixels, inside `[0, w - 1] x [0, h - 1]`;
        boxes outside the crop, and input padding, are `[-1, -1, -1, -1]`.
      classes: [N] int32, -1 where the box is padding.

    Raises:
      ValueError: bad python arguments or statically wrong ranks/channels.
    """
    in_h, in_w = size_pair(input_size, "input_size", "train_augment")
    scales = tuple(float(s) for s in crop_scales)
    if not scales or min(int(min(in_h, in_w) * s) for s in scales) < 1:
        raise ValueError(f"train_augment: crop_scales must give crops of at least 1 pixel "
                         f"(int(input side * s) >= 1), found {crop_scales!r} for {input_size!r}")
    if int(crop_border) < 0:
        raise ValueError(f"train_augment: crop_border must be >= 0, found {crop_border!r}")
    if not 0.0 <= color_jitter < 1.0:
        raise ValueError(f"train_augment: color_jitter must be in [0, 1), found {color_jitter!r}")
    if lighting_std < 0:
        raise ValueError(f"train_augment: lighting_std must be >= 0, found {lighting_std!r}")
    image, boxes, classes = _check_inputs(image, boxes, classes, "train_augment")

    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), _NUM_STREAMS)

    valid = (classes >= 0) & box_lib.valid_mask(boxes)  # [N]
    shape = tf.shape(image)
    height, width = shape[0], shape[1]

    crop_h, crop_w, cty, ctx = _crop_params(height, width, in_h, in_w, random_crop, scales,
                                            int(crop_border), seeds[0:3])
    canvas, shift_y, shift_x = _paste_on_canvas(image, cty, ctx, crop_h, crop_w)
    image = tf.image.resize(canvas, [in_h, in_w], method="bilinear")  # [h, w, 3] float32
    scale_y = in_h / tf.cast(crop_h, tf.float32)
    scale_x = in_w / tf.cast(crop_w, tf.float32)
    shift = tf.cast(tf.stack([shift_x, shift_y, shift_x, shift_y]), tf.float32)
    factor = tf.stack([scale_x, scale_y, scale_x, scale_y])
    boxes = (boxes + shift) * factor  # [N, 4] network-input pixels
    boxes = box_lib.clip_boxes(boxes, in_h - 1, in_w - 1)  # pixel indices
    valid &= box_lib.valid_mask(boxes)
    boxes = tf.where(valid[:, None], boxes, -1.0)

    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
        image = tf.where(do_flip, tf.reverse(image, axis=[1]), image)
        # pixel indices: x -> (w - 1) - x; every row is a valid box or -1 padding here
        boxes = tf.where(do_flip, box_lib.flip_horizontal(boxes, in_w - 1), boxes)

    if color_jitter > 0 or lighting_std > 0:
        unit = image / 255.0
        if color_jitter > 0:
            unit = _color_jitter(unit, color_jitter, seeds[4], seeds[5])
        if lighting_std > 0:
            unit = _lighting(unit, lighting_std, seeds[6])
        image = tf.clip_by_value(unit * 255.0, 0.0, 255.0)

    classes = tf.where(valid, classes, -1)
    return image, boxes, classes


def _crop_params(height: tf.Tensor, width: tf.Tensor, in_h: int, in_w: int, random_crop: bool,
                 scales: tuple[float, ...], border: int, seeds: tf.Tensor):
    """Canvas size and image centre of the crop (module docstring, step 1).

    Returns:
      crop_h, crop_w, cty, ctx: [] int32 each.
    """
    if not random_crop:
        # The whole image on the smallest canvas of the input's aspect ratio covering it
        # (the reference's centred max(H, W) square when the input is square).
        hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
        crop_h = tf.maximum(height, tf.cast(tf.math.ceil(wf * in_h / in_w), tf.int32))
        crop_w = tf.maximum(width, tf.cast(tf.math.ceil(hf * in_w / in_h), tf.int32))
        return crop_h, crop_w, height // 2, width // 2
    # Canvas sizes as the reference's python int(view * s), computed here in python.
    crop_sizes = tf.constant([[int(in_h * s), int(in_w * s)] for s in scales], tf.int32)
    pick = tf.random.stateless_uniform([], seeds[0], 0, len(scales), dtype=tf.int32)
    b_h, b_w = _border(border, height), _border(border, width)
    cty = tf.random.stateless_uniform([], seeds[1], b_h, height - b_h, dtype=tf.int32)
    ctx = tf.random.stateless_uniform([], seeds[2], b_w, width - b_w, dtype=tf.int32)
    return crop_sizes[pick][0], crop_sizes[pick][1], cty, ctx


def _border(border: int, size: tf.Tensor) -> tf.Tensor:
    """Reference `_get_border`: `border // i` for the first i in 1, 2, 4, ... with size > 2 * it."""
    candidates = []
    b = int(border)
    while True:
        candidates.append(b)
        if b == 0:
            break
        b //= 2  # border // (2i) == (border // i) // 2 for non-negative ints
    candidates = tf.constant(candidates, tf.int32)
    fits = size > 2 * candidates  # the last candidate, 0, fits any size >= 1
    return candidates[tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)]


def _paste_on_canvas(image: tf.Tensor, cty: tf.Tensor, ctx: tf.Tensor, crop_h: tf.Tensor,
                     crop_w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Reference crop: window `[ct - c // 2, ct + c // 2)` around the centre on a zero canvas.

    Returns:
      canvas: [crop_h, crop_w, 3] float32; shift_y, shift_x: [] int32 with
      `canvas_xy = image_xy + shift`.
    """
    shape = tf.shape(image)
    y0, y1 = tf.maximum(cty - crop_h // 2, 0), tf.minimum(cty + crop_h // 2, shape[0])
    x0, x1 = tf.maximum(ctx - crop_w // 2, 0), tf.minimum(ctx + crop_w // 2, shape[1])
    shift_y, shift_x = crop_h // 2 - cty, crop_w // 2 - ctx
    window = image[y0:y1, x0:x1, :]
    canvas = tf.image.pad_to_bounding_box(window, y0 + shift_y, x0 + shift_x, crop_h, crop_w)
    return canvas, shift_y, shift_x


def _color_jitter(image: tf.Tensor, strength: float, order_seed: tf.Tensor,
                  factor_seed: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation in random order, on a [0, 1] image (reference).

    Each op is `a * image + (1 - a) * target` with a = 1 + U(-j, j): brightness blends with
    0, contrast with the mean grayscale, saturation with the per-pixel grayscale. As in the
    reference, the grayscale is computed once, from the image before any jitter.

    Args:
      image: [h, w, 3] float32 RGB in [0, 1].
    Returns:
      [h, w, 3] float32 (not clipped).
    """
    gray = tf.reduce_sum(image * tf.constant(_GRAY_WEIGHTS, tf.float32), -1, keepdims=True)
    gray_mean = tf.reduce_mean(gray)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))  # random permutation
    factors = 1.0 + tf.random.stateless_uniform([3], factor_seed, -strength, strength)
    for step in range(3):
        which = tf.one_hot(order[step], 3)  # [3]: brightness, contrast, saturation
        target = which[1] * gray_mean + which[2] * gray  # [h, w, 1]; 0 for brightness
        alpha = factors[step]
        image = alpha * image + (1.0 - alpha) * target
    return image


def _lighting(image: tf.Tensor, std: float, seed: tf.Tensor) -> tf.Tensor:
    """AlexNet-style PCA lighting noise on a [0, 1] RGB image: `+ V @ (lambda * alpha)`."""
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    delta = tf.linalg.matvec(tf.constant(EIGEN_VECTORS_RGB, tf.float32),
                             tf.constant(EIGEN_VALUES, tf.float32) * alpha)  # [3] RGB
    return image + delta


def _check_image_tensor(image: tf.Tensor, where: str) -> tf.Tensor:
    """[H, W, 3] statically checked, as float32 (`data.coco._check_image_file` checks files)."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or (image.shape[-1] is not None and image.shape[-1] != 3):
        raise ValueError(f"{where}: image must be [H, W, 3] RGB, found shape {image.shape}")
    return tf.cast(image, tf.float32)


def _check_inputs(image, boxes, classes, where: str):
    image = _check_image_tensor(image, where)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    classes = tf.convert_to_tensor(classes)
    if boxes.shape.rank != 2 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"{where}: boxes must be [N, 4] (x1, y1, x2, y2), "
                         f"found shape {boxes.shape}")
    if classes.shape.rank != 1:
        raise ValueError(f"{where}: classes must be [N], found shape {classes.shape}")
    check = tf.debugging.assert_equal(
        tf.shape(boxes)[0], tf.shape(classes)[0],
        message=f"{where}: boxes [N, 4] and classes [N] must have the same N")
    with tf.control_dependencies([check]):
        classes = tf.cast(classes, tf.int32)
    return image, boxes, classes
