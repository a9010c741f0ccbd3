"""Validation during training (train.eval_every): when it runs, what it logs, `best`.

The training test runs `run.train` on the tiny config with `run_evaluation` replaced
by a wrapper: the first call runs the real evaluation (so the wiring into `fit` is the real
one), and every call returns a scripted AP, so which step is best is known in advance.
The best-keeping rules across runs are tested on `ValidationCallback` alone with a small
Keras model.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import run as run_lib

from cornernet_tf.training import callbacks as callbacks_lib
from cornernet_tf.evaluation import runner as eval_runner
from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.modeling.model import build_model
from tests.support.training import tiny_config

SCRIPTED_AP = {2: 0.1, 4: 0.3, 6: 0.2}  # step 4 is the best
NAMES = ("rectangle", "ellipse", "triangle", "cross")  # the synthetic categories


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("validation") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


def scripted_metrics(ap):
    return {"AP": ap, "AP50": ap + 0.25, "AP75": ap / 2, "images": 2,
            "per_class_AP": {name: ap + i / 100 for i, name in enumerate(NAMES)}}


def event_scalars(folder):
    """{tag: [(step, value), ...]} of the TensorBoard event files in `folder`."""
    found = {}
    for name in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else value.simple_value
                found.setdefault(value.tag, []).append((int(event.step), number))
    return found


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """Trains 6 steps with eval_every=2 once; returns what the tests look at."""
    model_dir = str(tmp_path_factory.mktemp("validation_run") / "run")
    cfg = tiny_config(data_dir, ["train.steps=6", "train.log_every=2",
                                 "train.checkpoint_every=2", "train.eval_every=2",
                                 "evaluate.max_images=2"])
    real = eval_runner.run_evaluation
    calls = []

    def fake(model, cfg, output_dir, max_images=0, **kwargs):
        step = int(model.optimizer.iterations.numpy())
        real_metrics = real(model, cfg, output_dir, max_images, **kwargs) if not calls else None
        calls.append(dict(step=step, max_images=max_images, output_dir=output_dir,
                          pictures=cfg.evaluate.pictures, real=real_metrics,
                          weights=[v.numpy().copy() for v in model.variables]))
        return scripted_metrics(SCRIPTED_AP[step])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_runner, "run_evaluation", fake)
        result = run_lib.train(cfg, model_dir, verbose=0)
    return dict(cfg=cfg, model_dir=model_dir, result=result, calls=calls)


def test_evaluates_every_eval_every_steps_with_max_images(run):
    calls = run["calls"]
    assert [c["step"] for c in calls] == [2, 4, 6]
    assert all(c["max_images"] == 2 for c in calls)
    assert all(c["output_dir"] == os.path.join(run["model_dir"], "validation") for c in calls)
    assert not any(c["pictures"] for c in calls)  # no pictures during training
    real = calls[0]["real"]  # the real evaluation ran inside fit, on 2 images
    assert real["images"] == 2 and set(real["per_class_AP"]) == set(NAMES)
    with open(os.path.join(run["model_dir"], "validation", "metrics.json")) as f:
        assert json.load(f)["images"] == 2
    result = run["result"]
    assert [e["step"] for e in result["evaluations"]] == [2, 4, 6]
    assert [e["AP"] for e in result["evaluations"]] == [0.1, 0.3, 0.2]
    assert [e["best"] for e in result["evaluations"]] == [True, True, False]
    history = [json.loads(line) for line in
               open(os.path.join(run["model_dir"], "validation", "history.jsonl"))]
    assert [(h["step"], h["AP"]) for h in history] == [(2, 0.1), (4, 0.3), (6, 0.2)]


def test_metrics_are_in_tensorboard_at_the_optimizer_step(run):
    scalars = event_scalars(os.path.join(run["model_dir"], "logs", "validation"))
    assert scalars["AP"] == [(s, pytest.approx(ap)) for s, ap in SCRIPTED_AP.items()]
    assert scalars["AP50"] == [(s, pytest.approx(ap + 0.25)) for s, ap in SCRIPTED_AP.items()]
    for i, name in enumerate(NAMES):
        assert scalars[f"AP_per_class/{name}"] == [
            (s, pytest.approx(ap + i / 100)) for s, ap in SCRIPTED_AP.items()]


def test_best_is_the_highest_ap_step_and_restores(run):
    model_dir, cfg = run["model_dir"], run["cfg"]
    best_dir = os.path.join(model_dir, "checkpoints", "best")
    state = tf.train.get_checkpoint_state(best_dir)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-4"]
    with open(os.path.join(best_dir, "best.json")) as f:
        record = json.load(f)
    assert record["step"] == 4 and record["AP"] == pytest.approx(0.3)
    assert record["checkpoint"] == "ckpt-4"
    assert run["result"]["best"]["step"] == 4
    weights_at = {c["step"]: c["weights"] for c in run["calls"]}
    model = build_model(cfg.model)
    assert ckpt_lib.restore_weights(model, model_dir, "best") == os.path.join(best_dir, "ckpt-4")
    for restored, expected in zip(model.variables, weights_at[4]):
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert any(not np.array_equal(a, b) for a, b in zip(weights_at[4], weights_at[6]))
    # latest (the default) is step 6, the end of training.
    assert ckpt_lib.restore_weights(model, model_dir, "latest").endswith(
        os.path.join("checkpoints", "ckpt-6"))
    for restored, expected in zip(model.variables, weights_at[6]):
        np.testing.assert_array_equal(restored.numpy(), expected)


def test_resume_starts_from_latest_not_best(run, capsys):
    # best is step 4, latest step 6 = train.steps: resuming from best would train 2 steps.
    result = run_lib.train(run["cfg"], run["model_dir"], verbose=0)
    out = capsys.readouterr().out
    assert "resuming from " + os.path.join(run["model_dir"], "checkpoints", "ckpt-6") in out
    assert "already trained: step 6" in out and result["steps"] == 6


def test_cli_checkpoint_best_restores_best(run):
    from absl import flags
    from cornernet_tf import cli
    cli._define_flags()
    flags.FLAGS(["main.py", "--checkpoint=best", f"--model_dir={run['model_dir']}"])
    try:
        arguments = cli.MODES["evaluate"].arguments(run["cfg"])
    finally:
        flags.FLAGS.unparse_flags()
    assert arguments["checkpoint"] == "best" and arguments["model_dir"] == run["model_dir"]
    model = build_model(run["cfg"].model)
    path = ckpt_lib.restore_weights(model, run["model_dir"], arguments["checkpoint"])
    assert path == os.path.join(run["model_dir"], "checkpoints", "best", "ckpt-4")
    weights_at = {c["step"]: c["weights"] for c in run["calls"]}
    for restored, expected in zip(model.variables, weights_at[4]):
        np.testing.assert_array_equal(restored.numpy(), expected)


# --------------------------------------------------------------------------------------
# ValidationCallback alone: best-keeping across runs
# --------------------------------------------------------------------------------------

class _Optimizer:
    def __init__(self):
        self.iterations = tf.Variable(0, dtype=tf.int64)


def small_callback(tmp_path, data_dir, monkeypatch, aps, best_record=None, every=10,
                   total=30):
    """A ValidationCallback on a 2-layer Keras model whose evaluations return `aps`."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.optimizer = _Optimizer()
    scripted = iter(aps)
    monkeypatch.setattr(eval_runner, "run_evaluation",
                        lambda *a, **k: scripted_metrics(next(scripted)))
    best_dir = str(tmp_path / "checkpoints" / "best")
    manager = tf.train.CheckpointManager(ckpt_lib.training_checkpoint(model), best_dir,
                                         max_to_keep=1)
    cb = callbacks_lib.ValidationCallback(
        tiny_config(data_dir), every, total, 0, str(tmp_path / "validation"), manager,
        best_record, str(tmp_path / "logs"), say=lambda text: None)
    cb.set_model(model)
    cb.on_train_begin()
    return cb, model, best_dir


def step_to(cb, model, step):
    model.optimizer.iterations.assign(step)
    for v in model.trainable_variables:
        v.assign(tf.fill(v.shape, float(step)))
    cb.on_train_batch_end(0)


def test_best_survives_a_resumed_run_and_ties_keep_the_earlier(tmp_path, data_dir, monkeypatch):
    cb, model, best_dir = small_callback(tmp_path, data_dir, monkeypatch, [0.5, 0.5])
    for step in (5, 10, 20):  # 5 is not an evaluation step
        step_to(cb, model, step)
    assert [e["step"] for e in cb.evaluations] == [10, 20]
    assert cb.best["step"] == 10  # 0.5 at step 20 does not beat 0.5 at step 10
    record = os.path.join(best_dir, "best.json")
    # A resumed run: its first evaluation (0.4) is worse than the earlier run's best.
    cb2, model2, _ = small_callback(tmp_path, data_dir, monkeypatch, [0.4, 0.7],
                                    best_record=record)
    assert cb2.best["step"] == 10 and cb2.best["AP"] == 0.5
    step_to(cb2, model2, 20)
    assert tf.train.latest_checkpoint(best_dir).endswith("ckpt-10")
    step_to(cb2, model2, 30)  # 0.7: the new best
    assert tf.train.latest_checkpoint(best_dir).endswith("ckpt-30")
    assert os.listdir(best_dir).count("ckpt-10.index") == 0  # the older best is deleted
    assert json.load(open(record))["step"] == 30
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(best_dir))
    saved = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
             if k.startswith("model/")]
    assert saved and all(np.all(v == 30.0) for v in saved)


def test_only_multiples_of_eval_every_and_a_nan_ap_is_never_best(tmp_path, data_dir,
                                                                  monkeypatch):
    cb, model, best_dir = small_callback(tmp_path, data_dir, monkeypatch,
                                         [float("nan"), 0.2], every=10, total=25)
    step_to(cb, model, 10)
    assert cb.best is None and tf.train.latest_checkpoint(best_dir) is None
    assert cb.remaining_seconds(10) == pytest.approx(cb.seconds)  # one more: step 20
    step_to(cb, model, 20)
    step_to(cb, model, 20)  # the same step twice (a resumed interval): one evaluation
    step_to(cb, model, 25)  # the last step, not a multiple of 10: no evaluation
    assert [e["step"] for e in cb.evaluations] == [10, 20]
    assert cb.best["step"] == 20
    assert cb.remaining_seconds(20) == 0.0


def test_checkpoint_best_without_validation_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no best checkpoint in .*train.eval_every"):
        ckpt_lib.resolve_checkpoint(str(tmp_path), "best")
    with pytest.raises(FileNotFoundError, match="expected 'latest', 'best'"):
        ckpt_lib.resolve_checkpoint(str(tmp_path), str(tmp_path / "nothing-here"))
