"""Tests of the training time budget (`train.time_budget`, cornernet_tf/training/budget.py).

The step-count arithmetic is a pure function checked against numbers worked out here by
hand; the schedule's movable end against the closed forms of the step and cosine decays;
the tiny training runs (tests/support/training.py's network) use a fake clock, so the
step time and the count chosen are exact and no assertion depends on the machine's speed.
"""

import itertools
import json
import math
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from cornernet_tf import run as run_lib
from cornernet_tf.config import schema as config_lib
from cornernet_tf.demo import format_summary
from cornernet_tf.training import budget
from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.training.callbacks import StopAtStep
from cornernet_tf.training.loop import CornerNetSchedule
from cornernet_tf.training.progress import ValidationClock
from cornernet_tf.data.synthetic import generate_shapes_dataset
from tests.support.training import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------------------
# The arithmetic
# --------------------------------------------------------------------------------------

def test_steps_fit_the_time_left_after_the_time_spent_and_the_reserve():
    # 10 min = 600 s; 60 s spent; 30 s reserved: 510 s left at 0.5 s/step = 1020 steps.
    assert budget.steps_within_budget(600, 60, 0.5, 0, 10 ** 6, reserve_seconds=30) == 1020
    # train.steps is the upper bound: the budget only shortens a run.
    assert budget.steps_within_budget(600, 60, 0.5, 0, 800, reserve_seconds=30) == 800
    # Decided at step 100 (its time is inside the 60 s): 1020 more steps, to 1120.
    assert budget.steps_within_budget(600, 60, 0.5, 100, 10 ** 6, reserve_seconds=30) == 1120
    # Not one more step fits (70 s spent of 60): stop at the step of the decision.
    assert budget.steps_within_budget(60, 70, 1.0, 25, 1000) == 25


def test_validations_and_checkpoints_still_to_come_are_reserved():
    # 500 s left at 1 s/step; a validation of 20 s every 100 steps and one at the end when
    # the end is not a multiple; the final checkpoint 5 s (checkpoint_every=1000).
    # N = 400: 400 + 4 validations (80) + 5 = 485 <= 500.
    # N = 401: 401 + 5 validations (100: the extra one at 401) + 5 = 506 > 500, and every
    # N up to 419 costs more still (N + 100 + 5 >= 506).
    n = budget.steps_within_budget(600, 100, 1.0, 0, 1000, eval_every=100, eval_seconds=20,
                                   checkpoint_every=1000, checkpoint_seconds=5)
    assert n == 400


@pytest.mark.parametrize("step, end, every, count", [
    (0, 250, 100, 3),  # 100, 200 and the end at 250
    (0, 300, 100, 3),  # 100, 200, 300 (the end is one of them)
    (150, 300, 100, 2),  # 200, 300
    (300, 300, 100, 0),  # no step left
    (0, 300, 0, 0),  # off
])
def test_events_until_counts_the_multiples_and_the_end(step, end, every, count):
    assert budget.events_until(step, end, every) == count


def test_planned_steps_reuses_the_record_of_the_same_budget_only():
    record = dict(time_budget=10.0, steps=1840)
    assert budget.planned_steps(10.0, 2500, record) == 1840
    assert budget.planned_steps(10.0, 1000, record) == 1000  # train.steps still bounds it
    assert budget.planned_steps(20.0, 2500, record) == 2500  # another budget: chosen again
    assert budget.planned_steps(0.0, 2500, record) == 2500  # budget off
    assert budget.planned_steps(10.0, 2500, None) == 2500


def test_an_unreadable_record_is_said_and_ignored(tmp_path):
    said = []
    assert budget.read_record(str(tmp_path), say=said.append) is None and not said  # absent
    (tmp_path / budget.RECORD_NAME).write_text('{"steps": "many"', encoding="utf-8")
    assert budget.read_record(str(tmp_path), say=said.append) is None
    assert len(said) == 1 and "budget.json is unreadable" in said[0]
    (tmp_path / budget.RECORD_NAME).write_text('{"steps": 50, "time_budget": 2.5}',
                                               encoding="utf-8")
    assert budget.read_record(str(tmp_path)) == dict(steps=50, time_budget=2.5)


# --------------------------------------------------------------------------------------
# The schedule's movable end
# --------------------------------------------------------------------------------------

def lr_at(schedule, step):
    return float(schedule(tf.constant(step)))


def test_cosine_schedule_ends_at_zero_at_the_moved_end():
    s = CornerNetSchedule(1e-3, total_steps=1000, schedule="cosine")
    s.set_total_steps(400)
    assert s.total_steps == 400
    assert lr_at(s, 400) == pytest.approx(0.0, abs=1e-12)  # 0.5 * (1 + cos(pi))
    assert lr_at(s, 200) == pytest.approx(0.5e-3, rel=1e-6)  # 0.5 * (1 + cos(pi / 2))
    assert lr_at(s, 100) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-6)


def test_step_schedule_decays_at_90_percent_of_the_moved_end():
    s = CornerNetSchedule(1e-3, total_steps=1000, schedule="step", decay_at=0.9,
                          decay_factor=0.1)
    s.set_total_steps(500)
    assert lr_at(s, 449) == pytest.approx(1e-3, rel=1e-6)
    assert lr_at(s, 450) == pytest.approx(1e-4, rel=1e-6)  # floor(0.9 * 500), lr * 0.1
    assert lr_at(s, 500) == pytest.approx(1e-4, rel=1e-6)


def test_warmup_cap_follows_the_moved_end():
    s = CornerNetSchedule(1e-3, total_steps=1000, schedule="constant", warmup_steps=100)
    assert lr_at(s, 49) == pytest.approx(1e-3 * 50 / 100, rel=1e-6)
    s.set_total_steps(100)  # warm-up capped at 100 // 2 = 50 steps
    assert lr_at(s, 49) == pytest.approx(1e-3, rel=1e-6)  # (49 + 1) / 50
    assert lr_at(s, 24) == pytest.approx(1e-3 * 25 / 50, rel=1e-6)


def test_a_traced_function_reads_the_new_end_without_retracing():
    s = CornerNetSchedule(1e-3, total_steps=1000, schedule="cosine")
    f = tf.function(lambda step: s(step))
    before = float(f(tf.constant(400, tf.int64)))
    assert before == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.4)), rel=1e-6)
    s.set_total_steps(400)
    assert float(f(tf.constant(400, tf.int64))) == pytest.approx(0.0, abs=1e-12)
    assert f.experimental_get_tracing_count() == 1  # a variable read, not a constant


def test_moved_schedule_serializes_with_its_new_end():
    s = CornerNetSchedule(2e-3, total_steps=1000, schedule="step", warmup_steps=10)
    s.set_total_steps(300)
    assert s.get_config()["total_steps"] == 300
    restored = CornerNetSchedule.from_config(s.get_config())
    assert restored.total_steps == 300 and lr_at(restored, 270) == lr_at(s, 270)
    optimizer = keras.optimizers.Adam(learning_rate=s)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert budget.schedule_of(again).total_steps == 300
    assert budget.schedule_of(optimizer) is s


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------

def test_time_budget_is_off_by_default_and_refuses_a_negative_value():
    assert config_lib.load_config(None).train.time_budget == 0
    assert config_lib.load_config(None, ["train.time_budget=7.5"]).train.time_budget == 7.5
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config(None, ["train.time_budget=-3"])
    assert "'train.time_budget'" in str(e.value)
    assert "non-negative" in str(e.value) and "-3" in str(e.value)
    with pytest.raises(config_lib.ConfigError, match="train.time_budget.*number"):
        config_lib.load_config(None, ["train.time_budget=ten"])


def test_cli_refuses_a_negative_budget_with_exit_2(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, "main.py", "--mode=train",
                           f"--model_dir={tmp_path / 'run'}", "--set", "train.time_budget=-1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.time_budget" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "run" / budget.RECORD_NAME)


# --------------------------------------------------------------------------------------
# Several replicas
# --------------------------------------------------------------------------------------

AGREE = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cornernet_tf.training import budget
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print("replicas", strategy.num_replicas_in_sync, "agreed", budget.agree(strategy, 1234))
"""


def test_replicas_agree_on_one_count():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run([sys.executable, "-c", AGREE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "replicas 2 agreed 1234" in proc.stdout  # (1234 + 1234) // 2


# --------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """16 train + 4 val synthetic 64x64 images (the parameters tiny_overrides expects)."""
    out = str(tmp_path_factory.mktemp("budget") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


def fake_clock(seconds_per_call):
    """A clock that moves `seconds_per_call` each time it is read: 0, d, 2d, ...

    Read by run.train at its start, then by the budget at the start of its window (end of
    step SKIP), at its decision (end of step SKIP + MEASURE) and at the end.
    """
    ticks = itertools.count()
    return lambda: next(ticks) * seconds_per_call


@pytest.fixture
def short_window(monkeypatch):
    monkeypatch.setattr(budget, "SKIP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURE_STEPS", 4)


def budget_config(data_dir, *extra):
    return config_lib.load_config(None, overrides=tiny_overrides(data_dir) + [
        "train.steps=40", "train.log_every=5", "train.checkpoint_every=10",
        "train.schedule=cosine", "train.time_budget=10", *extra])


def newest_step(model_dir):
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR))
    return int(latest.rsplit("-", 1)[1])


@pytest.mark.slow  # four tiny runs (about 3 min on a busy 2-core machine)
def test_budget_shortens_the_run_and_a_resume_keeps_the_count(data_dir, tmp_path,
                                                               monkeypatch, short_window,
                                                               capsys):
    model_dir = str(tmp_path / "run")
    # Clock reads 0 (start), 100 (end of step 2), 200 (end of step 6): 100 s over steps
    # 3-6 is 25 s/step; 200 s spent. 600 s - 200 - 12 (the 2% margin) = 388 s left:
    # 15 steps (375 s) plus three checkpoints (10, 20, 21) of about 1 s (a tiny model at
    # 100 MB/s, plus 1 s) fit, 16 steps (400 s) do not: the run ends at 6 + 15 = 21.
    monkeypatch.setattr(budget, "clock", fake_clock(100.0))
    first = run_lib.train(budget_config(data_dir), model_dir, verbose=0)
    out = capsys.readouterr().out
    assert ("time budget 10 min: 21 steps fit (25 s/step measured over steps 3-6, 200 s "
            "spent so far") in out
    assert "the learning-rate schedule now ends at step 21" in out
    assert first["steps"] == 21 and newest_step(model_dir) == 21
    assert first["budget"]["steps"] == 21 and first["budget"]["seconds_per_step"] == 25.0
    record = json.load(open(os.path.join(model_dir, budget.RECORD_NAME), encoding="utf-8"))
    assert record["steps"] == 21 and record["decided_at_step"] == 6
    assert record["measured_steps"] == [3, 6] and record["time_budget"] == 10.0
    schedule = budget.schedule_of(first["model"].optimizer)
    assert schedule.total_steps == 21
    assert lr_at(schedule, 21) == pytest.approx(0.0, abs=1e-12)  # cosine, fully decayed
    assert lr_at(schedule, 7) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 3)),
                                               rel=1e-6)

    # As if interrupted after step 10: only ckpt-10 is left. A clock 100x faster would
    # now choose all 40 steps; the resumed run must keep the schedule it started with.
    checkpoints = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    with open(os.path.join(checkpoints, "checkpoint"), "w", encoding="utf-8") as f:
        f.write('model_checkpoint_path: "ckpt-10"\nall_model_checkpoint_paths: "ckpt-10"\n')
    assert newest_step(model_dir) == 10
    monkeypatch.setattr(budget, "clock", fake_clock(1.0))
    second = run_lib.train(budget_config(data_dir), model_dir, verbose=0)
    out = capsys.readouterr().out
    assert "resuming with the 21 steps chosen at step 6" in out
    assert second["steps"] == 21 and newest_step(model_dir) == 21
    assert budget.schedule_of(second["model"].optimizer).total_steps == 21

    third = run_lib.train(budget_config(data_dir), model_dir, verbose=0)
    assert "already trained: step 21 >= 21, the step count train.time_budget=10 chose" in \
        capsys.readouterr().out
    assert third["steps"] == 21

    # The budget turned off: the earlier choice no longer applies, said; on to train.steps.
    fourth = run_lib.train(budget_config(data_dir, "train.time_budget=0"), model_dir,
                           verbose=0)
    assert "the 21 steps an earlier budget of 10 min chose" in capsys.readouterr().out
    assert fourth["steps"] == 40 and newest_step(model_dir) == 40


def test_budgeted_run_ends_with_a_checkpoint_and_a_validation_at_its_end(
        data_dir, tmp_path, monkeypatch, short_window, capsys):
    model_dir = str(tmp_path / "run")
    # The same 25 s/step; validations every 10 steps take real seconds (not the fake
    # clock's), so the count is only known to fall short of train.steps.
    monkeypatch.setattr(budget, "clock", fake_clock(100.0))
    result = run_lib.train(budget_config(data_dir, "train.eval_every=10"), model_dir,
                           verbose=0)
    out = capsys.readouterr().out
    chosen = json.load(open(os.path.join(model_dir, budget.RECORD_NAME),
                            encoding="utf-8"))["steps"]
    assert 6 < chosen < 40, out
    assert result["steps"] == chosen and newest_step(model_dir) == chosen
    assert result["evaluations"][-1]["step"] == chosen, out
    assert f"validation at step {chosen} on 4 images" in out


def test_run_ending_before_the_measurement_says_the_budget_did_not_apply(
        data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "clock", fake_clock(100.0))
    result = run_lib.train(budget_config(data_dir, "train.steps=5", "train.log_every=5",
                                         "train.checkpoint_every=5"),
                           str(tmp_path / "run"), verbose=0)
    assert result["steps"] == 5  # the default window (steps 6-25) was never reached
    assert ("the run ended at step 5, before the step time was measured (steps 6-25); "
            "train.steps was not changed") in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "run" / budget.RECORD_NAME)


# --------------------------------------------------------------------------------------
# The demo's summary
# --------------------------------------------------------------------------------------

def demo_summary(**extra):
    metrics = {k: 0.5 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    return format_summary(dict(metrics=metrics, checkpoint="c", steps=6,
                               train_images_per_second=1.0, metrics_file="m.json",
                               saved_model="s", tflite={}, predictions="p",
                               predicted_files=2, stage_seconds={"1. train": 3.0},
                               total_seconds=60.0, model_dir="runs/x", **extra))


def test_demo_summary_says_the_steps_the_budget_chose_and_nothing_without_one():
    text = demo_summary(time_budget=dict(minutes=10.0, steps=1840, train_steps=2500,
                                         seconds_per_step=0.29, reused=False, seconds=570.0))
    line = [l for l in text.splitlines() if l.startswith("time budget")]
    assert line == ["time budget    10 min: 1840 of train.steps=2500 chosen (0.29 s/step "
                    "measured); training took 9.5 min"]
    assert "time budget" not in demo_summary()
    assert "time budget" not in demo_summary(time_budget=None)


# --------------------------------------------------------------------------------------
# The callback's decisions, driven step by step with a fake clock
# --------------------------------------------------------------------------------------

class Driver:
    """Plays `fit` for a TimeBudget: steps of a given duration, interval ends, validations.

    The model is a stand-in with what the callback reads (the optimizer's step and
    schedule, the strategy, stop_training); the clock is `self.t`.
    """

    def __init__(self, tmp_path, start, validation=None, **kwargs):
        self.t = start
        self.optimizer = types.SimpleNamespace(
            iterations=tf.Variable(0, dtype=tf.int64), variables=[],
            _learning_rate=CornerNetSchedule(1e-3, 1000, "cosine"))
        self.model = types.SimpleNamespace(optimizer=self.optimizer, weights=[],
                                           distribute_strategy=tf.distribute.get_strategy(),
                                           stop_training=False)
        self.said = []
        self.stop = StopAtStep(1000)
        self.validation = validation
        self.callback = budget.TimeBudget(
            10, 1000, 0.0, str(tmp_path), [self.stop, validation], checkpoints=types.
            SimpleNamespace(save_seconds=[2.0]), validation=validation,
            progress=types.SimpleNamespace(first_step_seconds=20.0), batch_size=16,
            checkpoint_every=1000, say=self.said.append, clock=lambda: self.t, skip=2,
            measure=4, **kwargs)
        self.callback.set_model(self.model)
        self.callback.on_train_begin()

    def steps(self, count, seconds, log_every=10, validation_seconds=15.0):
        for _ in range(count):
            self.t += seconds
            self.optimizer.iterations.assign_add(1)
            step = int(self.optimizer.iterations.numpy())
            if self.validation is not None and step % self.validation.every == 0:
                self.t += validation_seconds  # the validation callback runs before it
                self.validation.clock.add(validation_seconds)
            self.callback.on_train_batch_end(0)
            if step % log_every == 0:
                self.callback.on_epoch_end(0)

    @property
    def end(self):
        return self.optimizer._learning_rate.total_steps


def test_decision_revision_after_the_first_validation_and_a_slowdown(tmp_path):
    validation = types.SimpleNamespace(
        every=100, clock=ValidationClock(100, 1000), split=(list(range(200)), None, None),
        max_images=0, cfg=types.SimpleNamespace(evaluate=types.SimpleNamespace(
            flip_test=True, scales=(1.0,))), evaluate_at_end=False, total_steps=1000)
    run = Driver(tmp_path, start=10.5, validation=validation, eval_every=100)
    # 1.6 s/step. Window: end of step 2 (t 13.7) to end of step 6 (t 20.1): 1.6 s/step,
    # 20.1 s spent. A validation is estimated at the first step's 20 s (graph building)
    # plus 200 images x 2 views (flip) x 1.6 / 16 s = 60 s; a checkpoint at the 2 s
    # timed. 600 - 20.1 - 12 (margin) = 567.9 s: N = 247 costs 241 x 1.6 + 3 validations
    # (100, 200, 247) + the last checkpoint = 385.6 + 180 + 2 = 567.6; N = 248, 569.2.
    run.steps(6, 1.6)
    assert run.callback.chosen == 247 and run.end == 247 and run.stop.total_steps == 247
    assert validation.total_steps == 247 and validation.evaluate_at_end
    assert run.said[-1].startswith("time budget 10 min: 247 steps fit (1.6 s/step measured "
                                   "over steps 3-6, 20 s spent so far, 182 s kept for 3 "
                                   "validation(s) (estimated 60 s each)")
    # Steady steps: the interval checks keep 247 (the forecast ends at 599.7 s).
    run.steps(93, 1.6)
    assert run.end == 247 and len(run.said) == 1
    # The first validation (step 100) takes 15 s: chosen again at t = 185.5 with 1.6
    # s/step: 600 - 185.5 - 12 = 402.5 s; N = 322 costs 222 x 1.6 + 3 validations (200,
    # 300, 322) x 15 + 2 = 402.2; N = 323, 403.8.
    run.steps(1, 1.6)
    assert run.end == 322 and run.stop.total_steps == 322
    assert run.said[-1].startswith("time budget 10 min: after the first validation "
                                   "(15.0 s), 322 steps fit")
    # From step 151 the machine is twice as slow. At the check of step 160 (t = 297.5;
    # the last check at 150, t 265.5): 3.2 s/step. 600 - 297.5 - 12 = 290.5 s: N = 240
    # costs 80 x 3.2 + 2 validations (200, 240) x 15 + 2 = 288; N = 241, 291.2.
    run.steps(50, 1.6)
    assert run.end == 322
    run.steps(10, 3.2)
    assert run.end == 240 and run.stop.total_steps == 240 and validation.total_steps == 240
    assert run.said[-1].startswith("time budget 10 min: steps slowed to 3.2 s/step (steps "
                                   "151-160, ")  # then the 297.5 s spent, rounded
    assert run.said[-1].endswith("240 steps fit now; the learning-rate schedule now ends at "
                                 "step 240")
    record = json.load(open(tmp_path / budget.RECORD_NAME, encoding="utf-8"))
    assert record["steps"] == 240 and record["time_budget"] == 10.0
    # At that rate the run ends on time: step 240 at 297.5 + 80 x 3.2 + 15 (step 200's
    # validation) = 568.5 s, then the last validation and checkpoint, 585.5 s.
    run.steps(80, 3.2)
    assert run.end == 240 and run.t == pytest.approx(568.5)
    assert lr_at(run.optimizer._learning_rate, 240) == pytest.approx(0.0, abs=1e-12)


def test_budget_spent_before_the_decision_stops_at_once(tmp_path):
    # Training began at 580 s (a slow start), 1 s/step: at the end of step 6, 586 s.
    # One more step and the last checkpoint (2 s) end at 589 s, past 600 - 12 (margin):
    # the run stops at step 6.
    run = Driver(tmp_path, start=580.0)
    run.steps(6, 1.0)
    assert run.callback.chosen == 6 and run.model.stop_training and run.stop.total_steps == 6
    assert run.said[-1] == ("time budget 10 min: 586 s of 600 already spent at step 6 (1 "
                            "s/step measured over steps 3-6): no further step fits; training "
                            "stops at step 6 with its checkpoint; the learning-rate schedule "
                            "has not decayed (give a larger budget)")
    # and with a budget where train.steps fits, the line says the run is not shortened
    roomy = Driver(tmp_path, start=0.0)
    roomy.callback.max_steps = 100
    roomy.steps(6, 1.0)
    assert roomy.callback.chosen == 100 and "train.steps=100 fits" in roomy.said[-1]
    assert roomy.said[-1].endswith("the budget does not shorten the run")


def test_a_resumed_run_takes_the_recorded_count_and_never_measures(tmp_path):
    run = Driver(tmp_path, start=0.0,
                 record=dict(time_budget=10.0, steps=300, decided_at_step=25))
    assert run.end == 300 and run.stop.total_steps == 300 and run.callback.reused
    assert "resuming with the 300 steps chosen at step 25" in run.said[0]
    run.steps(40, 50.0)  # far too slow for 300 steps: the schedule is kept all the same
    assert run.end == 300 and len(run.said) == 1
    other = Driver(tmp_path, start=0.0, record=dict(time_budget=20.0, steps=300))
    assert other.end == 1000 and not other.callback.reused
    assert "the budget changed, so the step count is chosen again" in other.said[0]


@pytest.mark.parametrize("movable", [True, False])
@pytest.mark.parametrize("schedule,total,warmup", [("cosine", 2500, 100), ("step", 777, 10),
                                                   ("constant", 300, 100), ("cosine", 40, 100)])
def test_a_schedule_nobody_moves_gives_the_fixed_length_rates_bit_for_bit(schedule, total,
                                                                          warmup, movable):
    """A run without a budget trains with exactly the rates of the fixed-length schedule:
    the float32 arithmetic written out in numpy (figures in the README came from it)."""
    f32 = np.float32
    lr = f32(1e-3)
    w = f32(min(warmup, total // 2))
    steps = np.arange(total + 3)
    s = CornerNetSchedule(1e-3, total_steps=total, schedule=schedule, decay_at=0.9,
                          decay_factor=0.1, warmup_steps=warmup, movable=movable)
    got = np.array([s(tf.constant(int(i), tf.int64)).numpy() for i in steps])
    x = steps.astype(f32)
    if schedule == "step":
        rate = np.where(x >= f32(math.floor(0.9 * total)), lr * f32(0.1), lr)
    elif schedule == "cosine":
        progress = np.clip((x - w) / max(f32(total) - w, f32(1.0)), f32(0), f32(1))
        # TensorFlow's scalar float32 cos (numpy's, and TF's vectorised one, differ in the
        # last bits), on numpy's angles
        cos = np.array([tf.cos(a).numpy() for a in f32(math.pi) * progress], f32)
        rate = lr * f32(0.5) * (f32(1) + cos)
    else:
        rate = np.full_like(x, lr)
    expected = np.where(x < w, lr * (x + f32(1)) / w, rate).astype(f32)
    np.testing.assert_array_equal(got, expected)


def test_without_a_budget_the_schedule_is_fixed():
    from cornernet_tf.config.schema import TrainConfig
    from cornernet_tf.training.loop import build_optimizer
    fixed = budget.schedule_of(build_optimizer(TrainConfig(steps=100, time_budget=0)))
    assert fixed is None or not fixed.movable
    with pytest.raises(ValueError, match="movable=False"):
        CornerNetSchedule(1e-3, 100, movable=False).set_total_steps(50)
    moving = budget.schedule_of(build_optimizer(TrainConfig(steps=100, time_budget=5)))
    assert moving.movable and moving.total_steps == 100
