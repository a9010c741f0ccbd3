"""Images in, network inputs out: read and decode a file, bound its size, fit it to the network.

The training and evaluation pipelines, the serving graph and `predict` all read images with
`read_image` / `decode_image` and fit them with `fit_to_input`, so every path decodes and
resizes with the same arithmetic. Mapping the network's boxes back to the image is the
inverse, `inference/preprocess.py`.

The coordinate map of `fit_to_input` is `network_xy = original_xy * scale + offset`, with
`transform = (scale_y, scale_x, offset_y, offset_x)`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from cornernet_tf.config.choices import EVAL_RESIZE_MODES
from cornernet_tf.config.schema import ExportConfig
from cornernet_tf.data.image_formats import DECODER_FORMATS, DECODER_SIGNATURES, WEBP_CONTAINER
from cornernet_tf.data import gif as gif_lib
from cornernet_tf.data import files as file_rule
from cornernet_tf.errors import UserError

SizeLike = Union[int, Sequence[int]]

# How an image is fitted to the network at test time (`data.eval_resize`); the tuple lives
# in the TensorFlow-free config/choices.py so that config validation can read it.
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


# The default of `export.max_image_pixels`, defined once in the config. 50 MP is an
# 8660 x 5773 photograph; one such image decodes to 150 MB of uint8.
DEFAULT_MAX_IMAGE_PIXELS = ExportConfig().max_image_pixels

# The signatures of the formats the package reads: the one table, image_formats.py.
_MAGIC = dict({name.lower(): signature for name, _, signature in DECODER_SIGNATURES},
              riff=WEBP_CONTAINER)
_FORMATS = DECODER_FORMATS


class UnreadableImageError(UserError, tf.errors.InvalidArgumentError):
    """An image file cannot be used: not a supported format, corrupt, or too large.

    A `UserError` (the CLI prints it in one or two lines) that is also the
    `InvalidArgumentError` TensorFlow raises for the same file in a graph, so code that
    handles one handles the other. The message names the file.
    """

    def __init__(self, message: str):
        tf.errors.InvalidArgumentError.__init__(self, None, None, message)


class ImageTooLargeError(UnreadableImageError):
    """An image file has more pixels than the limit (`export.max_image_pixels`)."""


def _uint(head: tf.Tensor, pos: int, n: int, big_endian: bool) -> tf.Tensor:
    """The unsigned integer of bytes [pos, pos + n) of a [] string, as int64."""
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(head, pos, n), tf.uint8), tf.int64)
    order = range(n) if big_endian else reversed(range(n))
    value = tf.constant(0, tf.int64)
    for i in order:
        value = value * 256 + b[i]
    return value


def _head(data: tf.Tensor) -> tf.Tensor:
    """The first 32 bytes, zero-filled: every fixed-offset header field read here is inside
    them, and `substr` of a short file would fail."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), "\0" * 32]),
                             0, 32)


def header_size(data: tf.Tensor) -> tf.Tensor:
    """(height, width) of an encoded image read from its header, without decoding it.

    PNG (IHDR), JPEG (`tf.image.extract_jpeg_shape`, the frame header), GIF (the first
    image's descriptor, what `decode_image` decodes; not the logical screen, which the
    decoder ignores), BMP (info header) and WebP (VP8, VP8L and VP8X headers). Graph-safe.

    Args:
      data: [] string, the file's bytes.

    Returns:
      [2] int64 (height, width); (-1, -1) when the format is none of these or the bytes
      are too short to hold a header (the decoder then says what is wrong), or a GIF
      whose first image is not complete (`decode_image` refuses it).
    """
    return _header(tf.convert_to_tensor(data, tf.string))[0]


def _is_gif(data: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(_head(data), 0, len(_MAGIC["gif"])), _MAGIC["gif"])


def _header(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(`header_size`, the end of a GIF's first image: -1 when not found or not a GIF)."""
    unknown = tf.constant([-1, -1], tf.int64)
    gif_size, gif_end = tf.cond(_is_gif(data), lambda: gif_lib.first_image(data),
                                lambda: (unknown, tf.constant(-1, tf.int64)))
    head = _head(data)
    length = tf.strings.length(data)

    def starts(magic, pos=0):
        return tf.equal(tf.strings.substr(head, pos, len(magic)), magic)

    le = lambda pos, n: _uint(head, pos, n, big_endian=False)  # noqa: E731
    png = tf.stack([_uint(head, 20, 4, True), _uint(head, 16, 4, True)])
    bmp_h = le(22, 4)
    bmp = tf.stack([tf.where(bmp_h >= 2 ** 31, 2 ** 32 - bmp_h, bmp_h), le(18, 4)])  # top-down
    vp8 = tf.stack([le(28, 2) % 16384, le(26, 2) % 16384])
    vp8l_bits = le(21, 4)
    vp8l = tf.stack([(vp8l_bits // 16384) % 16384 + 1, vp8l_bits % 16384 + 1])
    vp8x = tf.stack([le(27, 3) + 1, le(24, 3) + 1])
    is_webp = tf.logical_and(starts(_MAGIC["riff"]), starts(_MAGIC["webp"], 8))
    webp = tf.where(starts(b"VP8X", 12), vp8x,
                    tf.where(starts(b"VP8L", 12), vp8l,
                             tf.where(starts(b"VP8 ", 12), vp8, unknown)))
    size = unknown
    for ok, value in ((tf.logical_and(starts(_MAGIC["png"]), length >= 24), png),
                      (starts(_MAGIC["gif"]), gif_size),
                      (tf.logical_and(starts(_MAGIC["bmp"]), length >= 26), bmp),
                      (tf.logical_and(is_webp, length >= 30), webp)):
        size = tf.where(ok, value, size)
    return tf.cond(starts(_MAGIC["jpeg"]),
                   lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                   lambda: size), gif_end


def _webp_has_alpha(data: tf.Tensor) -> tf.Tensor:
    """[] bool: a WebP whose header flags an alpha channel (VP8X flag 0x10, VP8L bit 28)."""
    head = _head(data)
    is_webp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), _MAGIC["riff"]),
                             tf.equal(tf.strings.substr(head, 8, 4), _MAGIC["webp"]))
    chunk = tf.strings.substr(head, 12, 4)
    vp8x_alpha = (_uint(head, 20, 1, True) // 16) % 2 == 1
    vp8l_alpha = (_uint(head, 21, 4, False) // 2 ** 28) % 2 == 1
    return tf.logical_and(is_webp, tf.logical_or(
        tf.logical_and(tf.equal(chunk, "VP8X"), vp8x_alpha),
        tf.logical_and(tf.equal(chunk, "VP8L"), vp8l_alpha)))


def is_known_format(data: tf.Tensor) -> tf.Tensor:
    """[] bool: the bytes start like a JPEG, PNG, GIF, BMP or WebP file."""
    head = _head(tf.convert_to_tensor(data, tf.string))
    checks = [tf.equal(tf.strings.substr(head, 0, len(_MAGIC[k])), _MAGIC[k])
              for k in ("png", "jpeg", "gif", "bmp")]
    checks.append(tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), _MAGIC["riff"]),
                                 tf.equal(tf.strings.substr(head, 8, 4), _MAGIC["webp"])))
    return tf.reduce_any(tf.stack(checks))


def _size_check(size: tf.Tensor, max_pixels: int, where: str, where_args,
                source: str) -> tf.Operation:
    """An assertion that size (height, width) has at most max_pixels pixels."""
    size = tf.cast(size, tf.int64)
    pixels = size[0] * size[1]
    message = tf.strings.format(
        where + ": {} x {} = {} pixels (" + source + ") exceed the limit of "
        f"{int(max_pixels)} pixels (config key export.max_image_pixels); expected an image "
        "of at most that many pixels", [*where_args, size[0], size[1], pixels])
    return tf.debugging.Assert(pixels <= max_pixels, [message])


def decode_image(data: tf.Tensor, max_pixels: Optional[int] = None, where: str = "image",
                 where_args: Sequence[tf.Tensor] = ()) -> tf.Tensor:
    """Encoded image bytes -> [H, W, 3] uint8 RGB, the one decoder of the package.

    Used by the training and evaluation pipelines (files), predict and evaluation of exports
    (files) and the `serving_bytes` signature (request bytes), so every path sees the same
    pixels: grayscale is replicated to 3 channels, an alpha channel is dropped, a 16-bit
    PNG keeps its high byte (v * 255 / 65535 rounded down, i.e. v >> 8; TensorFlow's
    `convert_image_dtype` rule), a GIF gives its first frame.

    With `max_pixels`, the size in the header (`header_size`) is checked before anything is
    decoded, so a 23000 x 23000 PNG of 1.5 MB, or a header claiming 100000 x 100000, is
    refused without allocating its pixels; a format whose header is not read is checked
    after decoding. A GIF is cut after its first image before it is decoded
    (`data/gif.py`): TensorFlow's decoder would decompress every frame first (a 4.7 MB
    GIF of 1000 frames of 2000 x 2000: 4 GB); a GIF whose first image is incomplete, or
    comes after more than `gif.MAX_BLOCKS_BEFORE_IMAGE` blocks, is refused.

    Args:
      data: [] string, JPEG, PNG, GIF, BMP or WebP bytes.
      max_pixels: refuse images with more pixels (H * W); None: no limit.
      where: what the bytes are, for the messages: a `tf.strings.format` template whose
        `{}` take `where_args`, e.g. "serving_bytes: image {} of the batch" with the index.
      where_args: tensors for the `{}` of `where`.

    Returns:
      [H, W, 3] uint8.

    Raises:
      tf.errors.InvalidArgumentError (at run time): not one of the formats above (the
        message names `where`), more than max_pixels pixels, or a corrupt file (the
        decoder's message).
    """
    data = tf.convert_to_tensor(data, tf.string)
    where_args = list(where_args)
    checks = [tf.debugging.Assert(is_known_format(data), [tf.strings.format(
        where + ": not a " + _FORMATS + " image (found {} bytes starting with {})",
        [*where_args, tf.strings.length(data), tf.strings.substr(data, 0, 8)])])]
    with tf.control_dependencies(checks):
        size, gif_end = _header(data)
        is_gif = _is_gif(data)
        checks.append(tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_gif), gif_end > 0), [tf.strings.format(
                where + ": a GIF without a complete first image within its first "
                f"{gif_lib.MAX_BLOCKS_BEFORE_IMAGE} blocks (truncated or not a GIF); not "
                "decoded", where_args)]))
    if max_pixels is not None:
        with tf.control_dependencies(checks):
            checks.append(_size_check(size, max_pixels, where, where_args, "from its header"))
    with tf.control_dependencies(checks):
        # The decoder sees a GIF's first image only (see above).
        data = tf.cond(is_gif, lambda: gif_lib.first_image_only(data, gif_end), lambda: data)
        # TensorFlow decodes a WebP only with its own channel count: one with alpha is
        # decoded as RGBA and the alpha dropped, as for PNG.
        image = tf.cond(
            _webp_has_alpha(data),
            lambda: tf.io.decode_webp(data, channels=4)[0, :, :, :3],
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False))
    image.set_shape([None, None, 3])
    if max_pixels is not None:
        with tf.control_dependencies([_size_check(tf.shape(image)[:2], max_pixels, where,
                                                  where_args, "decoded")]):
            image = tf.identity(image)
    return image


def read_image(path, max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS) -> tf.Tensor:
    """An image file -> [H, W, 3] uint8 RGB (`decode_image` of its bytes).

    Graph-safe (the tf.data pipelines map it over path tensors: failures are then
    InvalidArgumentErrors whose message names the file). Called eagerly with a path (predict,
    evaluation of exports), the file is read under the rule of `data/files.py` (a regular
    file of at most `file_rule.max_file_bytes(max_pixels)`; never a FIFO or a device), an
    image above the limit is refused from its header before its pixels are decoded, and
    every failure is an `UnreadableImageError` naming the file.

    Args:
      path: the file ([] string tensor or str).
      max_pixels: refuse images with more pixels (default: `export.max_image_pixels`'s
        default); None: no limit.

    Raises:
      ImageTooLargeError: eager call, the image has more than max_pixels pixels.
      UnreadableImageError: eager call, not a JPEG, PNG, GIF, BMP or WebP file, corrupt,
        not a regular file or too large.
      FileNotFoundError (eager) / tf.errors.NotFoundError (graph): no such file.
    """
    if not tf.executing_eagerly():
        # The files of a pipeline passed `files.file_problem` when the split was loaded.
        return decode_image(tf.io.read_file(path), max_pixels, "image file {}", [path])
    name = path.numpy().decode() if tf.is_tensor(path) else os.fspath(path)
    where = f"image file {name!r}".replace("{}", "{ }")  # a template (decode_image)
    limit = file_rule.max_file_bytes(max_pixels)
    try:
        data = tf.constant(file_rule.read_file(name, limit))
    except FileNotFoundError:
        raise  # a missing file stays what it is (the caller's FileNotFoundError)
    except OSError as e:  # not a regular file, too large: one rule for every entry point
        raise UnreadableImageError(f"{where}: {e.strerror or e}") from None
    if not bool(is_known_format(data)):
        start = data.numpy()[:8]
        raise UnreadableImageError(f"{where}: not a {_FORMATS} image (found "
                                   f"{int(tf.strings.length(data))} bytes starting with "
                                   f"{start!r})")
    try:
        height, width = (int(v) for v in header_size(data))
    except tf.errors.InvalidArgumentError:  # a JPEG whose frame header is unreadable
        height = width = -1
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{where}: {height} x {width} = {height * width} pixels (from its header) exceed "
            f"the limit of {max_pixels} pixels (config key export.max_image_pixels); expected "
            f"an image of at most that many pixels")
    try:
        return decode_image(data, max_pixels, where)
    except tf.errors.InvalidArgumentError as e:
        reason = e.message.splitlines()[0] if e.message else type(e).__name__
        reason = reason.split("}}")[-1].split(" [Op:")[0].strip()
        raise UnreadableImageError(f"{where}: cannot be decoded as a {_FORMATS} image "
                                   f"({reason})") from None


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
        # uint8 in, float32 out of the OUTPUT size: the full image never exists in float
        # (a 49 MP image is 147 MB as uint8, 588 MB as float32).
        resized = tf.cast(tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear"),
                          tf.float32)
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
        out = tf.cast(tf.image.pad_to_bounding_box(resized, offset_y, offset_x, pad_h, pad_w),
                      tf.float32)
    transform = tf.stack([tf.cast(new_h, tf.float32) / hf, tf.cast(new_w, tf.float32) / wf,
                          tf.cast(offset_y, tf.float32), tf.cast(offset_x, tf.float32)])
    return out, transform


def _check_images(images: tf.Tensor) -> tf.Tensor:
    """[(B,) H, W, 3] checked (rank and channels statically, channels and size at run
    time), in its own dtype: the caller casts after resizing, so that a large image is never
    held in float32."""
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
        return tf.identity(images)


