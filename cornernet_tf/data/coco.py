"""COCO-format reading and validation: an instances json + an image folder -> image records.

This is one of the two edges of the package where COCO category ids appear (the other is
`evaluation.py`): `LabelMap` maps them to the contiguous 0-based `classes` used everywhere
else, in increasing category-id order.

    records, label_map, report = load_coco("annotations/instances_val2017.json", "val2017")
    records[0].boxes    # [N, 4] float32, [x1, y1, x2, y2] in original image pixels
    records[0].classes  # [N] int32, 0-based

Nothing is dropped silently: every problem is counted and listed in a `DatasetReport`
(file, image id, annotation id, what was found); `strict=True` turns problems into a
`DatasetError`. The json is parsed here rather than by `pycocotools.coco.COCO`, which
overwrites duplicate ids without a word and stops at the first malformed entry; pycocotools
stays the reference for evaluation (`evaluation.py`). Crowd annotations (iscrowd=1) are
not objects (as in mmdetection; SPEC.md, Ground truth): they are counted and kept as ignore
regions (`ImageRecord.ignore_boxes`: no loss there in training, iscrowd in evaluation);
images without annotations are kept as negatives.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from cornernet_tf import boxes as box_lib
from cornernet_tf.data import files as file_rule
from cornernet_tf.data import image_files
# the json reader (`DatasetError` and `json_problem` are this module's public names too)
from cornernet_tf.data.coco_json import DatasetError, json_problem, read_instances_json

# Problem kinds. Those in `_KEPT_KINDS` keep the object (repaired); all others drop the
# image or the annotation they name.
MISSING_FILE = "missing_file"
UNSAFE_FILE_NAME = "unsafe_file_name"
BAD_IMAGE_ENTRY = "bad_image_entry"
BAD_IMAGE_SIZE = "bad_image_size"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
DUPLICATE_IMAGE_ID = "duplicate_image_id"
DUPLICATE_ANNOTATION_ID = "duplicate_annotation_id"
UNKNOWN_IMAGE_ID = "unknown_image_id"
UNKNOWN_CATEGORY = "unknown_category"
BAD_BOX = "bad_box"
BOX_OUTSIDE_IMAGE = "box_outside_image"
BOX_CLIPPED = "box_clipped"
BAD_ANNOTATION_FILE = "bad_annotation_file"  # a VOC XML or YOLO label file that cannot be read
_KEPT_KINDS = frozenset({BOX_CLIPPED})
# Kinds that drop one annotation (the others drop an image, or an entry without an id).
_ANNOTATION_KINDS = frozenset({DUPLICATE_ANNOTATION_ID, UNKNOWN_IMAGE_ID, UNKNOWN_CATEGORY,
                               BAD_BOX, BOX_OUTSIDE_IMAGE})

CHECK_IMAGES = ("none", "header", "decode")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One dataset problem: what kind, where, and what was found."""

    kind: str
    file: str
    detail: str
    image_id: Optional[Any] = None
    annotation_id: Optional[Any] = None
    at: Optional[str] = None  # the place inside the file: "object 2", "line 5" (VOC, YOLO)

    def __str__(self) -> str:
        where = [self.file] + ([self.at] if self.at else [])
        if self.image_id is not None:
            where.append(f"image id {self.image_id}")
        if self.annotation_id is not None:
            where.append(f"annotation id {self.annotation_id}")
        return f"{', '.join(where)}: {self.kind}: {self.detail}"


@dataclasses.dataclass
class DatasetReport:
    """What loading a dataset found: counts of kept things and every problem."""

    source: str
    num_images: int = 0  # images kept
    num_objects: int = 0  # boxes kept
    num_negative_images: int = 0  # kept images without any box
    num_crowd_ignored: int = 0  # iscrowd=1 annotations (ignored by design, not a problem)
    num_annotations_of_dropped_images: int = 0  # not reported one by one: their image is
    num_ignore_regions: int = 0  # kept ignore regions (VOC "difficult" objects)
    problems: list = dataclasses.field(default_factory=list)
    # With `load_coco(ground_truth=True)`: what was kept, as a COCO instances dict (the
    # ground truth evaluation scores against; see `load_coco`).
    ground_truth: Optional[dict] = dataclasses.field(default=None, repr=False, compare=False)

    def add(self, kind: str, detail: str, image_id: Any = None,
            annotation_id: Any = None, file: Optional[str] = None,
            at: Optional[str] = None) -> None:
        """Records one problem."""
        self.problems.append(Problem(kind, file or self.source, detail, image_id,
                                     annotation_id, at))

    def counts(self) -> dict:
        """{problem kind: count}, in first-seen order."""
        return dict(collections.Counter(p.kind for p in self.problems))

    def dropping_problems(self) -> list:
        """Problems that removed an image or an object (all but repaired ones)."""
        return [p for p in self.problems if p.kind not in _KEPT_KINDS]

    def excluded(self) -> dict:
        """What the kept ground truth lacks compared with the json, by reason.

        Returns:
          {"annotations": {problem kind: count} of annotations dropped one by one,
           "images": {problem kind: count} of dropped images,
           "annotations_of_dropped_images": int}.
        """
        annotations, images = collections.Counter(), collections.Counter()
        for p in self.dropping_problems():
            (annotations if p.kind in _ANNOTATION_KINDS else images)[p.kind] += 1
        return {"annotations": dict(annotations), "images": dict(images),
                "annotations_of_dropped_images": self.num_annotations_of_dropped_images}

    def summary(self) -> str:
        """One line: what was kept, what was ignored, and problem counts by kind."""
        text = (f"{self.source}: {self.num_images} images ({self.num_negative_images} without "
                f"objects), {self.num_objects} objects, {self.num_crowd_ignored} crowd "
                f"annotations ignored")
        if self.num_ignore_regions:
            text += f", {self.num_ignore_regions} ignore regions (no loss, not scored)"
        counts = self.counts()
        if counts:
            text += "; problems: " + ", ".join(f"{k}={v}" for k, v in counts.items())
        else:
            text += "; no problems"
        return text

    def announce(self, strict: bool = False) -> None:
        """Shows what a loader found: the one-line summary, or the first problems as a
        warning; with `strict`, a `DatasetError` when any problem dropped something."""
        if self.problems:
            logging.warning("%s", self.details(limit=5))
        else:
            print(self.summary(), flush=True)  # the loader's one-line summary, always shown
        if strict and self.dropping_problems():
            raise DatasetError("strict mode: dataset problems found (set data.strict=false to "
                               "drop the bad records and continue)\n" + self.details(limit=20))

    def details(self, limit: int = 20) -> str:
        """The summary, then the first `limit` problems one per line, then how many more."""
        lines = [self.summary()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more problems")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image and its ground truth.

    Attributes:
      image_id: the dataset's image id (int for COCO).
      path: absolute path of the image file.
      width, height: image size in pixels, from the json (checked against the file when
        `check_images` is not "none").
      boxes: [N, 4] float32, [x1, y1, x2, y2] in image pixels, clipped to the image.
      classes: [N] int32, 0-based contiguous classes (see `LabelMap`).
      ignore_boxes: [K, 4] float32 xyxy image pixels of ignore regions: no loss there in
        training, and marked iscrowd (ignored) in evaluation: COCO's crowd annotations and
        Pascal VOC's "difficult" objects (`data/voc.py`).
      ignore_classes: [K] int32, their 0-based classes.
    """

    image_id: Any
    path: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    ignore_boxes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_classes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int32))


class LabelMap:
    """COCO category ids <-> contiguous 0-based classes, with names.

    Classes are assigned in increasing category-id order, so COCO's ids 1..90 (with gaps)
    map to 0..79. Written beside exports as `labels.json`.
    """

    def __init__(self, category_ids: Sequence[int], names: Sequence[str]):
        if len(category_ids) != len(names):
            raise ValueError(f"LabelMap: {len(category_ids)} category ids but {len(names)} names")
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"LabelMap: duplicate category ids in {list(category_ids)}")
        order = sorted(range(len(category_ids)), key=lambda i: category_ids[i])
        self.category_ids = tuple(int(category_ids[i]) for i in order)
        self.names = tuple(str(names[i]) for i in order)
        self._class_of = {c: i for i, c in enumerate(self.category_ids)}

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def to_class(self, category_id: int) -> int:
        """The 0-based class of a category id; KeyError if unknown."""
        return self._class_of[int(category_id)]

    def has_category(self, category_id: Any) -> bool:
        return (isinstance(category_id, (int, np.integer)) and not isinstance(category_id, bool)
                and int(category_id) in self._class_of)

    def to_category_id(self, cls: int) -> int:
        """The dataset category id of a 0-based class."""
        return self.category_ids[int(cls)]

    def to_json(self) -> str:
        """`{"classes": [{"class": 0, "category_id": 1, "name": "person"}, ...]}`."""
        entries = [{"class": i, "category_id": c, "name": n}
                   for i, (c, n) in enumerate(zip(self.category_ids, self.names))]
        return json.dumps({"classes": entries}, indent=1)

    def write(self, path: str) -> str:
        """Writes `to_json()` to `path` (e.g. `<export>/labels.json`); returns the path."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        return path

    @classmethod
    def from_json(cls, text_or_path: str) -> "LabelMap":
        """Reads what `to_json`/`write` produced (a json string or a file path)."""
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path, "r", encoding="utf-8") as f:
                text = f.read()
        try:
            entries = json.loads(text)["classes"]
            return cls([e["category_id"] for e in entries], [e["name"] for e in entries])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            where = text_or_path if text is not text_or_path else "labels json"
            raise DatasetError(f"{where}: not a labels.json written by cornernet-tf (expected "
                               f"{{\"classes\": [{{\"category_id\", \"name\"}}, ...]}}): "
                               f"{json_problem(e)}"[:400]) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and (self.category_ids, self.names) == (
            other.category_ids, other.names)

    def __repr__(self) -> str:
        return f"LabelMap({dict(zip(self.category_ids, self.names))})"


def load_coco(annotation_path: str, image_dir: str, strict: bool = False,
              check_images: str = "header", ground_truth: bool = False):
    """Loads and validates a COCO instances json and its image folder.

    Args:
      annotation_path: COCO instances json (`images`, `annotations`, `categories`).
      image_dir: folder that each image's `file_name` is relative to; names that leave it
        (`../x.jpg`, absolute paths) are rejected.
      strict: raise `DatasetError` when any problem dropped an image or an annotation
        (clipped boxes are repaired and only reported).
      check_images: "none" (only that the file exists); "header" (the file has a signature
        of a format `preprocess.decode_image` reads and PIL reads its header; size must
        match the json; ~0.2 ms per file); "decode" (the header check, then the decoder
        itself on every file, in parallel; exact, ~1-4 ms per file and core). See
        `data/image_files.py`.
      ground_truth: also build `report.ground_truth`, the COCO instances dict of what was
        kept: the kept images, their kept objects (boxes as clipped, fresh annotation ids
        1..n, the json's `area` when it is a positive number, else the box's) and their
        crowd regions (iscrowd=1, which COCOeval uses as ignore regions; those with an
        unusable box or category are reported as problems and left out).

    Returns:
      (records, label_map, report): list of `ImageRecord` sorted by image id, the
      `LabelMap`, and the `DatasetReport`. The report's one-line summary is logged.

    Raises:
      FileNotFoundError: the json or the image folder does not exist.
      DatasetError: the json is not a COCO instances file, or strict and problems found.
    """
    if check_images not in CHECK_IMAGES:
        raise ValueError(f"check_images: expected one of {CHECK_IMAGES}, found {check_images!r}")
    if os.path.isfile(annotation_path) and not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir!r} (for {annotation_path})")
    data = read_instances_json(annotation_path)
    report = DatasetReport(source=annotation_path)
    label_map = _label_map(data["categories"], annotation_path)
    images = _read_images(data["images"], os.path.abspath(image_dir), check_images, report)
    crowd: dict = {}
    per_image = _read_annotations(data["annotations"], images, label_map, report, crowd)

    records = []
    for image_id in sorted(images, key=_sort_key):
        if images[image_id] is None:
            continue
        path, width, height = images[image_id]
        objects = per_image.get(image_id, [])
        boxes = np.array([o[0] for o in objects], np.float32).reshape(-1, 4)
        classes = np.array([o[1] for o in objects], np.int32)
        ignore_boxes, ignore_classes = _ignore_regions(crowd.get(image_id, []), width, height,
                                                       label_map)
        records.append(ImageRecord(image_id, path, width, height, boxes, classes,
                                   ignore_boxes, ignore_classes))
        report.num_ignore_regions += len(ignore_classes)
        report.num_objects += len(objects)
        report.num_negative_images += not objects
    report.num_images = len(records)
    if ground_truth:
        report.ground_truth = _kept_ground_truth(data["images"], records, crowd, per_image,
                                                 label_map)

    report.announce(strict)
    return records, label_map, report


def read_categories(annotation_path: str) -> LabelMap:
    """The LabelMap of a COCO json's categories, without reading its images.

    Raises:
      FileNotFoundError: no such file. DatasetError: not a COCO json with categories.
    """
    data = read_instances_json(annotation_path, keys=("categories",))
    return _label_map(data["categories"], annotation_path)


def _sort_key(image_id: Any):
    return (0, image_id, "") if isinstance(image_id, (int, np.integer)) else (1, 0, str(image_id))


def _label_map(categories: list, source: str) -> LabelMap:
    ids, names = [], []
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DatasetError(f"{source}: a category needs an integer 'id'; found {cat!r}")
        if cat["id"] in ids:
            raise DatasetError(f"{source}: duplicate category id {cat['id']}")
        ids.append(cat["id"])
        names.append(str(cat.get("name", cat["id"])))
    return LabelMap(ids, names)


def _safe_join(image_dir: str, file_name: Any) -> Optional[str]:
    """Absolute path of file_name inside image_dir, or None when it escapes the folder."""
    if not isinstance(file_name, str) or not file_name or os.path.isabs(file_name) \
            or "\\" in file_name or "\x00" in file_name:
        return None
    parts = file_name.split("/")
    if any(p == ".." for p in parts):
        return None
    path = os.path.normpath(os.path.join(image_dir, file_name))
    real_dir = os.path.realpath(image_dir)
    if os.path.commonpath([os.path.realpath(path), real_dir]) != real_dir:
        return None  # a symlink inside the folder that points out of it
    return path


def _read_images(entries: list, image_dir: str, check_images: str,
                 report: DatasetReport) -> dict:
    """{image_id: (path, width, height)} of the usable images; problems reported."""
    images: dict = {}
    max_bytes = file_rule.max_file_bytes()
    for entry in entries:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if image_id is None or isinstance(image_id, (float, bool, list, dict)):
            report.add(BAD_IMAGE_ENTRY, f"image entry without a usable 'id': {entry!r}"[:200])
            continue
        if image_id in images:
            report.add(DUPLICATE_IMAGE_ID, "image id used twice; the later entry "
                       f"({entry.get('file_name')!r}) is dropped", image_id)
            continue
        file_name = entry.get("file_name")
        path = _safe_join(image_dir, file_name)
        if path is None:
            report.add(UNSAFE_FILE_NAME, f"file_name {file_name!r} is not a relative path "
                       f"inside {image_dir}; image dropped", image_id)
            images[image_id] = None
            continue
        width, height = entry.get("width"), entry.get("height")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                   math.isfinite(v) and v > 0 for v in (width, height)):
            report.add(BAD_IMAGE_SIZE, f"width/height must be positive numbers, found "
                       f"width={width!r} height={height!r}; image dropped", image_id)
            images[image_id] = None
            continue
        problem = file_rule.file_problem(path, max_bytes)
        if problem is not None:  # the rule of every entry point: no FIFO, device, huge file
            missing = not os.path.lexists(path) or problem.startswith("image file not found")
            report.add(MISSING_FILE if missing else UNREADABLE_IMAGE, f"{problem}; image "
                       f"dropped", image_id)
            images[image_id] = None
            continue
        if check_images != "none":
            problem = image_files.header_problem(path, int(width), int(height))
            if problem is not None:
                kind = IMAGE_SIZE_MISMATCH if "but the json says" in problem \
                    else UNREADABLE_IMAGE
                report.add(kind, f"{problem}; image dropped", image_id)
                images[image_id] = None
                continue
        images[image_id] = (path, int(width), int(height))
    if check_images == "decode":
        kept = [image_id for image_id, value in images.items() if value is not None]
        problems = image_files.decode_problems([images[i][0] for i in kept])
        for k, problem in problems.items():
            report.add(UNREADABLE_IMAGE, f"{problem}; image dropped", kept[k])
            images[kept[k]] = None
    # None marks ids that exist but were dropped: their annotations go without a second report.
    return images


def _read_annotations(entries: list, images: dict, label_map: LabelMap,
                      report: DatasetReport, crowd: Optional[dict] = None) -> dict:
    """{image_id: [(box xyxy, class, area or None)]} of the usable annotations; problems
    reported. With a `crowd` dict, the usable crowd regions are added to it as
    {image_id: [(COCO bbox, category id, area or None)]}."""
    per_image: dict = collections.defaultdict(list)
    seen_ids: set = set()
    xyxy, clipped = _convert_boxes(entries, images)  # [A, 4] each, row k for entries[k]
    for k, ann in enumerate(entries):
        if not isinstance(ann, dict):
            report.add(BAD_BOX, f"annotation is not an object: {ann!r}"[:200])
            continue
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if ann_id is not None:
            key = ann_id if not isinstance(ann_id, list) else str(ann_id)
            if key in seen_ids:
                report.add(DUPLICATE_ANNOTATION_ID, "annotation id used twice; the later one "
                           "is dropped", image_id, ann_id)
                continue
            seen_ids.add(key)
        hashable = not isinstance(image_id, (list, dict))
        if not hashable or image_id not in images:
            report.add(UNKNOWN_IMAGE_ID, f"image_id {image_id!r} is not in 'images'; "
                       "annotation dropped", image_id, ann_id)
            continue
        if images[image_id] is None:
            report.num_annotations_of_dropped_images += 1
            continue  # the image itself was dropped and reported
        if ann.get("iscrowd", 0):
            report.num_crowd_ignored += 1
            if crowd is not None:
                _crowd_region(ann, label_map, crowd, report)
            continue
        category_id = ann.get("category_id")
        if not label_map.has_category(category_id):
            report.add(UNKNOWN_CATEGORY, f"category_id {category_id!r} is not in 'categories' "
                       f"({list(label_map.category_ids)}); annotation dropped", image_id, ann_id)
            continue
        box = _valid_box(ann.get("bbox"), xyxy[k], clipped[k], images[image_id], image_id,
                         ann_id, report)
        if box is not None:
            per_image[image_id].append((box, label_map.to_class(category_id),
                                        _positive_number(ann.get("area"))))
    return per_image


def _positive_number(value: Any) -> Optional[float]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and value > 0
    return float(value) if ok else None


def _crowd_region(ann: dict, label_map: LabelMap, crowd: dict, report: DatasetReport) -> None:
    """Adds a crowd annotation's region to `crowd`, or reports why it is unusable."""
    image_id, ann_id, bbox = ann.get("image_id"), ann.get("id"), ann.get("bbox")
    if not label_map.has_category(ann.get("category_id")):
        report.add(UNKNOWN_CATEGORY, f"crowd region's category_id {ann.get('category_id')!r} "
                   f"is not in 'categories'; region dropped", image_id, ann_id)
    elif not _four_numbers(bbox) or not all(math.isfinite(v) for v in bbox) \
            or bbox[2] <= 0 or bbox[3] <= 0:
        report.add(BAD_BOX, f"crowd region's bbox must be 4 finite numbers [x, y, w, h] "
                   f"with a positive size, found {bbox!r}; region dropped", image_id, ann_id)
    else:
        crowd.setdefault(image_id, []).append(
            ([float(v) for v in bbox], int(ann["category_id"]),
             _positive_number(ann.get("area"))))


def _ignore_regions(regions: list, width: int, height: int,
                    label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """Crowd regions [(COCO bbox, category id, area)] as ignore regions of an image:
    ([K, 4] float32 xyxy clipped to the image, [K] int32 classes); regions left empty by
    the clipping are not kept (they cover no pixel of the image)."""
    if not regions:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    xyxy = box_lib.xywh_to_xyxy(np.array([r[0] for r in regions], np.float64), dtype=np.float64)
    clipped = np.asarray(box_lib.clip_boxes(xyxy, height, width))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    classes = np.array([label_map.to_class(r[1]) for r in regions], np.int32).reshape(-1)
    return clipped[keep].astype(np.float32), classes[keep]


def _kept_ground_truth(image_entries: list, records: list, crowd: dict, per_image: dict,
                       label_map: LabelMap) -> dict:
    """The COCO instances dict of the kept images, objects and crowd regions."""
    file_names = {}
    for entry in image_entries:
        if isinstance(entry, dict):
            file_names.setdefault(_hashable(entry.get("id")), entry.get("file_name"))
    images, annotations = [], []
    for r in records:
        images.append({"id": r.image_id, "file_name": file_names.get(r.image_id),
                       "width": r.width, "height": r.height})
        for (x1, y1, x2, y2), cls, area in per_image.get(r.image_id, []):
            annotations.append((r.image_id, [x1, y1, x2 - x1, y2 - y1],
                                label_map.to_category_id(cls), area, 0))
        for bbox, category_id, area in crowd.get(r.image_id, []):
            annotations.append((r.image_id, bbox, category_id, area, 1))
    return {"images": images,
            "annotations": [{"id": k, "image_id": image_id, "category_id": category_id,
                             "bbox": bbox, "area": area if area is not None else bbox[2] * bbox[3],
                             "iscrowd": iscrowd}
                            for k, (image_id, bbox, category_id, area, iscrowd)
                            in enumerate(annotations, start=1)],
            "categories": [{"id": c, "name": n}
                           for c, n in zip(label_map.category_ids, label_map.names)]}


def _hashable(value: Any) -> Any:
    return value if not isinstance(value, (list, dict)) else str(value)


def _four_numbers(bbox: Any) -> bool:
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)


def _convert_boxes(entries: list, images: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every annotation's bbox as xyxy, and clipped to its image, in one call each.

    Args:
      entries: the json's annotations.
      images: {image_id: (path, width, height) or None} from `_read_images`.

    Returns:
      (xyxy, clipped): [A, 4] float64 (the json's numbers, exactly), row k for entries[k];
      rows without a 4-number bbox or a kept image are NaN or unclipped and never read.
    """
    xywh = np.full((len(entries), 4), np.nan)
    size = np.full((len(entries), 2), np.nan)  # (height, width) of the annotation's image
    for k, ann in enumerate(entries):
        if not isinstance(ann, dict):
            continue
        if _four_numbers(ann.get("bbox")):
            xywh[k] = [float(v) for v in ann["bbox"]]
        image_id = ann.get("image_id")
        if not isinstance(image_id, (list, dict)) and images.get(image_id) is not None:
            size[k] = images[image_id][2], images[image_id][1]
    xyxy = box_lib.xywh_to_xyxy(xywh, dtype=np.float64)
    return xyxy, box_lib.clip_boxes(xyxy, size[:, 0], size[:, 1])


def _valid_box(bbox: Any, xyxy: np.ndarray, clipped: np.ndarray, image: tuple,
               image_id: Any, ann_id: Any, report: DatasetReport) -> Optional[list]:
    """The clipped [x1, y1, x2, y2] of a COCO [x, y, w, h], or None (reported) when unusable.

    Args:
      bbox: the annotation's "bbox" as found.
      xyxy, clipped: [4] float64, its conversion and clipped conversion (`_convert_boxes`).
      image: (path, width, height) of its image.
    """
    _, width, height = image
    if not _four_numbers(bbox):
        report.add(BAD_BOX, f"bbox must be 4 numbers [x, y, w, h], found {bbox!r}; "
                   "annotation dropped", image_id, ann_id)
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        report.add(BAD_BOX, f"bbox {list(bbox)} has a non-finite value or a non-positive "
                   "size; annotation dropped", image_id, ann_id)
        return None
    box = [float(v) for v in xyxy]
    clipped = [float(v) for v in clipped]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.add(BOX_OUTSIDE_IMAGE, f"bbox {list(bbox)} lies outside the {width}x{height} "
                   "image; annotation dropped", image_id, ann_id)
        return None
    if clipped != box:
        report.add(BOX_CLIPPED, f"bbox {list(bbox)} exceeds the {width}x{height} image; "
                   f"clipped to xyxy {[round(v, 2) for v in clipped]}", image_id, ann_id)
    return clipped
