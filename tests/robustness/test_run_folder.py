"""A run folder is not corrupted by a changed resume, a second training, or a diverging run.

Issue 21, items 5, 7 and 8: resuming with a config or dataset that changes the model or the
classes is refused before anything is written (`run_folder.check_resume`, and the restore
itself as the last guard); a second training on the same folder is refused and a stale lock
is taken over (`run_folder.RunLock`); a loss spike or a NaN pins the last good checkpoint
out of the keep-N rotation (`callbacks.CheckpointCallback`).

The "runs" here are made without training where possible (a built model's checkpoint plus
the run files), so each test takes seconds; the one resume that trains runs 1 step.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import run as run_lib
from cornernet_tf.config import schema as config_lib
from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.training import loop as training
from cornernet_tf.training.callbacks import CheckpointCallback, NaNGuard
from cornernet_tf.training.checkpoints import BEFORE_SPIKE_SUBDIR
from cornernet_tf.data import pipeline
from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.modeling.model import build_model
from cornernet_tf.training.run_folder import (LOCK_FILE, STALE_AFTER_SECONDS,
                                              IncompatibleRunError,
                                              RunLock, RunLockedError,
                                              write_text_atomic)
from cornernet_tf.data.resolve import resolve_dataset_dependent
from tests.support.training import tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run_folder") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


def renamed_dataset(data_dir, tmp_path, rename=None, extra_category=False):
    """The synthetic train json with category names changed (or one category added)."""
    with open(os.path.join(data_dir, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    for c in data["categories"]:
        c["name"] = (rename or {}).get(c["name"], c["name"])
    if extra_category:
        data["categories"].append({"id": 99, "name": "extra"})
    path = tmp_path / "renamed_train.json"
    path.write_text(json.dumps(data))
    return str(path)


def folder_digest(folder):
    """{relative path: sha256} of every file under `folder` (what "unchanged" means)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_run(cfg, model_dir):
    """A run folder as training leaves it at step 0: checkpoint, config.yaml, labels.json."""
    cfg = resolve_dataset_dependent(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    training.compile_model(model, cfg)
    model.optimizer.build(model.trainable_variables)
    ckpt_lib.checkpoint_manager(model, model_dir, model.optimizer).save(checkpoint_number=0)
    _, label_map, _ = pipeline.load_split(cfg.data, "train", check_images="none")
    ckpt_lib.write_run_files(cfg, model_dir, label_map)
    return cfg


# --------------------------------------------------------------------------------------
# Item 5: resume with a changed config or dataset
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, named", [
    (["model.corner_pooling=false"], "model.corner_pooling true -> false"),
    (["model.head_channels=24"], "model.head_channels 16 -> 24"),  # the variant: shapes
    (["model.input_size=[96, 96]"], "model.input_size [64, 64] -> [96, 96]"),
])
def test_resume_with_another_model_is_refused_and_nothing_is_written(
        data_dir, tmp_path, overrides, named):
    model_dir = str(tmp_path / "run")
    make_run(tiny_config(data_dir, ["train.steps=2"]), model_dir)
    before = folder_digest(model_dir)
    with pytest.raises(IncompatibleRunError) as raised:
        run_lib.train(tiny_config(data_dir, ["train.steps=2"] + overrides), model_dir,
                       verbose=0)
    text = str(raised.value)
    assert len(text.splitlines()) == 1
    assert text.startswith(f"cannot resume {model_dir}: the model differs from its "
                           f"config.yaml: {named}"), text
    assert "nothing in" in text.lower()
    # Byte for byte as it was (the lock file aside, which only the lock writes).
    after = folder_digest(model_dir)
    after.pop(LOCK_FILE)
    assert after == before


def test_resume_with_renamed_categories_is_refused(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    cfg = make_run(tiny_config(data_dir, ["train.steps=2"]), model_dir)
    names = json.load(open(os.path.join(model_dir, "labels.json")))["classes"]
    first = names[0]["name"]
    renamed = renamed_dataset(data_dir, tmp_path, rename={first: "renamed"})
    before = folder_digest(model_dir)
    with pytest.raises(IncompatibleRunError) as raised:
        run_lib.train(tiny_config(data_dir, ["train.steps=2", "data.dataset=coco",
                                              f"data.train_annotations={renamed}"]),
                       model_dir, verbose=0)
    text = str(raised.value)
    assert len(text.splitlines()) == 1
    cid = names[0]["category_id"]
    assert (f"the classes of {renamed} differ from its labels.json: class 0: id {cid} "
            f"{first!r} -> id {cid} 'renamed'") in text, text
    assert "the model differs" not in text  # the same count: model.* are equal
    after = folder_digest(model_dir)
    after.pop(LOCK_FILE)
    assert after == before
    assert cfg.model.num_classes == len(names)


def test_resume_with_another_class_count_names_both(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    make_run(tiny_config(data_dir, ["train.steps=2"]), model_dir)
    more = renamed_dataset(data_dir, tmp_path, extra_category=True)
    # model.num_classes left at 0 (from the dataset), as a user resuming would
    overrides = [o for o in tiny_overrides(data_dir) if not o.startswith("model.num_classes")]
    with pytest.raises(IncompatibleRunError) as raised:
        run_lib.train(config_lib.load_config(None, overrides + [
            "train.steps=2", "data.dataset=coco", f"data.train_annotations={more}"]),
            model_dir, verbose=0)
    text = str(raised.value)
    assert "model.num_classes 4 -> 5" in text and "4 classes -> 5" in text, text


def test_a_checkpoint_that_does_not_match_is_one_line_and_writes_nothing(data_dir, tmp_path):
    """The last guard: no config.yaml to compare (an older run), another head width."""
    model_dir = str(tmp_path / "run")
    make_run(tiny_config(data_dir, ["train.steps=2"]), model_dir)
    os.remove(os.path.join(model_dir, "config.yaml"))
    before = folder_digest(model_dir)
    with pytest.raises(IncompatibleRunError) as raised:
        run_lib.train(tiny_config(data_dir, ["train.steps=2", "model.head_channels=24"]),
                       model_dir, verbose=0)
    text = str(raised.value)
    assert len(text.splitlines()) == 1 and len(text) < 800
    assert "does not match the model and optimizer built from the config" in text
    assert not os.path.exists(os.path.join(model_dir, "config.yaml"))
    after = folder_digest(model_dir)
    after.pop(LOCK_FILE)
    assert after == before


@pytest.mark.slow
def test_resume_with_allowed_changes_says_them_and_trains(data_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    make_run(tiny_config(data_dir, ["train.steps=2", "train.log_every=2"]), model_dir)
    capsys.readouterr()
    result = run_lib.train(tiny_config(data_dir, [
        "train.steps=1", "train.log_every=1", "train.checkpoint_every=1",
        "model.corner_pool_impl=scan"]), model_dir, verbose=0)
    out = capsys.readouterr().out
    assert result["steps"] == 1
    assert ("resuming with changed config keys: model.corner_pool_impl 'auto' -> 'scan', "
            "train.steps 2 -> 1") in out, out
    assert "train.log_every 2 -> 1" in out
    # The run files now hold the new config, written whole.
    stored = config_lib.load_config(os.path.join(model_dir, "config.yaml"))
    assert (stored.train.steps, stored.model.corner_pool_impl) == (1, "scan")
    assert not [n for n in os.listdir(model_dir) if ".tmp-" in n]


def test_write_text_atomic_replaces_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "config.yaml")
    write_text_atomic(path, "old: 1\n")

    def fail(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_text_atomic(path, "new: 2\n" * 1000)
    assert open(path).read() == "old: 1\n"  # the old file, whole
    assert os.listdir(tmp_path) == ["config.yaml"]


# --------------------------------------------------------------------------------------
# Item 7: the run lock
# --------------------------------------------------------------------------------------

def test_a_second_training_on_the_same_folder_is_refused_naming_the_holder(data_dir,
                                                                         tmp_path):
    model_dir = str(tmp_path / "run")
    with RunLock(model_dir, say=lambda text: None):
        with pytest.raises(RunLockedError) as raised:
            run_lib.train(tiny_config(data_dir, ["train.steps=2"]), model_dir, verbose=0)
        text = str(raised.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in text, text
        assert text.startswith(f"{model_dir} is in use by another training")
        assert os.listdir(model_dir) == [LOCK_FILE]  # nothing else written
    # Released: the lock can be taken again, and nothing is "taken over".
    lock = RunLock(model_dir, say=lambda text: None).acquire()
    assert lock.took_over is None
    lock.release()


HOLD = """
import sys, time
from cornernet_tf.training.run_folder import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_of_a_killed_process_is_taken_over_and_said(tmp_path):
    model_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, model_dir], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host"):
            RunLock(model_dir).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    said = []
    lock = RunLock(model_dir, say=said.append).acquire()
    try:
        assert lock.took_over["pid"] == proc.pid
        assert said == [f"took over the lock of {model_dir} left by pid {proc.pid} on "
                        f"{socket.gethostname()} (that process is gone)"]
        assert json.load(open(os.path.join(model_dir, LOCK_FILE)))["pid"] == os.getpid()
    finally:
        lock.release()


@pytest.mark.parametrize("age, refused", [(10.0, True), (STALE_AFTER_SECONDS + 60, False)])
def test_a_lock_from_another_host_holds_until_its_heartbeat_is_stale(tmp_path, age, refused):
    """The variant: a shared filesystem, where flock does not reach the other host."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / LOCK_FILE).write_text(json.dumps(
        dict(pid=4242, host="other-node", heartbeat=time.time() - age)))
    said = []
    if refused:
        with pytest.raises(RunLockedError, match=r"pid 4242 on host other-node, last "
                                                 r"heartbeat 1\d s ago"):
            RunLock(str(model_dir), say=said.append).acquire()
        return
    lock = RunLock(str(model_dir), say=said.append).acquire()
    lock.release()
    assert said == [f"took over the lock of {model_dir} left by pid 4242 on other-node "
                    f"(that process is gone)"]


# --------------------------------------------------------------------------------------
# Item 8: a diverging run keeps its good checkpoints
# --------------------------------------------------------------------------------------

def small_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def drive(model, callbacks, losses, log_every=1000):
    """Calls the callbacks as fit would, with `losses[i]` the loss of step i + 1.

    The logs hold the interval's running mean (what CornerNet's trackers report).
    """
    for c in callbacks:
        c.set_model(model)
    total = 0.0
    for i, loss in enumerate(losses):
        batch = i % log_every
        total = loss if batch == 0 else total + loss
        model.optimizer.iterations.assign_add(1)
        for v in model.trainable_variables:  # the weights change every step
            v.assign_add(tf.ones_like(v))
        for c in callbacks:
            c.on_train_batch_end(batch, {"total_loss": total / (batch + 1)})
        if model.stop_training:
            break


def test_an_exploding_loss_does_not_evict_the_checkpoint_before_it(tmp_path):
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer,
                                          max_to_keep=3)
    said = []
    checkpoints = CheckpointCallback(manager, every=1, say=said.append)
    # 12 normal steps, then a finite explosion (1e20) for 5 steps, then NaN.
    losses = [6.0 - 0.1 * i for i in range(12)] + [1e20] * 5 + [float("nan")]
    drive(model, [NaNGuard(checkpoints), checkpoints], losses, log_every=10)
    folder = os.path.join(str(tmp_path), "checkpoints")
    listed = [os.path.basename(p) for p in
              tf.train.get_checkpoint_state(folder).all_model_checkpoint_paths]
    assert listed == ["ckpt-15", "ckpt-16", "ckpt-17"]  # the rotation went on
    # Step 13's loss (weights of step 12) exploded: step 11 is the last good checkpoint.
    pinned = os.path.join(folder, BEFORE_SPIKE_SUBDIR, "ckpt-11")
    assert said[0] == (f"warning: loss spike at step 13: total_loss 1e+20 is over 20x the "
                       f"median of the last 12 steps (5.5); kept {pinned} (the last "
                       f"checkpoint before it) out of the rotation"), said
    assert tf.train.latest_checkpoint(os.path.dirname(pinned)) == pinned
    reader = tf.train.load_checkpoint(pinned)
    iterations = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert int(reader.get_tensor(iterations[0])) == 11
    # The NaN message names that checkpoint, which exists.
    assert checkpoints.stopped_on_nan and checkpoints.last_good == pinned
    assert f"Last good checkpoint: {pinned}." in said[-1], said[-1]
    assert os.path.exists(pinned + ".index")
    # It restores the weights of step 11 (initial + 11 per variable, see `drive`).
    fresh = small_model()
    ckpt_lib.training_checkpoint(fresh, fresh.optimizer).restore(pinned).expect_partial()
    start = small_model()
    for restored, initial in zip(fresh.trainable_variables, start.trainable_variables):
        np.testing.assert_allclose(restored.numpy(), initial.numpy() + 11)


def test_a_nan_without_a_spike_pins_the_last_checkpoint_that_gave_a_finite_loss(tmp_path):
    """The variant: a sudden NaN; the newest checkpoint (its weights gave the NaN) is not
    named as good, the one before it is, and it is kept."""
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer,
                                          max_to_keep=2)
    said = []
    checkpoints = CheckpointCallback(manager, every=2, say=said.append)
    drive(model, [NaNGuard(checkpoints), checkpoints],
          [5.0] * 6 + [float("nan")], log_every=3)
    folder = os.path.join(str(tmp_path), "checkpoints")
    assert manager.latest_checkpoint == os.path.join(folder, "ckpt-6")
    pinned = os.path.join(folder, BEFORE_SPIKE_SUBDIR, "ckpt-4")
    assert checkpoints.last_good == pinned and os.path.exists(pinned + ".index")
    assert f"Last good checkpoint: {pinned}." in said[-1]


def test_a_nan_before_any_checkpoint_says_none(tmp_path):
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer)
    said = []
    checkpoints = CheckpointCallback(manager, every=100, say=said.append)
    drive(model, [NaNGuard(checkpoints), checkpoints], [5.0, float("nan")])
    assert checkpoints.last_good is None
    assert "Last good checkpoint: none yet." in said[-1]
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", BEFORE_SPIKE_SUBDIR))


def test_normal_noise_is_no_spike(tmp_path):
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer)
    said = []
    checkpoints = CheckpointCallback(manager, every=5, say=said.append)
    rng = np.random.default_rng(0)
    drive(model, [checkpoints], list(6.0 * np.exp(rng.normal(0, 0.5, 60))), log_every=20)
    assert said == []
    assert checkpoints.last_good == os.path.join(str(tmp_path), "checkpoints", "ckpt-55")


# --------------------------------------------------------------------------------------
# The command line: exit 2 and one line, nothing written
# --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", ["changed_model", "locked"])
def test_the_command_line_refuses_in_one_line_with_exit_2(data_dir, tmp_path, case):
    model_dir = str(tmp_path / "run")
    cfg = make_run(tiny_config(data_dir, ["train.steps=2"]), model_dir)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(cfg.to_yaml())
    before = folder_digest(model_dir)
    args = [sys.executable, "main.py", "--mode=train", f"--config={config_path}",
            f"--model_dir={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    if case == "changed_model":
        proc = subprocess.run(args + ["--set=model.corner_pooling=false"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        expected = (f"error: cannot resume {model_dir}: the model differs from its "
                    f"config.yaml: model.corner_pooling true -> false.")
    else:
        with RunLock(model_dir, say=lambda text: None):
            proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=600)
        expected = (f"error: {model_dir} is in use by another training (pid {os.getpid()} "
                    f"on host {socket.gethostname()};")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-3000:]
    after = folder_digest(model_dir)
    after.pop(LOCK_FILE, None)
    assert after == before


@pytest.mark.parametrize("holder", ["live", "dead", "garbage"])
def test_without_flock_the_record_decides(tmp_path, monkeypatch, holder):
    """The variant: a filesystem without flock (ENOLCK); pid liveness and the heartbeat."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if holder != "live":
        proc.kill()
        proc.wait(timeout=30)
    record = (dict(pid=proc.pid, host=socket.gethostname(), heartbeat=time.time())
              if holder != "garbage" else dict(pid="x", heartbeat="y"))
    (model_dir / LOCK_FILE).write_text(json.dumps(record))
    said = []
    try:
        if holder == "live":
            with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host"):
                RunLock(str(model_dir), say=said.append).acquire()
            return
        lock = RunLock(str(model_dir), say=said.append).acquire()
        lock.release()
        assert said and said[0].startswith(f"took over the lock of {model_dir}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_pin_that_cannot_be_written_is_said_and_training_goes_on(tmp_path, monkeypatch):
    import errno
    import shutil

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", full)
    monkeypatch.setattr(shutil, "copy2", full)
    model = small_model()
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer,
                                          max_to_keep=3)
    said = []
    checkpoints = CheckpointCallback(manager, every=1, say=said.append)
    drive(model, [NaNGuard(checkpoints), checkpoints], [5.0] * 6 + [1e20] + [5.0] * 3,
          log_every=100)
    folder = os.path.join(str(tmp_path), "checkpoints")
    assert said[0] == (f"warning: could not keep {os.path.join(folder, 'ckpt-5')} out of the "
                       f"rotation in {os.path.join(folder, BEFORE_SPIKE_SUBDIR)}: No space "
                       f"left on device (ENOSPC)"), said
    assert said[1].endswith(f"the last checkpoint before it is {os.path.join(folder, 'ckpt-5')}")
    assert not checkpoints.stopped_on_nan
    assert int(model.optimizer.iterations.numpy()) == 10  # went on
