"""The training progress display (cornernet_tf/progress.py): one display, plain in a log.

Unit tests drive `ProgressDisplay` with a fake model and a fake clock (the first step takes
40 s, every other step 1 s, 4 images per step), so images/s and the ETA have exact expected
values. One test runs a real tiny training with stdout captured (not a terminal).
"""

import io
import os
import re

import numpy as np
import pytest

from cornernet_tf import run as run_lib

from cornernet_tf.data.synthetic import generate_shapes_dataset
from cornernet_tf.keys import LOSS_KEYS
from cornernet_tf.training.progress import ProgressDisplay, format_duration
from tests.support.training import tiny_config

LOGS = {"focal_loss": 1.5, "pull_loss": 0.25, "push_loss": 0.125, "offset_loss": 0.5,
        "total_loss": 2.375}
LIVE = "\r\x1b[K"  # what the live line writes before each redraw


class _Iterations:
    def __init__(self, optimizer):
        self.optimizer = optimizer

    def numpy(self):
        return np.int64(self.optimizer.step)


class FakeOptimizer:
    def __init__(self, step=0):
        self.step = step
        self.learning_rate = 1e-3
        self.iterations = _Iterations(self)


class FakeModel:
    def __init__(self, step=0):
        self.optimizer = FakeOptimizer(step)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class FakeValidation:
    """What the display reads of a ValidationCallback: evaluations every `every` steps."""

    def __init__(self, every, total):
        self.every, self.total, self.seconds, self.count = every, total, 0.0, 0

    def remaining_seconds(self, step):
        later = [s for s in range(step + 1, self.total + 1) if s % self.every == 0]
        return len(later) * self.seconds / self.count if self.count else 0.0


def drive(display, steps, log_every, first=40.0, each=1.0, pauses=None, messages=None):
    """Runs the display's hooks as `fit` would; `pauses` {step: seconds spent after the
    step by a validation (added to display.validation)}, `messages` {step: text printed
    by another callback}."""
    model, clock = FakeModel(), display.clock
    display.set_model(model)
    display.on_train_begin()
    for step in range(1, steps + 1):
        display.on_train_batch_begin(step - 1)
        clock.t += first if step == 1 else each
        model.optimizer.step = step
        display.on_train_batch_end(step - 1, dict(LOGS))
        if messages and step in messages:
            display.message(messages[step])
        if pauses and step in pauses:
            clock.t += pauses[step]
            display.validation.seconds += pauses[step]
            display.validation.count += 1
        if step % log_every == 0:
            display.on_epoch_end(step // log_every - 1, dict(LOGS))
    display.on_train_end()


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 3600 + 125) == "3:02:05"
    assert format_duration(30 * 3600) == "30:00:00"  # no wrap at a day
    assert format_duration(float("nan")) == "--"


def test_plain_lines_exclude_the_first_step_from_rate_and_eta():
    out = io.StringIO()
    display = ProgressDisplay(6, 4, stream=out, clock=FakeClock(),
                              validation=FakeValidation(every=2, total=6))
    # A 10 s validation after steps 2, 4 and 6: in the ETA, not in images/s.
    drive(display, steps=6, log_every=2, pauses={2: 10.0, 4: 10.0, 6: 10.0})
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("building the training graph")
    assert lines[1] == "first step (graph built) in 40.0 s"
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"]
    assert len(lines) == 2 + 3
    for line in steps:
        for name in LOSS_KEYS:
            assert f"{name} {LOGS[name]:.4f}" in line, line
        assert "lr 0.001" in line
        # 4 images in 1 s inside each step after the first (never 4 / 41 s).
        assert "4.0 img/s" in line, line
    # ETA = remaining steps x wall time per step since the first step ended, validation
    # apart, + validations to come x their mean time:
    # step 2: (11 - 10) s / 1 step x 4 left + 2 validations (4, 6) x 10 s = 24 s
    # (with the first step counted in: 41 s / 2 x 4 + 20 = 102 s).
    assert steps[0].endswith("ETA 0:00:24")
    # step 4: (1 + 10 + 1 + 1 + 10 - 20) s / 3 steps x 2 left + 1 x 10 s = 12 s.
    assert steps[1].endswith("ETA 0:00:12")
    assert steps[2].endswith("ETA 0:00:00")
    assert display.first_step_seconds == 40.0
    assert [h["step"] for h in display.history] == [2, 4, 6]
    assert [h["images_per_second"] for h in display.history] == [4.0, 4.0, 4.0]
    assert display.history[0]["learning_rate"] == pytest.approx(1e-3)


def test_plain_output_also_logs_every_30_seconds():
    """log_every = 50 steps of 12 s each: a "(so far)" line at least every 30 s."""
    out = io.StringIO()
    display = ProgressDisplay(100, 4, stream=out, clock=FakeClock(), log_every=50)
    drive(display, steps=100, log_every=50, first=40.0, each=12.0)
    lines = out.getvalue().splitlines()
    timed = [line for line in lines if line.endswith("(so far)")]
    # the first step's message at t=40; then steps of 12 s: a line at every 3rd step
    # (36 s >= 30 s since the last line): 4, 7, ..., 49; step 50 ends the interval with its
    # own line, then 53, ..., 98; step 100 is the last interval's line
    want = list(range(4, 50, 3)) + list(range(53, 100, 3))
    assert [line.split()[1] for line in timed] == [f"{s}/100" for s in want]
    regular = [line.split()[1] for line in lines if line.startswith("step ")
               and not line.endswith("(so far)")]
    assert regular == ["50/100", "100/100"]
    for line in timed:
        assert f"total_loss {LOGS['total_loss']:.4f}" in line and "0.3 img/s" in line, line
    # a log_every interval shorter than 30 s adds nothing (the test above: 5 lines in all)


def test_first_interval_of_only_the_first_step_has_no_rate():
    out = io.StringIO()
    display = ProgressDisplay(2, 4, stream=out, clock=FakeClock())
    drive(display, steps=2, log_every=1)
    steps = [line for line in out.getvalue().splitlines() if line.startswith("step ")]
    assert "-- img/s" in steps[0] and steps[0].endswith("ETA --")
    assert "4.0 img/s" in steps[1] and steps[1].endswith("ETA 0:00:00")
    assert np.isnan(display.history[0]["images_per_second"])


def visible_lines(text):
    """What a terminal shows: each line's text after its last live-line redraw."""
    return [segment.split(LIVE)[-1] for segment in text.split("\n")]


def test_terminal_shows_one_live_line(monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback: os.terminal_size((72, 24)))
    out = FakeTerminal()
    display = ProgressDisplay(6, 4, stream=out, clock=FakeClock())
    drive(display, steps=6, log_every=2, messages={3: "validation at step 3: AP 0.5"})
    text = out.getvalue()
    assert display.live
    assert text.count(LIVE) >= 6  # redrawn in place, at least once per step
    shown = visible_lines(text)
    assert text.endswith("\n") and shown[-1] == ""  # closed at the end of training
    shown = shown[:-1]
    # First the graph-building notice, replaced by the first step's time; the message
    # on its own line; one bar, last drawn at step 6. No per-interval plain lines.
    assert "building the training graph" in text.split("\n")[0]
    assert shown[0] == "first step (graph built) in 40.0 s"
    assert shown[1] == "validation at step 3: AP 0.5"
    assert len(shown) == 3
    bar = shown[2]
    assert bar.startswith("step 6/6 [============] 4.0 img/s  ETA 0:00:00  total 2.375 "), bar
    assert not any(line.startswith("step 2/6  focal_loss") for line in shown)
    # Every drawn line fits the terminal (a wrapped line cannot be redrawn in place).
    for segment in re.split(r"\r\x1b\[K|\n", text):
        assert len(segment) < 72, segment
    # The bar redrawn after the message shows the step it was at, with rate and ETA.
    after_message = text.split("validation at step 3: AP 0.5\n")[1].split(LIVE)[1]
    # 3 steps left at 1 s each (the first step's 40 s left out).
    assert after_message.startswith("step 3/6 [======......] 4.0 img/s  ETA 0:00:03  total")


def test_terminal_line_is_wide_enough_for_every_term(monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback: os.terminal_size((200, 24)))
    out = FakeTerminal()
    display = ProgressDisplay(4, 4, stream=out, clock=FakeClock())
    drive(display, steps=4, log_every=4)
    bar = visible_lines(out.getvalue())[-2]
    for name in ("focal 1.500", "pull 0.250", "push 0.125", "offset 0.500", "total 2.375"):
        assert name in bar, bar
    assert "4.0 img/s  ETA 0:00:00" in bar


def test_live_false_writes_plain_lines_to_a_terminal():
    out = FakeTerminal()
    display = ProgressDisplay(2, 4, stream=out, live=False, clock=FakeClock())
    drive(display, steps=2, log_every=1)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


# --------------------------------------------------------------------------------------
# A real training, stdout captured (not a terminal)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("progress") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


def test_training_output_is_plain_lines_when_not_a_terminal(data_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, ["train.steps=4", "train.log_every=2",
                                 "train.checkpoint_every=4"])
    result = run_lib.train(cfg, model_dir)  # verbose=1: live only in a terminal
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    building = [i for i, line in enumerate(lines) if line.startswith("building the training graph")]
    first = [i for i, line in enumerate(lines)
             if re.fullmatch(r"first step \(graph built\) in \d+\.\d s", line)]
    steps = [i for i, line in enumerate(lines) if re.match(r"step \d+/4  ", line)]
    assert len(building) == 1 and len(first) == 1, out
    assert building[0] < first[0] < steps[0]
    assert [lines[i].split()[1] for i in steps] == ["2/4", "4/4"]  # one per log_every
    for i in steps:
        for name in LOSS_KEYS:
            assert re.search(rf"{name} \d+\.\d{{4}}", lines[i]), lines[i]
        assert re.search(r"\d+\.\d img/s  ETA \d+:\d\d:\d\d$", lines[i]), lines[i]
    # Keras' own progress bar is off.
    assert "━" not in out and not re.search(r"\b2/2\b", out)
    assert result["steps"] == 4 and [h["step"] for h in result["history"]] == [2, 4]
    # train.eval_every = 0 (the default): no validation during training.
    assert result["evaluations"] == [] and result["best"] is None
    assert not os.path.exists(os.path.join(model_dir, "validation"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoints", "best"))
