"""Every use of a private or legacy Keras / TensorFlow / LiteRT API, in one place.

Each shim names the versions it was written against and checks, when it is used, that the
private name still exists with the shape it relies on; `tests/test_compat.py` checks the
same on the installed versions, so an upgrade that changes one fails that test loudly
instead of failing (or silently misbehaving) in training or export.

- `SkipBuiltSymbolicBuild`: overrides `keras.Model._maybe_symbolic_build` (Keras 3.12-3.15).
- `fused_batch_norm_training`: `tf.compat.v1.nn.fused_batch_norm` (TensorFlow 2.21), one op
  and one gradient op where Keras' batch norm is a chain of them.
- `tflite_ops_details`: `ai_edge_litert.interpreter.Interpreter._get_ops_details` (2.x), the
  only way to list a loaded TFLite model's ops.
- `wait_at_barrier`: `tensorflow.python.eager.context.context().wait_at_barrier` (TensorFlow
  2.x), the coordination service's barrier (no public API) that ends a multi-worker run.
"""

from __future__ import annotations

import inspect

import keras

# The versions these shims were written against (majors); `check_private_apis` refuses others.
KERAS_MAJOR = 3
TENSORFLOW_MAJOR = 2


class SkipBuiltSymbolicBuild:
    """Mixin for a `keras.Model` whose variables all exist once built: skips Keras' symbolic
    build when there is nothing left to build.

    Keras 3 runs `_maybe_symbolic_build` at the start of `fit`; under
    MultiWorkerMirroredStrategy its version (3.12-3.15) averages a peeked distributed batch
    with `strategy.reduce`, which that strategy cannot apply to a dict of per-replica
    tensors (and the peek drops a batch). A model whose variables and optimizer are built
    has no work for it.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def fused_batch_norm_training(inputs, gamma, beta, epsilon: float):
    """TensorFlow's fused batch norm in training mode, NHWC.

    Args:
      inputs: [B, H, W, C] float32.
      gamma, beta: [C] float32.
      epsilon: added to the variance.

    Returns:
      (outputs [B, H, W, C], batch mean [C], batch variance [C], the unbiased one).
    """
    import tensorflow as tf
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True)
    return outputs, mean, variance


def tflite_ops_details(interpreter) -> list[dict]:
    """Every op (node) of a loaded TFLite model, in execution order.

    ai_edge_litert's Interpreter has no public call for this (the public ones list tensors,
    inputs, outputs and signatures), so this wraps its private `_get_ops_details`.

    Args:
      interpreter: an `ai_edge_litert.interpreter.Interpreter`.

    Returns:
      One dict per op with at least "op_name" (str, e.g. "CONV_2D"; Flex ops show as
      "Flex..." / "DELEGATE"), "inputs" and "outputs" (tensor indices).

    Raises:
      RuntimeError: the private API is gone or returns something else.
    """
    get = getattr(interpreter, "_get_ops_details", None)
    if get is None:
        raise RuntimeError("ai_edge_litert Interpreter._get_ops_details is gone; "
                           "cornernet_tf.compat.tflite_ops_details needs another way to list ops")
    details = list(get())
    for op in details:
        if not {"op_name", "inputs", "outputs"} <= set(op):
            raise RuntimeError(f"ai_edge_litert Interpreter._get_ops_details changed: expected "
                               f"op_name, inputs, outputs per op, found {sorted(op)}")
    return details


def wait_at_barrier(barrier_id: str, seconds: float) -> None:
    """Blocks until every task of the multi-worker cluster is at `barrier_id` (bounded).

    Raises:
      tf.errors.OpError: the barrier timed out after `seconds` or a task is unhealthy.
      RuntimeError: the private API is gone.
    """
    from tensorflow.python.eager import context
    wait = getattr(context.context(), "wait_at_barrier", None)
    if wait is None:
        raise RuntimeError("tensorflow.python.eager.context.Context.wait_at_barrier is gone; "
                           "cornernet_tf.compat.wait_at_barrier needs another barrier")
    wait(barrier_id, int(seconds * 1000))


def check_private_apis() -> list[str]:
    """The problems with the private APIs above on the installed versions ([] when none)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    problems = []
    if int(keras.__version__.split(".")[0]) != KERAS_MAJOR:
        problems.append(f"Keras {keras.__version__}: the shims were written for Keras "
                        f"{KERAS_MAJOR}.x")
    if int(tf.__version__.split(".")[0]) != TENSORFLOW_MAJOR:
        problems.append(f"TensorFlow {tf.__version__}: the shims were written for "
                        f"{TENSORFLOW_MAJOR}.x")
    problems += _signature_problems("keras.Model._maybe_symbolic_build",
                                    getattr(keras.Model, "_maybe_symbolic_build", None),
                                    ["self", "iterator", "data_batch"])
    if not hasattr(getattr(getattr(tf.compat, "v1", None), "nn", None), "fused_batch_norm"):
        problems.append("tf.compat.v1.nn.fused_batch_norm is gone")
    if not hasattr(Interpreter, "_get_ops_details"):
        problems.append("ai_edge_litert Interpreter._get_ops_details is gone")
    from tensorflow.python.eager import context
    problems += _signature_problems("tensorflow.python.eager.context.Context.wait_at_barrier",
                                    getattr(context.Context, "wait_at_barrier", None),
                                    ["self", "barrier_id", "timeout_in_ms"])
    return problems


def _signature_problems(name: str, fn, parameters: list) -> list[str]:
    """[] when the private `fn` exists with these parameter names, else what changed."""
    if fn is None:
        return [f"{name} is gone"]
    found = list(inspect.signature(fn).parameters)
    return [] if found == parameters else [f"{name}'s parameters changed: {found}"]
