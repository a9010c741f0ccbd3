"""Stopping training cleanly: Ctrl-C, SIGTERM, a lost worker, and workers' scratch folders.

`loop.train` runs inside `SigtermAsInterrupt`, so SIGTERM (what `docker stop`, Kubernetes
and Slurm send before SIGKILL) raises `TrainingInterrupted` as Ctrl-C raises
KeyboardInterrupt. `raise_stopped` turns whatever stopped `fit` into one line saying what
was saved: a `TrainingInterrupted` (exit 130 / 143 on the command line) or, in a
multi-worker run whose peer stopped answering, a `WorkerLostError` (exit 1) naming the
worker. Every wait here is bounded: the save after a lost worker by SAVE_TIMEOUT_SECONDS
(it runs on a daemon thread; the collective runtime may be stuck), the end-of-run barrier
by END_BARRIER_SECONDS.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from typing import Optional

import keras
import tensorflow as tf

from cornernet_tf import compat
from cornernet_tf.errors import MachineError
from cornernet_tf.training.callbacks import CheckpointCallback
from cornernet_tf.training.run_folder import process_alive


SCRATCH_PREFIX = "cornernet-worker-"  # a non-chief worker's folder: <tmp>/<prefix><pid>-*
SAVE_TIMEOUT_SECONDS = 60.0  # a save after a lost worker / a signal in multi-worker runs


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (SIGINT) or SIGTERM, after saving what it could.

    A KeyboardInterrupt, so a caller that stops on Ctrl-C stops on it too. The message is one
    line: the signal, the step, the checkpoint written (or why none) and how to resume.

    Attributes:
      signum: the signal number; exit_code: 128 + signum (130, 143), the shell's convention.
    """

    def __init__(self, signum: int, text: str = ""):
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        self.detailed = bool(text)  # False: raised by the handler, not yet told what was saved
        super().__init__(text or f"training interrupted by {self.signal_name}")


class WorkerLostError(MachineError):
    """A worker of a multi-worker run stopped answering; the chief stopped (exit 1).

    The message is one line: the lost worker (task index and address), what was saved and
    how to resume. `hard_exit`: the collective runtime is broken, so the command line leaves
    with `os._exit` once the line is out (TensorFlow's teardown would add tracebacks).
    """

    hard_exit = True


def _on_sigterm(signum, frame) -> None:
    # One save per stop: a second SIGTERM (an impatient supervisor) must not cut it short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise TrainingInterrupted(signum)


class SigtermAsInterrupt:
    """While active (main thread only), SIGTERM raises TrainingInterrupted like Ctrl-C."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _lost_task(error: BaseException) -> Optional[tuple[str, int]]:
    """The (job, index) of the peer a collective-op error blames, ("", -1) when it names no
    other task, None when `error` is not a lost peer (UnavailableError, DeadlineExceeded, or
    a collective abort)."""
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                              tf.errors.CancelledError, tf.errors.AbortedError,
                              tf.errors.InternalError)):
        return None
    text = str(error)
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) \
            and "ollective" not in text and "heartbeat" not in text:
        return None
    _, own = _cluster()
    tasks = [(job, int(i)) for job, i in re.findall(r"/job:(\w+)/replica:0/task:(\d+)", text)]
    others = [t for t in tasks if t != own]
    return others[0] if others else ("", -1)


def _cluster() -> tuple[dict, tuple[str, int]]:
    """({job: [addresses]}, (this task's job, index)) from TF_CONFIG; ({}, ("", -1)) without."""
    try:
        spec = json.loads(os.environ.get("TF_CONFIG", "{}"))
        return dict(spec["cluster"]), (str(spec["task"]["type"]), int(spec["task"]["index"]))
    except (ValueError, KeyError, TypeError):
        return {}, ("", -1)


def _save_within(checkpoints: CheckpointCallback, seconds: float) -> tuple[Optional[str], str]:
    """`checkpoints.save()` in a daemon thread, waited for `seconds` at most.

    Returns:
      (the path saved or None, why not: "" when saved).
    """
    result: dict = {}

    def save():
        try:
            result["path"] = checkpoints.save()
        except BaseException as e:  # noqa: BLE001 - reported below, never raised
            result["error"] = e

    thread = threading.Thread(target=save, name="interrupt-save", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, f"the save did not finish within {seconds:.0f} s"
    if "error" in result:
        return None, f"the save failed ({type(result['error']).__name__})"
    if not result.get("path"):
        return None, "the weights were not saved (not finite, or an earlier write failed)"
    return result["path"], ""


END_BARRIER_SECONDS = 120.0


def finish_together() -> None:
    """Waits (bounded) until every worker has finished its last step and save.

    Without it a worker that is done first exits while the chief still saves, and the
    chief's coordination service reports the worker as crashed ("The tasks have crashed")
    at the end of a clean run. A barrier that fails (a worker lost after the last step)
    only warns: the run is complete and saved.
    """
    try:
        compat.wait_at_barrier("cornernet_tf_train_end", END_BARRIER_SECONDS)
    except tf.errors.OpError as e:
        print(f"warning: not every worker reached the end of training within "
              f"{END_BARRIER_SECONDS:.0f} s ({type(e).__name__}); this run's "
              f"checkpoints are complete", flush=True)


def clean_stale_scratch(say=print) -> list[str]:
    """Removes non-chief scratch folders (`<tmp>/cornernet-worker-<pid>-*`) whose process is
    gone (a killed worker cannot clean up after itself). Returns the folders removed."""
    removed = []
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), SCRATCH_PREFIX + "*")):
        match = re.match(re.escape(SCRATCH_PREFIX) + r"(\d+)-", os.path.basename(folder))
        if not match or int(match.group(1)) == os.getpid() or process_alive(int(match.group(1))):
            continue
        try:
            if os.stat(folder).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        say(f"removed {len(removed)} scratch folder(s) of workers that are gone: "
            f"{', '.join(removed)}")
    return removed


def raise_stopped(error: BaseException, model: keras.Model, checkpoints: CheckpointCallback,
                  multi_worker: bool) -> None:
    """Saves what it can after `fit` stopped on `error`, then raises what the user sees.

    Raises:
      WorkerLostError: a multi-worker run whose peer stopped answering (one line).
      TrainingInterrupted: Ctrl-C or SIGTERM (one line: the step, what was saved).
      The original error otherwise (after "interrupted: saved <path>").
    """
    at = int(model.optimizer.iterations.numpy())
    lost = _lost_task(error) if multi_worker else None
    if checkpoints.model is None:
        path, why = None, "training had not started"
    elif multi_worker:
        path, why = _save_within(checkpoints, SAVE_TIMEOUT_SECONDS)
    else:
        try:
            path = checkpoints.save()
            why = "" if path else "the weights were not saved (not finite)"
        except KeyboardInterrupt:  # a second Ctrl-C: the user wants out now
            path, why = None, "a second interrupt stopped the save"
    saved = (f"saved {path}" if path else
             f"{why}; the last good checkpoint is {checkpoints.last_good or 'none yet'}")
    if lost is not None:
        job, index = lost
        addresses = _cluster()[0].get(job, [])
        who = (f"{job} {index} ({addresses[index]})" if 0 <= index < len(addresses)
               else "a worker (TensorFlow did not say which)")
        raise WorkerLostError(
            f"{who} stopped answering at step {at}; training stopped: {saved}. Restart "
            f"every worker with the same command to resume "
            f"({type(error).__name__}; --verbose shows it)") from error
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        raise TrainingInterrupted(
            signum, f"training interrupted by {signal.Signals(signum).name} at step "
                    f"{at}: {saved}; rerun the same command to resume") from None
    if path:
        print(f"interrupted: saved {path}", flush=True)
    raise error
