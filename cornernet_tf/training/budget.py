"""The training time budget (`train.time_budget`, minutes): a run that ends on time.

With a budget the run still starts as configured (schedule over `train.steps`). After its
first steps it measures the wall time per step and chooses the step count that fits:

* **Measured, not guessed.** The first `SKIP_STEPS` steps of the session are left out
  (the first one traces and compiles the training graph; the next few fill the input
  pipeline's buffers), then `MEASURE_STEPS` steps are timed by the wall clock. Time spent
  in checkpoints and validations during that window is taken out of it (each is reserved
  on its own below).
* **The time already spent counts.** The budget runs from the start of `run.train` (data
  loading, model building and the graph building of the first step included), so
  `elapsed` at the decision is what the session has used.
* **What comes after the last step is reserved.** The checkpoints still to come (the last
  one included; each at the slowest save of this session, or, before one has been timed,
  the checkpoint's size at `CHECKPOINT_BYTES_PER_SECOND` plus a second), the validations
  still to come if `train.eval_every` is on (the one at the last step included: a budgeted
  run ends with its AP), and a margin of `MARGIN_FRACTION` of the budget for the noise of a
  shared machine.
* **train.steps stays the upper bound.** The chosen count is the largest N <= train.steps
  whose forecast fits (`steps_within_budget`); a budget can only shorten a run, and the
  line says so when it does not.

The decision is said in one line, e.g. `time budget 10 min: 1840 steps fit (0.29 s/step
measured over steps 6-25; ...); the learning-rate schedule now ends at step 1840`. The
schedule (`loop.CornerNetSchedule`, whose length is a variable the compiled step reads)
then ends fully decayed at N: the step decay at `decay_at * N`, the cosine at 0 at N.

A validation's cost is not known before the first one has run, so the first decision uses
a conservative estimate (the training graph's build time for the evaluation graph's, plus
each view of each validation image at the cost of a training image: forward and backward,
about three forwards). After the first validation of the session the count is chosen once
more with its measured time (which includes building the evaluation graph, so it
over-states the later ones) and the step time measured since the window began; a change is
said in one line.

**A machine that slows down.** On a shared machine the step time can grow after the
decision. At the end of every logging interval (`train.log_every` steps) the run's end is
forecast again with the step time of that interval; when it would end after the budget
(margin included), the count is shortened to what fits at that rate, and the schedule's
end moves there (a cosine then falls faster from where it is; it still reaches 0 at the new
end). The count is never lengthened again after the first validation, so a passing burst
of load costs steps but not the deadline. The last line says the time the session took.

**Resuming.** The choice is written to `<model_dir>/budget.json` (whole, through a
temporary file) when it is made, that is after the run folder was checked and its config
written. A resumed run with the same `train.time_budget` takes the step count from there
and says so: the schedule is the one the run started with (the relaunch's own graph
building is then over the budget). A changed budget chooses again in the new session,
counting from the relaunch, and says so; `train.time_budget=0` on resume trains to
`train.steps` and says that the earlier choice no longer applies.

**Several replicas or workers.** Every replica of one process shares the one decision. With
`MultiWorkerMirroredStrategy` each worker measures its own clock, so the workers agree on
the mean of their counts (`agree`, one all-reduce at the same step on every worker: all
workers run the same steps, so they reach it together). A non-chief worker writes its
budget.json into its scratch folder; on resume every worker reads the chief's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from cornernet_tf.training.run_folder import write_text_atomic

RECORD_NAME = "budget.json"  # <model_dir>/budget.json: the step count a budget chose
SKIP_STEPS = 5  # steps of a session left out of the step time (graph building, warm-up)
MEASURE_STEPS = 20  # steps timed after them; the decision comes at the end of this window
MARGIN_FRACTION = 0.02  # of the budget, kept free for the noise of a shared machine
CHECKPOINT_BYTES_PER_SECOND = 100e6  # a save's estimated rate until one has been timed


def clock() -> float:
    """Seconds, monotonic: the budget's clock (tests replace `budget.clock`)."""
    return time.monotonic()


def events_until(step: int, end: int, every: int) -> int:
    """How many checkpoints (or validations) a run from `step` to `end` still makes: one at
    each multiple of `every` in (step, end], plus one at `end` when it is not a multiple."""
    if end <= step or every <= 0:
        return 0
    return end // every - step // every + (1 if end % every else 0)


def forecast_seconds(step: int, end: int, seconds_per_step: float, *, eval_every: int = 0,
                     eval_seconds: float = 0.0, checkpoint_every: int = 0,
                     checkpoint_seconds: float = 0.0) -> float:
    """The seconds from `step` to the end of a run that stops at `end`: its steps, the
    checkpoints and validations still to come (`events_until`)."""
    return ((end - step) * seconds_per_step
            + events_until(step, end, eval_every) * eval_seconds
            + events_until(step, end, checkpoint_every) * checkpoint_seconds)


def steps_within_budget(budget_seconds: float, elapsed_seconds: float, seconds_per_step: float,
                        step: int, max_steps: int, *, reserve_seconds: float = 0.0,
                        eval_every: int = 0, eval_seconds: float = 0.0,
                        checkpoint_every: int = 0, checkpoint_seconds: float = 0.0) -> int:
    """The largest step count N in [step, max_steps] whose run ends within the budget.

    N is the largest with `elapsed + forecast_seconds(step, N, ...) + reserve <= budget`;
    the forecast grows with N, so it is found by bisection. `step` (stop now) when not even
    one more step fits.

    Args:
      budget_seconds: train.time_budget in seconds.
      elapsed_seconds: spent since the run started.
      seconds_per_step: measured wall time of one step (checkpoints and validations apart).
      step: the optimizer step now.
      max_steps: train.steps, the upper bound.
      reserve_seconds: kept free besides the forecast (the margin).
      eval_every, eval_seconds: validations (one more at N when N is not a multiple).
      checkpoint_every, checkpoint_seconds: checkpoints (one more at N, likewise).

    Returns:
      N, an int with step <= N <= max(step, max_steps).
    """
    free = budget_seconds - elapsed_seconds - reserve_seconds

    def fits(end: int) -> bool:
        return forecast_seconds(step, end, seconds_per_step, eval_every=eval_every,
                                eval_seconds=eval_seconds, checkpoint_every=checkpoint_every,
                                checkpoint_seconds=checkpoint_seconds) <= free

    low, high = step, max(step, max_steps)
    if fits(high):
        return high
    while high - low > 1:  # fits(low) or low == step; not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def agree(strategy: Optional[tf.distribute.Strategy], steps: int) -> int:
    """The step count every replica of `strategy` takes: the mean of their counts, floored.

    One all-reduce over the replicas (every worker of a multi-worker run must call it at
    the same step); a single replica's own count is returned as it is.
    """
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return int(steps)
    per_replica = strategy.run(lambda: tf.constant(float(steps), tf.float64))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return int(round(float(total))) // strategy.num_replicas_in_sync


def read_record(model_dir: str, say: Optional[Callable[[str], None]] = print) -> Optional[dict]:
    """The run folder's budget.json, or None (absent, or unreadable: said in one line,
    unless `say` is None)."""
    path = os.path.join(model_dir, RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        int(record["steps"]), float(record["time_budget"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        if say is not None:
            say(f"warning: {path} is unreadable ({type(e).__name__}); a time budget chooses "
                f"its step count again")
        return None


def planned_steps(time_budget: float, max_steps: int, record: Optional[dict]) -> int:
    """Where a resumed run ends: the recorded count for the same budget, else train.steps."""
    if record is not None and time_budget > 0 and float(record["time_budget"]) == time_budget:
        return min(int(record["steps"]), max_steps)
    return max_steps


def schedule_of(optimizer) -> Optional[object]:
    """The optimizer's learning-rate schedule if it can move its end (built `movable`:
    with a time budget; `set_total_steps`);
    through a LossScaleOptimizer's inner optimizer too."""
    while optimizer is not None:
        schedule = getattr(optimizer, "_learning_rate", None)
        if getattr(schedule, "movable", False):
            return schedule
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def checkpoint_bytes(model: keras.Model) -> int:
    """Bytes of a training checkpoint: the model's and the optimizer's variables."""
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


class TimeBudget(keras.callbacks.Callback):
    """Chooses the step count that fits `train.time_budget` and moves the run's end there.

    Put it last in `fit`'s callbacks: at its end of training the last checkpoint and the
    final validation are done, and the step it decides at has had its own checkpoint and
    validation (both are taken out of the measured step time).

    Args:
      minutes: train.time_budget (> 0).
      max_steps: train.steps.
      started: `clock()` when the run started (`run.train`).
      record_dir: where budget.json is written (this process's write folder).
      followers: objects with a `total_steps` attribute set to the chosen count (the stop
        callback, the progress display, the validation callback and its clock).
      checkpoints: the run's CheckpointCallback (`save_seconds` of its saves).
      validation: the run's ValidationCallback, or None; it evaluates at the chosen end.
      progress: the ProgressDisplay (its `first_step_seconds`).
      eval_every, checkpoint_every: train.eval_every (0 with no validation), train.checkpoint_every.
      batch_size: the global batch.
      record: the run folder's budget.json on resume (`read_record`), or None.
      say: prints one message.
      clock: seconds, monotonic (None: the module's `clock`, read at each call).
      skip, measure: SKIP_STEPS and MEASURE_STEPS.

    Attributes:
      chosen: the step count chosen (or taken from budget.json), None before.
    """

    def __init__(self, minutes: float, max_steps: int, started: float, record_dir: str,
                 followers: list, checkpoints, validation=None, progress=None,
                 eval_every: int = 0, checkpoint_every: int = 0, batch_size: int = 1,
                 record: Optional[dict] = None, say: Optional[Callable[[str], None]] = None,
                 clock: Optional[Callable[[], float]] = None, skip: int = SKIP_STEPS,
                 measure: int = MEASURE_STEPS):
        super().__init__()
        self.minutes = float(minutes)
        self.max_steps = int(max_steps)
        self.started = started
        self.record_dir = record_dir
        self.followers = list(followers)
        self.checkpoints = checkpoints
        self.validation = validation
        self.progress = progress
        self.eval_every = eval_every if validation is not None else 0
        self.checkpoint_every = checkpoint_every
        self.batch_size = batch_size
        self.record = record
        self.say = say or (lambda text: print(text, flush=True))
        self._clock = clock
        self.skip = max(int(skip), 1)  # the first step builds the graph: never timed
        self.measure = max(int(measure), 1)
        self.chosen: Optional[int] = None
        self.seconds_per_step = float("nan")
        self.reused = False
        self._first = 0
        self._window: Optional[tuple[float, float]] = None  # (clock, excluded seconds)
        self._last_check: Optional[tuple[float, float, int]] = None  # (clock, excluded, step)
        self._revise_after: Optional[int] = None  # validations done at the decision

    # ------------------------------------------------------------------ numbers

    def now(self) -> float:
        return (self._clock or clock)()

    @property
    def budget_seconds(self) -> float:
        return self.minutes * 60.0

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _excluded(self) -> float:
        """Seconds spent so far in checkpoints and validations (not steps)."""
        seconds = sum(getattr(self.checkpoints, "save_seconds", []))
        return seconds + (self.validation.clock.seconds if self.validation is not None else 0.0)

    def _checkpoint_seconds(self) -> float:
        saves = getattr(self.checkpoints, "save_seconds", [])
        if saves:
            return max(saves)
        return checkpoint_bytes(self.model) / CHECKPOINT_BYTES_PER_SECOND + 1.0

    def _eval_seconds(self) -> tuple[float, str]:
        """(one validation's seconds, how that was found)."""
        if self.validation is None:
            return 0.0, ""
        clock_ = self.validation.clock
        if clock_.count:
            return clock_.seconds / clock_.count, "measured"
        images = len(self.validation.split[0]) if self.validation.split else 0
        if self.validation.max_images:
            images = min(images, self.validation.max_images) if images else \
                self.validation.max_images
        evaluate = self.validation.cfg.evaluate
        views = (2 if evaluate.flip_test else 1) * max(len(evaluate.scales), 1)
        build = (self.progress.first_step_seconds or 0.0) if self.progress is not None else 0.0
        per_image = self.seconds_per_step / max(self.batch_size, 1)
        return build + images * views * per_image, "estimated"

    # ------------------------------------------------------------------ decisions

    def _apply(self, steps: int) -> None:
        self.chosen = int(steps)
        schedule = schedule_of(self.model.optimizer)
        if schedule is None:
            raise ValueError("train.time_budget needs the optimizer's learning rate to be a "
                             "schedule that can move its end (training.loop.CornerNetSchedule)")
        schedule.set_total_steps(self.chosen)
        for follower in self.followers:
            if follower is not None:
                follower.total_steps = self.chosen
        if self.validation is not None:
            self.validation.evaluate_at_end = True
        if self._step() >= self.chosen:
            self.model.stop_training = True

    def _decide(self, step: int, revision: bool = False) -> None:
        start_clock, start_excluded = self._window
        window_steps = step - (self._first + self.skip)
        now = self.now()
        wall = now - start_clock - (self._excluded() - start_excluded)
        self.seconds_per_step = max(wall, 0.0) / window_steps
        elapsed = now - self.started
        eval_seconds, how = self._eval_seconds()
        checkpoint_seconds = self._checkpoint_seconds()
        margin = MARGIN_FRACTION * self.budget_seconds
        own = steps_within_budget(
            self.budget_seconds, elapsed, self.seconds_per_step, step, self.max_steps,
            reserve_seconds=margin, eval_every=self.eval_every, eval_seconds=eval_seconds,
            checkpoint_every=self.checkpoint_every, checkpoint_seconds=checkpoint_seconds)
        steps = agree(self.model.distribute_strategy, own)
        previous = self.chosen
        first, last = self._first + self.skip + 1, step
        reserved = forecast_seconds(step, steps, 0.0, eval_every=self.eval_every,
                                    eval_seconds=eval_seconds,
                                    checkpoint_every=self.checkpoint_every,
                                    checkpoint_seconds=checkpoint_seconds)
        validations = events_until(step, steps, self.eval_every)
        detail = (f"{self.seconds_per_step:.3g} s/step measured over steps {first}-{last}, "
                  f"{elapsed:.0f} s spent so far, {reserved:.0f} s kept for "
                  + (f"{validations} validation(s) ({how} {eval_seconds:.0f} s each) and "
                     if validations else "")
                  + f"the checkpoints, {margin:.0f} s margin")
        head = f"time budget {self.minutes:g} min: "
        if revision:
            head += f"after the first validation ({eval_seconds:.1f} s), "
        self._apply(steps)
        if revision and steps == previous:
            self.say(f"{head}{steps} steps still fit ({detail})")
        elif steps >= self.max_steps:
            self.say(f"{head}train.steps={self.max_steps} fits ({detail}); the budget does "
                     f"not shorten the run" + ("" if not revision else
                                               f" (it was to end at step {previous})"))
        elif steps <= step:
            self.say(f"{head}{elapsed:.0f} s of {self.budget_seconds:.0f} already spent at "
                     f"step {step} ({self.seconds_per_step:.3g} s/step measured over steps "
                     f"{first}-{last}): no further step fits; training stops at step {step} "
                     f"with its checkpoint" + (" and a validation" if self.eval_every else "")
                     + "; the learning-rate schedule has not decayed (give a larger budget)")
        else:
            self.say(f"{head}{steps} steps fit ({detail}); the learning-rate schedule now "
                     f"ends at step {steps}")
        self._last_check = (now, self._excluded(), step)
        self._write_record(step, first, last, eval_seconds, checkpoint_seconds, elapsed)

    def _recheck(self, step: int) -> None:
        """Shortens the count when the last interval's step time would end after the budget."""
        start_clock, start_excluded, start_step = self._last_check
        now, excluded = self.now(), self._excluded()
        recent = max(now - start_clock - (excluded - start_excluded), 0.0) / (step - start_step)
        self._last_check = (now, excluded, step)
        elapsed = now - self.started
        eval_seconds, _ = self._eval_seconds()
        checkpoint_seconds = self._checkpoint_seconds()
        margin = MARGIN_FRACTION * self.budget_seconds
        kwargs = dict(eval_every=self.eval_every, eval_seconds=eval_seconds,
                      checkpoint_every=self.checkpoint_every,
                      checkpoint_seconds=checkpoint_seconds)
        late = elapsed + forecast_seconds(step, self.chosen, recent, **kwargs) + margin > \
            self.budget_seconds
        own = (steps_within_budget(self.budget_seconds, elapsed, recent, step, self.chosen,
                                   reserve_seconds=margin, **kwargs) if late else self.chosen)
        # Every worker calls it at this same step, late or not: one collective for all.
        steps = agree(self.model.distribute_strategy, own)
        if steps >= self.chosen:
            return
        head = (f"time budget {self.minutes:g} min: steps slowed to {recent:.3g} s/step "
                f"(steps {start_step + 1}-{step}, {elapsed:.0f} s spent); ")
        self.seconds_per_step = recent
        self._apply(steps)
        if steps <= step:
            self.say(head + f"no further step fits: training stops at step {step}; the "
                            f"learning-rate schedule has not fully decayed")
        else:
            self.say(head + f"{steps} steps fit now; the learning-rate schedule now ends at "
                            f"step {steps}")
        self._write_record(step, start_step + 1, step, eval_seconds, checkpoint_seconds,
                           elapsed)

    def _write_record(self, step, first, last, eval_seconds, checkpoint_seconds,
                      elapsed) -> None:
        record = dict(time_budget=self.minutes, steps=self.chosen, train_steps=self.max_steps,
                      decided_at_step=step, measured_steps=[first, last],
                      seconds_per_step=self.seconds_per_step, elapsed_seconds=elapsed,
                      validation_seconds=eval_seconds, checkpoint_seconds=checkpoint_seconds)
        os.makedirs(self.record_dir, exist_ok=True)
        write_text_atomic(os.path.join(self.record_dir, RECORD_NAME),
                          json.dumps(record, indent=1) + "\n")

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        self._first = self._step()
        record = self.record
        if record is None:
            return
        where = os.path.join(self.record_dir, RECORD_NAME)
        if float(record["time_budget"]) == self.minutes:
            steps = planned_steps(self.minutes, self.max_steps, record)
            self.reused = True
            self.seconds_per_step = float(record.get("seconds_per_step", float("nan")))
            self._apply(steps)
            capped = (f" (train.steps={self.max_steps} is below the {record['steps']} "
                      f"chosen)" if steps < int(record["steps"]) else "")
            self.say(f"time budget {self.minutes:g} min: resuming with the {steps} steps "
                     f"chosen at step {record.get('decided_at_step', '?')} ({where}){capped};"
                     f" the learning-rate schedule ends at step {steps}, as before")
        else:
            self.say(f"time budget {self.minutes:g} min: {where} holds the {record['steps']} "
                     f"steps chosen for a budget of {float(record['time_budget']):g} min; "
                     f"the budget changed, so the step count is chosen again, from this "
                     f"session's start")

    def on_train_batch_end(self, batch, logs=None):
        if self.reused:
            return
        step = self._step()
        if self._window is None:
            if step >= self._first + self.skip:
                self._window = (self.now(), self._excluded())
            return
        if self.chosen is None:
            if step >= self._first + self.skip + self.measure:
                self._decide(step)
                if self.validation is not None:
                    self._revise_after = self.validation.clock.count
            return
        # Once, after the session's first validation, if none had run at the decision.
        if self._revise_after == 0 and self.validation.clock.count and step < self.chosen:
            self._revise_after = None
            self._decide(step, revision=True)

    def on_epoch_end(self, epoch, logs=None):
        # One epoch of fit is one logging interval (the same step on every worker).
        if self.reused or self.chosen is None or self._last_check is None:
            return
        step = self._step()
        if self._last_check[2] < step < self.chosen:
            self._recheck(step)

    def on_train_end(self, logs=None):
        step = self._step()
        used = self.now() - self.started
        head = f"time budget {self.minutes:g} min: "
        if self.chosen is None:
            self.say(f"{head}the run ended at step {step}, before the step time was measured "
                     f"(steps {self._first + self.skip + 1}-"
                     f"{self._first + self.skip + self.measure}); train.steps was not changed")
            return
        over = used - self.budget_seconds
        self.say(f"{head}trained to step {step} of the {self.chosen} chosen; this session "
                 f"took {used / 60:.1f} min" + (f", {over:.0f} s over the budget" if over > 0
                                                 else ""))

    def summary(self) -> dict:
        """The budget's outcome for the run's result (and the demo's summary)."""
        return dict(minutes=self.minutes, steps=self.chosen, train_steps=self.max_steps,
                    seconds_per_step=self.seconds_per_step, reused=self.reused,
                    seconds=self.now() - self.started)
