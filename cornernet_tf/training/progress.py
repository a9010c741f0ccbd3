"""The training loop's one progress display: a live line in a terminal, plain lines in a log.

`fit` runs with `verbose=0`; `ProgressDisplay` is the only thing that reports steps.

- In a terminal (the stream's `isatty()`), one line is redrawn in place: step, a bar, the
  loss terms, images/s and the ETA. Messages (validation results, errors) print above it.
- Otherwise (a log file, a pipe, CI), one plain line per `train.log_every` steps with every
  loss term by its full name, the learning rate, images/s and the ETA; no ANSI codes and no
  carriage returns. When `log_every` steps take long (a big model on a CPU), a line also
  comes after every `LOG_SECONDS` (30 s) without one, marked "(so far)": the loss terms
  are then the running means of the interval so far.

The first step traces and compiles the training graph and fills the input pipeline; it can
take a minute on a CPU while the others take a fraction of a second. The display says so
("building the training graph ...", then "first step (graph built) in 41.2 s") and leaves
that step out of images/s and of the ETA.

images/s counts the time inside training steps only (input pipeline wait included;
checkpoints, validation and TensorBoard writes between steps excluded). The ETA is the
remaining steps times the wall time per step since the first step (checkpoints and
TensorBoard writes included), validation excluded, plus the validations still to come
times the mean time of those done (none is counted before the first one has run).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Callable, Optional, TextIO

import keras

from cornernet_tf.keys import LOSS_KEYS


def format_duration(seconds: float) -> str:
    """`h:mm:ss` (hours unbounded), or `--` when unknown (NaN/inf)."""
    if not math.isfinite(seconds):
        return "--"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ValidationClock:
    """Time spent in validations during training, shared by the one who spends it
    (`callbacks.ValidationCallback`, which adds each evaluation's seconds) and the one who
    forecasts (`ProgressDisplay`, whose ETA leaves validation out of the per-step time and
    adds the validations still to come).

    Args:
      every: train.eval_every (> 0).
      total_steps: train.steps.
    """

    def __init__(self, every: int, total_steps: int):
        self.every = every
        self.total_steps = total_steps
        self.seconds = 0.0  # spent in evaluations so far
        self.count = 0  # evaluations done

    def add(self, seconds: float) -> None:
        """Records one evaluation that took `seconds`."""
        self.seconds += seconds
        self.count += 1

    def remaining_seconds(self, step: int) -> float:
        """The evaluations after `step` times the mean time of those done (0: none yet)."""
        if not self.count:
            return 0.0
        count = self.total_steps // self.every - step // self.every
        return count * self.seconds / self.count


class ProgressDisplay(keras.callbacks.Callback):
    """Reports training progress on `stream`; keeps one history entry per logging interval.

    It also adds `learning_rate` and `images_per_second` to the epoch logs (one epoch of
    `fit` is one logging interval), so TensorBoard records them.

    Args:
      total_steps: train.steps.
      batch_size: the global batch (images per step).
      stream: where to write; None: `sys.stdout` as it is when training begins.
      live: True: the live line; False: plain lines; None: live when `stream.isatty()`.
      clock: seconds, monotonic (tests pass a fake one).
      validation: the run's `ValidationClock` (its `seconds` so far and
        `remaining_seconds(step)` go into the ETA), or None.
      log_every: the steps of a logging interval; a step ending one prints its own line,
        so no timed line is added there (0: not known).

    Attributes:
      history: one dict per logging interval: "step", the epoch logs (loss terms,
        "learning_rate", "images_per_second": NaN when the interval held only the first step).
      first_step_seconds: the first step's time (graph building included), or None.
    """

    REDRAW_SECONDS = 0.2  # the live line is redrawn at most this often (and at interval ends)
    LOG_SECONDS = 30.0  # plain output: a line at least this often, whatever train.log_every

    def __init__(self, total_steps: int, batch_size: int, stream: Optional[TextIO] = None,
                 live: Optional[bool] = None, clock: Callable[[], float] = time.perf_counter,
                 validation=None, log_every: int = 0):
        super().__init__()
        self.log_every = log_every
        self.validation = validation
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._stream_arg = stream
        self._live_arg = live
        self.clock = clock
        self.stream: TextIO = stream or sys.stdout
        self.live = False
        self.history: list[dict] = []
        self.first_step_seconds: Optional[float] = None
        self._shown = ""  # the live line currently on screen ("" when none)
        self._reset()

    def _reset(self) -> None:
        self._t_begin = self._t_batch = self._t_first_end = self._t_drawn = 0.0
        self._t_line = 0.0  # when the last plain line was printed
        self._step_first_end = 0
        self._interval_seconds = 0.0  # time inside steps since the last interval end
        self._interval_steps = 0
        self._batch_logs: dict = {}

    # ------------------------------------------------------------------ output

    def message(self, text: str) -> None:
        """Prints `text` on its own line(s); the live line, if any, is redrawn below it."""
        self._t_line = self.clock()
        shown = self._shown
        if shown:
            self.stream.write("\r\x1b[K")
        self.stream.write(text.rstrip("\n") + "\n")
        self._shown = ""
        if shown:
            self._draw(shown)
        self.stream.flush()

    def close(self) -> None:
        """Ends the live line (at the end of training, or when `fit` raised)."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = ""

    def _draw(self, text: str) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns
        text = text[:max(columns - 1, 20)]  # a wrapped line could not be redrawn in place
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = text

    # ------------------------------------------------------------------ numbers

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _eta(self, step: int) -> float:
        """Remaining steps x wall time per step since the first step, validation apart, plus
        the validations to come (NaN: not known yet)."""
        done = step - self._step_first_end
        if self.first_step_seconds is None or done <= 0:
            return float("nan")
        wall = self.clock() - self._t_first_end
        if self.validation is None:
            return (self.total_steps - step) * wall / done
        per_step = max(wall - self.validation.seconds, 0.0) / done
        return (self.total_steps - step) * per_step + self.validation.remaining_seconds(step)

    def _rate(self, seconds: float, steps: int) -> float:
        return steps * self.batch_size / seconds if steps and seconds > 0 else float("nan")

    @staticmethod
    def _terms(logs: dict, short: bool) -> str:
        items = [(k, float(v)) for k, v in logs.items() if k in LOSS_KEYS]
        items.sort(key=lambda kv: LOSS_KEYS.index(kv[0]))
        if short:  # the total first: a narrow terminal cuts the line's end
            items.sort(key=lambda kv: kv[0] != LOSS_KEYS[-1])
            return " ".join(f"{k.removesuffix('_loss')} {v:.3f}" for k, v in items)
        return "  ".join(f"{k} {v:.4f}" for k, v in items)

    def _live_line(self, step: int) -> str:
        width = 12
        filled = int(width * min(step / max(self.total_steps, 1), 1.0))
        rate = self._rate(self._interval_seconds, self._interval_steps)
        rate_text = f"{rate:.1f}" if math.isfinite(rate) else "--"
        # Step, rate and ETA first: a narrow terminal cuts the loss terms, not them.
        return (f"step {step}/{self.total_steps} [{'=' * filled}{'.' * (width - filled)}] "
                f"{rate_text} img/s  ETA {format_duration(self._eta(step))}  "
                f"{self._terms(self._batch_logs, short=True)}")

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        self.stream = self._stream_arg or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if self._live_arg is None else self._live_arg
        self._reset()
        self.first_step_seconds = None
        self._t_begin = self.clock()
        self._step_first_end = self._step()
        text = "building the training graph (the first step traces and compiles it) ..."
        if self.live:
            self._draw(text)
        else:
            self.message(text)

    def on_train_batch_begin(self, batch, logs=None):
        self._t_batch = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self._batch_logs = dict(logs or {})
        step = self._step()
        if self.first_step_seconds is None:
            self.first_step_seconds = now - self._t_begin
            self._t_first_end, self._step_first_end = now, step
            if self.live:
                self._shown = ""
                self.stream.write("\r\x1b[K")
            self.message(f"first step (graph built) in {self.first_step_seconds:.1f} s")
        else:
            self._interval_seconds += now - self._t_batch
            self._interval_steps += 1
        if self.live and (now - self._t_drawn >= self.REDRAW_SECONDS
                          or step >= self.total_steps):
            self._draw(self._live_line(step))
            self._t_drawn = now
        elif (not self.live and self._interval_steps and step < self.total_steps
              and not (self.log_every and step % self.log_every == 0)
              and now - self._t_line >= self.LOG_SECONDS):
            self._plain_line(step, self._batch_logs, "  (so far)")

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        rate = self._rate(self._interval_seconds, self._interval_steps)
        lr = self._learning_rate()
        if logs is not None:
            logs["learning_rate"] = lr
            logs["images_per_second"] = rate
        entry = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append(dict(step=step, **entry))
        if self.live:
            self._draw(self._live_line(step))
            self._t_drawn = self.clock()
        else:
            self._plain_line(step, logs or {})
        self._interval_seconds, self._interval_steps = 0.0, 0

    def _plain_line(self, step: int, logs: dict, note: str = "") -> None:
        rate = self._rate(self._interval_seconds, self._interval_steps)
        rate_text = f"{rate:.1f}" if math.isfinite(rate) else "--"
        self.message(f"step {step}/{self.total_steps}  {self._terms(logs, False)}  "
                     f"lr {self._learning_rate():.3g}  {rate_text} img/s  "
                     f"ETA {format_duration(self._eta(step))}{note}")

    def on_train_end(self, logs=None):
        self.close()
