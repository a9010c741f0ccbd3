"""The private / legacy APIs the package relies on (cornernet_tf/compat.py) exist on the
installed versions with the shape the shims use. An upgrade that changes one fails here."""

import types

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from cornernet_tf import compat


def test_the_private_apis_are_as_the_shims_expect():
    assert compat.check_private_apis() == []


def test_a_missing_private_api_is_reported(monkeypatch):
    # A Keras whose Model lacks the private method (it lives on a base class of the real
    # one, so the fake replaces the module the shim looks in).
    fake = types.SimpleNamespace(__version__=keras.__version__, Model=type("Model", (), {}))
    monkeypatch.setattr(compat, "keras", fake)
    assert compat.check_private_apis() == ["keras.Model._maybe_symbolic_build is gone"]


def test_tflite_ops_details_lists_the_ops_of_a_known_model(tmp_path):
    # A model of exactly one conv and one add: the op list is known without the package.
    inputs = keras.Input((8, 8, 3), batch_size=1)
    outputs = keras.layers.Conv2D(4, 3, padding="same")(inputs) + 1.0
    model = keras.Model(inputs, outputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path = tmp_path / "m.tflite"
    path.write_bytes(converter.convert())
    interpreter = Interpreter(model_path=str(path))
    names = [op["op_name"] for op in compat.tflite_ops_details(interpreter)]
    assert names == ["CONV_2D", "ADD"] or names == ["CONV_2D"]  # the add may fuse as bias


def test_fused_batch_norm_training_matches_the_closed_form():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
    gamma = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    beta = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    out, mean, variance = compat.fused_batch_norm_training(x, gamma, beta, 1e-3)
    m = x.mean(axis=(0, 1, 2))
    v = x.var(axis=(0, 1, 2))  # biased, what normalises the output
    np.testing.assert_allclose(out, (x - m) / np.sqrt(v + 1e-3) * gamma + beta, atol=1e-5)
    np.testing.assert_allclose(mean, m, atol=1e-6)
    n = x.size / 4
    np.testing.assert_allclose(variance, v * n / (n - 1), rtol=1e-5)  # unbiased


def test_a_built_model_skips_the_symbolic_build():
    class Probe(compat.SkipBuiltSymbolicBuild, keras.Model):
        pass

    calls = []

    class Base(keras.Model):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            calls.append("keras")

    class Model(compat.SkipBuiltSymbolicBuild, Base):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    model = Model()
    model.compile(optimizer="sgd", loss="mse")
    model._maybe_symbolic_build()  # not built yet: Keras' build runs
    assert calls == ["keras"]
    model(np.zeros((1, 2), np.float32))
    model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build()  # built: skipped
    assert calls == ["keras"]
    assert issubclass(Probe, keras.Model)
