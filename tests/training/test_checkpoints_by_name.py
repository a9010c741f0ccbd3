"""Checkpoints keyed by variable name (training/checkpoints.py, modeling/weights.py), and
the old layout still read.

tests/training/data/legacy_run/ was written by the checkpoint code of commit ac9b80c (the
ordered list `model.variables`); its `expected_outputs.npz` holds that model's heads for a
fixed input, computed when it was written.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import run as run_lib
from cornernet_tf import config as config_lib
from cornernet_tf.modeling import weights
from cornernet_tf.modeling.model import build_model
from cornernet_tf.training import checkpoints as training

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_run")


def _legacy_config():
    return config_lib.load_config(os.path.join(LEGACY, "config.yaml"))


def _input():
    return np.random.default_rng(7).uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)


def test_checkpoint_lists_variables_by_attribute_name(tmp_path):
    cfg = _legacy_config()
    model = build_model(cfg.model)
    path = training.checkpoint_manager(model, str(tmp_path)).save()
    listed = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    # head_channels 8, 4 classes: the heatmap output conv is 1x1, 8 -> 4.
    assert listed["model/tl_heads/0/heatmap/1/kernel" + suffix] == [1, 1, 8, 4]
    assert listed["model/br_heads/0/heatmap/1/bias" + suffix] == [4]
    # stem: 7x7 conv, RGB -> stem_channels 8, and its BN's statistics.
    assert listed["model/backbone/stem/0/conv/kernel" + suffix] == [7, 7, 3, 8]
    assert listed["model/backbone/stem/0/bn/moving_variance" + suffix] == [8]
    model_keys = [k for k in listed if k.startswith("model/")]
    assert len(model_keys) == len(model.variables)
    assert not [k for k in listed if k.startswith("model_variables/")]


def test_names_do_not_depend_on_what_the_process_built_before(tmp_path):
    """Keras' variable paths carry auto-numbered layer names; ours do not."""
    cfg = _legacy_config()
    first = build_model(cfg.model)
    second = build_model(cfg.model)  # its layers are conv2d_N with other N
    assert [v.path for v in first.variables] != [v.path for v in second.variables]
    assert list(weights.named_variables(first)) == list(weights.named_variables(second))


def test_legacy_checkpoint_restores_to_identical_outputs(tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(LEGACY, model_dir)
    path = os.path.join(model_dir, "checkpoints", "ckpt-4")
    assert training.is_legacy(path)
    model = build_model(_legacy_config().model)
    assert training.restore_weights(model, model_dir) == path
    expected = np.load(os.path.join(LEGACY, "expected_outputs.npz"))
    outputs = model(_input(), training=False)[-1]
    assert set(expected.files) == set(outputs)
    for key in expected.files:
        np.testing.assert_array_equal(outputs[key].numpy(), expected[key], err_msg=key)
    # Re-saved in the new layout, it reads back to the same values, by name.
    new_path = training.checkpoint_manager(model, str(tmp_path / "new")).save()
    assert not training.is_legacy(new_path)
    arrays = training.read_model_arrays(new_path)
    for name, variable in weights.named_variables(model).items():
        np.testing.assert_array_equal(arrays[name], variable.numpy(), err_msg=name)


@pytest.mark.slow
def test_a_legacy_run_resumes_with_its_optimizer_state(tmp_path, capsys):
    """Training continues an old-layout run at its step, with its Adam moments; the new
    checkpoint has the name-keyed layout."""
    from cornernet_tf.data.synthetic import generate_shapes_dataset
    data = str(tmp_path / "shapes")
    generate_shapes_dataset(data, 16, 4, (64, 64), 4, seed=0)  # the fixture's data
    model_dir = str(tmp_path / "run")
    shutil.copytree(LEGACY, model_dir)
    old = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "ckpt-4"))
    moments = {k: old.get_tensor(k) for k in old.get_variable_to_shape_map()
               if k.startswith("optimizer/") and old.get_variable_to_shape_map()[k]}
    assert moments
    cfg = _legacy_config().replace([
        f"data.synthetic.output_dir={data}",
        f"data.train_annotations={data}/annotations/instances_train.json",
        f"data.train_images={data}/train",
        f"data.val_annotations={data}/annotations/instances_val.json",
        f"data.val_images={data}/val", "train.steps=6", "train.log_every=2",
        "train.checkpoint_every=2"])
    model = build_model(cfg.model)
    from cornernet_tf.training.loop import build_optimizer, compile_model
    compile_model(model, cfg, build_optimizer(cfg.train))
    model.optimizer.build(model.trainable_variables)
    training.restore_checkpoint(model, os.path.join(model_dir, "checkpoints", "ckpt-4"),
                                model.optimizer, partial=False)
    assert int(model.optimizer.iterations.numpy()) == 4
    restored = sorted(float(np.abs(v.numpy()).sum()) for v in model.optimizer.variables
                      if v.shape.rank and v.shape.rank > 0)
    assert restored == sorted(float(np.abs(a).sum()) for a in moments.values())
    result = run_lib.train(cfg, model_dir, verbose=0)
    assert "resuming from" in capsys.readouterr().out
    assert result["steps"] == 6
    assert not training.is_legacy(result["checkpoint"])
