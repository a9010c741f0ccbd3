"""Tests for cornernet_tf.modeling.layers.corner_pool against an independent numpy reference.

Reference forward (SPEC.md, Corner pooling): top/left are reverse cumulative maxima along H/W
(np.maximum.accumulate on the flipped array), bottom/right are plain cumulative maxima.
Reference gradient: each output's upstream gradient goes to the input element attaining its max;
ties go to the element met first by the scan (for top/left, which scan from the last index, the
largest such index; for bottom/right the smallest). Both are loops written here from the SPEC.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from cornernet_tf.compat import tflite_ops_details as ops_details
from cornernet_tf.modeling.layers.corner_pool import CornerPool, directional_pool, resolve_impl

DIRECTIONS = ("top", "bottom", "left", "right")
IMPLS = ("scan", "doubling", "xla", "auto")
AXIS = {"top": 1, "bottom": 1, "left": 2, "right": 2}
REVERSE = {"top": True, "bottom": False, "left": True, "right": False}
# H or W of 1, primes (one block per position), sizes with several multi-position blocks.
SHAPES = [(2, 5, 6, 3), (1, 1, 7, 2), (2, 8, 1, 3), (1, 12, 16, 2), (1, 13, 4, 1)]


def ref_pool(x: np.ndarray, direction: str) -> np.ndarray:
    axis = AXIS[direction]
    if REVERSE[direction]:
        return np.flip(np.maximum.accumulate(np.flip(x, axis), axis), axis)
    return np.maximum.accumulate(x, axis)


def ref_grad(x: np.ndarray, g: np.ndarray, direction: str) -> np.ndarray:
    """Route each output's gradient to its argmax (ties: first met by the scan), float64."""
    axis = AXIS[direction]
    xm, gm = np.moveaxis(x, axis, -1), np.moveaxis(g, axis, -1).astype(np.float64)
    out = np.zeros(xm.shape, np.float64)
    n = xm.shape[-1]
    for idx in np.ndindex(xm.shape[:-1]):
        col = xm[idx]
        for i in range(n):
            if REVERSE[direction]:
                scanned = range(n - 1, i - 1, -1)  # the scan meets n-1 first
            else:
                scanned = range(0, i + 1)
            best = None
            for j in scanned:
                if best is None or col[j] > col[best]:  # strict: keep the first met on ties
                    best = j
            out[idx + (best,)] += gm[idx + (i,)]
    return np.moveaxis(out, -1, axis)


def grad_of(x, direction, impl, upstream, training=True):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = directional_pool(x, direction, impl, training=training)
    return tape.gradient(y, x, output_gradients=tf.convert_to_tensor(upstream, x.dtype))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int64"])
def test_forward_matches_numpy(impl, dtype):
    rng = np.random.default_rng(1)
    random_shapes = [tuple(int(d) for d in rng.integers(1, 10, 4)) for _ in range(2)]
    for shape in SHAPES + random_shapes:
        values = rng.integers(-5, 5, shape)  # small integers: many ties, exact in every dtype
        x = tf.cast(tf.constant(values), dtype)
        for direction in DIRECTIONS:
            y = directional_pool(x, direction, impl)
            assert y.dtype == x.dtype and y.shape == x.shape
            got = tf.cast(y, tf.float64).numpy()
            np.testing.assert_array_equal(got, ref_pool(values.astype(np.float64), direction),
                                          err_msg=f"{direction} {impl} {dtype} {shape}")


@pytest.mark.parametrize("impl", ["scan", "doubling", "xla"])
def test_forward_with_lowest_values(impl):
    # Padding uses the dtype's lowest value; inputs that are themselves lowest stay exact.
    x = np.array([[-np.inf, -np.inf, 2.0, -np.inf, -np.inf, -1.0, -np.inf]], np.float32)
    x = x.reshape(1, 7, 1, 1)
    xi = np.array([np.iinfo(np.int32).min, -3, np.iinfo(np.int32).min, -7], np.int32)
    xi = xi.reshape(1, 1, 4, 1)
    for direction in DIRECTIONS:
        np.testing.assert_array_equal(directional_pool(x, direction, impl).numpy(),
                                      ref_pool(x, direction))
        np.testing.assert_array_equal(directional_pool(xi, direction, impl).numpy(),
                                      ref_pool(xi, direction))
    # No gradient is dropped even where the maxima are -inf.
    g = grad_of(x, "top", impl, np.ones_like(x)).numpy()
    assert g.sum() == 7.0


@pytest.mark.parametrize("impl", IMPLS)
def test_spec_gradient_case(impl):
    # SPEC.md: top pool over the column [3, 1, 3, 2, 0] with upstream ones -> [0, 0, 3, 1, 1]:
    # outputs 0..2 have max 3, first met (scanning from the bottom) at index 2; output 3 -> 3,
    # output 4 -> 4.
    x = np.array([3, 1, 3, 2, 0], np.float32).reshape(1, 5, 1, 1)
    g = grad_of(x, "top", impl, np.ones_like(x)).numpy().ravel()
    np.testing.assert_array_equal(g, [0, 0, 3, 1, 1])
    # The same column as a row for "left"; mirrored for bottom/right: [0,2,3,1,3] -> [1,1,3,0,0].
    np.testing.assert_array_equal(
        grad_of(x.reshape(1, 1, 5, 1), "left", impl, np.ones((1, 1, 5, 1))).numpy().ravel(),
        [0, 0, 3, 1, 1])
    xm = x[:, ::-1].copy()
    np.testing.assert_array_equal(grad_of(xm, "bottom", impl, np.ones_like(xm)).numpy().ravel(),
                                  [1, 1, 3, 0, 0])
    np.testing.assert_array_equal(
        grad_of(xm.reshape(1, 1, 5, 1), "right", impl, np.ones((1, 1, 5, 1))).numpy().ravel(),
        [1, 1, 3, 0, 0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_gradient_matches_reference_rule_with_ties(impl, dtype):
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        x = rng.integers(-3, 3, shape).astype(dtype)  # many ties
        upstream = rng.integers(-4, 5, shape).astype(dtype)  # small integers: sums are exact
        for direction in DIRECTIONS:
            got = grad_of(x, direction, impl, upstream).numpy().astype(np.float64)
            want = ref_grad(x, upstream, direction)
            np.testing.assert_array_equal(got, want, err_msg=f"{direction} {impl} {shape}")
            # Never dropped: the gradient sums along the pooled axis equal the upstream sums.
            axis = AXIS[direction]
            np.testing.assert_array_equal(got.sum(axis), upstream.astype(np.float64).sum(axis))


@pytest.mark.parametrize("impl", ["scan", "doubling", "xla"])
def test_gradient_finite_differences(impl):
    rng = np.random.default_rng(3)
    shape = (1, 6, 4, 2)
    # Tie-free input: distinct values 0.1 apart, far wider than the finite-difference step.
    x = (rng.permutation(np.prod(shape)) * 0.1).reshape(shape).astype(np.float64)
    w = tf.constant(rng.standard_normal(shape))
    for direction in DIRECTIONS:
        def f(t):
            return tf.reduce_sum(w * directional_pool(t, direction, impl, training=True))

        theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(x)], delta=1e-3)
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-6,
                                   err_msg=f"{direction} {impl}")


def test_dynamic_shape_uses_scan_and_stays_exact():
    rng = np.random.default_rng(4)
    x = rng.integers(-3, 3, (2, 7, 5, 3)).astype(np.float32)
    upstream = rng.integers(-4, 5, x.shape).astype(np.float32)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for direction in DIRECTIONS:
        fwd = tf.function(lambda t, d=direction: directional_pool(t, d), input_signature=[spec])
        np.testing.assert_array_equal(fwd(x).numpy(), ref_pool(x, direction))
        bwd = tf.function(lambda t, d=direction: grad_of(t, d, "auto", upstream),
                          input_signature=[spec])
        np.testing.assert_array_equal(bwd(x).numpy(), ref_grad(x, upstream, direction))


def test_static_shapes_survive_tracing():
    spec = tf.TensorSpec([None, 8, 6, 4], tf.float32)
    for impl in ("scan", "doubling", "xla"):
        for direction in DIRECTIONS:
            fn = tf.function(lambda t, d=direction, i=impl: directional_pool(t, d, i))
            assert fn.get_concrete_function(spec).output_shapes.as_list() == [None, 8, 6, 4]


def test_bad_arguments_raise_clear_errors():
    x = tf.zeros([1, 4, 4, 2])
    with pytest.raises(ValueError, match="direction must be one of"):
        directional_pool(x, "up")
    with pytest.raises(ValueError, match="impl must be one of"):
        directional_pool(x, "top", impl="cumax")
    with pytest.raises(ValueError, match=r"must be \[B, H, W, C\]"):
        directional_pool(tf.zeros([4, 4]), "top")
    with pytest.raises(ValueError, match="needs a static size along axis 1"):
        tf.function(lambda t: directional_pool(t, "top", "doubling")).get_concrete_function(
            tf.TensorSpec([1, None, 4, 2]))
    with pytest.raises(ValueError, match="corner must be one of"):
        CornerPool(corner="top_right")
    with pytest.raises(ValueError, match="impl must be one of"):
        CornerPool(impl="fast")
    with pytest.raises(ValueError, match="must have the same"):
        CornerPool()([x, tf.zeros([1, 4, 5, 2])])


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_corner_pool_layer(corner):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    b = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    first, second = ("top", "left") if corner == "top_left" else ("bottom", "right")
    want = ref_pool(a, first) + ref_pool(b, second)
    for impl in IMPLS:
        layer = CornerPool(corner=corner, impl=impl)
        for training in (False, True):
            np.testing.assert_array_equal(layer([a, b], training=training).numpy(), want)
    config = CornerPool(corner=corner, impl="doubling", name="cp").get_config()
    assert config["corner"] == corner and config["impl"] == "doubling" and config["name"] == "cp"
    clone = CornerPool.from_config(config)
    assert (clone.corner, clone.impl, clone.name) == (corner, "doubling", "cp")
    np.testing.assert_array_equal(clone([a, b]).numpy(), want)


def test_auto_resolution():
    # Training gets the XLA loops, inference/export the TFLite-convertible doubling, and a
    # dynamic pooled axis the scan; explicit choices pass through.
    assert resolve_impl("auto", static_n=True, training=True) == "xla"
    assert resolve_impl("auto", static_n=True, training=False) == "doubling"
    assert resolve_impl("auto", static_n=True, training=None) == "doubling"
    assert resolve_impl("auto", static_n=False, training=True) == "scan"
    assert resolve_impl("doubling", static_n=True, training=True) == "doubling"


def test_corner_pool_gradients_inside_keras_training():
    # The layer's gradients w.r.t. both inputs follow the reference rule when Keras passes
    # training=True down to it from an enclosing model (impl="auto" -> "xla").
    rng = np.random.default_rng(8)
    a = rng.integers(-3, 3, (2, 6, 5, 3)).astype(np.float32)
    b = rng.integers(-3, 3, (2, 6, 5, 3)).astype(np.float32)
    upstream = rng.integers(-4, 5, a.shape).astype(np.float32)
    a_in, b_in = keras.Input((6, 5, 3)), keras.Input((6, 5, 3))
    model = keras.Model([a_in, b_in], CornerPool(corner="top_left")([a_in, b_in]))
    ta, tb = tf.constant(a), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([ta, tb])
        y = model([ta, tb], training=True)
    ga, gb = tape.gradient(y, [ta, tb], output_gradients=tf.constant(upstream))
    np.testing.assert_array_equal(ga.numpy(), ref_grad(a, upstream, "top"))
    np.testing.assert_array_equal(gb.numpy(), ref_grad(b, upstream, "left"))


def test_keras_save_load_safe_mode(tmp_path):
    a_in = keras.Input((6, 5, 3))
    b_in = keras.Input((6, 5, 3))
    model = keras.Model([a_in, b_in], CornerPool(corner="bottom_right", impl="scan")([a_in, b_in]))
    path = tmp_path / "corner_pool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    layer = [l for l in loaded.layers if isinstance(l, CornerPool)][0]
    assert (layer.corner, layer.impl) == ("bottom_right", "scan")
    rng = np.random.default_rng(6)
    a = rng.standard_normal((1, 6, 5, 3)).astype(np.float32)
    b = rng.standard_normal((1, 6, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded([a, b]).numpy(),
                                  ref_pool(a, "bottom") + ref_pool(b, "right"))


def _convert_builtins_only(model):
    fn = tf.function(lambda f_a, f_b: model([f_a, f_b], training=False))
    spec = tf.TensorSpec([1, 8, 8, 4], tf.float32)
    concrete = fn.get_concrete_function(spec, spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # Flex ops fail here
    return converter.convert()


@pytest.mark.slow
@pytest.mark.parametrize("impl,corner", [("doubling", "top_left"), ("auto", "bottom_right"),
                                         ("scan", "top_left"), ("xla", "bottom_right")])
def test_tflite_builtins_only_and_exact(impl, corner):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    a_in = keras.Input((8, 8, 4), batch_size=1)
    b_in = keras.Input((8, 8, 4), batch_size=1)
    model = keras.Model([a_in, b_in], CornerPool(corner=corner, impl=impl)([a_in, b_in]))
    flatbuffer = _convert_builtins_only(model)
    # Without the default (XNNPACK) delegate, so the op list is the model's own.
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in ops_details(interpreter)}
    # Conversion with TFLITE_BUILTINS only already fails on any Flex/custom op; the op list of
    # the main graph is checked as well ("scan" and "xla" keep their loop in a WHILE subgraph).
    builtin = {"ADD", "CONCATENATION", "MAXIMUM", "PADV2", "RESHAPE", "STRIDED_SLICE",
               "TRANSPOSE", "WHILE", "GATHER"}
    assert ops and ops <= builtin, f"unexpected TFLite ops {sorted(ops - builtin)}"
    if impl in ("doubling", "auto"):
        assert "WHILE" not in ops
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    b = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    out = list(interpreter.get_signature_runner()(f_a=a, f_b=b).values())[0]
    np.testing.assert_array_equal(out, model([a, b], training=False).numpy())
    first, second = ("top", "left") if corner == "top_left" else ("bottom", "right")
    np.testing.assert_array_equal(out, ref_pool(a, first) + ref_pool(b, second))
