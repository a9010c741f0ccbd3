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
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from cornernet_tf.decode import decode, decode_kwargs_from_config  # noqa: F401 (re-export)

# Name scope of the post-network part of the serving graph (decode and box mapping).
DECODE_SCOPE = "detection_decode"


class DetectionFunctions:
    """The serving functions around a trained CornerNet.

    Args:
      model: a CornerNet keras.Model; `model(images, training=False)[-1]` gives the last
        stack's heads.
      input_size: (height, width) of the network input.
      output_size: (height, width) of the heads' grid.
      decode_kwargs: keyword arguments of `decode` (k, ae_threshold, nms_kernel, num_pairs,
        max_detections, soft_nms_sigma, score_threshold).
      score_threshold: detections scoring below are dropped from the outputs.
    """

    def __init__(self, model, input_size, output_size, decode_kwargs: dict,
                 score_threshold: float = 0.0):
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.decode_kwargs = dict(decode_kwargs)
        self.score_threshold = float(score_threshold)

    # ----------------------------------------------------------------------------------
    def _fit(self, height: tf.Tensor, width: tf.Tensor):
        """Resized size and transform for an H x W image (aspect kept, fits the input)."""
        tf.debugging.assert_positive(
            tf.stack([height, width]),
            message="images must have height and width >= 1 (an empty image was given)")
        h = tf.cast(height, tf.float32)
        w = tf.cast(width, tf.float32)
        in_h, in_w = self.input_size
        scale = tf.minimum(in_h / h, in_w / w)
        new_h = tf.clip_by_value(tf.cast(tf.round(h * scale), tf.int32), 1, in_h)
        new_w = tf.clip_by_value(tf.cast(tf.round(w * scale), tf.int32), 1, in_w)
        transform = tf.stack([tf.cast(new_h, tf.float32) / h, tf.cast(new_w, tf.float32) / w,
                              0.0, 0.0])
        return new_h, new_w, transform, tf.stack([h, w])

    def _resize_pad(self, images: tf.Tensor, new_h: tf.Tensor, new_w: tf.Tensor) -> tf.Tensor:
        """[B, H, W, 3] -> [B, in_h, in_w, 3] float32: bilinear resize, zero pad bottom/right."""
        in_h, in_w = self.input_size
        resized = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                                  method="bilinear")
        padded = tf.pad(resized, [[0, 0], [0, in_h - new_h], [0, in_w - new_w], [0, 0]])
        return tf.reshape(padded, [-1, in_h, in_w, 3])

    def preprocess(self, image: tf.Tensor):
        """One image to the network input.

        Args:
          image: [H, W, 3] uint8.

        Returns:
          (image [in_h, in_w, 3] float32 0..255, transform [4] float32 (scale_y, scale_x,
          offset_y, offset_x) with network_xy = original_xy * scale + offset,
          size [2] float32 (H, W)).
        """
        shape = tf.shape(image)
        new_h, new_w, transform, size = self._fit(shape[0], shape[1])
        return self._resize_pad(image[None], new_h, new_w)[0], transform, size

    def preprocess_batch(self, images: tf.Tensor):
        """[B, H, W, 3] uint8 (one size) -> (inputs [B, in_h, in_w, 3], transforms [B, 4],
        sizes [B, 2])."""
        shape = tf.shape(images)
        # The signature's [None, None, None, 3] is not checked when a loaded signature is
        # called with a tensor: a 4-channel image would otherwise fail in a reshape.
        check = tf.debugging.assert_equal(
            shape[-1], 3, message="images: expected uint8 [B, H, W, 3] RGB (3 channels); "
                                  "the last dimension found is")
        with tf.control_dependencies([check]):
            new_h, new_w, transform, size = self._fit(shape[1], shape[2])
        inputs = self._resize_pad(images, new_h, new_w)
        return inputs, tf.tile(transform[None], [shape[0], 1]), tf.tile(size[None], [shape[0], 1])

    def detect(self, inputs: tf.Tensor, transforms: tf.Tensor, sizes: tf.Tensor) -> dict:
        """Network + decode + boxes back to normalised original coordinates.

        Args:
          inputs: [B, in_h, in_w, 3] float32 0..255.
          transforms: [B, 4] float32 (scale_y, scale_x, offset_y, offset_x).
          sizes: [B, 2] float32 original (H, W).

        Returns:
          the contract's output dict.
        """
        heads = self.model(inputs, training=False)[-1]
        # Everything after the network is named under DECODE_SCOPE: full-int8 TFLite
        # conversion keeps these ops in float32 (tflite.py denylists them by name).
        with tf.name_scope(DECODE_SCOPE):
            return self._decode(heads, transforms, sizes)

    def _decode(self, heads: dict, transforms: tf.Tensor, sizes: tf.Tensor) -> dict:
        """Decode + boxes back to normalised original coordinates (see `detect`)."""
        det = decode(heads, **self.decode_kwargs)
        # xyxy -> yxyx with a gather, not slices of the boxes: TFLite's int8 quantizer
        # re-quantizes a float tensor feeding slices even when the slices are denylisted.
        boxes = tf.gather(det["boxes"], [1, 0, 3, 2], axis=-1)  # [B, N, 4] output-grid units
        # output grid -> network input pixels (divide by the ratio r = out / in, SPEC.md)
        # -> original pixels (minus offset, divided by scale) -> normalised (divided by size)
        ratio = tf.constant([self.output_size[0] / self.input_size[0],
                             self.output_size[1] / self.input_size[1]] * 2, tf.float32)
        scale = tf.tile(transforms[:, :2], [1, 2])[:, None, :]  # [B, 1, 4] sy, sx, sy, sx
        offset = tf.tile(transforms[:, 2:], [1, 2])[:, None, :]
        size = tf.tile(sizes, [1, 2])[:, None, :]
        normalised = tf.clip_by_value((boxes / ratio - offset) / scale / size, 0.0, 1.0)
        scores = det["scores"]
        n = tf.shape(scores)[1]
        valid = tf.logical_and(tf.range(n)[None, :] < det["num_detections"][:, None],
                               scores >= self.score_threshold)
        valid = tf.logical_and(valid, scores > 0.0)
        validf = tf.cast(valid, tf.float32)
        return {
            "detection_boxes": normalised * validf[..., None],
            "detection_scores": scores * validf,
            "detection_classes": (tf.cast(det["classes"], tf.float32) + 1.0) * validf,
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        }

    # ----------------------------------------------------------------------------------
    def serve_images(self, images: tf.Tensor) -> dict:
        """`serving_default`: images uint8 [B, H, W, 3] -> detections."""
        return self.detect(*self.preprocess_batch(images))

    def serve_heatmaps(self, images: tf.Tensor) -> dict:
        """`serving_heatmaps`: uint8 [B, H, W, 3] -> corner heatmaps for pictures.

        Returns:
          "tl_heatmap", "br_heatmap": [B, h, w, C] float32 probabilities on the output grid
          of the padded input; "valid_fraction": [B, 2] float32, the (height, width) share
          of that grid covered by the image (the rest is padding).
        """
        inputs, transforms, sizes = self.preprocess_batch(images)
        heads = self.model(inputs, training=False)[-1]
        in_size = tf.constant([float(self.input_size[0]), float(self.input_size[1])])
        return {"tl_heatmap": tf.sigmoid(tf.cast(heads["tl_heatmap"], tf.float32)),
                "br_heatmap": tf.sigmoid(tf.cast(heads["br_heatmap"], tf.float32)),
                "valid_fraction": sizes * transforms[:, :2] / in_size}

    def serve_bytes(self, encoded: tf.Tensor) -> dict:
        """`serving_bytes`: encoded JPEG/PNG strings [B] (any sizes) -> detections."""

        def one(data):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
            return self.preprocess(image)

        in_h, in_w = self.input_size
        inputs, transforms, sizes = tf.map_fn(
            one, encoded, fn_output_signature=(tf.TensorSpec([in_h, in_w, 3], tf.float32),
                                               tf.TensorSpec([4], tf.float32),
                                               tf.TensorSpec([2], tf.float32)))
        return self.detect(inputs, transforms, sizes)

    def serve_fixed(self, images: tf.Tensor) -> dict:
        """The TFLite entry: uint8 [1, in_h, in_w, 3] (resize on the device beforehand;
        normalised boxes are unchanged by a plain resize)."""
        inputs = tf.cast(images, tf.float32)
        b = tf.shape(images)[0]
        transforms = tf.tile(tf.constant([[1.0, 1.0, 0.0, 0.0]]), [b, 1])
        sizes = tf.tile(tf.constant([[float(self.input_size[0]), float(self.input_size[1])]]),
                        [b, 1])
        return self.detect(inputs, transforms, sizes)


def build_detection_functions(model, cfg, score_threshold: Optional[float] = None):
    """DetectionFunctions for a model and its resolved Config."""
    return DetectionFunctions(model, cfg.model.input_size, cfg.model.output_size,
                              decode_kwargs_from_config(cfg.decode),
                              cfg.export.score_threshold if score_threshold is None
                              else score_threshold)
