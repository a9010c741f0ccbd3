"""Tests for cornernet_tf.losses.

Golden values come from numpy re-implementations of SPEC.md's formulas written below
(float64, explicit per-image loops, none of the library's masking or gather tricks) and from
toy cases worked by hand in the comments.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.config.schema import LossConfig
from cornernet_tf.keys import LOSS_KEYS, NORMALIZER_KEYS
from cornernet_tf.losses import (
    compute_normalizers,
    cornernet_loss,
    focal_loss,
    offset_loss,
    pull_push_loss,
)

# --------------------------------------------------------------------------------------
# Independent numpy references (SPEC.md, Losses)
# --------------------------------------------------------------------------------------


def np_focal(logits, heatmap, alpha=2.0, beta=4.0, num_positives=None):
    z = np.asarray(logits, np.float64)
    y = np.asarray(heatmap, np.float64)
    p = np.clip(1.0 / (1.0 + np.exp(-z)), 1e-4, 1 - 1e-4)
    pos, neg = y == 1, y < 1
    s = np.sum((1 - p[pos]) ** alpha * np.log(p[pos]))
    s += np.sum((1 - y[neg]) ** beta * p[neg] ** alpha * np.log(1 - p[neg]))
    count = pos.sum() if num_positives is None else num_positives
    return -s / count if count > 0 else -s


def np_pull_push(tl_emb, br_emb, tl_index, br_index, mask, num_images=None):
    batch = tl_emb.shape[0]
    tl_flat = np.asarray(tl_emb, np.float64).reshape(batch, -1)
    br_flat = np.asarray(br_emb, np.float64).reshape(batch, -1)
    pull_total = push_total = 0.0
    for b in range(batch):
        objects = [m for m in range(mask.shape[1]) if mask[b, m] > 0]
        n = len(objects)
        e_t = [tl_flat[b, tl_index[b, m]] for m in objects]
        e_b = [br_flat[b, br_index[b, m]] for m in objects]
        e = [(t + r) / 2 for t, r in zip(e_t, e_b)]
        if n > 0:
            pull_total += sum((t - c) ** 2 + (r - c) ** 2 for t, r, c in zip(e_t, e_b, e)) / n
        if n > 1:
            push = sum(max(0.0, 1 - abs(e[k] - e[j])) for k in range(n) for j in range(n) if k != j)
            push_total += push / (n * (n - 1))
    images = batch if num_images is None else num_images
    return pull_total / images, push_total / images


def np_offset(offset, index, target, mask, num_objects=None):
    batch = offset.shape[0]
    flat = np.asarray(offset, np.float64).reshape(batch, -1, 2)
    total = 0.0
    for b in range(batch):
        for m in range(mask.shape[1]):
            if mask[b, m] > 0:
                for d in np.abs(flat[b, index[b, m]] - target[b, m]):
                    total += 0.5 * d * d if d < 1 else d - 0.5
    count = mask.sum() if num_objects is None else num_objects
    return total / count if count > 0 else total


def np_stack_total(stack, targets, w_pull=0.49, w_push=0.49, w_off=1.0):
    focal = np_focal(stack["tl_heatmap"], targets["tl_heatmap"]) + np_focal(
        stack["br_heatmap"], targets["br_heatmap"])
    pull, push = np_pull_push(stack["tl_embedding"], stack["br_embedding"], targets["tl_index"],
                              targets["br_index"], targets["mask"])
    off = sum(np_offset(stack[f"{c}_offset"], targets[f"{c}_index"], targets[f"{c}_offset"],
                        targets["mask"]) for c in ("tl", "br"))
    return dict(focal_loss=focal, pull_loss=pull, push_loss=push, offset_loss=off,
                total_loss=focal + w_pull * pull + w_push * push + w_off * off)


# --------------------------------------------------------------------------------------
# Random batches
# --------------------------------------------------------------------------------------


def make_targets(rng, counts, h=5, w=6, classes=3, max_objects=4):
    """Targets for len(counts) images with counts[b] objects; padding indices are garbage."""
    batch = len(counts)
    tl_heatmap = rng.uniform(0.0, 0.95, (batch, h, w, classes)).astype(np.float32)
    br_heatmap = rng.uniform(0.0, 0.95, (batch, h, w, classes)).astype(np.float32)
    # Padding entries hold values a real encoder might leave (0, -1, out of range).
    tl_index = rng.choice([0, -1, h * w + 7], (batch, max_objects)).astype(np.int32)
    br_index = rng.choice([0, -1, h * w + 7], (batch, max_objects)).astype(np.int32)
    tl_offset = rng.uniform(0, 1, (batch, max_objects, 2)).astype(np.float32)
    br_offset = rng.uniform(0, 1, (batch, max_objects, 2)).astype(np.float32)
    mask = np.zeros((batch, max_objects), np.float32)
    for b, n in enumerate(counts):
        cells = rng.choice(h * w, size=2 * n, replace=False)
        for k in range(n):
            tl_index[b, k], br_index[b, k] = cells[2 * k], cells[2 * k + 1]
            c = rng.integers(classes)
            tl_heatmap[b].reshape(-1, classes)[cells[2 * k], c] = 1.0
            br_heatmap[b].reshape(-1, classes)[cells[2 * k + 1], c] = 1.0
            mask[b, k] = 1.0
    return dict(tl_heatmap=tl_heatmap, br_heatmap=br_heatmap, tl_index=tl_index,
                br_index=br_index, tl_offset=tl_offset, br_offset=br_offset, mask=mask)


def make_stack(rng, batch, h=5, w=6, classes=3):
    return dict(
        tl_heatmap=rng.normal(0, 3, (batch, h, w, classes)).astype(np.float32),
        br_heatmap=rng.normal(0, 3, (batch, h, w, classes)).astype(np.float32),
        # Spread 0.5: many pairs closer than Delta = 1, so push is active.
        tl_embedding=rng.normal(0, 0.5, (batch, h, w, 1)).astype(np.float32),
        br_embedding=rng.normal(0, 0.5, (batch, h, w, 1)).astype(np.float32),
        tl_offset=rng.normal(0.5, 1.0, (batch, h, w, 2)).astype(np.float32),
        br_offset=rng.normal(0.5, 1.0, (batch, h, w, 2)).astype(np.float32),
    )


def take(d, start, stop):
    return {k: v[start:stop] for k, v in d.items()}


# --------------------------------------------------------------------------------------
# Focal loss
# --------------------------------------------------------------------------------------


def test_focal_toy_case_by_hand():
    # heatmap 1x2x2x1 [[1, 0.5], [0, 0]]; logits [[0, 0], [ln(1/3), -30]].
    #   (0,0) y=1,   z=0 -> p=0.5:   (1-0.5)^2 log 0.5            = 0.25 * -0.693147 = -0.173287
    #   (0,1) y=0.5, z=0 -> p=0.5:   (1-0.5)^4 0.5^2 log 0.5      = 0.015625 * -0.693147 = -0.010830
    #   (1,0) y=0, z=ln(1/3) -> p=0.25:  0.25^2 log 0.75          = 0.0625 * -0.287682 = -0.017980
    #   (1,1) y=0, z=-30 -> p clipped to 1e-4: 1e-8 * log(0.9999) = -1.0e-12 (negligible)
    # P = 1 -> loss = 0.173287 + 0.010830 + 0.017980 = 0.202097
    heatmap = np.array([[1.0, 0.5], [0.0, 0.0]], np.float32).reshape(1, 2, 2, 1)
    logits = np.array([[0.0, 0.0], [math.log(1 / 3), -30.0]], np.float32).reshape(1, 2, 2, 1)
    expected = 0.25 * math.log(2) + 0.015625 * math.log(2) + 0.0625 * -math.log(0.75)
    assert float(focal_loss(logits, heatmap)) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.202097, abs=1e-6)


def test_focal_clip_bounds_the_positive_log():
    # A positive with logit -30: sigmoid = 9.4e-14, clipped to 1e-4, so the term is
    # (1 - 1e-4)^2 * log(1e-4) = 0.99980001 * -9.210340 = -9.208498 (not -30).
    heatmap = np.ones((1, 1, 1, 1), np.float32)
    logits = np.full((1, 1, 1, 1), -30.0, np.float32)
    assert float(focal_loss(logits, heatmap)) == pytest.approx(9.208498, rel=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_focal_matches_numpy(batch):
    rng = np.random.default_rng(batch)
    targets = make_targets(rng, counts=[2, 0, 3][:batch])
    logits = make_stack(rng, batch)["tl_heatmap"]
    expected = np_focal(logits, targets["tl_heatmap"])
    assert float(focal_loss(logits, targets["tl_heatmap"])) == pytest.approx(expected, rel=1e-4)
    # alpha / beta are honoured.
    expected = np_focal(logits, targets["tl_heatmap"], alpha=1.5, beta=3.0)
    got = focal_loss(logits, targets["tl_heatmap"], alpha=1.5, beta=3.0)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_focal_without_positives_is_not_divided():
    rng = np.random.default_rng(0)
    heatmap = rng.uniform(0, 0.9, (2, 3, 3, 2)).astype(np.float32)
    logits = rng.normal(0, 2, (2, 3, 3, 2)).astype(np.float32)
    got = float(focal_loss(logits, heatmap))
    assert np.isfinite(got)
    assert got == pytest.approx(np_focal(logits, heatmap), rel=1e-4)  # raw sum: P = 0
    # A global count of 0 also means no division.
    assert float(focal_loss(logits, heatmap, num_positives=0.0)) == pytest.approx(got, rel=1e-6)


def test_focal_num_positives_replaces_local_count():
    rng = np.random.default_rng(1)
    targets = make_targets(rng, counts=[2, 1])
    logits = make_stack(rng, 2)["br_heatmap"]
    expected = np_focal(logits, targets["br_heatmap"], num_positives=7)
    got = focal_loss(logits, targets["br_heatmap"], num_positives=tf.constant(7.0))
    assert float(got) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_focal_low_precision_logits_give_float32_result(dtype):
    rng = np.random.default_rng(2)
    targets = make_targets(rng, counts=[3, 1])
    logits32 = make_stack(rng, 2)["tl_heatmap"]
    logits_low = tf.cast(logits32, dtype)
    got = focal_loss(logits_low, targets["tl_heatmap"])
    assert got.dtype == tf.float32
    # Same as float32 on the rounded logits (computation is float32 inside) ...
    rounded = tf.cast(logits_low, tf.float32).numpy()
    assert float(got) == pytest.approx(np_focal(rounded, targets["tl_heatmap"]), rel=1e-4)
    # ... and within rounding error of the float32 result.
    rel = 5e-3 if dtype == tf.float16 else 3e-2
    assert float(got) == pytest.approx(float(focal_loss(logits32, targets["tl_heatmap"])), rel=rel)


# --------------------------------------------------------------------------------------
# Pull / push
# --------------------------------------------------------------------------------------


def toy_embeddings():
    """Two objects on a 1x3x3x1 grid: TL/BR embeddings 0.1/0.3 and 1.0/1.2."""
    tl = np.zeros((1, 3, 3, 1), np.float32)
    br = np.zeros((1, 3, 3, 1), np.float32)
    tl[0, 0, 0, 0], br[0, 1, 2, 0] = 0.1, 0.3  # object 0: TL cell 0, BR cell 1*3+2 = 5
    tl[0, 1, 1, 0], br[0, 2, 2, 0] = 1.0, 1.2  # object 1: TL cell 4, BR cell 8
    # Padding slots hold garbage indices (99, -1) with mask 0.
    tl_index = np.array([[0, 4, 99, -1]], np.int32)
    br_index = np.array([[5, 8, -1, 99]], np.int32)
    mask = np.array([[1, 1, 0, 0]], np.float32)
    return tl, br, tl_index, br_index, mask


def test_pull_push_toy_case_by_hand():
    # e_0 = (0.1 + 0.3)/2 = 0.2, e_1 = (1.0 + 1.2)/2 = 1.1.
    # pull = (1/2) [((0.1-0.2)^2 + (0.3-0.2)^2) + ((1.0-1.1)^2 + (1.2-1.1)^2)]
    #      = (0.02 + 0.02)/2 = 0.02
    # push = (1/(2*1)) [max(0, 1-0.9) + max(0, 1-0.9)] = 0.2 / 2 = 0.1
    pull, push = pull_push_loss(*toy_embeddings())
    assert float(pull) == pytest.approx(0.02, abs=1e-6)
    assert float(push) == pytest.approx(0.1, abs=1e-6)


def test_pull_push_single_object_and_empty_image():
    tl, br, tl_index, br_index, _ = toy_embeddings()
    # Image 0: only object 0 -> pull = (0.01 + 0.01)/1 = 0.02, push = 0 (N < 2, no 0.9999).
    # Image 1: no object -> pull = push = 0. Averaged over B = 2: pull = 0.01, push = 0.
    tl2, br2 = np.concatenate([tl, tl]), np.concatenate([br, br])
    index_tl, index_br = np.concatenate([tl_index, tl_index]), np.concatenate([br_index, br_index])
    mask = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    pull, push = pull_push_loss(tl2, br2, index_tl, index_br, mask)
    assert float(pull) == pytest.approx(0.01, abs=1e-6)
    assert float(push) == 0.0


def test_pull_push_all_images_empty_is_zero():
    tl, br, tl_index, br_index, _ = toy_embeddings()
    pull, push = pull_push_loss(tl, br, tl_index, br_index, np.zeros((1, 4), np.float32))
    assert float(pull) == 0.0 and float(push) == 0.0


@pytest.mark.parametrize("counts", [[3], [0, 1, 2, 4]])
def test_pull_push_matches_numpy(counts):
    rng = np.random.default_rng(len(counts))
    targets = make_targets(rng, counts)
    stack = make_stack(rng, len(counts))
    args = (stack["tl_embedding"], stack["br_embedding"], targets["tl_index"],
            targets["br_index"], targets["mask"])
    want_pull, want_push = np_pull_push(*args)
    assert want_push > 0  # the random embeddings do exercise the margin
    pull, push = pull_push_loss(*args)
    assert float(pull) == pytest.approx(want_pull, rel=1e-5)
    assert float(push) == pytest.approx(want_push, rel=1e-5)
    pull, push = pull_push_loss(*args, num_images=16)
    want_pull, want_push = np_pull_push(*args, num_images=16)
    assert float(pull) == pytest.approx(want_pull, rel=1e-5)
    assert float(push) == pytest.approx(want_push, rel=1e-5)


def test_pull_push_gradient_only_at_ground_truth_corners():
    tl, br, tl_index, br_index, mask = toy_embeddings()
    tl_var, br_var = tf.constant(tl), tf.constant(br)
    with tf.GradientTape() as tape:
        tape.watch([tl_var, br_var])
        pull, push = pull_push_loss(tl_var, br_var, tl_index, br_index, mask)
        loss = pull + push
    grad_tl, grad_br = (g.numpy().reshape(-1) for g in tape.gradient(loss, [tl_var, br_var]))
    for grad, cells in ((grad_tl, {0, 4}), (grad_br, {5, 8})):
        others = [c for c in range(9) if c not in cells]
        np.testing.assert_array_equal(grad[others], 0.0)
        assert np.all(grad[sorted(cells)] != 0.0)
    # By hand at TL cell 0 (e_t0 = 0.1, e_0 = 0.2, N = 2, B = 1):
    #   d pull / d e_t0 = (1/2) * [2(e_t0 - e_0)(1 - 1/2) + 2(e_b0 - e_0)(-1/2)]
    #                   = (1/2)(-0.1 - 0.1) = -0.1
    #   push = (2/2) max(0, 1 - (e_1 - e_0)); d/d e_0 = +1, d e_0/d e_t0 = 1/2 -> +0.5
    assert grad_tl[0] == pytest.approx(-0.1 + 0.5, abs=1e-5)


# --------------------------------------------------------------------------------------
# Offset loss
# --------------------------------------------------------------------------------------


def test_offset_toy_case_by_hand():
    # Grid 1x2x2x2. Object 0 at cell 3 (y=1, x=1): predicted (0.5, 2.0), target (0.25, 0.5)
    #   |dx| = 0.25 < 1 -> 0.5 * 0.0625 = 0.03125;  |dy| = 1.5 >= 1 -> 1.5 - 0.5 = 1.0
    # Object 1 at cell 0: predicted (0.1, 0.1), target (0.1, 0.3) -> 0 + 0.5 * 0.04 = 0.02
    # N = 2 -> (1.03125 + 0.02) / 2 = 0.525625
    offset = np.zeros((1, 2, 2, 2), np.float32)
    offset[0, 1, 1] = (0.5, 2.0)
    offset[0, 0, 0] = (0.1, 0.1)
    index = np.array([[3, 0, -1]], np.int32)
    target = np.array([[[0.25, 0.5], [0.1, 0.3], [9.0, 9.0]]], np.float32)
    mask = np.array([[1, 1, 0]], np.float32)
    assert float(offset_loss(offset, index, target, mask)) == pytest.approx(0.525625, abs=1e-6)
    # num_objects = 4 (e.g. the global count): 1.05125 / 4
    got = offset_loss(offset, index, target, mask, num_objects=4)
    assert float(got) == pytest.approx(1.05125 / 4, abs=1e-6)


@pytest.mark.parametrize("counts", [[2], [0, 3, 1]])
def test_offset_matches_numpy(counts):
    rng = np.random.default_rng(10 + len(counts))
    targets = make_targets(rng, counts)
    stack = make_stack(rng, len(counts))
    args = (stack["br_offset"], targets["br_index"], targets["br_offset"], targets["mask"])
    assert float(offset_loss(*args)) == pytest.approx(np_offset(*args), rel=1e-5)


def test_offset_no_objects_is_zero():
    offset = np.full((2, 2, 2, 2), 5.0, np.float32)
    got = offset_loss(offset, np.zeros((2, 3), np.int32), np.zeros((2, 3, 2), np.float32),
                      np.zeros((2, 3), np.float32))
    assert float(got) == 0.0


# --------------------------------------------------------------------------------------
# cornernet_loss, normalisers, replica invariance
# --------------------------------------------------------------------------------------


def test_cornernet_loss_two_stacks_is_mean_of_weighted_stack_sums():
    rng = np.random.default_rng(20)
    targets = make_targets(rng, counts=[2, 0, 3])
    stacks = [make_stack(rng, 3), make_stack(rng, 3)]
    got = cornernet_loss(stacks, targets)
    per_stack = [np_stack_total(s, targets) for s in stacks]
    assert set(got) == set(LOSS_KEYS)
    for key in LOSS_KEYS:
        want = (per_stack[0][key] + per_stack[1][key]) / 2
        assert float(got[key]) == pytest.approx(want, rel=1e-4), key
    # Non-default weights.
    got = cornernet_loss(stacks, targets, LossConfig(pull_weight=0.1, push_weight=0.2,
                                                     offset_weight=3.0))
    want = np.mean([np_stack_total(s, targets, 0.1, 0.2, 3.0)["total_loss"] for s in stacks])
    assert float(got["total_loss"]) == pytest.approx(want, rel=1e-4)


def test_cornernet_loss_batch_one_and_empty_image_is_finite():
    rng = np.random.default_rng(21)
    targets = make_targets(rng, counts=[0])
    stack = make_stack(rng, 1)
    got = cornernet_loss([stack], targets)
    for key in LOSS_KEYS:
        assert np.isfinite(float(got[key])), key
    assert float(got["pull_loss"]) == 0.0
    assert float(got["push_loss"]) == 0.0
    assert float(got["offset_loss"]) == 0.0
    assert float(got["focal_loss"]) == pytest.approx(np_stack_total(stack, targets)["focal_loss"],
                                                      rel=1e-4)


def test_compute_normalizers_counts():
    rng = np.random.default_rng(22)
    targets = make_targets(rng, counts=[2, 0, 3, 1])
    got = compute_normalizers(targets)
    assert set(got) == set(NORMALIZER_KEYS)
    assert float(got["tl_positives"]) == np.sum(targets["tl_heatmap"] == 1.0) == 6
    assert float(got["br_positives"]) == np.sum(targets["br_heatmap"] == 1.0) == 6
    assert float(got["num_objects"]) == 6.0
    assert float(got["num_images"]) == 4.0


def test_replica_invariance_with_global_normalizers():
    # Two "replicas" each get half of a batch of 4; with the global normalisers their losses
    # (and gradients w.r.t. their outputs) add up to those of the full batch.
    rng = np.random.default_rng(23)
    targets = make_targets(rng, counts=[3, 0, 1, 2])
    stacks = [make_stack(rng, 4), make_stack(rng, 4)]
    full_norm = compute_normalizers(targets)

    def loss_and_grads(sl, normalizers):
        tensors = [{k: tf.constant(v[sl]) for k, v in s.items()} for s in stacks]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = cornernet_loss(tensors, take(targets, sl.start, sl.stop),
                                  normalizers=normalizers)
        return loss, tape.gradient(loss["total_loss"], tensors)

    full, full_grads = loss_and_grads(slice(0, 4), None)
    half_a, grads_a = loss_and_grads(slice(0, 2), full_norm)
    half_b, grads_b = loss_and_grads(slice(2, 4), full_norm)
    for key in LOSS_KEYS:
        assert float(half_a[key] + half_b[key]) == pytest.approx(float(full[key]), rel=1e-5), key
    for s in range(2):
        for k in full_grads[s]:
            joined = np.concatenate([grads_a[s][k].numpy(), grads_b[s][k].numpy()])
            np.testing.assert_allclose(joined, full_grads[s][k].numpy(), rtol=1e-5, atol=1e-7)
    # Control: local normalisers on each half do NOT add up (so the check above is not vacuous).
    local_a, _ = loss_and_grads(slice(0, 2), compute_normalizers(take(targets, 0, 2)))
    local_b, _ = loss_and_grads(slice(2, 4), compute_normalizers(take(targets, 2, 4)))
    assert abs(float(local_a["total_loss"] + local_b["total_loss"] - full["total_loss"])) > 1e-3


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_cornernet_loss_mixed_precision_outputs(dtype):
    rng = np.random.default_rng(24)
    targets = make_targets(rng, counts=[2, 1])
    stack32 = make_stack(rng, 2)
    stack_low = {k: tf.cast(v, dtype) for k, v in stack32.items()}
    got = cornernet_loss([stack_low], targets)
    rounded = {k: tf.cast(v, tf.float32).numpy() for k, v in stack_low.items()}
    want = np_stack_total(rounded, targets)
    for key in LOSS_KEYS:
        assert got[key].dtype == tf.float32
        assert float(got[key]) == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_cornernet_loss_traces_with_unknown_batch():
    rng = np.random.default_rng(25)
    targets = make_targets(rng, counts=[1, 2])
    stack = make_stack(rng, 2)
    spec = lambda a: tf.TensorSpec([None] + list(a.shape[1:]), tf.as_dtype(a.dtype))  # noqa: E731

    @tf.function(input_signature=[{k: spec(v) for k, v in stack.items()},
                                  {k: spec(v) for k, v in targets.items()}])
    def run(s, t):
        return cornernet_loss([s], t)["total_loss"]

    want = np_stack_total(stack, targets)["total_loss"]
    assert float(run(stack, targets)) == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    tl, br, tl_index, br_index, mask = toy_embeddings()
    with pytest.raises(ValueError, match=r"focal_loss logits: expected a rank-4"):
        focal_loss(np.zeros((2, 2, 1), np.float32), np.zeros((2, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"logits vs heatmap"):
        focal_loss(np.zeros((1, 2, 2, 1), np.float32), np.zeros((1, 2, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"pull_push_loss tl_index: expected an integer index"):
        pull_push_loss(tl, br, tl_index.astype(np.float32), br_index, mask)
    with pytest.raises(ValueError, match=r"tl_embedding: expected \[B, h, w, 1\]"):
        pull_push_loss(np.zeros((1, 3, 3, 2), np.float32), br, tl_index, br_index, mask)
    with pytest.raises(ValueError, match=r"offset_loss offset: expected \[B, h, w, 2\]"):
        offset_loss(tl, tl_index, np.zeros((1, 4, 2), np.float32), mask)
    # A real object (mask 1) whose index lies outside the 3x3 grid.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside the output grid"):
        pull_push_loss(tl, br, np.array([[0, 9, 0, 0]], np.int32), br_index, mask)
    rng = np.random.default_rng(26)
    targets = make_targets(rng, counts=[1])
    stack = make_stack(rng, 1)
    with pytest.raises(KeyError, match=r"outputs\[0\]: missing keys \['tl_offset'\]"):
        cornernet_loss([{k: v for k, v in stack.items() if k != "tl_offset"}], targets)
    with pytest.raises(KeyError, match=r"normalizers: missing keys \['num_images'\]"):
        cornernet_loss([stack], targets, normalizers={"tl_positives": 1, "br_positives": 1,
                                                      "num_objects": 1})
    with pytest.raises(ValueError, match=r"unknown keys \['num_pos'\]"):
        norm = dict(compute_normalizers(targets), num_pos=1.0)
        cornernet_loss([stack], targets, normalizers=norm)
    with pytest.raises(ValueError, match=r"at least one stack"):
        cornernet_loss([], targets)
    with pytest.raises(TypeError, match=r"LossConfig, found dict"):  # weights travel whole
        cornernet_loss([stack], targets, dict(pull_weight=0.1))


def test_focal_loss_takes_nothing_from_ignored_cells():
    # logits 0: p = 0.5 everywhere. One positive (y = 1), two background cells (y = 0) and
    # five ignored cells (y = -1). Positive: (1 - p)^2 log p = 0.25 log 0.5; each background
    # cell: (1 - 0)^4 p^2 log(1 - p) = 0.25 log 0.5; ignored cells: nothing. P = 1.
    heatmap = np.array([1.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0, -1.0], np.float32)
    loss = focal_loss(tf.zeros([1, 2, 4, 1]), heatmap.reshape(1, 2, 4, 1))
    np.testing.assert_allclose(float(loss), -3 * 0.25 * math.log(0.5), rtol=1e-6)
