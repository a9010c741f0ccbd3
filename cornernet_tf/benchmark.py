"""Measured figures behind the performance notes (corner pooling for now).

Plain library module: no command line and no work at import; callers (e.g. a future
`main.py --mode=benchmark`) run the functions and print `format_rows(rows)`.

Timings are wall-clock medians of `repeats` interleaved runs (after two warm-up runs) of
`tf.function`-traced graphs (no XLA), results materialised as numpy arrays. The reference is a
numpy `.copy()` of a tensor of the same shape and dtype, timed in the same rounds:
`x_copy` = median / copy median.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np


def _time_interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median ms, min ms)} of each fn() after two warm-up calls each.

    The functions run round-robin (one call of each per round), so load from other processes on
    a shared machine spreads over all of them instead of biasing whichever ran at a bad moment.
    """
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t)) * 1e3, float(np.min(t)) * 1e3) for name, t in times.items()}


def _naive_scan(x, direction: str):
    """Reference point: full transposes around `tf.scan(tf.maximum)`, TensorFlow's gradient."""
    import tensorflow as tf

    perm = [1, 0, 2, 3] if direction in ("top", "bottom") else [2, 1, 0, 3]  # self-inverse
    y = tf.scan(tf.maximum, tf.transpose(x, perm), reverse=direction in ("top", "left"))
    return tf.transpose(y, perm)


def bench_corner_pool(
    shape: Sequence[int] = (4, 128, 128, 128),
    repeats: int = 15,
    direction: str = "top",
    impls: Sequence[str] = ("scan", "doubling", "xla", "auto"),
    dtype: str = "float32",
    seed: int = 0,
    baseline: bool = True,
) -> list[dict]:
    """Times `directional_pool` forward and forward+backward for each implementation.

    Args:
      shape: [B, H, W, C] input shape.
      repeats: timed runs per measurement (the median is reported).
      direction: pooling direction ("top", "bottom", "left", "right").
      impls: implementations to time (see `cornernet_tf.layers.corner_pool.IMPLS`).
      dtype: input dtype name.
      seed: seed of the random input and upstream gradient.
      baseline: also time "naive scan": the pooled axis transposed to the front, `tf.scan` and
        TensorFlow's own gradient (the starting point the implementations are measured against).

    Returns:
      One dict per measurement: {"name", "impl", "pass" ("copy", "forward" or
      "forward+backward"), "shape", "dtype", "ms" (median), "min_ms", "x_copy" (median over the
      numpy copy median), "repeats"}. The first row is the numpy copy itself.
    """
    import tensorflow as tf

    from cornernet_tf.layers.corner_pool import directional_pool

    rng = np.random.default_rng(seed)
    x_np = rng.standard_normal(shape).astype(dtype)
    x = tf.constant(x_np)
    upstream = tf.constant(rng.standard_normal(shape).astype(dtype))
    fns = {("numpy copy", "-", "copy"): lambda: x_np.copy()}
    pools = {impl: (lambda a, impl=impl, training=None:
                    directional_pool(a, direction, impl, training))
             for impl in impls}
    if baseline:
        pools["naive scan"] = lambda a, training=None: _naive_scan(a, direction)
    for impl, pool in pools.items():
        forward = tf.function(pool)

        @tf.function
        def forward_backward(a, g, pool=pool):
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = pool(a, training=True)
            return y, tape.gradient(y, a, output_gradients=g)

        fns[(f"{direction} {impl}", impl, "forward")] = (
            lambda f=forward: f(x).numpy())
        fns[(f"{direction} {impl}", impl, "forward+backward")] = (
            lambda f=forward_backward: [t.numpy() for t in f(x, upstream)])
    timings = _time_interleaved(fns, repeats)
    copy_ms = timings[("numpy copy", "-", "copy")][0]
    base = {"shape": tuple(shape), "dtype": dtype, "repeats": repeats}
    rows = []
    for (name, impl, pass_name), (ms, min_ms) in timings.items():
        rows.append(dict(base, name=name, impl=impl, ms=ms, min_ms=min_ms, x_copy=ms / copy_ms,
                         **{"pass": pass_name}))
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """Markdown table of benchmark rows (name, pass, median ms, min ms, x copy)."""
    lines = ["| name | pass | median ms | min ms | x copy |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['pass']} | {row['ms']:.2f} | {row['min_ms']:.2f} "
                     f"| {row['x_copy']:.2f} |")
    return "\n".join(lines)
