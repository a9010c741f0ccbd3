"""Predict with an exported model (SavedModel folder or .tflite file) on image files.

For every image `<name>` (its file name, extension kept: `a.jpg`): `<output>/<name>.png`
with boxes, class names and scores drawn, and `<output>/<name>.json` with all detections;
with `heatmaps=True` also `<name>_tl_heatmap.png` and `<name>_br_heatmap.png` (the corner
heatmaps over the image; SavedModel exports only, through their `serving_heatmaps`
signature). `a.jpg` and `a.png` thus give `a.jpg.png` and `a.png.png`.

Predict never writes over a file it did not write. Before the model is loaded, every output
name is planned and the run is refused (nothing written) when two images would give the
same name (`dir1/a.jpg`, `dir2/a.jpg`), or a name is taken by a file that is not an
earlier output of predict: an input, a user's file. Earlier outputs are the files listed
in `<output>/.cornernet-predict-outputs` (json), which predict keeps; a re-run into the
same folder replaces them, and a folder scan skips them as inputs (so `--output` may be
the input folder). An image that cannot be read is reported and skipped; the others are
processed, and the run ends with a `PredictError` listing the skipped ones (exit code 2 on
the command line).
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from cornernet_tf import keys
from cornernet_tf.data import images as image_lib
from cornernet_tf.data.image_files import IMAGE_EXTENSIONS
from cornernet_tf.inference import preprocess
from cornernet_tf.evaluation import visualize
from cornernet_tf.data.image_files import decoder_message
from cornernet_tf.config.schema import DecodeConfig
from cornernet_tf.errors import UserError
from cornernet_tf.inference.exported import (ExportedDetector, read_class_names,
                                             read_max_image_pixels)
from cornernet_tf.inference.tiling import detect_tiled, tile_grid

MANIFEST = ".cornernet-predict-outputs"  # json: the outputs predict wrote into a folder


class PredictError(UserError, ValueError):
    """Predict refused to run (an output name collision), or skipped unreadable images.

    Attributes:
      written: the files written before the error ([] when refused).
      skipped: [(image path, reason)] of the images that could not be read.
    """

    def __init__(self, message: str, written=(), skipped=()):
        super().__init__(message)
        self.written = list(written)
        self.skipped = list(skipped)


def list_images(paths: Sequence[str], skip: Sequence[str] = ()) -> list[str]:
    """Image files named directly, or found (sorted) in named folders.

    Args:
      paths: files or folders.
      skip: files a folder scan leaves out (earlier outputs of predict); files named
        directly are always taken.

    Raises:
      FileNotFoundError: a path does not exist, or no image was found.
    """
    skip = {os.path.realpath(p) for p in skip}
    found = []
    for p in paths:
        if os.path.isdir(p):
            found += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(IMAGE_EXTENSIONS)
                            and os.path.realpath(os.path.join(p, f)) not in skip)
        elif os.path.lexists(p):
            found.append(p)  # read under files.read_file's rule (regular files only)
        else:
            raise FileNotFoundError(f"--images: {p!r} is neither a file nor a folder")
    if not found:
        raise FileNotFoundError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files in {list(paths)}")
    return found


# Predict's score threshold when the export carries no evaluation's best-F1 threshold.
FALLBACK_SCORE_THRESHOLD = 0.3


def default_score_threshold(model_path: str) -> tuple[float, str]:
    """Predict's score threshold without `--score_threshold`, and where it comes from.

    The best-F1 threshold of the run's evaluation when the export carries one (serving.json's
    `best_f1_score_threshold`, written by export from `<model_dir>/eval/metrics.json`) and
    that F1 is above 0, else `FALLBACK_SCORE_THRESHOLD` (at F1 0, no detection matched: the
    "best" threshold is any score, and often hides every detection).

    Returns:
      (threshold, a few words naming its source).
    """
    from cornernet_tf.export.saved_model import BEST_F1_KEY
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "serving.json")
    try:
        with open(path, encoding="utf-8") as f:
            best = json.load(f)[BEST_F1_KEY]
        threshold, f1 = float(best["threshold"]), float(best["f1"])
        source = best.get("source", "the run")
        if 0.0 < threshold <= 1.0 and f1 > 0.0:
            return threshold, f"the best F1 ({f1:.3f}) of the evaluation in {source}"
        if f1 == 0.0:
            return FALLBACK_SCORE_THRESHOLD, (f"the default: the evaluation in {source} "
                                              f"matched no detection (F1 0)")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return FALLBACK_SCORE_THRESHOLD, "the default: the export carries no evaluation"


def read_tiling_params(model_path: str) -> tuple[tuple[int, int], DecodeConfig]:
    """The tile size (the network input) and the decode parameters of an export, from its
    serving.json (`tiling.detect_tiled` merges with its soft-NMS parameters).

    Raises:
      FileNotFoundError: the export has no serving.json (exports of this project have one).
    """
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    path = os.path.join(folder, "serving.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tile needs the export's serving.json (network input size, "
                                f"decode parameters); not found: {path}")
    with open(path, encoding="utf-8") as f:
        serving = json.load(f)
    decode = serving["decode"]
    # the merge needs the last three; the others describe the graph where given
    given = {key: decode[key] for key in ("k", "ae_threshold", "nms_kernel", "num_pairs")
             if key in decode}
    return tuple(serving["network_input_size"]), DecodeConfig(
        **given, max_detections=serving["max_detections"],
        soft_nms_sigma=decode["soft_nms_sigma"], score_threshold=decode["soft_nms_score_floor"])


def predict(model_path: str, image_paths: Sequence[str], output_dir: str,
            heatmaps: bool = False, score_threshold: Optional[float] = None,
            verbose: bool = True, tile: bool = False, tile_overlap: float = 0.25) -> list[str]:
    """Runs an export on images and writes annotated PNGs and detection JSONs.

    Args:
      model_path: SavedModel version folder or .tflite file (labels.json beside it).
      image_paths: files or folders.
      output_dir: created if missing; may hold the inputs (outputs never replace a file
        predict did not write, see the module docstring).
      heatmaps: also write corner-heatmap overlays (SavedModel only).
      score_threshold: detections below are not drawn nor counted in the line per image
        (all are in the JSON, with the threshold); None: `default_score_threshold`.
      verbose: print the threshold and a line per image (detections per class, files).
      tile: images larger than the network input are also seen in overlapping tiles of
        its size at their own scale, merged by soft-NMS (`tiling.detect_tiled`).
      tile_overlap: fraction of a tile shared with its neighbour.

    Returns:
      The files written.

    Raises:
      FileNotFoundError: an image path is missing, no image was found, or model_path is
        neither a SavedModel folder nor a .tflite file.
      ValueError: heatmaps=True with a .tflite model (no serving_heatmaps signature).
      PredictError: an output name collides (nothing written), or images could not be read
        (raised after the others were processed; `.written` and `.skipped` say what).
    """
    _check_output_folder(output_dir)  # before anything is read or loaded
    earlier = _read_manifest(output_dir)
    paths = list_images(image_paths, skip=[os.path.join(output_dir, n) for n in earlier])
    plan = plan_outputs(paths, output_dir, heatmaps, earlier)  # before the model loads
    detector = ExportedDetector(model_path)
    if heatmaps and detector.is_tflite:
        raise ValueError(f"--heatmaps needs a SavedModel export (its serving_heatmaps "
                         f"signature); {model_path!r} is a .tflite file, which returns "
                         f"detections only")
    names = read_class_names(model_path)
    max_pixels = read_max_image_pixels(model_path)
    tiling = read_tiling_params(model_path) + (tile_overlap,) if tile else None
    if score_threshold is None:
        score_threshold, source = default_score_threshold(model_path)
    else:
        source = "--score_threshold"
    if verbose:
        print(f"predict: {len(paths)} images, score threshold {score_threshold:.3g} ({source})",
              flush=True)
    os.makedirs(output_dir, exist_ok=True)
    _write_manifest(output_dir, earlier | {os.path.basename(p) for ps in plan for p in ps})
    written, skipped = [], []
    for path, outputs in zip(paths, plan):
        try:
            image = image_lib.read_image(path, max_pixels).numpy()
        except (tf.errors.OpError, UserError, ValueError) as e:
            reason = decoder_message(e)
            sys.stderr.write(f"predict: skipped {path}: cannot read it: {reason}\n")
            skipped.append((path, reason))
            continue
        files, line = _predict_one(detector, image, path, outputs, names, model_path,
                                   heatmaps, score_threshold, tiling)
        written += files
        if verbose:
            print(f"predict: {path}: {line} -> {files[0]}", flush=True)
    if skipped:
        listed = ", ".join(p for p, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        raise PredictError(
            f"predict: {len(skipped)} of {len(paths)} images could not be read and were "
            f"skipped: {listed}\nwrote {len(written)} files for the other "
            f"{len(paths) - len(skipped)} to {output_dir}", written, skipped)
    return written


def _check_output_folder(output_dir: str) -> None:
    """Refuses an `--output` that cannot be a folder: it, or the nearest part of its path
    that exists, is a file (or a link to one)."""
    path = os.path.abspath(output_dir)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        found = "" if path == os.path.abspath(output_dir) else f": {path}"
        raise PredictError(f"predict: --output {output_dir}{found} exists and is not a folder; "
                           f"predict writes its files into a folder: choose another --output "
                           f"(nothing was loaded or written)")


def plan_outputs(paths: Sequence[str], output_dir: str, heatmaps: bool,
                 earlier: frozenset = frozenset()) -> list[tuple[str, ...]]:
    """The output files of each image, checked so that no file is written over.

    Args:
      paths: the input images.
      output_dir: where outputs go.
      heatmaps: whether heatmap overlays are written too.
      earlier: names in output_dir that earlier predict runs wrote (may be replaced).

    Returns:
      per image: (annotated png, json[, tl heatmap, br heatmap]) paths.

    Raises:
      PredictError: two images give the same output name, or an output name is taken by
        an input or by a file predict did not write.
    """
    suffixes = (".png", ".json") + (("_tl_heatmap.png", "_br_heatmap.png") if heatmaps else ())
    inputs = {os.path.realpath(p): p for p in paths}
    owner: dict = {}
    plan, taken = [], []
    for path in paths:
        outputs = tuple(os.path.join(output_dir, os.path.basename(path) + s) for s in suffixes)
        for out in outputs:
            key = os.path.basename(out).lower()  # also on case-insensitive file systems
            if key in owner:
                raise PredictError(f"predict: {path} and {owner[key]} would both write "
                                   f"{out}; predict them in separate runs or rename one "
                                   f"(nothing was written)")
            owner[key] = path
            real = os.path.realpath(out)
            if real in inputs or (os.path.lexists(out) and os.path.basename(out) not in earlier):
                taken.append(out)
        plan.append(outputs)
    if taken:
        raise PredictError(
            f"predict: {len(taken)} output files already exist and were not written by an "
            f"earlier predict run, e.g. {taken[0]}; predict never writes over a file: "
            f"choose another --output folder or move them (nothing was written)")
    return plan


def _read_manifest(output_dir: str) -> frozenset:
    """The names listed in output_dir's manifest (empty when there is none)."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.lexists(path):
        return frozenset()
    try:
        with open(path, "r", encoding="utf-8") as f:
            names = json.load(f)["outputs"]
        if not all(isinstance(n, str) and n == os.path.basename(n) for n in names):
            raise ValueError("not a list of file names")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise PredictError(f"predict: {path} is not predict's list of earlier outputs "
                           f"({e}); choose another --output folder or move it") from None
    return frozenset(names)


def _write_manifest(output_dir: str, names: set) -> None:
    path = os.path.join(output_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"written_by": "cornernet-tf predict", "outputs": sorted(names)}, f,
                  indent=1)
    os.replace(tmp, path)


def _open_new(path: str, mode: str):
    """Opens `path` for writing as a new file; an earlier output of predict there (checked
    by `plan_outputs`) is removed first, so that a link is replaced, not followed."""
    if os.path.lexists(path):
        os.remove(path)
    return open(path, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"}))


def _predict_one(detector, image: np.ndarray, path: str, outputs: tuple, names: list,
                 model_path: str, heatmaps: bool, score_threshold: float,
                 tiling: Optional[tuple] = None) -> tuple[list[str], str]:
    """Detects on one image and writes its planned outputs.

    Args:
      tiling: (tile size, merge parameters, overlap) for tiled inference, or None.

    Returns:
      (the files written, a summary such as "3 detections >= 0.42 (cat 2, dog 1)").
    """
    h, w = image.shape[:2]
    tiles = ""
    if tiling is not None:
        size, params, overlap = tiling
        xyxy, scores, classes = detect_tiled(detector, image, size, params, overlap)
        count = len(tile_grid(h, w, size, overlap))
        tiles = f" ({count} tiles + the whole image)" if count > 1 else ""
    else:
        boxes, scores, classes, num = preprocess.contract_to_pixels(detector(image), [[h, w]])
        n = int(num[0])
        xyxy, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
    n = len(scores)
    normalized = xyxy[:, [1, 0, 3, 2]] / np.array([h, w, h, w], np.float64)
    png, js = outputs[:2]
    with _open_new(png, "wb") as f:
        visualize.save_png(visualize.draw_detections(image, xyxy, classes, scores, names,
                                                     min_score=score_threshold), f)
    detections = [dict(label_id=int(c) + 1, name=_class_name(names, c),
                       score=float(s), box_xyxy=[float(v) for v in b],
                       box_normalized_yxyx=[float(v) for v in nb])
                  for c, s, b, nb in zip(classes, scores, xyxy, normalized)]
    with _open_new(js, "w") as f:
        json.dump(dict(image=path, width=w, height=h, model=model_path,
                       score_threshold=score_threshold, detections=detections), f, indent=1)
    written = [png, js]
    if heatmaps:
        written += _write_heatmaps(detector, image, outputs[2:])
    kept = collections.Counter(_class_name(names, c) for c, s in zip(classes, scores)
                               if s >= score_threshold)
    per_class = ", ".join(f"{name} {count}" for name, count in sorted(kept.items()))
    line = (f"{sum(kept.values())} detections >= {score_threshold:.3g}"
            + (f" ({per_class})" if per_class else "") + f" of {n}{tiles}")
    return written, line


def _class_name(names: list, c) -> str:
    return names[c] if 0 <= c < len(names) else str(int(c) + 1)


def _write_heatmaps(detector: ExportedDetector, image: np.ndarray,
                    paths: Sequence[str]) -> list[str]:
    """The TL and BR corner heatmaps of the image's part of the grid (padding cut off) over
    the image, to `paths` (tl, br)."""
    maps = detector.heatmaps(image)
    if maps is None:
        raise ValueError(f"--heatmaps: the SavedModel {detector.path!r} has no "
                         f"serving_heatmaps signature")
    fh, fw = maps["valid_fraction"][0]
    written = []
    for key, path in zip((keys.TL_HEATMAP, keys.BR_HEATMAP), paths):
        heat = maps[key][0]
        heat = heat[:max(1, int(round(heat.shape[0] * fh))),
                    :max(1, int(round(heat.shape[1] * fw)))]
        with _open_new(path, "wb") as f:
            visualize.save_png(visualize.heatmap_overlay(image, heat), f)
        written.append(path)
    return written
