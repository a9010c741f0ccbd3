"""The run folder (`--model_dir`): its lock, its files, and whether a new start may resume it.

A run folder is precious: it holds weeks of training. Three rules keep it intact:

* **One writer.** `RunLock` holds `<model_dir>/.lock` (an `fcntl` lock, plus the holder's
  pid, host and a heartbeat written into it) while a training runs. A second training on
  the same folder is refused naming the holder. A lock left by a process that is gone (same
  host: the kernel released it; another host: no heartbeat for `STALE_AFTER_SECONDS`) is
  taken over, and that is said. Only the chief of a multi-worker run takes it; the other
  workers write into their own scratch folders and never wait for it.
* **Nothing rewritten before the run is known compatible.** `check_resume` compares the
  stored `config.yaml` and `labels.json` with the new config and dataset before anything is
  written: a change of the model (`model.*` keys other than `IMPLEMENTATION_KEYS`) or of the
  classes (their count, ids or names) is an `IncompatibleRunError` naming the keys; other
  changed keys (train.steps, log_every, the learning rate, data paths with the same
  classes, ...) are allowed and listed.
* **Whole files.** `config.yaml` and `labels.json` are written to a temporary file in the
  same folder and moved over the old one (`os.replace`), so a kill leaves the old or the new
  file, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

from cornernet_tf import config as config_lib
from cornernet_tf.errors import UserError

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 30.0  # how often the holder rewrites the lock's heartbeat
STALE_AFTER_SECONDS = 300.0  # another host's lock without a heartbeat for this long is stale
# model.* keys that choose how the same network is computed (same variables, same outputs):
# they may change on resume. Every other model.* key changes the model.
IMPLEMENTATION_KEYS = ("model.corner_pool_impl", "model.sync_batchnorm")
MAX_LISTED = 6  # differences named in a message; the rest are counted


class RunLockedError(UserError, RuntimeError):
    """Another training holds the run folder's lock (the message names its pid and host)."""


class IncompatibleRunError(UserError, ValueError):
    """The new config or dataset changes the model or the classes of the run it would resume."""


# --------------------------------------------------------------------------------------
# Whole-file writes
# --------------------------------------------------------------------------------------

def write_text_atomic(path: str, text: str) -> str:
    """Writes `text` to `path` through a temporary file in the same folder and `os.replace`.

    Returns:
      `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------------------
# Resume compatibility
# --------------------------------------------------------------------------------------

def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.num_classes": 4, ...}: the dotted keys of a nested dict and their values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def config_changes(stored: config_lib.Config, new: config_lib.Config) -> list[tuple[str, Any, Any]]:
    """(key, stored value, new value) of every config key that differs, in config order."""
    before, after = _leaves(stored.to_dict()), _leaves(new.to_dict())
    return [(k, before.get(k), after.get(k)) for k in after if before.get(k) != after.get(k)]


def _listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def class_differences(stored, new) -> list[str]:
    """How the classes of two LabelMaps differ: "class 1: id 2 'circle' -> id 2 'disc'"."""
    if stored.num_classes != new.num_classes:
        return [f"{stored.num_classes} classes -> {new.num_classes}"]
    return [f"class {i}: id {a} {n!r} -> id {b} {m!r}"
            for i, (a, n, b, m) in enumerate(zip(stored.category_ids, stored.names,
                                                  new.category_ids, new.names))
            if (a, n) != (b, m)]


def check_resume(cfg: config_lib.Config, model_dir: str, label_map,
                 say: Callable[[str], None] = print) -> list[tuple[str, Any, Any]]:
    """Compares the run's stored config.yaml and labels.json with the new ones; writes nothing.

    Args:
      cfg: the new, resolved config.
      model_dir: the run folder (its files may be absent: nothing to compare then).
      label_map: the new training split's LabelMap.
      say: prints the allowed changes (one line).

    Returns:
      The allowed changes (key, stored, new).

    Raises:
      IncompatibleRunError: a `model.*` key (not in IMPLEMENTATION_KEYS) or the classes
        differ; one line naming the keys and the first class differences.
      ConfigError: the stored config.yaml cannot be read as a config.
    """
    from cornernet_tf.data.coco import LabelMap  # data stage; the lock needs none of it
    config_path = os.path.join(model_dir, "config.yaml")
    labels_path = os.path.join(model_dir, "labels.json")
    changes = (config_changes(config_lib.load_config(config_path), cfg)
               if os.path.isfile(config_path) else [])
    model_changes = [c for c in changes
                     if c[0].startswith("model.") and c[0] not in IMPLEMENTATION_KEYS]
    classes = (class_differences(LabelMap.from_json(labels_path), label_map)
               if os.path.isfile(labels_path) else [])
    if model_changes or classes:
        parts = []
        if model_changes:
            parts.append("the model differs from its config.yaml: " + _listed(
                [f"{k} {_short(a)} -> {_short(b)}" for k, a, b in model_changes]))
        if classes:
            parts.append(f"the classes of {cfg.data.train_annotations} differ from its "
                         f"labels.json: " + _listed(classes))
        raise IncompatibleRunError(
            f"cannot resume {model_dir}: {'; '.join(parts)}. Train with the run's values, or "
            f"start a new --model_dir (nothing in {model_dir} was changed)")
    allowed = [c for c in changes if c not in model_changes]
    if allowed:
        say("resuming with changed config keys: " + _listed(
            [f"{k} {_short(a)} -> {_short(b)}" for k, a, b in allowed]))
    return allowed


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------

def _pid(record: dict) -> int:
    try:
        return int(record.get("pid") or 0)
    except (TypeError, ValueError):
        return 0


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (signal 0: nothing is sent)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """`<model_dir>/.lock`, held while a training writes into the folder.

    The lock is an `fcntl.flock` on the file (released by the kernel when the process dies,
    however it dies) and, inside the file, the holder's pid, host, start time and a
    heartbeat (rewritten every HEARTBEAT_SECONDS by a daemon thread). On one host the flock
    decides; a lock from another host (a shared filesystem, where flock may not reach) is
    taken as held until its heartbeat is STALE_AFTER_SECONDS old.

    Use as a context manager, or `acquire()` / `release()`.

    Attributes:
      path: the lock file.
      took_over: the stale holder's record ({"pid", "host", ...}) when one was replaced.
    """

    def __init__(self, model_dir: str, say: Callable[[str], None] = print):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.say = say
        self.took_over: Optional[dict] = None
        self._fd: Optional[int] = None
        self._flocked = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._created_folder = False

    def _record(self) -> dict:
        return dict(pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                record = json.loads(f.read(4096) or "null")
            return record if isinstance(record, dict) else None
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        """Takes the lock, or raises RunLockedError naming the holder.

        Raises:
          RunLockedError: a live training (this host) or a recent heartbeat (another host)
            holds it.
        """
        folder = os.path.dirname(self.path) or "."
        # A folder this lock creates is removed again by `release` if the run wrote
        # nothing else into it (a run refused before its first write leaves no trace).
        self._created_folder = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunLockedError(self._held_text(self._read())) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                raise
            self._flocked = False  # a filesystem without flock: the record decides alone
        previous = self._read()
        held = None
        if previous and previous.get("pid") != os.getpid():
            try:
                age = time.time() - float(previous.get("heartbeat", 0))
            except (TypeError, ValueError):
                age = float("inf")  # an unreadable record holds nothing
            same_host = previous.get("host") == socket.gethostname()
            if same_host and not self._flocked:
                held = None if not _pid(previous) or not process_alive(_pid(previous)) \
                    or age >= STALE_AFTER_SECONDS else age
            elif not same_host and age < STALE_AFTER_SECONDS:
                held = age
        if held is not None:
            if self._flocked:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunLockedError(self._held_text(previous, held))
        self._fd = fd
        if previous and previous.get("pid") != os.getpid():
            self.took_over = previous
            self.say(f"took over the lock of {os.path.dirname(self.path)} left by pid "
                     f"{previous.get('pid')} on {previous.get('host')} (that process is gone)")
        self._write()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def _held_text(self, record: Optional[dict], age: Optional[float] = None) -> str:
        folder = os.path.dirname(self.path)
        who = (f"pid {record.get('pid')} on host {record.get('host')}" if record
               else "another process")
        beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
        return (f"{folder} is in use by another training ({who}{beat}; lock file "
                f"{self.path}): stop it, or train into another --model_dir")

    def _write(self) -> None:
        data = json.dumps(self._record()).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except OSError:  # a full disk must not kill training; the flock still holds
                pass

    def release(self) -> None:
        """Stops the heartbeat, empties the file and lets go of it (idempotent). A folder
        that `acquire` created and that holds nothing but the lock is removed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            folder = os.path.dirname(self.path) or "."
            if self._created_folder and os.listdir(folder) == [LOCK_FILE]:
                # Removed while still held, so no other start can be waiting on this file.
                os.remove(self.path)
                os.rmdir(folder)
            if self._flocked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
