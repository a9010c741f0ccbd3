"""Corner pooling (SPEC.md, Corner pooling): directional cumulative max and the CornerPool layer.

For `x: [B, H, W, C]`:

    top:    y[b, i, j, c] = max over i' >= i of x[b, i', j, c]   (reverse cumulative max along H)
    bottom: y[b, i, j, c] = max over i' <= i of x[b, i', j, c]   (cumulative max along H)
    left:   y[b, i, j, c] = max over j' >= j of x[b, i, j', c]   (reverse cumulative max along W)
    right:  y[b, i, j, c] = max over j' <= j of x[b, i, j', c]   (cumulative max along W)

Every implementation works on a `[P, n, Q]` view of the input (`n` = the pooled axis; for H:
`P = B, Q = W*C`; for W: `P = B*H, Q = C`), so no 4-D transposes are needed:

- "scan":     `tf.scan(tf.maximum)` over the pooled axis (moved to the front of the view).
- "doubling": log-step doubling, max with the tensor shifted by 1, 2, 4, ... positions and padded
              with the dtype's lowest value, done inside blocks of k positions and then across the
              block maxima (log2(k) + log2(n/k) steps, most of them on 1/k of the data).
              Only RESHAPE / STRIDED_SLICE / PADV2 / MAXIMUM / CONCATENATION: converts to TFLite
              builtins at any static shape.
- "xla":      an XLA-compiled while loop over the rows of the pooled axis keeping the running max
              and writing each output row in place: one read of x, one write of y.

All are exact (max is exact in every dtype) and share one custom gradient, `_xla_route_gradient`:
each output's upstream gradient goes to the input element that attains its max, ties to the element
met first in the scan (SPEC: top pool over [3, 1, 3, 2, 0] with upstream ones -> [0, 0, 3, 1, 1]).
It needs only the forward output `y`: along the scan, a position starts a run where `y` rises (and
at the scan's first position) and receives the summed gradients of the run of equal `y` it starts.
An XLA while loop walks the rows against the scan, accumulating and handing the sum to each run
start. With a dynamic pooled axis only "scan" applies, with TF's own scan gradient (same tie rule).

impl="auto" (`resolve_impl`): with `training=True` (Keras passes the flag down) it is "xla",
the fastest forward and forward+backward of the three on CPU (it traces and runs inside Keras
`jit_compile=True` too); otherwise (inference, SavedModel and TFLite export) it is
"doubling": exported graphs then hold only plain TF ops and TFLite builtins. All three convert
to TFLite builtins at a static shape ("scan" and "xla" as a WHILE loop), but in the TFLite
interpreter "doubling" is the fastest by far. A dynamic pooled axis gives "scan". The figures
behind these choices, and the alternatives measured and dropped, are in docs/benchmarks.md
(sections corner_pool and corner_pool_notes).
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from cornernet_tf.config.choices import CORNER_POOL_IMPLS as IMPLS

DIRECTIONS = ("top", "bottom", "left", "right")
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


def resolve_impl(impl: str, static_n: bool, training: bool | None) -> str:
    """The implementation `impl="auto"` stands for in this context (see the module docstring).

    Args:
      impl: one of IMPLS.
      static_n: whether the size of the pooled axis is known when tracing.
      training: True while training (gradients wanted), False/None for inference and export.

    Returns:
      "scan", "doubling" or "xla".
    """
    if impl != "auto":
        return impl
    if not static_n:
        return "scan"
    return "xla" if training else "doubling"


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


def _row(t: tf.Tensor, i) -> tf.Tensor:
    """t[:, i:i+1] of t [P, n, Q] for a traced index i, as [P, 1, Q]."""
    return tf.slice(t, tf.stack([0, i, 0]), tf.stack([tf.shape(t)[0], 1, tf.shape(t)[2]]))


def _unroll(n: int) -> int:
    """Rows per loop iteration: 4 where n allows (faster than 1, docs/benchmarks.md)."""
    return next(u for u in (4, 2, 1) if n % u == 0)


@tf.function(jit_compile=True)
def _xla_forward(x3: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Cumulative max of x3 [P, n, Q] along axis 1: an XLA while loop over the n rows.

    XLA keeps the running max in cache and writes each output row in place
    (dynamic-update-slice), so the loop reads x once and writes y once.
    """
    n = x3.shape[1]
    unroll = _unroll(n)

    def body(t, running, y):
        for j in range(unroll):
            i = n - 1 - (t + j) if reverse else t + j
            running = tf.maximum(running, _row(x3, i))
            y = keras.ops.slice_update(y, [0, i, 0], running)
        return t + unroll, running, y

    lowest = tf.fill(tf.shape(x3[:, :1]), tf.constant(_lowest(x3.dtype), x3.dtype))
    _, _, y = tf.while_loop(lambda t, *_: t < n, body, (0, lowest, tf.zeros_like(x3)))
    return y


@tf.function(jit_compile=True)
def _xla_route_gradient(y3: tf.Tensor, g3: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Gradient of the cumulative max w.r.t. its input, from the output y3 and upstream g3.

    Args:
      y3: [P, n, Q] forward output, static n.
      g3: [P, n, Q] upstream gradient.
      reverse: the scan direction of the forward pass.

    Returns:
      [P, n, Q] in g3's dtype: at each position that starts a run of equal y along the scan
      (the scan's first position, and wherever y rises), the sum of g3 over that run; zero
      elsewhere. Computed by an XLA while loop walking the rows against the scan, accumulating
      in float32 for float16/bfloat16.
    """
    n = y3.shape[1]
    unroll = _unroll(n)
    acc_dtype = tf.float32 if g3.dtype in (tf.float16, tf.bfloat16) else g3.dtype
    zero = tf.zeros((), acc_dtype)

    def body(t, acc, dx):
        for j in range(unroll):
            i = t + j if reverse else n - 1 - (t + j)  # walk against the scan
            before = tf.minimum(i + 1, n - 1) if reverse else tf.maximum(i - 1, 0)  # met before i
            acc = acc + tf.cast(_row(g3, i), acc_dtype)
            start = tf.logical_or(_row(y3, i) > _row(y3, before), tf.equal(t + j, n - 1))
            out = tf.where(start, acc, zero)
            acc = tf.where(start, zero, acc)
            dx = keras.ops.slice_update(dx, [0, i, 0], tf.cast(out, g3.dtype))
        return t + unroll, acc, dx

    acc0 = tf.zeros(tf.shape(g3[:, :1]), acc_dtype)
    _, _, dx = tf.while_loop(lambda t, *_: t < n, body, (0, acc0, tf.zeros_like(g3)))
    return dx


_FORWARD = {"scan": _scan_forward, "doubling": _doubling_forward, "xla": _xla_forward}


def _pool_3d(x3: tf.Tensor, reverse: bool, impl: str) -> tf.Tensor:
    """Cumulative max of x3 [P, n, Q] along axis 1 with the routed gradient."""
    forward = _FORWARD[impl]
    if x3.shape[1] is None:  # dynamic pooled axis: scan with TF's scan gradient
        return forward(x3, reverse)

    @tf.custom_gradient
    def cummax(x):
        # stop_gradient: the tape must not try to differentiate the forward's own ops (the XLA
        # loop's in-place row updates have no gradient); this function's gradient is the route.
        y = forward(tf.stop_gradient(x), reverse)
        return y, lambda g: _xla_route_gradient(y, g, reverse)

    return cummax(x3)


def directional_pool(
    x: tf.Tensor, direction: str, impl: str = "auto", training: bool | None = None
) -> tf.Tensor:
    """Directional cumulative max (SPEC.md, Corner pooling).

    Args:
      x: [B, H, W, C] feature map, any floating or integer dtype.
      direction: "top", "bottom", "left" or "right".
      impl: "scan", "doubling", "xla" or "auto" (module docstring; results are identical).
      training: only steers impl="auto" (True: training; False/None: inference or export).

    Returns:
      [B, H, W, C] tensor, x's dtype.

    Raises:
      ValueError: unknown direction or impl, x not rank 4, or "doubling"/"xla" with a dynamic
        size along the pooled axis.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"directional_pool: direction must be one of {DIRECTIONS}, "
                         f"got {direction!r}")
    if impl not in IMPLS:
        raise ValueError(f"directional_pool: impl must be one of {IMPLS}, got {impl!r}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4:
        raise ValueError(f"directional_pool: x must be [B, H, W, C], got shape {x.shape}")
    axis, reverse = _AXIS[direction]
    n = x.shape[axis]
    impl = resolve_impl(impl, n is not None, training)
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
      impl: "auto", "scan", "doubling" or "xla" (see `directional_pool`).
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
            raise ValueError(f"CornerPool({self.corner!r}): expected inputs [f_a, f_b], "
                             f"got {inputs!r}")
        f_a, f_b = inputs
        if not f_a.shape.is_compatible_with(f_b.shape):
            raise ValueError(f"CornerPool({self.corner!r}): f_a and f_b must have the same "
                             f"[B, H, W, C] shape, got {f_a.shape} and {f_b.shape}")
        d_a, d_b = CORNERS[self.corner]
        return (directional_pool(f_a, d_a, self.impl, training)
                + directional_pool(f_b, d_b, self.impl, training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"corner": self.corner, "impl": self.impl})
        return config
