"""CornerNet training losses as pure functions (SPEC.md, Losses; Law & Deng, ECCV 2018, Sec. 3).

Four losses, each computed in float32 whatever the dtype of the network outputs (mixed
float16 / bfloat16 heads are cast before any arithmetic):

    focal_loss      corner heatmaps, the variant of focal loss of paper eq. 1
    pull_push_loss  embedding grouping, paper eq. 4 (pull) and eq. 5 (push), Delta = 1
    offset_loss     SmoothL1 on sub-cell corner offsets (offsets defined by eq. 2, loss eq. 3)
    cornernet_loss  the weighted sum over TL, BR and all hourglass stacks

Replica invariance. Every loss is "a sum over the local examples divided by a normaliser",
and each normaliser can be passed in: `compute_normalizers(targets)` gives the local values
(positives per heatmap, objects, images); a distributed train step all-reduces them (SUM)
across replicas and passes the global values to `cornernet_loss(..., normalizers=...)`. Each
replica's loss is then its share of the global loss, the shares add up to the loss of the
whole global batch, and the gradients that MirroredStrategy sums are those of one big batch.

Ground-truth corners are given at fixed shapes: `index: [B, M] int32` (y * w + x on the
output grid) with `mask: [B, M] float32` (1 for a real object, 0 for padding). Padding
entries may hold any index; they are never gathered.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import tensorflow as tf

from cornernet_tf.config.schema import LossConfig
from cornernet_tf.keys import (BR_EMBEDDING, BR_HEATMAP, BR_INDEX, BR_OFFSET, BR_POSITIVES,
                               HEAD_KEYS, LOSS_KEYS, LOSS_TARGET_KEYS, MASK, NORMALIZER_KEYS,
                               NUM_IMAGES, NUM_OBJECTS, TL_EMBEDDING, TL_HEATMAP, TL_INDEX,
                               TL_OFFSET, TL_POSITIVES)

# p = clip(sigmoid(z), EPS, 1 - EPS) as in the reference: bounds log p and log(1 - p).
_PROB_EPS = 1e-4

Number = Union[float, int, tf.Tensor]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_rank(x: tf.Tensor, rank: int, where: str, layout: str) -> None:
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"{where}: expected a rank-{rank} tensor {layout}, got shape {x.shape}")


def _check_last_dim(x: tf.Tensor, size: int, where: str, layout: str) -> None:
    last = x.shape[-1] if x.shape.rank else None
    if last is not None and last != size:
        raise ValueError(
            f"{where}: expected {layout} with last dimension {size}, got shape {x.shape}")


def _check_same_shape(a: tf.Tensor, b: tf.Tensor, where: str) -> None:
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"{where}: shapes must match, got {a.shape} and {b.shape}")


def _as_index(index: tf.Tensor, where: str) -> tf.Tensor:
    index = tf.convert_to_tensor(index)
    if not index.dtype.is_integer:
        raise TypeError(
            f"{where}: expected an integer index (y * w + x), got dtype {index.dtype.name}")
    return tf.cast(index, tf.int32)


def _normalizer(value: Optional[Number], default: tf.Tensor) -> tf.Tensor:
    """`value` (a global count) if given, else the local `default`; float32, at least 1.

    Counts are whole numbers, so max(count, 1) is "divide by the count, or do not divide
    when it is 0" without a 0/0 and without a data-dependent branch.
    """
    count = default if value is None else tf.cast(value, tf.float32)
    return tf.maximum(count, 1.0)


def _gather_at(feature: tf.Tensor, index: tf.Tensor, mask: tf.Tensor, where: str) -> tf.Tensor:
    """Values of `feature: [B, h, w, k]` at `index: [B, M]` -> `[B, M, k]` (fixed shapes).

    Padding entries (mask 0) are redirected to cell 0, so whatever they hold is never an
    out-of-range gather; their values are masked out by the callers. Valid entries must lie
    in [0, h * w).
    """
    shape = tf.shape(feature)
    cells = shape[1] * shape[2]
    channels = feature.shape[-1] if feature.shape[-1] is not None else shape[3]
    # [B, h * w, k]
    flat = tf.reshape(feature, tf.stack([shape[0], cells, channels]))
    valid = mask > 0
    tf.debugging.assert_equal(
        tf.reduce_all(tf.logical_or(tf.logical_not(valid), (index >= 0) & (index < cells))),
        True,
        message=f"{where}: an index with mask 1 lies outside the output grid [0, h*w)")
    safe_index = tf.where(valid, index, tf.zeros_like(index))
    # [B, M, k]
    return tf.gather(flat, safe_index, batch_dims=1)


# --------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------


def focal_loss(logits: tf.Tensor, heatmap: tf.Tensor, alpha: float = LossConfig.focal_alpha,
               beta: float = LossConfig.focal_beta, num_positives: Optional[Number] = None) -> tf.Tensor:
    """Corner heatmap focal loss with Gaussian penalty reduction (CornerNet paper, eq. 1).

    With p = clip(sigmoid(logits), 1e-4, 1 - 1e-4) and y the ground-truth heatmap:

        L_det = -(1/P) [ sum_{y == 1} (1 - p)^alpha log p
                         + sum_{0 <= y < 1} (1 - y)^beta p^alpha log(1 - p) ]

    summed over batch, positions and classes. Computed in float32: the clip bounds both
    logs (|log| <= 9.22), so float16 / bfloat16 logits are safe. As in the reference, the
    clip also stops the gradient of saturated logits.

    Divides by P, the number of heatmap entries exactly equal to 1, or by `num_positives`
    when given (the global count across replicas, so that per-replica losses add up to the
    loss of the global batch). When P is 0 there is no division.

    Args:
        logits: [B, h, w, C] heatmap logits, any float dtype.
        heatmap: [B, h, w, C] ground truth in [0, 1], 1 exactly at the corners;
            `keys.HEATMAP_IGNORE` (-1) where no loss is taken (ignore regions).
        alpha: focusing exponent (paper: 2).
        beta: penalty-reduction exponent on (1 - y) for negatives (paper: 4).
        num_positives: optional scalar count used instead of the local count of 1s.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: if the inputs are not rank 4 or their shapes differ.
    """
    where = "focal_loss"
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    heatmap = tf.cast(tf.convert_to_tensor(heatmap), tf.float32)
    _check_rank(logits, 4, where + " logits", "[B, h, w, C]")
    _check_rank(heatmap, 4, where + " heatmap", "[B, h, w, C]")
    _check_same_shape(logits, heatmap, where + " logits vs heatmap")

    p = tf.clip_by_value(tf.sigmoid(logits), _PROB_EPS, 1.0 - _PROB_EPS)
    positive = tf.cast(tf.equal(heatmap, 1.0), tf.float32)
    # Cells at HEATMAP_IGNORE (< 0: ignore regions) are neither positive nor negative.
    negative = tf.cast(tf.less(heatmap, 1.0) & tf.greater_equal(heatmap, 0.0), tf.float32)
    pos_term = tf.pow(1.0 - p, alpha) * tf.math.log(p) * positive
    neg_term = tf.pow(1.0 - heatmap, beta) * tf.pow(p, alpha) * tf.math.log(1.0 - p) * negative
    total = -(tf.reduce_sum(pos_term) + tf.reduce_sum(neg_term))
    return total / _normalizer(num_positives, tf.reduce_sum(positive))


def pull_push_loss(tl_embedding: tf.Tensor, br_embedding: tf.Tensor, tl_index: tf.Tensor,
                   br_index: tf.Tensor, mask: tf.Tensor,
                   num_images: Optional[Number] = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Associative-embedding grouping losses (CornerNet paper, eq. 4 pull and eq. 5 push).

    Per image with N objects, e_tk / e_bk the TL / BR embeddings of object k and
    e_k = (e_tk + e_bk) / 2:

        pull = (1/N) sum_k [(e_tk - e_k)^2 + (e_bk - e_k)^2]               (0 when N = 0)
        push = (1/(N(N-1))) sum_{k != j} max(0, 1 - |e_k - e_j|)             (0 when N < 2)

    push runs over the N(N-1) ordered pairs (Delta = 1). The reference adds a constant
    0.9999 to push for an image with N = 1 (a side effect of its 1e-4 guards); it carries
    no gradient, and it is dropped here: push is 0 for N < 2.

    The per-image values are SUMMED over the images of the batch and divided by
    `num_images` (default: the local batch size B), i.e. averaged over images. Passing the
    global batch size makes per-replica values add up to the global-batch value.

    Only the embeddings at ground-truth corners enter the loss: the gradient is zero at
    every other grid cell.

    Args:
        tl_embedding: [B, h, w, 1] top-left embeddings, any float dtype.
        br_embedding: [B, h, w, 1] bottom-right embeddings.
        tl_index: [B, M] int32 top-left corner cells, y * w + x.
        br_index: [B, M] int32 bottom-right corner cells.
        mask: [B, M] float32, 1 for a real object, 0 for padding.
        num_images: optional scalar divisor used instead of B.

    Returns:
        (pull, push): two scalar float32 losses.

    Raises:
        ValueError: on a wrong rank, an embedding with more than one channel, or index /
            mask shapes that differ.
        TypeError: if an index is not an integer tensor.
    """
    where = "pull_push_loss"
    tl_embedding = tf.cast(tf.convert_to_tensor(tl_embedding), tf.float32)
    br_embedding = tf.cast(tf.convert_to_tensor(br_embedding), tf.float32)
    tl_index = _as_index(tl_index, where + " tl_index")
    br_index = _as_index(br_index, where + " br_index")
    mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    for name, x in (("tl_embedding", tl_embedding), ("br_embedding", br_embedding)):
        _check_rank(x, 4, f"{where} {name}", "[B, h, w, 1]")
        _check_last_dim(x, 1, f"{where} {name}", "[B, h, w, 1]")
    for name, x in (("tl_index", tl_index), ("br_index", br_index), ("mask", mask)):
        _check_rank(x, 2, f"{where} {name}", "[B, M]")
    _check_same_shape(tl_index, mask, where + " tl_index vs mask")
    _check_same_shape(br_index, mask, where + " br_index vs mask")

    # [B, M]
    e_tl = _gather_at(tl_embedding, tl_index, mask, where + " tl_index")[..., 0]
    e_br = _gather_at(br_embedding, br_index, mask, where + " br_index")[..., 0]
    e_mean = (e_tl + e_br) / 2.0
    count = tf.reduce_sum(mask, axis=1)  # [B]

    pull_sum = tf.reduce_sum((tf.square(e_tl - e_mean) + tf.square(e_br - e_mean)) * mask, axis=1)
    pull_per_image = pull_sum / tf.maximum(count, 1.0)

    # [B, M, M]: ordered pairs of two different real objects.
    size = tf.shape(mask)[1]
    off_diagonal = 1.0 - tf.eye(size, dtype=tf.float32)
    pair_mask = mask[:, :, None] * mask[:, None, :] * off_diagonal[None]
    margin = tf.nn.relu(1.0 - tf.abs(e_mean[:, :, None] - e_mean[:, None, :]))
    push_sum = tf.reduce_sum(margin * pair_mask, axis=[1, 2])
    # N(N-1) is 0 for N < 2, and then push_sum is 0 too: max(., 1) gives 0, not 0/0.
    push_per_image = push_sum / tf.maximum(count * (count - 1.0), 1.0)

    # A replica can get no images on a last partial batch: max(B, 1) keeps 0/0 out.
    divisor = _normalizer(num_images, tf.cast(tf.shape(mask)[0], tf.float32))
    return tf.reduce_sum(pull_per_image) / divisor, tf.reduce_sum(push_per_image) / divisor


def offset_loss(offset: tf.Tensor, index: tf.Tensor, target_offset: tf.Tensor, mask: tf.Tensor,
                num_objects: Optional[Number] = None) -> tf.Tensor:
    """Corner offset loss (CornerNet paper, eq. 3; the offsets themselves are eq. 2).

        L_off = (1/N) sum_k SmoothL1(o_k, o_hat_k),   SmoothL1 with beta 1 summed over (x, y)

    where o_hat_k is the predicted offset at object k's ground-truth corner cell and
    SmoothL1(d) = 0.5 d^2 if |d| < 1 else |d| - 0.5, per coordinate.

    Divides by N, the number of objects (sum of `mask`), or by `num_objects` when given
    (the global count across replicas). When N is 0 there is no division.

    Args:
        offset: [B, h, w, 2] predicted offsets (x, y) in output-grid cells, any float dtype.
        index: [B, M] int32 corner cells, y * w + x.
        target_offset: [B, M, 2] float32 ground-truth offsets (x, y) in [0, 1).
        mask: [B, M] float32, 1 for a real object, 0 for padding.
        num_objects: optional scalar count used instead of the local mask sum.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: on a wrong rank or last dimension, or mismatched [B, M] shapes.
        TypeError: if `index` is not an integer tensor.
    """
    where = "offset_loss"
    offset = tf.cast(tf.convert_to_tensor(offset), tf.float32)
    target_offset = tf.cast(tf.convert_to_tensor(target_offset), tf.float32)
    index = _as_index(index, where + " index")
    mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    _check_rank(offset, 4, where + " offset", "[B, h, w, 2]")
    _check_last_dim(offset, 2, where + " offset", "[B, h, w, 2]")
    _check_rank(target_offset, 3, where + " target_offset", "[B, M, 2]")
    _check_last_dim(target_offset, 2, where + " target_offset", "[B, M, 2]")
    _check_rank(index, 2, where + " index", "[B, M]")
    _check_rank(mask, 2, where + " mask", "[B, M]")
    _check_same_shape(index, mask, where + " index vs mask")
    _check_same_shape(target_offset[..., 0], mask, where + " target_offset[..., 0] vs mask")

    predicted = _gather_at(offset, index, mask, where + " index")  # [B, M, 2]
    diff = tf.abs(predicted - target_offset)
    smooth_l1 = tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)
    total = tf.reduce_sum(smooth_l1 * mask[..., None])
    return total / _normalizer(num_objects, tf.reduce_sum(mask))


# --------------------------------------------------------------------------------------
# The CornerNet objective
# --------------------------------------------------------------------------------------


def compute_normalizers(targets: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The local normalisers of a batch of targets, to be all-reduced (SUM) across replicas.

    Args:
        targets: dict with tl_heatmap, br_heatmap [B, h, w, C] and mask [B, M] (other keys
            are ignored).

    Returns:
        dict of float32 scalars: tl_positives, br_positives (count of heatmap entries equal
        to 1), num_objects (sum of mask), num_images (B).

    Raises:
        KeyError: if a needed key is missing.
    """
    missing = [k for k in (TL_HEATMAP, BR_HEATMAP, MASK) if k not in targets]
    if missing:
        raise KeyError(f"compute_normalizers: targets lack {missing}; got keys {sorted(targets)}")

    def positives(heatmap: tf.Tensor) -> tf.Tensor:
        heatmap = tf.cast(heatmap, tf.float32)
        return tf.reduce_sum(tf.cast(tf.equal(heatmap, 1.0), tf.float32))

    mask = tf.cast(targets[MASK], tf.float32)
    return {
        TL_POSITIVES: positives(targets[TL_HEATMAP]),
        BR_POSITIVES: positives(targets[BR_HEATMAP]),
        NUM_OBJECTS: tf.reduce_sum(mask),
        NUM_IMAGES: tf.cast(tf.shape(mask)[0], tf.float32),
    }


def _check_keys(found: Mapping, expected: Sequence[str], where: str) -> None:
    missing = [k for k in expected if k not in found]
    if missing:
        raise KeyError(
            f"{where}: missing keys {missing}; expected {list(expected)}, got {sorted(found)}")


def cornernet_loss(outputs: Union[Sequence[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]],
                   targets: Mapping[str, tf.Tensor], params: Optional[LossConfig] = None, *,
                   normalizers: Optional[Mapping[str, Number]] = None) -> dict[str, tf.Tensor]:
    """The full CornerNet objective over all hourglass stacks (intermediate supervision).

    Per stack s:

        L_s = L_det(TL) + L_det(BR) + w_pull * pull + w_push * push
              + w_off * (L_off(TL) + L_off(BR))

    and every returned value is the mean over stacks. The weights are one `LossConfig`
    (`cfg.loss`), passed whole; its default weights 0.49 = 0.1 x 49 / 10 reproduce the reference's effective pull/push weighting with per-image averaging
    (SPEC.md, Losses). Divisors: focal by the TL / BR positive counts, pull/push by the
    number of images, offsets by the number of objects; all taken from `normalizers`.

    Args:
        outputs: list of per-stack dicts with keys tl_heatmap, br_heatmap [B, h, w, C] logits,
            tl_embedding, br_embedding [B, h, w, 1], tl_offset, br_offset [B, h, w, 2]; any
            float dtype. A single dict is taken as one stack.
        targets: dict with tl_heatmap, br_heatmap [B, h, w, C], tl_index, br_index [B, M]
            int32, tl_offset, br_offset [B, M, 2], mask [B, M].
        params: a `LossConfig` (None: its defaults, the reference's): focal_alpha and
            focal_beta of the focal loss; pull_weight, push_weight; offset_weight of the
            summed TL + BR offset losses.
        normalizers: optional dict with exactly the keys tl_positives, br_positives,
            num_objects, num_images holding GLOBAL values (the all-reduced sums of
            `compute_normalizers` over replicas). Default: this batch's own values.

    Returns:
        dict of float32 scalars: focal_loss (TL + BR), pull_loss, push_loss, offset_loss
        (TL + BR, unweighted) and total_loss (weighted), each the mean over stacks.

    Raises:
        KeyError: if a stack, the targets or the normalisers lack a key.
        ValueError: if there is no stack, normalisers have unknown keys, or shapes are wrong.
        TypeError: `params` is not a LossConfig.
    """
    params = LossConfig() if params is None else params
    if not isinstance(params, LossConfig):
        raise TypeError(f"cornernet_loss: params must be a cornernet_tf.config.schema."
                        f"LossConfig, found {type(params).__name__}")
    focal_alpha, focal_beta = float(params.focal_alpha), float(params.focal_beta)
    pull_weight, push_weight = float(params.pull_weight), float(params.push_weight)
    offset_weight = float(params.offset_weight)
    stacks = [outputs] if isinstance(outputs, Mapping) else list(outputs)
    if not stacks:
        raise ValueError("cornernet_loss: outputs must hold at least one stack, got an empty list")
    _check_keys(targets, LOSS_TARGET_KEYS, "cornernet_loss targets")
    for s, stack in enumerate(stacks):
        _check_keys(stack, HEAD_KEYS, f"cornernet_loss outputs[{s}]")
    if normalizers is None:
        normalizers = compute_normalizers(targets)
    else:
        _check_keys(normalizers, NORMALIZER_KEYS, "cornernet_loss normalizers")
        unknown = sorted(set(normalizers) - set(NORMALIZER_KEYS))
        if unknown:
            raise ValueError(f"cornernet_loss normalizers: unknown keys {unknown}; "
                             f"expected {list(NORMALIZER_KEYS)}")

    sums = {key: tf.constant(0.0, tf.float32) for key in LOSS_KEYS}
    for stack in stacks:
        focal = (focal_loss(stack[TL_HEATMAP], targets[TL_HEATMAP], focal_alpha, focal_beta,
                            num_positives=normalizers[TL_POSITIVES])
                 + focal_loss(stack[BR_HEATMAP], targets[BR_HEATMAP], focal_alpha, focal_beta,
                              num_positives=normalizers[BR_POSITIVES]))
        pull, push = pull_push_loss(stack[TL_EMBEDDING], stack[BR_EMBEDDING],
                                    targets[TL_INDEX], targets[BR_INDEX], targets[MASK],
                                    num_images=normalizers[NUM_IMAGES])
        offset = (offset_loss(stack[TL_OFFSET], targets[TL_INDEX], targets[TL_OFFSET],
                              targets[MASK], num_objects=normalizers[NUM_OBJECTS])
                  + offset_loss(stack[BR_OFFSET], targets[BR_INDEX], targets[BR_OFFSET],
                                targets[MASK], num_objects=normalizers[NUM_OBJECTS]))
        total = focal + pull_weight * pull + push_weight * push + offset_weight * offset
        for key, value in zip(LOSS_KEYS, (focal, pull, push, offset, total)):
            sums[key] = sums[key] + value
    return {key: value / float(len(stacks)) for key, value in sums.items()}
