"""Corner pooling (SPEC.md, Corner pooling): directional cumulative max and the CornerPool layer.

For `x: [B, H, W, C]`:

    top:    y[b, i, j, c] = max over i' >= i of x[b, i', j, c]   (reverse cumulative max along H)
    bottom: y[b, i, j, c] = max over i' <= i of x[b, i', j, c]   (cumulative max along H)
    left:   y[b, i, j, c] = max over j' >= j of x[b, i, j', c]   (reverse cumulative max along W)
    right:  y[b, i, j, c] = max over j' <= j of x[b, i, j', c]   (cumulative max along W)

Every implementation works on a `[P, n, Q]` view of the input (`n` = the pooled axis; for H:
`P = B, Q = W*C`; for W: `P = B*H, Q = C`), so the only transposes are of two leading axes:

- "scan":     `tf.scan(tf.maximum)` over the pooled axis (moved to the front).
- "doubling": log-step doubling, max with the tensor shifted by 1, 2, 4, ... positions and padded
              with the dtype's lowest value, done inside blocks of `k` positions and then across the
              block maxima (blocking cuts the number of full-size steps from log2(n) to log2(k)).
              Only RESHAPE / STRIDED_SLICE / PADV2 / MAXIMUM / CONCATENATION: converts to TFLite
              builtins at any static shape.
- "pool":     the same blocking with `tf.nn.max_pool2d` (explicit padding) inside the blocks.
              Fastest on CPU, but it neither converts to TFLite builtins nor compiles with XLA.

All three are exact (max is exact in every dtype) and share one custom gradient, `_route_gradient`:
each output's upstream gradient goes to the input element that attains its max, ties to the element
met first in the scan (SPEC: top pool over [3, 1, 3, 2, 0] with upstream ones -> [0, 0, 3, 1, 1]).
It needs only the forward output `y`: along the scan, position j is where a new maximum starts
(`y[j]` differs from the previous `y`) and receives the gradients of the whole run of equal `y`
that it starts. The runs are summed inside blocks by an unrolled loop over the `k` block positions
(vectorised over all blocks) plus a short loop over the blocks for runs that cross a block edge.
With a dynamic pooled axis only "scan" applies and TF's own scan gradient is used (same tie rule).

impl="auto" (`resolve_impl`): with `training=True` it is "pool" for floating dtypes on hosts without
a GPU and "doubling" otherwise (XLA, which Keras enables by default on GPU hosts, rejects the
padded pooling; GPU timings were not measured); with `training` False/None (inference, SavedModel
and TFLite export) it is "doubling", so every exported graph converts to TFLite builtins. A dynamic
pooled axis always gives "scan".

Measured on this 2-core CPU host shared with other jobs, one direction ("top") on [4, 128, 128, 128]
float32, medians of 15 runs, x = multiple of a numpy `.copy()` of the same tensor:

    impl       forward           forward+backward
    (filled in from `python -c "from cornernet_tf.benchmark import bench_corner_pool; ..."`)
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

DIRECTIONS = ("top", "bottom", "left", "right")
IMPLS = ("auto", "scan", "doubling", "pool")
CORNERS = {"top_left": ("top", "left"), "bottom_right": ("bottom", "right")}

# direction -> (pooled axis of [B, H, W, C], reverse: the scan starts at the last position)
_AXIS = {"top": (1, True), "bottom": (1, False), "left": (2, True), "right": (2, False)}


def _lowest(dtype: tf.DType):
    """The dtype's lowest value: -inf for floating dtypes, dtype.min for integers."""
    return -np.inf if dtype.is_floating else dtype.min


def _dim(x: tf.Tensor, axis: int):
    """Static size of x along axis if known, else its dynamic size."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _block_size(n: int) -> int:
    """Divisor k of n minimising k + n / k (the two loop lengths); the smaller one on ties."""
    return min((k for k in range(1, n + 1) if n % k == 0), key=lambda k: (k + n // k, k))


def resolve_impl(impl: str, dtype: tf.DType, static_n: bool, training: bool | None) -> str:
    """The implementation `impl="auto"` stands for in this context (see the module docstring).

    Args:
      impl: one of IMPLS.
      dtype: the input dtype.
      static_n: whether the size of the pooled axis is known when tracing.
      training: True while training (gradients wanted), False/None for inference and export.

    Returns:
      "scan", "doubling" or "pool".
    """
    if impl != "auto":
        return impl
    if not static_n:
        return "scan"
    if training and dtype.is_floating and not tf.config.list_physical_devices("GPU"):
        return "pool"
    return "doubling"


def _shift_max(x: tf.Tensor, axis: int, reverse: bool, n: int) -> tf.Tensor:
    """Cumulative max of x along a static axis of size n by log-step doubling."""
    low = tf.constant(_lowest(x.dtype), x.dtype)
    y, shift = x, 1
    while shift < n:
        index = [slice(None)] * x.shape.rank
        pads = [[0, 0]] * x.shape.rank
        # reverse: y[i] = max(y[i + shift], y[i]); forward: y[i] = max(y[i - shift], y[i]).
        # The shifted (farther along the scan's start) operand comes first: tf.maximum's
        # gradient would prefer it on ties, as the scan does (the custom gradient decides anyway).
        index[axis] = slice(shift, None) if reverse else slice(None, n - shift)
        pads[axis] = [0, shift] if reverse else [shift, 0]
        y = tf.maximum(tf.pad(y[tuple(index)], pads, constant_values=low), y)
        shift *= 2
    return y


def _blocked(x3: tf.Tensor, reverse: bool, cummax: Callable) -> tf.Tensor:
    """Blocked cumulative max of x3 [P, n, Q] along axis 1: within blocks, then a block carry.

    `cummax(t, axis, size)` is the cumulative max of t along one static axis (in `reverse`'s
    direction); it runs once inside the blocks ([P, nb, k, Q], axis 2) and once across the block
    maxima ([P, nb, Q], axis 1).
    """
    n, q = x3.shape[1], _dim(x3, 2)
    k = _block_size(n)
    nb = n // k
    x4 = tf.reshape(x3, [-1, nb, k, q])  # [P, nb, k, Q]
    within = cummax(x4, 2, k)  # [P, nb, k, Q] cumulative max inside each block
    if nb == 1:
        return tf.reshape(within, tf.shape(x3))
    block_max = within[:, :, 0 if reverse else k - 1]  # [P, nb, Q]
    inclusive = cummax(block_max, 1, nb)
    low = tf.fill(tf.shape(block_max[:, :1]), tf.constant(_lowest(x3.dtype), x3.dtype))
    # carry[b]: max over the blocks scanned before block b (exclusive), lowest for the first one.
    if reverse:
        carry = tf.concat([inclusive[:, 1:], low], axis=1)
    else:
        carry = tf.concat([low, inclusive[:, :-1]], axis=1)
    return tf.reshape(tf.maximum(carry[:, :, None], within), tf.shape(x3))


def _scan_forward(x3: tf.Tensor, reverse: bool) -> tf.Tensor:
    xt = tf.transpose(x3, [1, 0, 2])  # [n, P, Q]
    # fn(acc, elem) keeps acc on ties: TF's scan gradient then favours the element met first.
    yt = tf.scan(lambda acc, elem: tf.maximum(acc, elem), xt, reverse=reverse)
    return tf.transpose(yt, [1, 0, 2])


def _doubling_forward(x3: tf.Tensor, reverse: bool) -> tf.Tensor:
    return _blocked(x3, reverse, lambda t, axis, size: _shift_max(t, axis, reverse, size))


def _pool_forward(x3: tf.Tensor, reverse: bool) -> tf.Tensor:
    def cummax(t: tf.Tensor, axis: int, size: int) -> tf.Tensor:
        # As NHWC with the pooled axis as H and the following axis as channels; the window
        # covers `size` positions, explicit padding past the end of the axis.
        pools = tf.reshape(t, [-1, size, 1, _dim(t, axis + 1)])
        pad = [[0, 0], [0, size - 1] if reverse else [size - 1, 0], [0, 0], [0, 0]]
        return tf.reshape(tf.nn.max_pool2d(pools, [1, size, 1, 1], 1, pad), tf.shape(t))

    return _blocked(x3, reverse, cummax)


_FORWARD = {"scan": _scan_forward, "doubling": _doubling_forward, "pool": _pool_forward}


def _route_gradient(y3: tf.Tensor, g3: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Gradient of the cumulative max w.r.t. its input, from the output y3 and upstream g3.

    Args:
      y3: [P, n, Q] forward output, static n.
      g3: [P, n, Q] upstream gradient.
      reverse: the scan direction of the forward pass.

    Returns:
      [P, n, Q] in g3's dtype: at each position that starts a run of equal y along the scan,
      the sum of g3 over that run; zero elsewhere.
    """
    n, q = y3.shape[1], _dim(y3, 2)
    k = _block_size(n)
    nb = n // k
    acc_dtype = tf.float32 if g3.dtype in (tf.float16, tf.bfloat16) else g3.dtype
    zero = tf.zeros((), acc_dtype)
    y4 = tf.reshape(y3, [-1, nb, k, q])  # [P, nb, k, Q]
    g4 = tf.cast(tf.reshape(g3, [-1, nb, k, q]), acc_dtype)
    block_order = list(range(nb - 1, -1, -1)) if reverse else list(range(nb))
    pos_order = list(range(k - 1, -1, -1)) if reverse else list(range(k))  # scan order in a block
    y_end = y4[:, :, pos_order[-1]]  # [P, nb, Q] y where the scan leaves each block
    low = tf.fill(tf.shape(y_end[:, :1]), tf.constant(_lowest(y3.dtype), y3.dtype))
    # carry[b]: y just before the scan enters block b.
    carry = tf.concat([y_end[:, 1:], low], 1) if reverse else tf.concat([low, y_end[:, :-1]], 1)
    if nb > 1:
        # Positions of a block still at the carried max belong to a run started in an earlier
        # block: their sum spills into it (into the last run start of the nearest earlier block
        # that has one). incoming[b] collects what block b receives from later blocks.
        spill = tf.unstack(tf.reduce_sum(tf.where(y4 == carry[:, :, None], g4, zero), 2), axis=1)
        starts_run = tf.unstack(y_end > carry, axis=1)
        incoming = [None] * nb
        incoming[block_order[-1]] = tf.zeros_like(spill[0])
        for earlier, later in zip(block_order[-2::-1], block_order[:0:-1]):
            incoming[earlier] = spill[later] + tf.where(starts_run[later], zero, incoming[later])
        acc = tf.stack(incoming, axis=1)  # [P, nb, Q]
    else:
        acc = tf.zeros_like(g4[:, :, 0])
    first_block = np.zeros([1, nb, 1], bool)
    first_block[0, block_order[0], 0] = True  # the scan's very first position always starts a run
    ys, gs = tf.unstack(y4, axis=2), tf.unstack(g4, axis=2)
    outs = [None] * k
    # Walk each block against the scan: accumulate, hand the sum to each run start and reset.
    # The first run start met is the block's last one, which also takes incoming[b].
    for i in range(k - 1, -1, -1):
        t = pos_order[i]
        acc = acc + gs[t]
        if i == 0:
            start = tf.logical_or(ys[t] > carry, first_block)
        else:
            start = ys[t] > ys[pos_order[i - 1]]
        outs[t] = tf.where(start, acc, zero)
        acc = tf.where(start, zero, acc)
    return tf.cast(tf.reshape(tf.stack(outs, axis=2), tf.shape(g3)), g3.dtype)


def _pool_3d(x3: tf.Tensor, reverse: bool, impl: str) -> tf.Tensor:
    """Cumulative max of x3 [P, n, Q] along axis 1 with the routed gradient."""
    forward = _FORWARD[impl]
    if x3.shape[1] is None:  # dynamic pooled axis: scan with TF's scan gradient
        return forward(x3, reverse)

    @tf.custom_gradient
    def pool(x):
        y = forward(x, reverse)
        return y, lambda g: _route_gradient(y, g, reverse)

    return pool(x3)


def directional_pool(
    x: tf.Tensor, direction: str, impl: str = "auto", training: bool | None = None
) -> tf.Tensor:
    """Directional cumulative max (SPEC.md, Corner pooling).

    Args:
      x: [B, H, W, C] feature map, any floating or integer dtype.
      direction: "top", "bottom", "left" or "right".
      impl: "scan", "doubling", "pool" or "auto" (module docstring; results are identical).
      training: only steers impl="auto" (True: training; False/None: inference or export).

    Returns:
      [B, H, W, C] tensor, x's dtype.

    Raises:
      ValueError: unknown direction or impl, x not rank 4, or "doubling"/"pool" with a dynamic
        size along the pooled axis.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"directional_pool: direction must be one of {DIRECTIONS}, got {direction!r}")
    if impl not in IMPLS:
        raise ValueError(f"directional_pool: impl must be one of {IMPLS}, got {impl!r}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4:
        raise ValueError(f"directional_pool: x must be [B, H, W, C], got shape {x.shape}")
    axis, reverse = _AXIS[direction]
    n = x.shape[axis]
    impl = resolve_impl(impl, x.dtype, n is not None, training)
    if n is None and impl != "scan":
        raise ValueError(f"directional_pool: impl={impl!r} needs a static size along axis {axis} "
                         f"({'H' if axis == 1 else 'W'}) for direction {direction!r}, "
                         f"got shape {x.shape}; use impl='scan' or 'auto'")
    if n == 1:
        return tf.identity(x)
    # Static sizes where known, so that traced graphs keep their static shapes.
    shape = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape)]
    if axis == 1:
        x3 = tf.reshape(x, [shape[0], shape[1], shape[2] * shape[3]])  # [B, H, W*C]
    else:
        x3 = tf.reshape(x, [shape[0] * shape[1], shape[2], shape[3]])  # [B*H, W, C]
    return tf.reshape(_pool_3d(x3, reverse, impl), shape)


@keras.saving.register_keras_serializable(package="cornernet_tf")
class CornerPool(keras.layers.Layer):
    """Corner pooling of two feature maps (SPEC.md, Corner pooling).

    "top_left": top(f_a) + left(f_b); "bottom_right": bottom(f_a) + right(f_b).

    Args:
      corner: "top_left" or "bottom_right".
      impl: "auto", "scan", "doubling" or "pool" (see `directional_pool`).
      **kwargs: keras.layers.Layer arguments (name, dtype, ...).

    Call args:
      inputs: [f_a, f_b], each [B, H, W, C] of the same shape.
      training: steers impl="auto" only.

    Returns:
      [B, H, W, C] tensor.
    """

    def __init__(self, corner: str = "top_left", impl: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if corner not in CORNERS:
            raise ValueError(f"CornerPool: corner must be one of {tuple(CORNERS)}, got {corner!r}")
        if impl not in IMPLS:
            raise ValueError(f"CornerPool: impl must be one of {IMPLS}, got {impl!r}")
        self.corner = corner
        self.impl = impl

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"CornerPool({self.corner!r}): expected inputs [f_a, f_b], got {inputs!r}")
        f_a, f_b = inputs
        d_a, d_b = CORNERS[self.corner]
        return (directional_pool(f_a, d_a, self.impl, training)
                + directional_pool(f_b, d_b, self.impl, training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"corner": self.corner, "impl": self.impl})
        return config
