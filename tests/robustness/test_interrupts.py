"""Signals and lost workers stop training with one line and the work saved (issue 21, 6 and 9).

SIGTERM (what `docker stop`, Kubernetes and Slurm send) and Ctrl-C (SIGINT) save a
checkpoint of the current step and end `main.py --mode=train` with one line naming it and
the exit code of the signal (143, 130), without a traceback. A killed worker of a
multi-worker run leaves the chief with one line naming the lost worker, what was saved and
how to resume; its scratch folder is removed by the next start.

Each case runs `main.py` (or tests/support/train_worker.py) in a subprocess; every wait has
a deadline.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import tensorflow as tf

from cornernet_tf.training import checkpoints as ckpt_lib
from cornernet_tf.training import interrupts
from cornernet_tf.data.synthetic import generate_shapes_dataset
from tests.support.ports import free_ports
from tests.support.training import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "support", "train_worker.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("interrupts") / "shapes")
    generate_shapes_dataset(out, 16, 4, (64, 64), 4, seed=0)
    return out


class Lines:
    """A subprocess's stdout read line by line on a thread, waited for with deadlines."""

    def __init__(self, proc):
        self.proc, self.lines, self._queue = proc, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text, seconds=300):
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {seconds} s:\n"
                             + "".join(self.lines[-30:]))


def popen(args, err_path):
    """stdout piped (read by `Lines`), stderr into a file (it cannot fill a pipe)."""
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=open(err_path, "w"), text=True)
    proc.err_path = err_path
    return proc


def start_training(cfg, tmp_path, name="run"):
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(cfg.to_yaml())
    model_dir = str(tmp_path / name)
    args = [sys.executable, "main.py", "--mode=train", f"--config={config_path}",
            f"--model_dir={model_dir}"]
    return popen(args, tmp_path / f"{name}.err"), model_dir, args


def finish(proc, seconds=120):
    """Waits for the process (killed after `seconds`); returns its stderr."""
    try:
        proc.wait(timeout=seconds)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    with open(proc.err_path) as f:
        return f.read()


def iterations(path):
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map()
            if k.startswith("optimizer/") and "iterations" in k]
    return int(reader.get_tensor(keys[0]))


def error_lines(err):
    """stderr without TensorFlow's own C++ log lines (`E0000 ...`, `WARNING: All log...`)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith(
        ("E0000", "W0000", "I0000", "WARNING: All log messages"))]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_ends_in_one_line(data_dir, tmp_path, sig):
    cfg = tiny_config(data_dir, ["train.steps=400", "train.log_every=2",
                                 "train.checkpoint_every=1000"])
    proc, model_dir, args = start_training(cfg, tmp_path)
    lines = Lines(proc)
    try:
        lines.wait_for("step 2/400")
        proc.send_signal(sig)
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    folder = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    saved = tf.train.latest_checkpoint(folder)
    assert saved, "nothing was saved"
    step = int(saved.rsplit("-", 1)[1])
    assert 2 <= step < 400 and iterations(saved) == step  # the step it stopped at
    assert error_lines(err) == [f"error: training interrupted by {name} at step {step}: "
                                f"saved {saved}; rerun the same command to resume"], err
    assert open(os.path.join(model_dir, ".lock")).read() == ""  # released
    if sig == signal.SIGTERM:  # the same command resumes from it (2 more steps here)
        resumed = subprocess.run(args + [f"--set=train.steps={step + 2}"], cwd=REPO, env=ENV,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming from {saved} (step {step})" in resumed.stdout
        assert f"train.steps 400 -> {step + 2}" in resumed.stdout
        assert f"trained to step {step + 2};" in resumed.stdout


@pytest.mark.slow
def test_sigterm_before_the_first_step_says_nothing_was_saved(data_dir, tmp_path):
    """The variant: the signal arrives while the data is being loaded."""
    cfg = tiny_config(data_dir, ["train.steps=400", "train.log_every=2"])
    proc, model_dir, _ = start_training(cfg, tmp_path)
    lines = Lines(proc)
    try:
        lines.wait_for("instances_train.json:")
        proc.send_signal(signal.SIGTERM)
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    if any("step 2/400" in line or "first step" in line for line in lines.lines):
        pytest.fail("the signal came after the first step; the test did not test its case")
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert error_lines(err) == ["error: training interrupted by SIGTERM before its first "
                                "step: nothing to save; rerun the same command to start "
                                "again"], err
    assert not os.path.exists(os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR))
    assert not os.path.exists(os.path.join(model_dir, "config.yaml"))  # stopped before it


def test_scratch_folders_of_dead_workers_are_removed_and_live_ones_kept(capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    dead_pid = int(dead.stdout)
    stale = tempfile.mkdtemp(prefix=f"{interrupts.SCRATCH_PREFIX}{dead_pid}-")
    with open(os.path.join(stale, "ckpt-2.index"), "wb") as f:
        f.write(b"x" * 1000)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tempfile.mkdtemp(prefix=f"{interrupts.SCRATCH_PREFIX}{live_proc.pid}-")
    other = tempfile.mkdtemp(prefix="cornernet-something-else-")
    try:
        removed = interrupts.clean_stale_scratch(say=print)
        assert stale in removed and not os.path.exists(stale)
        assert os.path.isdir(live) and os.path.isdir(other)
        assert "workers that are gone: " in capsys.readouterr().out
    finally:
        live_proc.kill()
        live_proc.wait(timeout=30)
        for folder in (stale, live, other):
            if os.path.isdir(folder):
                os.rmdir(folder)


@pytest.mark.slow
def test_a_killed_worker_leaves_the_chief_with_one_line(data_dir, tmp_path):
    ports = free_ports(2)
    cfg = tiny_config(data_dir, ["train.strategy=multi_worker", "train.steps=400",
                                 "model.sync_batchnorm=true", "train.log_every=2",
                                 "train.checkpoint_every=2"])
    config_path = tmp_path / "mw.yaml"
    config_path.write_text(cfg.to_yaml())
    model_dir = str(tmp_path / "run")
    procs = [popen([sys.executable, WORKER, "cli_worker", str(i), ",".join(map(str, ports)),
                    str(config_path), model_dir], tmp_path / f"w{i}.err") for i in range(2)]
    chief, worker = procs
    Lines(worker)  # keeps its stdout pipe drained
    try:
        Lines(chief).wait_for("step 2/400", seconds=600)
        scratch = [f for f in os.listdir(tempfile.gettempdir())
                   if f.startswith(f"{interrupts.SCRATCH_PREFIX}{worker.pid}-")]
        assert len(scratch) == 1  # the worker's, left behind by the kill
        worker.send_signal(signal.SIGKILL)
        err = finish(chief, seconds=300)  # bounded: the chief must notice and stop
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert chief.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    folder = os.path.join(model_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    newest = tf.train.latest_checkpoint(folder)
    # TensorFlow's own C++ log (multi-line "E0000 ... The tasks have crashed") comes first;
    # ours is the one "error:" line, and the last.
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err[-3000:]
    assert lines[-1].startswith(f"error: worker 1 (127.0.0.1:{ports[1]}) stopped answering at "
                               f"step "), lines[-1]
    assert f": saved {newest}. Restart every worker with the same command to resume" \
        in lines[-1], lines[-1]
    assert iterations(newest) == int(newest.rsplit("-", 1)[1])
    # The next start (any worker) removes the dead worker's scratch folder.
    assert os.path.isdir(os.path.join(tempfile.gettempdir(), scratch[0]))
    interrupts.clean_stale_scratch(say=lambda text: None)
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), scratch[0]))


# The chief's error after worker 1 was killed (TensorFlow 2.21, from the slow test's run).
LOST_WORKER_1 = (
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
    "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe "
    "tasks have crashed. Check the task logs for an earlier error, or scheduler events "
    "(e.g. preemption, eviction) to debug further.\nThe error could be from a previous "
    "operation. Restart your program to reset. [Op:__inference_one_step_on_data]")


def small_run(tmp_path):
    import keras
    from cornernet_tf.training.callbacks import CheckpointCallback
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(7)
    manager = ckpt_lib.checkpoint_manager(model, str(tmp_path), model.optimizer)
    checkpoints = CheckpointCallback(manager, every=100, say=lambda text: None)
    checkpoints.set_model(model)
    return model, checkpoints


@pytest.mark.parametrize("job", ["worker", "chief"])
def test_a_lost_peer_error_becomes_one_line_naming_it(tmp_path, monkeypatch, job):
    """The message and the save, without a cluster: the error a killed peer leaves."""
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {job: ["10.0.0.1:2222"], "worker": ["10.0.0.1:2223", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 0}}))
    model, checkpoints = small_run(tmp_path)
    text = LOST_WORKER_1 if job == "worker" else LOST_WORKER_1.replace(
        "/job:worker/replica:0/task:1", "/job:chief/replica:0/task:0")
    with pytest.raises(interrupts.WorkerLostError) as raised:
        interrupts.raise_stopped(tf.errors.UnavailableError(None, None, text), model,
                                 checkpoints, multi_worker=True)
    saved = os.path.join(str(tmp_path), "checkpoints", "ckpt-7")
    who = "worker 1 (10.0.0.2:2222)" if job == "worker" else "chief 0 (10.0.0.1:2222)"
    assert str(raised.value) == (
        f"{who} stopped answering at step 7; training stopped: saved {saved}. Restart every "
        f"worker with the same command to resume (UnavailableError; --verbose shows it)")
    assert iterations(saved) == 7


def test_a_save_that_hangs_after_a_lost_peer_is_given_up(tmp_path, monkeypatch):
    """Nothing waits forever: a save stuck in a collective is abandoned after the bound."""
    monkeypatch.setattr(interrupts, "SAVE_TIMEOUT_SECONDS", 1.0)
    model, checkpoints = small_run(tmp_path)
    monkeypatch.setattr(checkpoints, "save", lambda: time.sleep(30))
    start = time.perf_counter()
    with pytest.raises(interrupts.WorkerLostError) as raised:
        interrupts.raise_stopped(tf.errors.UnavailableError(None, None, LOST_WORKER_1), model,
                                 checkpoints, multi_worker=True)
    assert time.perf_counter() - start < 10
    assert ("a worker (TensorFlow did not say which) stopped answering at step 7; training "
            "stopped: the save did not finish within 1 s; the last good checkpoint is none "
            "yet.") in str(raised.value)


def test_an_ordinary_error_is_not_a_lost_worker(tmp_path):
    model, checkpoints = small_run(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        interrupts.raise_stopped(ValueError("boom"), model, checkpoints, multi_worker=True)
    assert tf.train.latest_checkpoint(os.path.join(str(tmp_path), "checkpoints"))


def test_a_second_ctrl_c_during_the_save_still_ends_in_one_line(tmp_path, monkeypatch):
    model, checkpoints = small_run(tmp_path)

    def interrupted_save():
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoints, "save", interrupted_save)
    with pytest.raises(interrupts.TrainingInterrupted) as raised:
        interrupts.raise_stopped(KeyboardInterrupt(), model, checkpoints, multi_worker=False)
    assert raised.value.exit_code == 130
    assert str(raised.value) == ("training interrupted by SIGINT at step 7: a second interrupt "
                                 "stopped the save; the last good checkpoint is none yet; "
                                 "rerun the same command to resume")
