"""Checkpoints hold every model variable, BatchNorm moving statistics included.

A Keras 3 model is not a trackable object graph for tf.train.Checkpoint; a checkpoint of
`model=model` silently holds no model weights (they were reachable only through the
optimizer). These tests pin the fix.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.config.schema import load_config
from cornernet_tf.modeling.model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["model.num_classes=4", "model.channels=[16, 16, 24, 24]", "model.blocks=[1, 1, 1, 1]",
        "model.stem_channels=16", "model.head_channels=16", "model.pool_channels=8"]


def _cfg(*extra):
    return load_config(os.path.join(REPO, "configs", "quickstart.yaml"), TINY + list(extra))


def test_every_variable_round_trips(tmp_path):
    cfg = _cfg()
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    for v in model.variables:  # BN moving means/variances are among them
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    moving = [v for v in model.variables if "moving" in v.path]
    assert moving
    ckpt_lib.checkpoint_manager(model, str(tmp_path)).save()
    fresh = build_model(cfg.model)
    path = ckpt_lib.restore_weights(fresh, str(tmp_path))
    assert path.endswith("ckpt-1")
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = tf.random.uniform([1, 128, 128, 3], 0, 255, seed=1)
    np.testing.assert_allclose(model(x)[-1]["tl_heatmap"].numpy(),
                               fresh(x)[-1]["tl_heatmap"].numpy(), atol=1e-5)


def test_mismatched_model_is_a_clear_error(tmp_path):
    model = build_model(_cfg().model)
    ckpt_lib.checkpoint_manager(model, str(tmp_path)).save()
    other = build_model(_cfg("model.num_classes=3").model)
    with pytest.raises(ValueError, match="does not match the model"):
        ckpt_lib.restore_weights(other, str(tmp_path))


def test_missing_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt_lib.restore_weights(build_model(_cfg().model), str(tmp_path))


def test_checkpoint_flag_values_resolve(tmp_path):
    """--checkpoint: latest (or none) is the newest; a prefix or a folder; best has its own
    folder, which the newest-checkpoint lookup (and so resuming) never reads."""
    model = build_model(_cfg().model)
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path))
    first, second = manager.save(checkpoint_number=10), manager.save(checkpoint_number=20)
    folder = os.path.join(str(tmp_path), ckpt_lib.CHECKPOINT_SUBDIR)
    best = tf.train.CheckpointManager(ckpt_lib.training_checkpoint(model),
                                      os.path.join(folder, "best"), max_to_keep=1)
    best_path = best.save(checkpoint_number=15)
    assert ckpt_lib.resolve_checkpoint(str(tmp_path)) == second
    assert ckpt_lib.resolve_checkpoint(str(tmp_path), "latest") == second
    assert ckpt_lib.resolve_checkpoint(str(tmp_path), "best") == best_path
    assert best_path == os.path.join(folder, "best", "ckpt-15")
    assert ckpt_lib.resolve_checkpoint("elsewhere", first) == first
    assert ckpt_lib.resolve_checkpoint("elsewhere", folder) == second
    assert tf.train.latest_checkpoint(folder) == second  # what resuming reads
