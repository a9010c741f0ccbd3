"""A checkpoint write that fails (full disk, file size limit) stops training, loudly.

TensorFlow reports "File too large" as a `tf.errors.OutOfRangeError`, which Keras' `fit`
takes for the end of the data: raised from a callback as it is, the epoch ends and
training goes on without the checkpoint (the first test shows it). `CheckpointCallback`
raises `CheckpointWriteError` instead, names the checkpoint and the OS error, removes the
partial files and leaves the previous checkpoint as the newest.

Patched writers (OSError, OutOfRangeError, ResourceExhaustedError) run on a 2-layer Keras
model; the real limit (RLIMIT_FSIZE, SIGXFSZ ignored) runs `main.py --mode=train` on the
tiny CornerNet in a subprocess.
"""

import errno
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.training.callbacks import CheckpointCallback
from cornernet_tf.training.checkpoints import CheckpointWriteError, write_checkpoint
from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.modeling.model import build_model
from tests.support.training import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "support", "train_worker.py")


def small_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


def fail_after(checkpoint, good_writes, error):
    """Patches `checkpoint._write` (what CheckpointManager.save calls): the first
    `good_writes` calls write; later ones leave partial files, as a write cut short does,
    then raise `error`."""
    original = checkpoint._write
    calls = []

    def write(prefix, options=None):
        calls.append(prefix)
        if len(calls) <= good_writes:
            return original(prefix, options=options)
        os.makedirs(prefix + "_temp", exist_ok=True)
        with open(os.path.join(prefix + "_temp", "part-00000-of-00001.data-00000-of-00001"),
                  "wb") as f:
            f.write(b"partial")
        with open(prefix + ".data-00000-of-00001", "wb") as f:
            f.write(b"partial")
        raise error

    checkpoint._write = write
    return calls


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.at = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.at[step] = [w.numpy().copy() for w in self.model.weights]


def test_keras_takes_an_out_of_range_error_from_a_callback_for_the_end_of_data():
    """Why CheckpointWriteError exists: the raw TensorFlow error is swallowed by `fit`."""
    class Raise(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 2:
                raise tf.errors.OutOfRangeError(None, None, "ckpt-2_temp/part; File too large")

    model = small_model()
    model.fit(data(), epochs=3, steps_per_epoch=2, callbacks=[Raise()], verbose=0,
              shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == 6  # carried on, no error


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device", "x"), "No space left on device (ENOSPC)"),
    (tf.errors.OutOfRangeError(
        None, None, "{{function_node __wrapped__SaveV2}} run/ckpt-4_temp/part-00000-of-00001"
        ".data-00000-of-00001.tempstate123; File too large [Op:SaveV2]"),
     "File too large (OutOfRangeError)"),
    (tf.errors.ResourceExhaustedError(None, None, "run/ckpt-4_temp/part; No space left "
                                      "on device"),
     "No space left on device (ResourceExhaustedError)"),
])
def test_a_failed_save_stops_fit_and_keeps_the_previous_checkpoint(tmp_path, error, reason):
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer)
    folder = os.path.join(str(tmp_path), ckpt_lib.CHECKPOINT_SUBDIR)
    calls = fail_after(manager.checkpoint, 1, error)
    weights = RecordWeights()
    checkpoints = CheckpointCallback(manager, every=2, say=lambda text: None)
    with pytest.raises(CheckpointWriteError) as raised:
        model.fit(data(), epochs=3, steps_per_epoch=2, callbacks=[weights, checkpoints],
                  verbose=0, shuffle=False)
    e = raised.value
    assert not isinstance(e, tf.errors.OpError)
    failed = os.path.join(folder, "ckpt-4")
    assert str(e).splitlines()[0] == (f"could not write checkpoint {failed} (step 4): "
                                      f"{reason}; training stopped.")
    assert f"the newest good checkpoint, {os.path.join(folder, 'ckpt-2')}, is intact" in str(e)
    assert len(str(e).splitlines()) == 2
    assert (e.path, e.step, e.kept) == (failed, 4, os.path.join(folder, "ckpt-2"))
    assert int(model.optimizer.iterations.numpy()) == 4  # stopped at the failed save
    assert calls == [os.path.join(folder, "ckpt-2"), failed]  # on_train_end did not retry
    # The index still names step 2, the partial files are gone, step 2 restores.
    state = tf.train.get_checkpoint_state(folder)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2"]
    assert sorted(os.listdir(folder)) == ["checkpoint", "ckpt-2.data-00000-of-00001",
                                          "ckpt-2.index"]
    fresh = small_model()
    assert ckpt_lib.restore_weights(fresh, str(tmp_path)) == os.path.join(folder, "ckpt-2")
    for restored, expected in zip(fresh.weights, weights.at[2]):
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert checkpoints.save() is None  # nothing more is attempted (the _fit clean-up path)


def test_a_failed_first_save_says_there_is_no_earlier_checkpoint(tmp_path):
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer)
    fail_after(manager.checkpoint, 0, OSError(errno.EFBIG, "File too large"))
    with pytest.raises(CheckpointWriteError, match=r"\(EFBIG\); training stopped\.\n"
                                                   r"there is no earlier checkpoint: free"):
        write_checkpoint(manager, 7)
    assert tf.train.get_checkpoint_state(manager.directory) is None
    assert os.listdir(manager.directory) == []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("checkpoint_write") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


@pytest.mark.slow
def test_a_real_file_size_limit_stops_training_with_a_two_line_error(data_dir, tmp_path):
    cfg = tiny_config(data_dir, ["train.steps=6", "train.log_every=2",
                                 "train.checkpoint_every=2"])
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(cfg.to_yaml())
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, WORKER, "file_size_limit", str(config_path),
                           model_dir], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    folder = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    # Exit 1 (the run failed; not a mistake in the input, which is 2), no traceback, the
    # message in two lines naming the checkpoint and the OS error.
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "file size limit:" in proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[start] == (f"error: could not write checkpoint {os.path.join(folder, 'ckpt-4')}"
                            f" (step 4): File too large (OutOfRangeError); training stopped.")
    assert lines[start + 1].startswith(
        f"the newest good checkpoint, {os.path.join(folder, 'ckpt-2')}, is intact")
    assert len(lines) == start + 2
    assert "step 6/6" not in proc.stdout and "trained to step" not in proc.stdout
    # Step 2 is the newest, complete and restorable; step 4 left nothing behind.
    assert tf.train.latest_checkpoint(folder) == os.path.join(folder, "ckpt-2")
    assert sorted(n for n in os.listdir(folder) if n.startswith("ckpt")) == [
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    reader = tf.train.load_checkpoint(os.path.join(folder, "ckpt-2"))
    iterations = [k for k in reader.get_variable_to_shape_map()
                  if k.startswith("optimizer/") and "iterations" in k]
    assert [int(reader.get_tensor(k)) for k in iterations] == [2]
    model = build_model(cfg.model)
    assert ckpt_lib.restore_weights(model, model_dir) == os.path.join(folder, "ckpt-2")


def test_a_failed_best_write_stops_and_keeps_the_previous_best(data_dir, tmp_path,
                                                               monkeypatch):
    from cornernet_tf.evaluation import runner as eval_runner
    from cornernet_tf.training.callbacks import ValidationCallback
    aps = iter([0.2, 0.4])
    monkeypatch.setattr(eval_runner, "run_evaluation", lambda *a, **k: {
        "AP": next(aps), "AP50": 0.5, "AP75": 0.1, "images": 4, "per_class_AP": {}})
    model = small_model()
    best_dir = str(tmp_path / "checkpoints" / "best")
    manager = tf.train.CheckpointManager(ckpt_lib.training_checkpoint(model), best_dir,
                                         max_to_keep=1)
    fail_after(manager.checkpoint, 1, OSError(errno.ENOSPC, "No space left on device"))
    cb = ValidationCallback(tiny_config(data_dir), 2, 4, 0, str(tmp_path / "validation"),
                            manager, None, str(tmp_path / "logs"), say=lambda text: None)
    cb.set_model(model)
    cb.on_train_begin()
    cb.evaluate(2)
    with pytest.raises(CheckpointWriteError, match=r"best/ckpt-4 \(step 4\): No space left "
                                                   r"on device \(ENOSPC\)"):
        cb.evaluate(4)  # AP 0.4 beats 0.2, but its write fails
    assert tf.train.latest_checkpoint(best_dir) == os.path.join(best_dir, "ckpt-2")
    with open(os.path.join(best_dir, "best.json")) as f:
        assert json.load(f)["step"] == 2
    assert sorted(os.listdir(best_dir)) == ["best.json", "checkpoint",
                                            "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
