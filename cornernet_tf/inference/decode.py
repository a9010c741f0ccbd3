"""In-graph decode: heatmap NMS, top-k corners, grouping into pairs, per-class soft-NMS.

Numerics follow SPEC.md (Decode). Everything is fixed-shape TensorFlow that traces under
`tf.function` and converts to TFLite builtins (soft-NMS is TF's NonMaxSuppressionV5, a
TFLite builtin), so the same code runs in training-time evaluation, the SavedModel and TFLite.

    det = decode(model(images, training=False)[-1])
    det["boxes"]           # [B, N, 4] float32 xyxy, output-grid units; -1 where padded
    det["scores"]          # [B, N] float32, descending; 0 where padded
    det["classes"]         # [B, N] int32, 0-based; -1 where padded
    det["num_detections"]  # [B] int32

Two stages, usable alone for the test-time modes: `decode_pairs` (steps 1-7: candidate
boxes before soft-NMS) and `batched_soft_nms` (step 9). `decode_with_flip` and
`merge_detections` pool candidates of several views and run soft-NMS once, as the reference
does for its flip and multi-scale tests.

Where this differs from the reference (princeton-vl/CornerNet):
- Soft-NMS runs in output-grid units on unclipped boxes (the reference first maps to image
  pixels and clips); IoU is continuous (no "+1" pixel convention); scores are not rounded and
  dropped rows are really removed.
- Boxes of zero (or negative) area are dropped before soft-NMS: they can match no object,
  and TFLite's NMS kernel would select such a box repeatedly.
- Candidates scoring at or below `score_threshold` are dropped from the start (the
  reference applies the floor only to decayed scores).
- Under TFLite, two candidates with exactly equal boxes (IoU == 1.0 in float32): the lower
  one is removed, where TF (and the reference) keep it with score * exp(-1 / sigma).
- Multi-scale merge is Gaussian soft-NMS without the reference's box-coordinate voting
  (`soft_nms_merge`, weight exponent 10).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Optional, Sequence

import tensorflow as tf

from cornernet_tf import boxes as box_lib
from cornernet_tf.config.schema import DEFAULT_DECODE_K, DecodeConfig
from cornernet_tf.keys import (BOXES, BR_EMBEDDING, BR_HEATMAP, BR_OFFSET, CLASSES, HEAD_KEYS,
                               NUM_DETECTIONS, SCORES, TL_EMBEDDING, TL_HEATMAP, TL_OFFSET)


def resolved_params(params: Optional[DecodeConfig] = None) -> DecodeConfig:
    """The decode parameters as the graph uses them: one `DecodeConfig`, passed whole.

    Its defaults are the reference's (SPEC.md, Decode); `k` and `max_detections` at 0
    (a config that `resolve.resolve_dataset_dependent` did not see, or `DecodeConfig()`)
    are the reference's 100 (`DEFAULT_DECODE_K`).

    Raises:
      TypeError: `params` is not a DecodeConfig.
    """
    params = DecodeConfig() if params is None else params
    if not isinstance(params, DecodeConfig):
        raise TypeError(f"decode: params must be a cornernet_tf.config.schema.DecodeConfig, "
                        f"found {type(params).__name__}")
    return dataclasses.replace(params, k=params.k or DEFAULT_DECODE_K,
                               max_detections=params.max_detections or DEFAULT_DECODE_K)


def decode(outputs: Mapping[str, tf.Tensor], params: Optional[DecodeConfig] = None,
           **overrides) -> dict:
    """Detections of one stack's raw heads (SPEC.md, Decode, steps 1-7 and 9).

    Args:
      outputs: dict with `tl_heatmap`, `br_heatmap` [B, h, w, C] float32 logits;
        `tl_embedding`, `br_embedding` [B, h, w, 1]; `tl_offset`, `br_offset` [B, h, w, 2]
        (x, y) in output-grid cells. h, w, C must be static; B may be dynamic.
      params: a `DecodeConfig` (None: the reference's), read as `resolved_params` says:
        k: corners kept per corner type (top-k over all classes and positions).
        ae_threshold: largest |e_tl - e_br| of a pair.
        nms_kernel: odd side of the max-pool window of the heatmap NMS.
        num_pairs: pairs kept (by score) before soft-NMS; at most k * k.
        max_detections: N, detections kept per image after soft-NMS.
        soft_nms_sigma: Gaussian soft-NMS sigma in the reference convention: a box is
          weighted by exp(-IoU^2 / sigma) per higher-scoring box of its class.
        score_threshold: soft-NMS score floor (boxes whose score is <= it are removed).
      **overrides: fields of `params` to change, e.g. `decode(heads, k=100, num_pairs=1000)`
        (DESIGN.md's public call); the defaults stay `DecodeConfig`'s.

    Returns:
      dict: `boxes` [B, N, 4] float32 xyxy in output-grid units (divide by the ratio
      output/input to get input pixels), -1 where padded; `scores` [B, N] float32
      descending, 0 where padded; `classes` [B, N] int32 0-based, -1 where padded;
      `num_detections` [B] int32.

    Raises:
      KeyError: a head is missing from `outputs`.
      ValueError: a head has the wrong rank/shape, or a parameter is out of range.
      TypeError: `params` is not a DecodeConfig, or an override is not one of its fields.
    """
    if overrides:
        fields = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"decode: unknown parameters {unknown}; expected DecodeConfig's "
                            f"fields {sorted(fields)}")
        params = dataclasses.replace(params or DecodeConfig(), **overrides)
    params = resolved_params(params)
    candidates = decode_pairs(outputs, params)
    return batched_soft_nms(candidates[BOXES], candidates[SCORES], candidates[CLASSES], params)


def decode_pairs(outputs: Mapping[str, tf.Tensor], params: Optional[DecodeConfig] = None) -> dict:
    """Candidate boxes before soft-NMS (SPEC.md, Decode, steps 1-7).

    Args:
      outputs, params: as in `decode` (k, ae_threshold, nms_kernel, num_pairs are used).

    Returns:
      dict: `boxes` [B, P, 4] float32 xyxy output-grid units, `scores` [B, P] float32
      (s_tl + s_br) / 2, 0 for rejected pairs; `classes` [B, P] int32 0-based, -1 for
      rejected pairs; P = num_pairs, sorted by score.

    Raises:
      KeyError, ValueError: as in `decode`.
    """
    params = resolved_params(params)
    k, ae_threshold, nms_kernel, num_pairs = (params.k, params.ae_threshold, params.nms_kernel,
                                              params.num_pairs)
    tl_heatmap, br_heatmap, height, width, num_classes = _check_heads(outputs)
    _check_params(k=k, nms_kernel=nms_kernel, num_pairs=num_pairs,
                  cells=height * width * num_classes)
    batch = tf.shape(tl_heatmap)[0]
    tl = _top_corners(tl_heatmap, outputs[TL_EMBEDDING], outputs[TL_OFFSET], k, nms_kernel)
    br = _top_corners(br_heatmap, outputs[BR_EMBEDDING], outputs[BR_OFFSET], k, nms_kernel)

    # Pair (i, j) = (i-th TL corner, j-th BR corner): TL along axis 1, BR along axis 2.
    # [B, K, K]
    scores = (tl.scores[:, :, None] + br.scores[:, None, :]) / 2.0
    rejected = tf.logical_or(
        tf.not_equal(tl.classes[:, :, None], br.classes[:, None, :]),
        tf.abs(tl.embeddings[:, :, None] - br.embeddings[:, None, :]) > ae_threshold)
    rejected = tf.logical_or(rejected, br.x[:, None, :] < tl.x[:, :, None])
    rejected = tf.logical_or(rejected, br.y[:, None, :] < tl.y[:, :, None])
    scores = tf.where(rejected, -tf.ones_like(scores), scores)

    # [B, P]; valid pairs score >= 0 and so rank above every rejected one (-1).
    pair_scores, pair_index = tf.math.top_k(tf.reshape(scores, [batch, k * k]), num_pairs)
    # Flat indices into the [B * K] corner lists (plain gather: TFLite has no batch_dims).
    base = tf.range(batch)[:, None] * k
    tl_index = tf.reshape(pair_index // k + base, [-1])
    br_index = tf.reshape(pair_index % k + base, [-1])

    def pick(values, index):
        return tf.reshape(tf.gather(tf.reshape(values, [-1]), index), [batch, num_pairs])

    boxes = tf.stack([pick(tl.x, tl_index), pick(tl.y, tl_index),
                      pick(br.x, br_index), pick(br.y, br_index)], axis=-1)
    valid = pair_scores >= 0.0
    classes = tf.where(valid, pick(tl.classes, tl_index), -tf.ones_like(pair_index))
    return {BOXES: boxes, SCORES: tf.where(valid, pair_scores, tf.zeros_like(pair_scores)),
            CLASSES: classes}


class _Corners(NamedTuple):
    """The top-k corners of one type, each field [B, K]."""
    scores: tf.Tensor  # float32 sigmoid heatmap value
    classes: tf.Tensor  # int32 0-based
    embeddings: tf.Tensor  # float32
    x: tf.Tensor  # float32 output-grid units, offset applied
    y: tf.Tensor  # float32


def _top_corners(heatmap: tf.Tensor, embedding: tf.Tensor, offset: tf.Tensor, k: int,
                 nms_kernel: int) -> _Corners:
    """Top-k corners of one type: scores, classes, (x, y) with offsets, embeddings, [B, K]."""
    _, height, width, num_classes = heatmap.shape
    batch = tf.shape(heatmap)[0]
    heat = tf.sigmoid(heatmap)
    pooled = tf.nn.max_pool2d(heat, nms_kernel, strides=1, padding="SAME")
    heat = heat * tf.cast(tf.equal(heat, pooled), heat.dtype)
    # Flattened NHWC: index = (y * w + x) * C + c.
    scores, index = tf.math.top_k(tf.reshape(heat, [batch, height * width * num_classes]), k)
    classes = index % num_classes
    position = index // num_classes  # [B, K] y * w + x
    ys = tf.cast(position // width, tf.float32)
    xs = tf.cast(position % width, tf.float32)
    flat = tf.reshape(position + tf.range(batch)[:, None] * (height * width), [-1])
    emb = tf.reshape(tf.gather(tf.reshape(tf.cast(embedding, tf.float32), [-1]), flat),
                     [batch, k])
    off = tf.reshape(tf.gather(tf.reshape(tf.cast(offset, tf.float32), [-1, 2]), flat),
                     [batch, k, 2])
    return _Corners(scores=scores, classes=classes, embeddings=emb, x=xs + off[..., 0],
                    y=ys + off[..., 1])


def batched_soft_nms(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor,
                     params: Optional[DecodeConfig] = None) -> dict:
    """Per-class Gaussian soft-NMS of each image, padded to `max_detections`.

    The reference's greedy loop (take the best box, weight every other box of its class by
    exp(-IoU^2 / sigma), drop scores below the floor, repeat) via TF's NonMaxSuppressionV5,
    which weights by exp(-0.5 IoU^2 / s) and hard-suppresses IoU > iou_threshold: so
    s = sigma / 2 and iou_threshold = 1. Classes are kept apart by moving each class's boxes
    to their own tile of the plane (IoU across classes is 0). Boxes are selected in
    descending final score, so the first N are the reference's top N.

    Args:
      boxes: [B, P, 4] float32 xyxy (any frame; IoU is invariant to shift and axis scale).
      scores: [B, P] float32; entries <= score_threshold are absent.
      classes: [B, P] int32 0-based; -1 marks an absent entry.
      params: as in `decode`; used: max_detections (N), soft_nms_sigma
        (reference-convention sigma, > 0), score_threshold (score floor, >= 0).

    Returns:
      dict: `boxes` [B, N, 4] (-1 padded), `scores` [B, N] (0 padded), `classes` [B, N]
      int32 (-1 padded), `num_detections` [B] int32.

    Raises:
      ValueError: wrong ranks/shapes or parameters out of range.
    """
    params = resolved_params(params)
    max_detections, soft_nms_sigma, score_threshold = (
        params.max_detections, params.soft_nms_sigma, params.score_threshold)
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    classes = tf.cast(classes, tf.int32)
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_soft_nms: boxes must be [B, P, 4], found {boxes.shape}")
    if scores.shape.rank != 2 or classes.shape.rank != 2:
        raise ValueError(f"batched_soft_nms: scores and classes must be [B, P], found "
                         f"{scores.shape} and {classes.shape}")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, found {max_detections}")
    if not soft_nms_sigma > 0:
        raise ValueError(f"soft_nms_sigma must be > 0, found {soft_nms_sigma}")
    if not score_threshold >= 0:
        raise ValueError(f"score_threshold must be >= 0, found {score_threshold}")

    def one(args):
        return _soft_nms_one(*args, max_detections=int(max_detections),
                             soft_nms_sigma=float(soft_nms_sigma),
                             score_threshold=float(score_threshold))

    n = int(max_detections)
    if boxes.shape[0] is not None:  # static batch (TFLite): unrolled, no While loop
        results = [one((boxes[b], scores[b], classes[b])) for b in range(boxes.shape[0])]
        out = [tf.stack(parts) for parts in zip(*results)]
    else:
        out = tf.map_fn(one, (boxes, scores, classes), fn_output_signature=(
            tf.TensorSpec([n, 4], tf.float32), tf.TensorSpec([n], tf.float32),
            tf.TensorSpec([n], tf.int32), tf.TensorSpec([], tf.int32)))
    return {BOXES: out[0], SCORES: out[1], CLASSES: out[2], NUM_DETECTIONS: out[3]}


def _soft_nms_one(boxes, scores, classes, max_detections, soft_nms_sigma, score_threshold):
    """One image: [P, 4], [P], [P] -> padded [N, 4], [N], [N], count."""
    # Tile the plane: class c goes to column c % cols, row c // cols; tiles are `pitch`
    # apart, more than any box's extent, so boxes of different classes never overlap.
    lo = tf.reduce_min(boxes)
    pitch = tf.reduce_max(boxes) - lo + 1.0
    safe_classes = tf.maximum(classes, 0)
    cols = tf.cast(tf.floor(tf.sqrt(tf.cast(tf.reduce_max(safe_classes), tf.float32))),
                   tf.int32) + 1
    tile_x = tf.cast(safe_classes % cols, tf.float32) * pitch - lo
    tile_y = tf.cast(safe_classes // cols, tf.float32) * pitch - lo
    # TF's NMS takes [y1, x1, y2, x2]. [P, 4]
    shifted = box_lib.xyxy_to_yxyx(boxes + tf.stack([tile_x, tile_y, tile_x, tile_y], -1))
    # Positive extent after the shift (a tiny box can collapse to zero width there).
    present = tf.logical_and(tf.logical_and(classes >= 0, box_lib.valid_mask(shifted)),
                             scores > score_threshold)
    scores = tf.where(present, scores, tf.zeros_like(scores))
    index, kept_scores, count = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=scores, max_output_size=max_detections, iou_threshold=1.0,
        score_threshold=score_threshold, soft_nms_sigma=soft_nms_sigma / 2.0,
        pad_to_max_output_size=True)
    filled = tf.range(max_detections) < count  # [N]
    kept_boxes = tf.where(filled[:, None], tf.gather(boxes, index),
                          -tf.ones([max_detections, 4], tf.float32))
    kept_classes = tf.where(filled, tf.gather(classes, index),
                            -tf.ones([max_detections], tf.int32))
    kept_scores = tf.where(filled, kept_scores, tf.zeros_like(kept_scores))
    return kept_boxes, kept_scores, kept_classes, tf.cast(count, tf.int32)


def decode_with_flip(outputs: Mapping[str, tf.Tensor],
                     flipped_outputs: Mapping[str, tf.Tensor],
                     params: Optional[DecodeConfig] = None) -> dict:
    """Flip test as the reference does it: decode both views, pool the pairs, soft-NMS once.

    The reference runs the batch [image, image[:, ::-1]], decodes each to its top
    `num_pairs` pairs, maps the flipped view's boxes back with x -> out_w - x, concatenates
    the 2 * num_pairs candidates and runs per-class soft-NMS on them (test/coco.py).
    Heatmaps are not averaged.

    Args:
      outputs: heads of the images (see `decode`).
      flipped_outputs: heads of the same network inputs mirrored left-right (the whole
        padded input tensor, `inputs[:, :, ::-1]`), same shapes.
      params: as in `decode`.

    Returns:
      the `decode` dict, boxes in the un-flipped images' output grid.

    Raises:
      KeyError, ValueError: as in `decode`, or when the two views' heatmap shapes differ.
    """
    if outputs[TL_HEATMAP].shape[1:] != flipped_outputs[TL_HEATMAP].shape[1:]:
        raise ValueError(f"decode_with_flip: heatmaps of the two views differ in shape: "
                         f"{outputs[TL_HEATMAP].shape} vs {flipped_outputs[TL_HEATMAP].shape}")
    params = resolved_params(params)
    plain = decode_pairs(outputs, params)
    mirrored = decode_pairs(flipped_outputs, params)
    mirrored[BOXES] = box_lib.flip_horizontal(mirrored[BOXES], outputs[TL_HEATMAP].shape[2])
    return merge_detections([plain, mirrored], params)


def merge_detections(candidate_sets: Sequence[Mapping[str, tf.Tensor]],
                     params: Optional[DecodeConfig] = None) -> dict:
    """Pools candidate sets of several views (flip, scales) and runs soft-NMS once.

    For the reference's multi-scale test feed `decode_pairs` results (pre-NMS pairs) of
    each scale and flip, with boxes already mapped to one common frame (e.g. original
    image pixels). Already soft-NMS'ed `decode` outputs also work (their padding is
    ignored) but are then decayed a second time. Unlike the reference's `soft_nms_merge`,
    suppressed boxes are not averaged into the kept one (no weight-exponent voting).

    Args:
      candidate_sets: dicts with `boxes` [B, P_i, 4] float32 xyxy (common frame),
        `scores` [B, P_i] float32 (<= score_threshold: absent), `classes` [B, P_i] int32
        (-1: absent); B equal across sets.
      params: as in `decode` (max_detections, soft_nms_sigma, score_threshold are used).

    Returns:
      the `decode` dict over the pooled candidates.

    Raises:
      ValueError: no candidate sets, or a set lacks a key.
    """
    if not candidate_sets:
        raise ValueError("merge_detections: expected at least one candidate set, found none")
    for i, c in enumerate(candidate_sets):
        missing = [key for key in (BOXES, SCORES, CLASSES) if key not in c]
        if missing:
            raise ValueError(f"merge_detections: candidate set {i} lacks {missing}; "
                             f"found keys {sorted(c)}")
    pooled = {key: tf.concat([tf.convert_to_tensor(c[key]) for c in candidate_sets], axis=1)
              for key in (BOXES, SCORES, CLASSES)}
    return batched_soft_nms(pooled[BOXES], pooled[SCORES], pooled[CLASSES], params)


def _check_heads(outputs: Mapping[str, tf.Tensor]):
    """Validates the six heads; returns (tl_heatmap, br_heatmap, h, w, C)."""
    missing = [key for key in HEAD_KEYS if key not in outputs]
    if missing:
        raise KeyError(f"decode: outputs lack {missing}; expected keys {list(HEAD_KEYS)}, "
                       f"found {sorted(outputs)}")
    tl_heatmap = tf.cast(outputs[TL_HEATMAP], tf.float32)  # mixed precision: may be float16
    br_heatmap = tf.cast(outputs[BR_HEATMAP], tf.float32)
    shape = tl_heatmap.shape
    if shape.rank != 4 or None in shape[1:]:
        raise ValueError(f"decode: tl_heatmap must be [B, h, w, C] with static h, w, C, "
                         f"found {shape}")
    if br_heatmap.shape[1:] != shape[1:]:
        raise ValueError(f"decode: br_heatmap {br_heatmap.shape} differs from tl_heatmap "
                         f"{shape}")
    for key, channels in ((TL_EMBEDDING, 1), (BR_EMBEDDING, 1), (TL_OFFSET, 2),
                          (BR_OFFSET, 2)):
        found = tf.TensorShape(outputs[key].shape)
        if found.rank != 4 or list(found[1:]) != [shape[1], shape[2], channels]:
            raise ValueError(f"decode: {key} must be [B, {shape[1]}, {shape[2]}, {channels}], "
                             f"found {found}")
    return tl_heatmap, br_heatmap, int(shape[1]), int(shape[2]), int(shape[3])


def _check_params(k: int, nms_kernel: int, num_pairs: int, cells: int) -> None:
    if not 1 <= k <= cells:
        raise ValueError(f"decode: k must be in [1, h*w*C = {cells}], found {k}")
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"decode: nms_kernel must be a positive odd int, found {nms_kernel}")
    if not 1 <= num_pairs <= k * k:
        raise ValueError(f"decode: num_pairs must be in [1, k*k = {k * k}], found {num_pairs}")
