"""The serving graph: preprocess + network (last stack) + decode + map back, in one function.

Contract (DESIGN.md, TF Object Detection API convention):
  input  `images`: uint8 [B, H, W, 3] RGB, any H and W >= 1 (resized keeping the aspect ratio
         and zero-padded bottom/right to the network input inside the graph);
  output `detection_boxes`   float32 [B, N, 4] normalised [ymin, xmin, ymax, xmax] of the
                             original image, `detection_scores` float32 [B, N] (descending),
                             `detection_classes` float32 [B, N] 1-based label ids,
                             `num_detections` int32 [B]; rows past num_detections are zeros.
`serving_bytes` takes encoded JPEG/PNG strings [B] (images of different sizes may share a
batch) and returns the same outputs. N = decode.max_detections. Detections scoring below
export.score_threshold are removed in the graph.

Memory: an image larger than export.max_image_pixels (H * W) is refused with an
InvalidArgumentError saying its size and the limit; `serving_bytes` reads the size from
the header (JPEG, PNG, GIF, BMP, WebP) before decoding, so a small file that decodes to
gigabytes is refused without allocating them, and names the image's index in the batch.
Images are resized in uint8 (float32 only at the network input size) and `serving_bytes`
decodes one image at a time, so one request's peak is about one decoded image plus the
network (docs/robustness.md has the measured figures).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf import keys
from cornernet_tf.data import images as image_lib
from cornernet_tf.inference import preprocess
from cornernet_tf.inference.decode import (decode, decode_pairs, decode_with_flip,
                                           merge_detections, resolved_params)

# Name scope of the post-network part of the serving graph (decode and box mapping).
DECODE_SCOPE = "detection_decode"


class DetectionFunctions:
    """The detection functions around a trained CornerNet: what ships and what is evaluated.

    The exported signatures are methods of this class (single scale, no flip), and
    `--mode=evaluate` runs `detect` of an instance built from the same config with the
    evaluation's flip test and scales, so the evaluated arithmetic is the shipped one.

    Args:
      model: a CornerNet keras.Model; `model(images, training=False)[-1]` gives the last
        stack's heads.
      input_size: (height, width) of the network input.
      decode_params: the `DecodeConfig` of `decode` (k and max_detections at 0: the
        reference's 100, as `decode.resolved_params` says).
      score_threshold: detections scoring below are dropped from the outputs.
      flip_test: also run the mirrored input and pool both views' pairs (decode_with_flip).
      scales: multi-scale test factors of the network input (1.0 alone: single scale).
      size_step: (stride, grid multiple) of the backbone: a scaled input side is a multiple
        of stride * grid multiple (the hourglass halves its grid). Needed for scales only.
      max_pixels: the signatures refuse images with more pixels (H * W);
        export.max_image_pixels.
    """

    def __init__(self, model, input_size, decode_params, score_threshold: float = 0.0,
                 flip_test: bool = False, scales: Sequence[float] = (1.0,),
                 size_step: Optional[tuple] = None,
                 max_pixels: int = image_lib.DEFAULT_MAX_IMAGE_PIXELS):
        self.model = model
        self.input_size = image_lib.size_pair(input_size, "input_size", "DetectionFunctions")
        self.decode_params = resolved_params(decode_params)
        self.score_threshold = float(score_threshold)
        self.flip_test = bool(flip_test)
        self.scales = tuple(float(s) for s in scales)
        if self.scales != (1.0,) and size_step is None:
            raise ValueError(f"DetectionFunctions: scales {self.scales} need size_step "
                             f"(stride, grid multiple) of the backbone; found None")
        self.size_step = size_step
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"DetectionFunctions: max_pixels must be a positive int, found "
                             f"{max_pixels!r}")
        self.max_pixels = max_pixels

    # ----------------------------------------------------------------------------------
    def preprocess(self, image: tf.Tensor):
        """One image to the network input (`image_lib.fit_to_input`, resize_pad).

        Args:
          image: [H, W, 3] uint8.

        Returns:
          (image [in_h, in_w, 3] float32 0..255, transform [4] float32 (scale_y, scale_x,
          offset_y, offset_x) with network_xy = original_xy * scale + offset,
          size [2] float32 (H, W)).
        """
        inputs, transform = image_lib.fit_to_input(image, self.input_size)
        return inputs, transform, tf.cast(tf.shape(image)[:2], tf.float32)

    def preprocess_batch(self, images: tf.Tensor):
        """[B, H, W, 3] uint8 (one size) -> (inputs [B, in_h, in_w, 3], transforms [B, 4],
        sizes [B, 2]).

        Raises:
          tf.errors.InvalidArgumentError (at run time): H * W > max_pixels.
        """
        shape = tf.shape(images)
        pixels = tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64)
        too_large = tf.debugging.Assert(pixels <= self.max_pixels, [tf.strings.format(
            "images: every image of the batch (index 0 to {}) is {} x {} = {} pixels, which "
            f"exceeds the limit of {self.max_pixels} pixels (config key "
            "export.max_image_pixels); expected at most that many pixels per image",
            [shape[0] - 1, shape[1], shape[2], pixels])])
        with tf.control_dependencies([too_large]):
            images = tf.identity(images)
        inputs, transform = image_lib.fit_to_input(images, self.input_size)
        size = tf.cast(shape[1:3], tf.float32)
        return (inputs, tf.tile(transform[None], [shape[0], 1]),
                tf.tile(size[None], [shape[0], 1]))

    def heads(self, inputs: tf.Tensor) -> dict:
        """The last stack's raw heads of network inputs [B, h, w, 3] float32 0..255."""
        return self.model(inputs, training=False)[-1]

    def detect(self, inputs: tf.Tensor, transforms: tf.Tensor, sizes: tf.Tensor) -> dict:
        """Network (every view) + decode + boxes back to normalised original coordinates.

        Args:
          inputs: [B, h, w, 3] float32 0..255, h and w static (`fit_to_input` output).
          transforms: [B, 4] float32 (scale_y, scale_x, offset_y, offset_x).
          sizes: [B, 2] float32 original (H, W).

        Returns:
          the contract's output dict (module docstring).
        """
        if self.scales != (1.0,):
            return self._detect_multi_scale(inputs, transforms, sizes)
        heads = self.heads(inputs)
        flipped = self.heads(inputs[:, :, ::-1]) if self.flip_test else None
        return self.postprocess(heads, inputs.shape[1:3], transforms, sizes, flipped)

    def postprocess(self, heads: dict, input_hw, transforms: tf.Tensor, sizes: tf.Tensor,
                    flipped_heads: Optional[dict] = None) -> dict:
        """Decode (with the flipped view's pairs when given) + map to the contract.

        Args:
          heads: one stack's raw heads [B, out_h, out_w, ...] of inputs of size input_hw.
          input_hw: (h, w) of the network input, python ints.
          transforms, sizes: as in `detect`.
          flipped_heads: heads of `inputs[:, :, ::-1]`, or None.

        Returns:
          the contract's output dict.
        """
        # Everything after the network is named under DECODE_SCOPE: full-int8 TFLite
        # conversion keeps these ops in float32 (tflite.py denylists them by name).
        with tf.name_scope(DECODE_SCOPE):
            if flipped_heads is None:
                det = decode(heads, self.decode_params)
            else:
                det = decode_with_flip(heads, flipped_heads, self.decode_params)
            out_h, out_w = heads[keys.TL_HEATMAP].shape[1:3]
            # output grid -> network input pixels: divide by r = out / in (SPEC.md)
            ratio = (out_h / int(input_hw[0]), out_w / int(input_hw[1]))
            return self._contract(det, ratio, transforms, sizes)

    def _detect_multi_scale(self, inputs, transforms, sizes) -> dict:
        """The reference's multi-scale test: pre-NMS pairs of every scale (and flip) mapped
        to network-input pixels, pooled, one soft-NMS (decode.merge_detections)."""
        in_h, in_w = int(inputs.shape[1]), int(inputs.shape[2])
        sets = []
        for s in self.scales:
            size = [self._scaled_side(in_h, s), self._scaled_side(in_w, s)]
            x = inputs if size == [in_h, in_w] else tf.image.resize(inputs, size)
            for mirrored in ((False, True) if self.flip_test else (False,)):
                heads = self.heads(x[:, :, ::-1] if mirrored else x)
                out_h, out_w = heads[keys.TL_HEATMAP].shape[1:3]
                with tf.name_scope(DECODE_SCOPE):
                    c = decode_pairs(heads, self.decode_params)
                    boxes = (box_lib.flip_horizontal(c[keys.BOXES], out_w) if mirrored
                             else c[keys.BOXES])
                    to_input = tf.constant([in_w / out_w, in_h / out_h] * 2, tf.float32)
                    sets.append(dict(c, **{keys.BOXES: boxes * to_input}))
        with tf.name_scope(DECODE_SCOPE):
            det = merge_detections(sets, self.decode_params)
            return self._contract(det, (1.0, 1.0), transforms, sizes)

    def _scaled_side(self, n: int, s: float) -> int:
        """An input side near n * s whose output grid the hourglass can halve."""
        if s == 1.0:
            return n
        stride, multiple = self.size_step
        return max(multiple, int(round(n * s / stride / multiple)) * multiple) * stride

    def _contract(self, det: dict, ratio, transforms: tf.Tensor, sizes: tf.Tensor) -> dict:
        """`decode` output (boxes in ratio x input pixels) -> the serving contract."""
        normalised = preprocess.boxes_to_original(det[keys.BOXES], transforms, sizes, ratio)
        scores = det[keys.SCORES]
        n = tf.shape(scores)[1]
        valid = tf.logical_and(tf.range(n)[None, :] < det[keys.NUM_DETECTIONS][:, None],
                               scores >= self.score_threshold)
        valid = tf.logical_and(valid, scores > 0.0)
        validf = tf.cast(valid, tf.float32)
        return {
            keys.DETECTION_BOXES: normalised * validf[..., None],
            keys.DETECTION_SCORES: scores * validf,
            keys.DETECTION_CLASSES: (tf.cast(det[keys.CLASSES], tf.float32) + 1.0) * validf,
            keys.NUM_DETECTIONS: tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        }

    # ----------------------------------------------------------------------------------
    def serve_images(self, images: tf.Tensor) -> dict:
        """`serving_default`: images uint8 [B, H, W, 3] -> detections."""
        return _at_least_one(self.detect, *self.preprocess_batch(images))

    def serve_heatmaps(self, images: tf.Tensor) -> dict:
        """`serving_heatmaps`: uint8 [B, H, W, 3] -> corner heatmaps for pictures.

        Returns:
          "tl_heatmap", "br_heatmap": [B, h, w, C] float32 probabilities on the output grid
          of the padded input; "valid_fraction": [B, 2] float32, the (height, width) share
          of that grid covered by the image (the rest is padding).
        """
        inputs, transforms, sizes = self.preprocess_batch(images)
        heads = _at_least_one(lambda x: self.heads(x), inputs)
        in_size = tf.constant([float(self.input_size[0]), float(self.input_size[1])])
        return {keys.TL_HEATMAP: tf.sigmoid(tf.cast(heads[keys.TL_HEATMAP], tf.float32)),
                keys.BR_HEATMAP: tf.sigmoid(tf.cast(heads[keys.BR_HEATMAP], tf.float32)),
                "valid_fraction": sizes * transforms[:, :2] / in_size}

    def serve_bytes(self, encoded: tf.Tensor) -> dict:
        """`serving_bytes`: encoded JPEG/PNG strings [B] (any sizes) -> detections.

        Raises:
          tf.errors.InvalidArgumentError (at run time): an image is not JPEG, PNG, GIF, BMP
            or WebP, or has more than max_pixels pixels (both name its index in the batch),
            or is corrupt (the decoder's message). An empty batch gives empty outputs
            ([0, N, 4], ...), as `serving_default` does.
        """

        def one(args):
            data, index = args
            image = image_lib.decode_image(data, self.max_pixels,
                                            "serving_bytes: image {} of the batch", [index])
            return self.preprocess(image)

        # A loaded signature does not check the rank of what it is fed; this does, at run
        # time ("Shape of tensor ... [1,1] is not compatible with expected shape [?]").
        encoded = tf.ensure_shape(encoded, [None])
        indices = tf.range(tf.shape(encoded)[0])
        in_h, in_w = self.input_size
        # One image at a time (parallel_iterations=1): a request's peak memory is one
        # decoded image, not ten (map_fn's graph default).
        inputs, transforms, sizes = tf.map_fn(
            one, (encoded, indices), parallel_iterations=1,
            fn_output_signature=(tf.TensorSpec([in_h, in_w, 3], tf.float32),
                                 tf.TensorSpec([4], tf.float32),
                                 tf.TensorSpec([2], tf.float32)))
        return _at_least_one(self.detect, inputs, transforms, sizes)

    def serve_fixed(self, images: tf.Tensor) -> dict:
        """The TFLite entry: uint8 [1, in_h, in_w, 3], fitted on the host beforehand
        (`preprocess.tflite_input`); boxes come back normalised to that input
        (`preprocess.tflite_boxes_to_original` maps them to the original image)."""
        inputs = tf.cast(images, tf.float32)
        b = tf.shape(images)[0]
        transforms = tf.tile(tf.constant([[1.0, 1.0, 0.0, 0.0]]), [b, 1])
        sizes = tf.tile(tf.constant([[float(self.input_size[0]), float(self.input_size[1])]]),
                        [b, 1])
        return self.detect(inputs, transforms, sizes)


def _at_least_one(fn, *batch: tf.Tensor) -> dict:
    """`fn(*batch)` for a batch that may be empty: an empty batch (B = 0) runs on one
    filler row (ones) and the outputs are cut back to B rows, so the signatures answer an
    empty request with empty outputs. TensorFlow's oneDNN batch norm (on by default on CPUs
    with AVX-512 VNNI/BF16 or AMX) fails on an empty batch. For B >= 1 nothing is added.

    Args:
      fn: maps tensors with a leading batch dimension to a dict of such tensors.
      batch: [B, ...] tensors, B the same in each.
    """
    n = tf.shape(batch[0])[0]
    fill = tf.maximum(1 - n, 0)
    padded = [tf.concat([t, tf.ones(tf.concat([[fill], tf.shape(t)[1:]], 0), t.dtype)], 0)
              for t in batch]
    return {k: v[:n] for k, v in fn(*padded).items()}


def build_detector(model, cfg, score_threshold: Optional[float] = None,
                              flip_test: bool = False, scales: Sequence[float] = (1.0,)):
    """DetectionFunctions for a model and its resolved Config.

    Args:
      model: the CornerNet.
      cfg: resolved Config (model sizes, decode, export.score_threshold).
      score_threshold: default export.score_threshold (evaluation passes 0: keep all).
      flip_test, scales: the test-time views (the export: none, single scale).
    """
    grid_multiple = 2 ** (len(cfg.model.resolved("channels")) - 1)
    return DetectionFunctions(model, cfg.model.input_size,
                              cfg.decode,
                              cfg.export.score_threshold if score_threshold is None
                              else score_threshold, flip_test=flip_test, scales=scales,
                              size_step=(cfg.model.stride, grid_multiple),
                              max_pixels=cfg.export.max_image_pixels)
