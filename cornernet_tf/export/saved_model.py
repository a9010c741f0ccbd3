"""SavedModel export in TensorFlow Serving layout: `<export_dir>/<name>/<version>/`.

The model is written with `keras.export.ExportArchive` (track the model, add endpoints,
write out). A Keras 3 model held as a plain attribute of a `tf.Module` and saved with
`tf.saved_model.save` loads in Python but fails in `saved_model_cli run` and in TF Serving
with "Could not find variable ..." (tensorflow#72963, keras#20095); the archive tracks the
variables so that the C++ session loader finds them.

Each export gets the next integer version (TF Serving serves the highest); an existing
version is never overwritten. The version folder is written under a temporary name and
renamed when complete, so a server watching `<export_dir>/<name>/` never sees half a model.
An interrupted export leaves that folder (`.tmp-<version>-<pid>`) behind; the next export
into the same place removes the ones whose process is gone (`remove_stale_temporaries`).
Beside `saved_model.pb` the version folder holds `labels.json` and `config.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Optional

import keras
import tensorflow as tf

from cornernet_tf.errors import MachineError
from cornernet_tf.training.checkpoints import os_error_text
from cornernet_tf.inference.decode import resolved_params
from cornernet_tf.inference.detector import build_detector
from cornernet_tf.keys import (BR_HEATMAP, DETECTION_BOXES, DETECTION_CLASSES, DETECTION_SCORES,
                               NUM_DETECTIONS, TL_HEATMAP)

IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
BYTES_SPEC = tf.TensorSpec([None], tf.string, name="images")


# `.tmp-<version>-<pid>`: the temporary name of a version folder being written.
_TEMPORARY = re.compile(r"\.tmp-(\d+)-(\d+)")
# A temporary folder of a live process is left alone unless nothing in it changed for this
# long (its pid was reused by another program); a dead process's is removed once nothing in
# it changed for STALE_QUIET_SECONDS (on a folder shared between machines, a pid that is not
# alive here may be an export running elsewhere: it is still writing, so it is recent).
STALE_AGE_SECONDS = 24 * 3600
STALE_QUIET_SECONDS = 60


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _last_change(path: str) -> float:
    """The newest modification time of a folder and everything in it (links not followed)."""
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                pass
    return newest


def remove_stale_temporaries(base_dir: str, now: Optional[float] = None) -> list[str]:
    """Removes the `.tmp-<version>-<pid>` folders that interrupted exports left in base_dir.

    Only real folders (not links) whose name matches exactly are candidates; one is removed
    when its process is not alive and nothing in it changed for STALE_QUIET_SECONDS, or when
    nothing in it changed for STALE_AGE_SECONDS whatever its pid. Anything else in base_dir
    (a user's folder, a version, a file) is never touched.

    Args:
      base_dir: `<export_dir>/<name>`.
      now: the current time (tests); default time.time().

    Returns:
      The folders removed.
    """
    if not os.path.isdir(base_dir):
        return []
    now = time.time() if now is None else now
    removed = []
    for name in sorted(os.listdir(base_dir)):
        match = _TEMPORARY.fullmatch(name)
        path = os.path.join(base_dir, name)
        if not match or os.path.islink(path) or not os.path.isdir(path):
            continue
        quiet = now - _last_change(path)
        pid = int(match.group(2))
        dead = pid != os.getpid() and not _pid_alive(pid)
        if (dead and quiet >= STALE_QUIET_SECONDS) or quiet >= STALE_AGE_SECONDS:
            shutil.rmtree(path)
            logging.getLogger(__name__).info("removed %s, left by an interrupted export", path)
            removed.append(path)
    return removed


def next_version(base_dir: str) -> int:
    """1 + the highest integer-named folder in base_dir (1 when there is none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(d) for d in os.listdir(base_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def write_archive(model: keras.Model, endpoints: dict, path: str) -> None:
    """Writes a SavedModel whose signatures are `endpoints` {name: (fn, [TensorSpec])}.

    `model` is not passed to `ExportArchive.track`: `write_out` saves the variables the
    endpoints capture, which is all the signatures need (checked in the tests with
    saved_model_cli run). `track` would add the Keras variable wrappers as well, two
    objects per weight, so every weight was stored (and restored, in TF Serving too) twice
    (keras-team/keras#23553, open). `track` is needed only for lookup tables (none here)
    and for the `variables` collections of the reloaded object (unused).

    Args:
      model: the built model whose variables the endpoints use (built: its variables exist).
      endpoints: {signature name: (function, [tf.TensorSpec])}.
      path: the SavedModel folder to write.
    """
    if not model.built:
        raise ValueError("write_archive: the model must be built before export")
    archive = keras.export.ExportArchive()
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
    archive.write_out(path, verbose=False)


class ExportWriteError(MachineError):
    """Writing an export failed on the machine's side (a full disk); exit 1, not a traceback."""


def export_saved_model(model: keras.Model, cfg, export_dir: str, label_map,
                       version: Optional[int] = None, detector=None,
                       best_f1: Optional[dict] = None) -> str:
    """Exports `model` with preprocessing and decode inside, for TF Serving.

    Args:
      model: a trained CornerNet.
      cfg: the resolved Config (model sizes, decode parameters, export name and threshold).
      export_dir: the models' root; the export goes to `<export_dir>/<cfg.export.name>/<v>/`.
      label_map: the dataset's LabelMap (written as labels.json).
      version: force a version number (must not exist yet); default: the next one.
      detector: `build_detector(model, cfg)` (None: built here).
      best_f1: the run's evaluation's best-F1 operating point ({"threshold", "f1", ...,
        "source": the metrics.json}), written to serving.json as predict's default score
        threshold (`best_f1_score_threshold`).

    Returns:
      The version folder written.

    Raises:
      FileExistsError: `version` given and already exported.
      ExportWriteError: a write failed (a full disk); nothing is left behind.
    """
    base = os.path.join(export_dir, cfg.export.name)
    version = next_version(base) if version is None else int(version)
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"export version {final} exists; versions are never overwritten")
    os.makedirs(base, exist_ok=True)
    remove_stale_temporaries(base)
    tmp = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fns = detector or build_detector(model, cfg)
    try:
        write_archive(model, {"serving_default": (fns.serve_images, [IMAGES_SPEC]),
                              "serving_bytes": (fns.serve_bytes, [BYTES_SPEC]),
                              "serving_heatmaps": (fns.serve_heatmaps, [IMAGES_SPEC])}, tmp)
        label_map.write(os.path.join(tmp, "labels.json"))
        with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
        with open(os.path.join(tmp, "serving.json"), "w", encoding="utf-8") as f:
            description = serving_description(cfg)
            if best_f1 is not None:
                description[BEST_F1_KEY] = best_f1
            json.dump(description, f, indent=2)
        os.rename(tmp, final)
    except (OSError, tf.errors.OpError) as e:  # a full disk: TensorFlow raises its own errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportWriteError(f"export: writing {final} failed: {os_error_text(e)}; the "
                               f"partial folder was removed, no version was added\nfree space "
                               f"under {export_dir} and run the same command again") from e
    return final


# serving.json's key of the evaluation's best-F1 operating point (predict's default threshold)
BEST_F1_KEY = "best_f1_score_threshold"


def serving_description(cfg) -> dict:
    """What the exported graph does, for humans and clients (written as serving.json)."""
    d = resolved_params(cfg.decode)  # k, max_detections as the graph has them
    return {
        "signatures": {
            "serving_default": {"inputs": {"images": "uint8 [B, H, W, 3] RGB"}},
            "serving_bytes": {"inputs": {"images": "string [B] encoded JPEG/PNG"}},
            "serving_heatmaps": {"inputs": {"images": "uint8 [B, H, W, 3] RGB"},
                                 "outputs": f"{TL_HEATMAP}, {BR_HEATMAP} [B, h, w, C] "
                                            "probabilities, valid_fraction [B, 2]"},
        },
        "outputs": {
            DETECTION_BOXES: "float32 [B, N, 4] normalised [ymin, xmin, ymax, xmax]",
            DETECTION_SCORES: "float32 [B, N], descending",
            DETECTION_CLASSES: "float32 [B, N], 1-based label ids = labels.json 'class' + 1",
            NUM_DETECTIONS: "int32 [B]",
        },
        "max_image_pixels": cfg.export.max_image_pixels,
        "tflite_input": f"uint8 [1, {cfg.model.input_size[0]}, {cfg.model.input_size[1]}, 3] "
                        "RGB, fitted by the caller as serving_default fits (export/README.md)",
        "max_detections": d.max_detections,
        "network_input_size": list(cfg.model.input_size),
        "preprocessing": "resize keeping aspect ratio, zero-pad bottom/right to the input size",
        "decode": {"k": d.k, "ae_threshold": d.ae_threshold, "nms_kernel": d.nms_kernel,
                   "num_pairs": d.num_pairs, "soft_nms_sigma": d.soft_nms_sigma,
                   "soft_nms_score_floor": d.score_threshold},
        "score_threshold": cfg.export.score_threshold,
        "flip_test": False,
    }
