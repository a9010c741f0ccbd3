"""Tests of cornernet_tf/training.py and CornerNet's train step (the "Training" issue).

Tiny network (hourglass52 family, 64x64 input, channels [16, 16, 24]) on a 16-image
synthetic dataset. Tests that need the TF runtime configured before it starts (logical
CPUs, TF_CONFIG) or a process to kill run tests/support/train_worker.py or main.py in a
subprocess.
"""

import json
import math
import os
import re
import signal
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
from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.losses import cornernet_loss, pull_push_loss
from cornernet_tf.modeling.model import build_model
from tests.support.ports import free_ports
from tests.support.training import fixed_batch, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPER = os.path.join(REPO, "tests", "support", "train_worker.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """16 train + 4 val synthetic 64x64 images (the parameters tiny_overrides expects)."""
    out = str(tmp_path_factory.mktemp("training") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


@pytest.fixture
def float32_policy():
    """Restores the global Keras dtype policy, whatever the test did to it."""
    before = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(before)
    assert keras.mixed_precision.global_policy().name == before.name


def tiny_config(data_dir, *extra):
    return config_lib.load_config(None, overrides=tiny_overrides(data_dir) + list(extra))


def run(args, timeout=240, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def listed_checkpoints(model_dir):
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR))
    return list(state.all_model_checkpoint_paths) if state else []


def checkpoint_step(path):
    return int(path.rsplit("-", 1)[1])


def optimizer_iterations(path):
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map()
            if k.startswith("optimizer/") and "iterations" in k]
    assert len(keys) == 1, keys
    return int(reader.get_tensor(keys[0]))


def all_finite(path):
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    return all(np.all(np.isfinite(reader.get_tensor(k))) for k, d in dtypes.items()
               if d.is_floating)


# --------------------------------------------------------------------------------------
# 1. Replica invariance
# --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mirrored_step_equals_single_device_step(data_dir, tmp_path):
    """Two replicas (2 logical CPUs, sync BN) take the same Adam step as one device.

    Tolerance: losses rtol 1e-5; weights (trainable and BN statistics) max |diff| 5e-5,
    i.e. 5% of one Adam step at lr 1e-3 (measured: ~1.5e-5, float reassociation). The
    control (per-replica losses with local normalisers) must differ by more.
    """
    out = str(tmp_path / "replica.npz")
    proc = run([HELPER, "replica", data_dir, out], timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = np.load(out)
    n = int(r["num_weights"])
    assert int(r["default_steps"]) == int(r["mirrored_steps"]) == 1
    assert r["objects_per_half"][0] != r["objects_per_half"][1]
    for key in ("focal_loss", "pull_loss", "push_loss", "offset_loss", "total_loss"):
        np.testing.assert_allclose(r[f"mirrored_loss_{key}"], r[f"default_loss_{key}"],
                                   rtol=1e-5, atol=1e-7, err_msg=key)
    diff = max(float(np.abs(r[f"default_w{i}"] - r[f"mirrored_w{i}"]).max()) for i in range(n))
    moved = max(float(np.abs(r[f"default_w{i}"] - r[f"initial_w{i}"]).max()) for i in range(n))
    control = max(float(np.abs(r[f"default_w{i}"] - r[f"control_w{i}"]).max())
                  for i in range(n))
    print(f"replica invariance: max |w_mirrored - w_default| = {diff:.3g}; control "
          f"(local normalisers) {control:.3g}; largest update {moved:.3g}")
    assert moved > 1e-4  # the step did change the weights
    assert diff <= 5e-5
    assert control > 5 * max(diff, 1e-5)
    assert abs(float(r["control_loss_total_loss"]) - float(r["default_loss_total_loss"])) > \
        0.1 * float(r["default_loss_total_loss"])


# --------------------------------------------------------------------------------------
# 2. Gradients and overfitting
# --------------------------------------------------------------------------------------

def test_embedding_gradient_is_zero_away_from_objects(data_dir):
    cfg = tiny_config(data_dir)
    images, targets = fixed_batch(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    outputs = model(images, training=True)[-1]
    tl, br = outputs["tl_embedding"], outputs["br_embedding"]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([tl, br])
        pull, push = pull_push_loss(tl, br, targets["tl_index"], targets["br_index"],
                                    targets["mask"])
        grouping = pull + push
        total = cornernet_loss(dict(outputs, tl_embedding=tl, br_embedding=br),
                               targets)["total_loss"]
    h, w = cfg.model.output_size
    for corner, emb in (("tl", tl), ("br", br)):
        objects = np.zeros((images.shape[0], h * w), bool)
        for b in range(images.shape[0]):
            valid = targets["mask"][b] > 0
            objects[b, targets[f"{corner}_index"][b][valid]] = True
        objects = objects.reshape(images.shape[0], h, w)
        assert objects.any() and not objects.all()
        for loss in (grouping, total):
            grad = tape.gradient(loss, emb).numpy()[..., 0]
            assert np.all(grad[~objects] == 0.0), corner
            assert np.abs(grad[objects]).max() > 0, corner


def test_overfits_a_fixed_batch(data_dir):
    """40 Adam steps (lr 1e-3) on one batch: total_loss falls below 25% of its start.

    Measured: 5.78 -> 0.34 (6% of the start) after 40 steps.
    """
    cfg = tiny_config(data_dir, "train.steps=40")
    images, targets = fixed_batch(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    training.compile_model(model, cfg)
    history = [model.train_on_batch(images, targets, return_dict=True)["total_loss"]
               for _ in range(40)]
    print(f"overfit: total_loss {history[0]:.3f} -> {history[-1]:.3f}")
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.25 * history[0]
    assert min(history[-5:]) < min(history[:5])


# --------------------------------------------------------------------------------------
# 3. Kill and resume
# --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_checkpoint(data_dir, tmp_path):
    steps = 60  # killed at the first checkpoint (step 10), polled every 50 ms
    cfg = tiny_config(data_dir, f"train.steps={steps}", "train.checkpoint_every=10",
                      "train.log_every=10")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(cfg.to_yaml())
    model_dir = str(tmp_path / "run")
    index = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR, "checkpoint")
    args = ["main.py", "--mode=train", f"--config={config_path}", f"--model_dir={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.exists(index) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it was killed:\n" + proc.stdout.read()
        assert os.path.exists(index), "no checkpoint within 240 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    listed = listed_checkpoints(model_dir)
    assert listed
    for path in listed:  # none corrupted, each consistent with its step
        assert optimizer_iterations(path) == checkpoint_step(path)
    killed_at = checkpoint_step(listed[-1])
    assert 10 <= killed_at < steps

    second = run(args, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"resuming from {listed[-1]} (step {killed_at})" in second.stdout, second.stdout
    assert f"trained to step {steps};" in second.stdout, second.stdout
    final = listed_checkpoints(model_dir)
    assert checkpoint_step(final[-1]) == steps
    for path in final:
        assert optimizer_iterations(path) == checkpoint_step(path)
    # The resumed run logged from the checkpoint on, not from step 0.
    logged = [int(n) for n in re.findall(rf"step (\d+)/{steps}", second.stdout)]
    assert logged and min(logged) > killed_at and max(logged) == steps
    assert os.path.exists(os.path.join(model_dir, "config.yaml"))
    assert json.load(open(os.path.join(model_dir, "labels.json"), encoding="utf-8"))


def test_resume_mid_interval_stops_exactly_at_train_steps(data_dir, tmp_path):
    """A checkpoint at a step that is not a multiple of log_every (e.g. an interrupt)."""
    model_dir = str(tmp_path / "run")
    first = run_lib.train(tiny_config(data_dir, "train.steps=3", "train.log_every=3",
                                       "train.checkpoint_every=3"), model_dir, verbose=0)
    assert first["steps"] == 3
    # Resumed at 3 with log_every 5, fit runs whole intervals (5 + 5 steps): the run must
    # still stop at train.steps = 10, not at 13.
    second = run_lib.train(tiny_config(data_dir, "train.steps=10", "train.log_every=5",
                                        "train.checkpoint_every=5"), model_dir, verbose=0)
    assert second["steps"] == 10
    assert int(second["model"].optimizer.iterations.numpy()) == 10
    assert [checkpoint_step(p) for p in listed_checkpoints(model_dir)] == [3, 5, 10]


# --------------------------------------------------------------------------------------
# 4. MultiWorkerMirroredStrategy
# --------------------------------------------------------------------------------------

def _run_two_workers(data_dir, tmp_path, model_dir, steps, tag):
    """Both workers of a 127.0.0.1 cluster (the README's TF_CONFIG, "Several machines");
    (their result files, their console logs)."""
    ports = ",".join(str(p) for p in free_ports(2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    procs = [subprocess.Popen([sys.executable, HELPER, "worker", str(i), ports, data_dir,
                               model_dir, str(tmp_path / f"{tag}{i}.npz"), str(steps)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i}:\n{logs[i][-3000:]}"
    return [np.load(tmp_path / f"{tag}{i}.npz") for i in range(2)], logs


@pytest.mark.slow
def test_multi_worker_two_processes_agree_and_only_the_chief_writes(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    steps = 4
    (chief, other), logs = _run_two_workers(data_dir, tmp_path, model_dir, steps, "w")
    assert int(chief["steps"]) == int(other["steps"]) == steps
    weights = [k for k in chief.files if k.startswith("arr_")]
    assert weights and len(weights) == len([k for k in other.files if k.startswith("arr_")])
    for k in weights:
        np.testing.assert_allclose(chief[k], other[k], rtol=0, atol=1e-6, err_msg=k)
    # Only the chief wrote into model_dir; the other worker's scratch folder is gone.
    assert str(chief["checkpoint"]).startswith(model_dir)
    assert not str(other["checkpoint"]).startswith(model_dir)
    assert not os.path.exists(os.path.dirname(os.path.dirname(str(other["checkpoint"]))))
    assert [checkpoint_step(p) for p in listed_checkpoints(model_dir)] == [2, 4]
    assert sorted(os.listdir(model_dir)) == [".lock", "checkpoints", "config.yaml",
                                             "labels.json", "logs"]
    assert open(os.path.join(model_dir, ".lock")).read() == ""  # released by the chief
    # A clean run ends without the coordination service calling a worker crashed.
    for i, log in enumerate(logs):
        assert "crashed" not in log and "Traceback" not in log, f"worker {i}:\n{log[-3000:]}"
    # The same two workers launched again with train.steps=6 resume at step 4 from the
    # chief's checkpoint in the shared model_dir (both read it) and agree again.
    (chief, other), _ = _run_two_workers(data_dir, tmp_path, model_dir, 6, "r")
    assert int(chief["steps"]) == int(other["steps"]) == 6
    for k in weights:
        np.testing.assert_allclose(chief[k], other[k], rtol=0, atol=1e-6, err_msg=k)
    assert [checkpoint_step(p) for p in listed_checkpoints(model_dir)] == [2, 4, 6]


# --------------------------------------------------------------------------------------
# 5. Mixed precision
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_heads(data_dir, tmp_path, float32_policy, policy):
    cfg = tiny_config(data_dir, f"train.mixed_precision={policy}", "train.steps=3",
                      "train.log_every=3", "train.checkpoint_every=3")
    result = run_lib.train(cfg, str(tmp_path / "run"), verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored by train
    model = result["model"]
    assert result["steps"] == 3
    losses = result["history"][-1]
    assert all(np.isfinite(losses[k]) for k in ("focal_loss", "pull_loss", "push_loss",
                                                  "offset_loss", "total_loss"))
    compute = policy.split("_")[1]
    assert model.backbone.dtype_policy.compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    images, _ = fixed_batch(cfg)
    for stack in model(images, training=True):
        for key, value in stack.items():
            assert value.dtype == tf.float32, key
            assert np.all(np.isfinite(value.numpy())), key


# --------------------------------------------------------------------------------------
# 6. Learning-rate schedule
# --------------------------------------------------------------------------------------

def lr_at(schedule, step):
    return float(schedule(tf.constant(step)))


def test_step_schedule_warmup_and_decay_at_90_percent():
    s = training.CornerNetSchedule(2.5e-4, total_steps=1000, schedule="step", decay_at=0.9,
                                   decay_factor=0.1, warmup_steps=100)
    # Warm-up: lr * (step + 1) / 100 for step < 100.
    assert lr_at(s, 0) == pytest.approx(2.5e-6, rel=1e-6)
    assert lr_at(s, 49) == pytest.approx(1.25e-4, rel=1e-6)
    assert lr_at(s, 99) == pytest.approx(2.5e-4, rel=1e-6)
    assert lr_at(s, 100) == pytest.approx(2.5e-4, rel=1e-6)
    assert lr_at(s, 899) == pytest.approx(2.5e-4, rel=1e-6)
    assert lr_at(s, 900) == pytest.approx(2.5e-5, rel=1e-6)  # floor(0.9 * 1000)
    assert lr_at(s, 1000) == pytest.approx(2.5e-5, rel=1e-6)


def test_cosine_schedule_endpoints_and_midpoint():
    s = training.CornerNetSchedule(1e-3, total_steps=300, schedule="cosine", warmup_steps=100)
    assert lr_at(s, 0) == pytest.approx(1e-5, rel=1e-6)
    assert lr_at(s, 100) == pytest.approx(1e-3, rel=1e-6)  # cos(0)
    assert lr_at(s, 200) == pytest.approx(0.5e-3, rel=1e-5)  # half way: (1 + cos(pi/2)) / 2
    assert lr_at(s, 150) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-5)
    assert lr_at(s, 300) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(s, 400) == pytest.approx(0.0, abs=1e-12)


def test_warmup_is_capped_at_half_the_steps_and_constant_schedule():
    s = training.CornerNetSchedule(1e-3, total_steps=10, schedule="constant", warmup_steps=100)
    assert lr_at(s, 0) == pytest.approx(1e-3 / 5, rel=1e-6)  # warm-up capped at 10 // 2
    assert lr_at(s, 4) == pytest.approx(1e-3, rel=1e-6)
    assert lr_at(s, 9) == pytest.approx(1e-3, rel=1e-6)
    restored = training.CornerNetSchedule.from_config(s.get_config())
    assert lr_at(restored, 0) == lr_at(s, 0)


# --------------------------------------------------------------------------------------
# 7. NaN guard
# --------------------------------------------------------------------------------------

def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    run_lib.train(tiny_config(data_dir, "train.steps=2", "train.log_every=2",
                               "train.checkpoint_every=2"), model_dir, verbose=0)
    good = listed_checkpoints(model_dir)[-1]
    assert checkpoint_step(good) == 2
    with open(good + ".index", "rb") as f:
        good_bytes = f.read()
    capsys.readouterr()
    # An absurd learning rate: Adam moves every weight by ~1e30, the next forward overflows.
    result = run_lib.train(tiny_config(data_dir, "train.steps=20", "train.log_every=1",
                                        "train.checkpoint_every=1",
                                        "train.learning_rate=1e30"), model_dir, verbose=0)
    out = capsys.readouterr().out
    assert result["steps"] < 20
    assert result["stopped_on_nan"] is True  # CheckpointCallback.stopped_on_nan, reported
    listed = listed_checkpoints(model_dir)
    for path in listed:
        assert all_finite(path), path
    # The last good checkpoint is one whose weights still gave a finite loss (the newest
    # may hold the weights that gave the NaN); it is kept out of the rotation and exists.
    last_good = result["last_good"]
    assert os.path.dirname(last_good) == os.path.join(model_dir, training.CHECKPOINT_SUBDIR,
                                                      "before_spike")
    assert os.path.exists(last_good + ".index") and all_finite(last_good)
    assert f"at step {result['steps']}; training stopped. Last good checkpoint: {last_good}." \
        in out, out
    with open(good + ".index", "rb") as f:
        assert f.read() == good_bytes
    assert checkpoint_step(last_good) < result["steps"]
