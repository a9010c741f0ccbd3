"""The one inference image path (cornernet_tf/image_lib.py) against numpy.

Golden values: a numpy bilinear resize written here from its definition (half-pixel
centres, TF's `tf.image.resize` without antialias), the reference's pad127 arithmetic
worked by hand, and box maps checked as inverses of the forward map
`network = original * scale + offset` computed in numpy.
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cornernet_tf.data import images as image_lib
from cornernet_tf.inference import preprocess


def numpy_bilinear(image, out_h, out_w):
    """Bilinear resize with half-pixel centres: source = (dst + 0.5) * in / out - 0.5,
    clamped to the image, weights from the fractional part."""
    image = image.astype(np.float64)
    in_h, in_w = image.shape[:2]

    def axis(out_n, in_n):
        src = (np.arange(out_n) + 0.5) * in_n / out_n - 0.5
        lo = np.floor(src)
        frac = src - lo
        lo_i = np.clip(lo, 0, in_n - 1).astype(int)
        hi_i = np.clip(lo + 1, 0, in_n - 1).astype(int)
        return lo_i, hi_i, frac

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = image[y0][:, x0] * (1 - fx)[None, :, None] + image[y0][:, x1] * fx[None, :, None]
    bottom = image[y1][:, x0] * (1 - fx)[None, :, None] + image[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_resize_pad_equals_numpy_bilinear_and_zero_padding():
    # 30 x 40 into 16 x 16: scale min(16/30, 16/40) = 0.4 -> 12 x 16, rows 12..15 zero.
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    out, transform = image_lib.fit_to_input(image, 16)
    out = out.numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:12], numpy_bilinear(image, 12, 16), atol=1e-3)
    assert not out[12:].any()
    np.testing.assert_allclose(transform.numpy(), [12 / 30, 16 / 40, 0, 0], rtol=1e-6)


def test_batch_and_single_image_give_the_same_result():
    # The serving graph fits batches, the eval pipeline single images: one function, same
    # numbers.
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 80, 3)).astype(np.uint8)
    batch, batch_transform = image_lib.fit_to_input(images, (64, 64))
    for b in range(2):
        one, transform = image_lib.fit_to_input(images[b], (64, 64))
        np.testing.assert_array_equal(batch[b].numpy(), one.numpy())
        np.testing.assert_array_equal(batch_transform.numpy(), transform.numpy())
    # scale min(64/48, 64/80) = 0.8 -> 38.4 rounds to 38 rows, 64 columns
    np.testing.assert_allclose(batch_transform.numpy(), [38 / 48, 0.8, 0, 0], rtol=1e-6)


def test_pad127_golden():
    # Reference test input: 300 | 127 = 383, 400 | 127 = 511; centred offsets
    # 383 // 2 - 300 // 2 = 41 and 511 // 2 - 400 // 2 = 55; no resize at scale 1.
    image = np.random.default_rng(6).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    out, transform = image_lib.fit_to_input(image, 511, "pad127")
    out = out.numpy()
    assert out.shape == (383, 511, 3)
    np.testing.assert_array_equal(out[41:341, 55:455], image.astype(np.float32))
    assert out[:41].sum() == 0 and out[:, 455:].sum() == 0
    np.testing.assert_allclose(transform.numpy(), [1, 1, 41, 55])


def test_boxes_to_original_inverts_the_forward_map():
    # Original boxes (pixels) -> network input (numpy forward map) -> output grid (x ratio)
    # -> boxes_to_original must give the originals, normalised, as [ymin, xmin, ymax, xmax].
    rng = np.random.default_rng(4)
    sizes = np.array([[300.0, 400.0], [383.0, 200.0]])
    transforms = np.array([[0.32, 0.32, 0.0, 0.0], [1.0, 1.0, 41.0, 55.0]])
    originals = []
    for h, w in sizes:
        xs = np.sort(rng.uniform(0, w, (5, 2)), axis=1)
        ys = np.sort(rng.uniform(0, h, (5, 2)), axis=1)
        originals.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], -1))
    originals = np.array(originals)  # [2, 5, 4] xyxy
    sy, sx, oy, ox = transforms.T
    scale = np.stack([sx, sy, sx, sy], -1)[:, None]
    offset = np.stack([ox, oy, ox, oy], -1)[:, None]
    ratio = (128 / 511, 0.25)  # (y, x): output grid / network input
    grid = (originals * scale + offset) * np.array([ratio[1], ratio[0]] * 2)
    out = preprocess.boxes_to_original(tf.constant(grid, tf.float32),
                                       tf.constant(transforms, tf.float32),
                                       tf.constant(sizes, tf.float32), ratio).numpy()
    h, w = sizes[:, 0, None], sizes[:, 1, None]
    expected = np.stack([originals[..., 1] / h, originals[..., 0] / w,
                         originals[..., 3] / h, originals[..., 2] / w], -1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_boxes_to_original_clips_to_the_image():
    # A box reaching into the padding (x2 = 150 input px of a 0.5-scaled 100 x 200 image)
    # and left of it (x1 = -10) is clipped to the image edges: [0, 1].
    out = preprocess.boxes_to_original(tf.constant([[[-10.0, 5.0, 150.0, 40.0]]]),
                                       tf.constant([[0.5, 0.5, 0.0, 0.0]]),
                                       tf.constant([[100.0, 200.0]])).numpy()
    np.testing.assert_allclose(out, [[[10 / 100, 0.0, 80 / 100, 1.0]]], atol=1e-6)


def test_contract_to_pixels():
    outputs = {"detection_boxes": np.array([[[0.1, 0.2, 0.5, 0.9], [0, 0, 0, 0]]], np.float32),
               "detection_scores": np.array([[0.8, 0.0]], np.float32),
               "detection_classes": np.array([[3.0, 0.0]], np.float32),
               "num_detections": np.array([1], np.int32)}
    boxes, scores, classes, num = preprocess.contract_to_pixels(outputs, [[50, 200]])
    # [ymin, xmin, ymax, xmax] of a 50 x 200 image -> xyxy pixels
    np.testing.assert_allclose(boxes[0, 0], [0.2 * 200, 0.1 * 50, 0.9 * 200, 0.5 * 50],
                               rtol=1e-6)
    assert classes.tolist() == [[2, -1]] and num.tolist() == [1]
    np.testing.assert_allclose(scores, [[0.8, 0.0]])


def test_tflite_host_side_round_trip():
    # 48 x 80 into 64 x 64: scale 0.8 -> 38 x 64 (transform 38/48, 0.8).
    image = np.full((48, 80, 3), 200, np.uint8)
    inputs, transform = preprocess.tflite_input(image, (64, 64))
    assert inputs.shape == (1, 64, 64, 3) and inputs.dtype == np.uint8
    assert (inputs[0, :38] == 200).all() and not inputs[0, 38:].any()
    # A detection [x1, y1, x2, y2] = [16, 8, 48, 32] input px, as the TFLite graph returns
    # it (normalised to the 64 x 64 input, yxyx), maps to / (0.8, 38/48) of the original.
    outputs = {"detection_boxes": np.array([[[8 / 64, 16 / 64, 32 / 64, 48 / 64],
                                             [0.1, 0.1, 0.2, 0.2]]], np.float32),
               "num_detections": np.array([1], np.int32)}
    mapped = preprocess.tflite_boxes_to_original(outputs, transform, (64, 64), 48, 80)
    sy, sx = 38 / 48, 0.8
    np.testing.assert_allclose(mapped["detection_boxes"][0, 0],
                               [8 / sy / 48, 16 / sx / 80, 32 / sy / 48, 48 / sx / 80],
                               atol=1e-5)
    assert not mapped["detection_boxes"][0, 1].any()  # past num_detections: zeros


def _png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_one_decoder_for_gray_rgba_palette_and_16_bit():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    palette = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).quantize(8)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    cases = {
        "gray": (_png(gray), np.repeat(gray[..., None], 3, -1)),
        "rgba": (_png(rgba, "RGBA"), rgba[..., :3]),
        # 16 -> 8 bits by the high byte, the rule of every path (training, evaluation,
        # predict, serving_bytes); predict used to stretch by the image's own maximum.
        "gray16": (_png(gray16), np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1)),
        "palette": (buffer.getvalue(), np.asarray(palette.convert("RGB"))),
    }
    for name, (data, expected) in cases.items():
        image = image_lib.decode_image(tf.constant(data)).numpy()
        assert image.dtype == np.uint8 and image.shape == (5, 7, 3), name
        np.testing.assert_allclose(image.astype(int), expected.astype(int), atol=1,
                                   err_msg=name)


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="mode must be one of"):
        image_lib.fit_to_input(np.zeros((10, 10, 3), np.uint8), 8, mode="stretch")
    with pytest.raises(ValueError, match=r"images must be \[H, W, 3\] or \[B, H, W, 3\]"):
        image_lib.fit_to_input(np.zeros((10, 10), np.uint8), 8)
    with pytest.raises(ValueError, match=r"fit_to_input: input_size must be a positive int "
                                         r"or \(height, width\), found \(0, 8\)"):
        image_lib.fit_to_input(np.zeros((10, 10, 3), np.uint8), (0, 8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="height and width >= 1"):
        image_lib.fit_to_input(np.zeros((0, 10, 3), np.uint8), 8)


# ---------------------------------------------------------------- image size and limits
def _encode(array, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_header_size_reads_every_format_without_decoding():
    from tests.robustness import corpus
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # height 37, width 53
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    cases = {
        "png": _encode(rgb, "PNG"), "jpeg": _encode(rgb, "JPEG"),
        "gif": _encode(rgb, "GIF"), "bmp": _encode(rgb, "BMP"),
        "webp_lossy": _encode(rgb, "WEBP", quality=80),  # VP8 chunk
        "webp_lossless": _encode(rgb, "WEBP", lossless=True),  # VP8L chunk
        "webp_alpha": _encode(rgba, "WEBP", quality=80),  # VP8X chunk
    }
    assert cases["webp_alpha"][12:16] == b"VP8X" and cases["webp_lossless"][12:16] == b"VP8L"
    cases["webp_lossless_alpha"] = _encode(rgba, "WEBP", lossless=True, exact=True)
    for name, data in cases.items():
        assert image_lib.header_size(tf.constant(data)).numpy().tolist() == [37, 53], name
        assert image_lib.decode_image(tf.constant(data)).shape == (37, 53, 3), name
    # WebP with alpha: TensorFlow's decode_image refuses channels=3 for it; decoded as RGBA
    # with the alpha dropped (lossless, exact: the RGB values themselves)
    np.testing.assert_array_equal(
        image_lib.decode_image(tf.constant(cases["webp_lossless_alpha"])).numpy(),
        rgba[..., :3])
    np.testing.assert_array_equal(
        image_lib.decode_image(tf.constant(cases["webp_lossless"])).numpy(), rgb)
    # a header alone: width 100000, height 70000 in the IHDR (big-endian, > 2^16)
    claim = corpus.png_header(100000, 70000)
    assert image_lib.header_size(tf.constant(claim)).numpy().tolist() == [70000, 100000]
    for data in (b"", b"GIF8", b"II*\x00" + bytes(40), b"text" * 20):  # short or unknown
        assert image_lib.header_size(tf.constant(data)).numpy().tolist() == [-1, -1]


def test_read_image_refuses_too_many_pixels_from_the_header_naming_the_file(tmp_path):
    from cornernet_tf.errors import UserError
    from tests.robustness import corpus
    path = corpus.write_header_only_png(str(tmp_path / "claims.png"), 23000, 23000)
    with pytest.raises(image_lib.ImageTooLargeError) as e:
        image_lib.read_image(path)
    assert str(e.value) == (
        f"image file {path!r}: 23000 x 23000 = 529000000 pixels (from its header) exceed the "
        f"limit of 50000000 pixels (config key export.max_image_pixels); expected an image of "
        f"at most that many pixels")
    # a user error for the CLI, and the InvalidArgumentError of the same file in a graph
    assert isinstance(e.value, UserError) and isinstance(e.value, tf.errors.InvalidArgumentError)
    small = tmp_path / "small.png"
    small.write_bytes(_encode(np.zeros((100, 100, 3), np.uint8), "PNG"))
    with pytest.raises(image_lib.ImageTooLargeError, match="100 x 100 = 10000 pixels"):
        image_lib.read_image(str(small), max_pixels=9999)
    assert image_lib.read_image(str(small), max_pixels=10000).shape == (100, 100, 3)
    assert image_lib.read_image(str(small), max_pixels=None).shape == (100, 100, 3)


def test_read_image_names_the_file_of_every_unreadable_case(tmp_path):
    from tests.robustness import corpus
    files = corpus.write_images(str(tmp_path))
    reasons = {"zero_byte": r"not a JPEG, PNG, GIF, BMP or WebP image \(found 0 bytes",
               "text": r"not a JPEG, PNG, GIF, BMP or WebP image \(found 210 bytes starting "
                       r"with b'this is '\)",
               "tiff": r"not a JPEG, PNG, GIF, BMP or WebP image \(found \d+ bytes starting "
                       r"with b'II\*",
               "truncated_jpeg": r"cannot be decoded as a JPEG, PNG, GIF, BMP or WebP image "
                                 r"\(.*Invalid JPEG data",
               "bad_crc": r"cannot be decoded as a JPEG, PNG, GIF, BMP or WebP image "
                          r"\(Invalid PNG",
               "header_100000": "100000 x 100000 = 10000000000 pixels"}
    assert set(reasons) == set(corpus.UNREADABLE)
    for case, reason in reasons.items():
        path = os.path.join(str(tmp_path), files[case])
        with pytest.raises(image_lib.UnreadableImageError,
                           match=f"^image file '{path}': {reason}"):
            image_lib.read_image(path)
    for case in corpus.READABLE:
        image = image_lib.read_image(os.path.join(str(tmp_path), files[case]))
        assert image.dtype == tf.uint8 and image.shape[-1] == 3, case
    # in a tf.data pipeline (graph mode) the message names the file too
    paths = [os.path.join(str(tmp_path), files[c]) for c in ("text", "header_100000")]
    for path, reason in zip(paths, ("not a JPEG", "100000 x 100000")):
        dataset = tf.data.Dataset.from_tensor_slices([path]).map(image_lib.read_image)
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf'image file \\"{path}\\": {reason}'):
            list(dataset)


def test_images_are_resized_in_uint8_and_cast_at_the_input_size():
    # The full-size image is never cast to float32 (23000^2 RGB would be 6.3 GB): the
    # resize reads the uint8 image and writes float32 of the output size, with the same
    # values as resizing a float32 copy.
    image = np.random.default_rng(6).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    for mode, kwargs in (("resize_pad", {}), ("pad127", {"scale": 0.5}), ("pad127", {})):
        a, ta = image_lib.fit_to_input(image, (64, 64), mode, **kwargs)
        b, tb = image_lib.fit_to_input(image.astype(np.float32), (64, 64), mode, **kwargs)
        assert a.dtype == tf.float32
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    graph = tf.function(lambda x: image_lib.fit_to_input(x, (64, 64))[0]).get_concrete_function(
        tf.TensorSpec([None, None, 3], tf.uint8)).graph
    resizes = [op for op in graph.get_operations() if op.type == "ResizeBilinear"]
    assert resizes and all(op.inputs[0].dtype == tf.uint8 for op in resizes)
    casts = [op for op in graph.get_operations() if op.type == "Cast"
             and op.inputs[0].dtype == tf.uint8]
    assert not casts, [op.name for op in casts]
