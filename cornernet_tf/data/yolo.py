"""YOLO (ultralytics / darknet) reading: images/ and labels/ folders -> image records.

    records, label_map, report = load_yolo("my_data/labels/train", "my_data/images/train")

Every image file of the image folder (and its subfolders, in path order; image ids 1, 2,
... in that order) has its labels in `<labels folder>/<same relative path>.txt`, one object
per line: `class cx cy w h`, the class a 0-based index into the names and the box centre
and size normalised by the image's width and height. An image without a label file, or
with an empty one, has no objects (a negative, as in ultralytics); a label file without its
image is reported. Image sizes come from the files' headers.

The class names come from the first of `classes.txt` (one name per line) or `data.yaml` /
`dataset.yaml` (`names:` as a list or a {index: name} mapping) found in the labels folder,
its parent or the parent's parent (`my_data/data.yaml` for the layout above). Class k has
category id k + 1 (COCO json written by `convert_data`).

Problems are reported like COCO's, each with the label file and the line ("line 3",
counting from 1): wrong field count, values that are not numbers, a class index outside
the names, a box of non-positive size or outside the image (dropped), a box beyond the
image's edge (clipped).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import yaml

from cornernet_tf.data import coco, image_files, records as records_lib

NAMES_FILES = ("classes.txt", "data.yaml", "dataset.yaml")
MAX_LABEL_BYTES = 10 * 1024 * 1024  # ~30 bytes a line: far beyond any real label file
# Normalised coordinates are written rounded (ultralytics: 6 digits), so a box touching the
# border can overshoot it by up to ~1e-6 of the side: that much is the border, not a box
# to clip and report. A real overshoot (a pixel or more) is still reported.
BORDER_ROUNDING = 1e-5


def find_names_file(label_dir: str) -> Optional[str]:
    """The class names file of a labels folder (module docstring), or None."""
    folder = os.path.abspath(label_dir)
    for _ in range(3):
        for name in NAMES_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        folder = os.path.dirname(folder)
    return None


def read_names(label_dir: str) -> tuple[list, str]:
    """(class names in index order, the file they came from).

    Raises:
      coco.DatasetError: no names file, or one without usable names.
    """
    path = find_names_file(label_dir)
    if path is None:
        raise coco.DatasetError(f"{label_dir}: no class names for the YOLO labels: expected "
                                f"one of {list(NAMES_FILES)} in the labels folder, its parent "
                                f"or the parent's parent")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read(MAX_LABEL_BYTES)
    if path.endswith(".txt"):
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise coco.DatasetError(f"{path}: not valid YAML: {e}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict) and all(isinstance(k, int) for k in names) \
                and sorted(names) == list(range(len(names))):
            names = [names[k] for k in range(len(names))]
        if not isinstance(names, list):
            raise coco.DatasetError(f"{path}: expected 'names:' as a list of class names or "
                                    f"a mapping 0..N-1 -> name; found {names!r}"[:300])
        names = [str(n) for n in names]
    if not names:
        raise coco.DatasetError(f"{path}: no class names found")
    if len(set(names)) != len(names):
        raise coco.DatasetError(f"{path}: class names repeat: {names}")
    return names, path


def load_yolo(label_dir: str, image_dir: str, strict: bool = False,
              check_images: str = "header", ground_truth: bool = False):
    """Loads and validates a YOLO labels folder and its image folder.

    Args:
      label_dir: the folder of `.txt` label files.
      image_dir: the images' folder (same relative paths as the label files).
      strict, check_images, ground_truth: as for `coco.load_coco` (image headers are
        always read: they give the sizes that the normalised boxes need).

    Returns:
      (records, label_map, report) as from `coco.load_coco`.

    Raises:
      FileNotFoundError: a folder does not exist.
      coco.DatasetError: no class names; strict and problems found.
    """
    for folder, what in ((label_dir, "YOLO labels folder"), (image_dir, "image folder")):
        if not folder or not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} not found: {folder!r}")
    names, _ = read_names(label_dir)
    label_map = coco.LabelMap(list(range(1, len(names) + 1)), names)
    report = coco.DatasetReport(source=label_dir)
    images = _relative_files(image_dir, image_files.IMAGE_EXTENSIONS)
    labels = set(_relative_files(label_dir, (".txt",))) - set(NAMES_FILES)
    used = set()
    parsed = []
    for image_id, rel in enumerate(images, start=1):
        path = os.path.abspath(os.path.join(image_dir, rel))
        label_rel = os.path.splitext(rel)[0] + ".txt"
        label_path = os.path.join(label_dir, label_rel)
        used.add(label_rel)
        size, problem = image_files.read_size(path)
        if problem is not None:
            report.add(coco.UNREADABLE_IMAGE, f"{problem}; image dropped", image_id)
            continue
        objects = _read_labels(label_path, len(names), size, image_id, report) \
            if label_rel in labels else []
        parsed.append((image_id, path, size, objects))
    for rel in sorted(labels - used):
        report.add(coco.MISSING_FILE, f"no image for this label file in {image_dir} (looked for "
                   f"{os.path.splitext(rel)[0]}{{{','.join(image_files.IMAGE_EXTENSIONS)}}}); "
                   f"labels dropped", file=os.path.join(label_dir, rel))
    if check_images == "decode":
        problems = image_files.decode_problems([p[1] for p in parsed])
        for k in sorted(problems, reverse=True):
            report.add(coco.UNREADABLE_IMAGE, f"{problems[k]}; image dropped", parsed[k][0])
            del parsed[k]
    records = []
    for image_id, path, (width, height), objects in parsed:
        records.append(coco.ImageRecord(
            image_id, path, width, height,
            np.array([b for b, _ in objects], np.float32).reshape(-1, 4),
            np.array([c for _, c in objects], np.int32)))
        report.num_objects += len(objects)
        report.num_negative_images += not objects
    report.num_images = len(records)
    if ground_truth:
        report.ground_truth = records_lib.to_coco(records, label_map, None)
    report.announce(strict)
    return records, label_map, report


def _relative_files(folder: str, extensions: tuple) -> list:
    """Paths relative to `folder` of its files (recursively) with these extensions, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(extensions):
                found.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(found)


def _snap_to_border(value: float, side: int) -> float:
    """A coordinate beyond the image border by no more than BORDER_ROUNDING of its side,
    on the border."""
    if -BORDER_ROUNDING * side <= value < 0:
        return 0.0
    if side < value <= side * (1 + BORDER_ROUNDING):
        return float(side)
    return value


def _read_labels(path: str, num_classes: int, size: tuple, image_id: int,
                 report: coco.DatasetReport) -> list:
    """[(box xyxy in pixels, class)] of a label file; bad lines reported and dropped."""
    width, height = size
    if os.path.getsize(path) > MAX_LABEL_BYTES:
        report.add(coco.BAD_ANNOTATION_FILE,
                   f"larger than {MAX_LABEL_BYTES} bytes: not a label file; "
                   "labels dropped", image_id, file=path)
        return []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    objects = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        at = f"line {number}"
        if len(fields) != 5:
            report.add(coco.BAD_BOX, f"expected 5 fields 'class cx cy w h', found "
                       f"{len(fields)}: {line.strip()!r}"[:200] + "; object dropped", image_id,
                       file=path, at=at)
            continue
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            report.add(coco.BAD_BOX, f"expected an integer class and 4 numbers, found "
                       f"{line.strip()!r}"[:200] + "; object dropped", image_id, file=path,
                       at=at)
            continue
        if not 0 <= cls < num_classes:
            report.add(coco.UNKNOWN_CATEGORY, f"class {cls} is not an index of the {num_classes} "
                       f"names (0..{num_classes - 1}); object dropped", image_id, file=path,
                       at=at)
            continue
        x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
        x2, y2 = x1 + w * width, y1 + h * height
        x1, x2 = (_snap_to_border(v, width) for v in (x1, x2))
        y1, y2 = (_snap_to_border(v, height) for v in (y1, y2))
        kind, box = records_lib.box_problem(x1, y1, x2, y2, width, height)
        if kind in (coco.BAD_BOX, coco.BOX_OUTSIDE_IMAGE):
            report.add(kind, f"{box} (line {line.strip()!r}); object dropped", image_id,
                       file=path, at=at)
            continue
        if kind == coco.BOX_CLIPPED:
            report.add(kind, f"{line.strip()!r} exceeds the {width}x{height} image; clipped to "
                       f"xyxy {[round(float(v), 2) for v in box]}", image_id, file=path, at=at)
        objects.append(([float(v) for v in box], cls))
    return objects
