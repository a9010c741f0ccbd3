"""Pascal VOC reading: a folder of XML files (one per image) -> image records.

    records, label_map, report = load_voc("VOC2007/Annotations", "VOC2007/JPEGImages")

The split is every `*.xml` file of the folder, in name order (image ids 1, 2, ... in that
order). Each file gives its image's `<filename>`, `<size>` and `<object>`s with `<name>`,
`<difficult>` and `<bndbox>` (`xmin ymin xmax ymax`). The image is looked for in the image
folder (`data.*_images`); when that is empty, beside the XML files, then in the sibling
`JPEGImages` or `images` folder; a `<filename>` that is not there is also tried as the XML
file's stem with an image extension (labelling tools disagree on this field).

Numbers follow detectron2's reading of VOC: pixel indices are 1-based, so a box becomes
`[xmin - 1, ymin - 1, xmax, ymax]` in the package's 0-based pixel-edge coordinates.
`difficult` objects are ignore regions, as VOC's own evaluation treats them: no loss in
training (`ImageRecord.ignore_boxes`), and iscrowd=1 in the ground truth scored by
COCOeval (a detection on one is neither a hit nor a false detection).

Classes are the object names of the split, in sorted order (category ids 1..C). Problems
are reported like COCO's (`coco.DatasetReport`), each with the XML file and the object's
index in it ("object 2", counting from 0).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from typing import Optional

import numpy as np
from cornernet_tf.data import coco, image_files, records as records_lib

# A VOC file is ~1 KB; anything this large is not one (and is not parsed).
MAX_XML_BYTES = 10 * 1024 * 1024
IMAGE_FOLDERS = ("", "../JPEGImages", "../images")  # tried, in order, without data.*_images


def load_voc(annotation_dir: str, image_dir: str = "", strict: bool = False,
             check_images: str = "header", ground_truth: bool = False):
    """Loads and validates a folder of Pascal VOC XML files and their images.

    Args:
      annotation_dir: the folder of `*.xml` files.
      image_dir: the images' folder; "" looks beside the XML files, then in `../JPEGImages`
        and `../images`.
      strict, check_images, ground_truth: as for `coco.load_coco` (the ground truth has
        the difficult objects as iscrowd=1).

    Returns:
      (records, label_map, report) as from `coco.load_coco`.

    Raises:
      FileNotFoundError: the folder does not exist or holds no .xml file.
      coco.DatasetError: strict and problems found.
    """
    if check_images not in coco.CHECK_IMAGES:
        raise ValueError(f"check_images: expected one of {coco.CHECK_IMAGES}, "
                         f"found {check_images!r}")
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(f"Pascal VOC annotation folder not found: {annotation_dir!r}")
    files = sorted(f for f in os.listdir(annotation_dir) if f.lower().endswith(".xml"))
    if not files:
        raise FileNotFoundError(f"no .xml files in {annotation_dir!r} (Pascal VOC expected)")
    if image_dir and not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir!r} (for {annotation_dir})")
    folders = [image_dir] if image_dir else [
        os.path.normpath(os.path.join(annotation_dir, f)) for f in IMAGE_FOLDERS]
    report = coco.DatasetReport(source=annotation_dir)
    parsed = []  # (image_id, path, width, height, [(name, box, difficult)])
    for image_id, name in enumerate(files, start=1):
        entry = _read_file(os.path.join(annotation_dir, name), image_id, folders, check_images,
                           report)
        if entry is not None:
            parsed.append(entry)
    if check_images == "decode":
        problems = image_files.decode_problems([p[1] for p in parsed])
        for k in sorted(problems, reverse=True):
            report.add(coco.UNREADABLE_IMAGE, f"{problems[k]}; image dropped", parsed[k][0],
                       file=parsed[k][5])
            del parsed[k]
    names = sorted({o[0] for p in parsed for o in p[4]})
    label_map = coco.LabelMap(list(range(1, len(names) + 1)), names)
    records = [_record(p, label_map, report) for p in parsed]
    report.num_images = len(records)
    if ground_truth:
        report.ground_truth = records_lib.to_coco(records, label_map, None)
    report.announce(strict)
    return records, label_map, report


def _record(parsed: tuple, label_map: coco.LabelMap, report: coco.DatasetReport):
    image_id, path, width, height, objects, _ = parsed
    index = {n: k for k, n in enumerate(label_map.names)}
    keep = [(b, index[n]) for n, b, difficult in objects if not difficult]
    ignore = [(b, index[n]) for n, b, difficult in objects if difficult]
    report.num_objects += len(keep)
    report.num_ignore_regions += len(ignore)
    report.num_negative_images += not keep
    return coco.ImageRecord(
        image_id, path, width, height,
        np.array([b for b, _ in keep], np.float32).reshape(-1, 4),
        np.array([c for _, c in keep], np.int32),
        np.array([b for b, _ in ignore], np.float32).reshape(-1, 4),
        np.array([c for _, c in ignore], np.int32))


def _read_file(xml_path: str, image_id: int, folders: list, check_images: str,
               report: coco.DatasetReport) -> Optional[tuple]:
    """(image_id, image path, width, height, [(name, box xyxy, difficult)], xml_path), or
    None (reported) when the file or its image is unusable."""
    def drop(kind: str, detail: str) -> None:
        report.add(kind, f"{detail}; image dropped", image_id, file=xml_path)

    root = _parse(xml_path, drop)
    if root is None:
        return None
    file_name = (root.findtext("filename") or "").strip()
    path = _find_image(file_name, xml_path, folders)
    if path is None:
        drop(coco.MISSING_FILE, f"image {file_name or '(no <filename>)'!r} not found in "
             f"{folders}")
        return None
    width, height = _int(root.findtext("size/width")), _int(root.findtext("size/height"))
    if check_images != "none" or not (width and height):
        size, problem = image_files.read_size(path)
        if problem is not None:
            drop(coco.UNREADABLE_IMAGE, problem)
            return None
        if width and height and (width, height) != size:
            drop(coco.IMAGE_SIZE_MISMATCH, f"{path} is {size[0]}x{size[1]} (width x height) "
                 f"but <size> says {width}x{height}")
            return None
        width, height = size
    objects = []
    for k, obj in enumerate(root.findall("object")):
        found = _object(obj, k, width, height, image_id, xml_path, report)
        if found is not None:
            objects.append(found)
    return image_id, path, width, height, objects, xml_path


def _parse(xml_path: str, drop):
    try:
        if os.path.getsize(xml_path) > MAX_XML_BYTES:
            drop(coco.BAD_ANNOTATION_FILE,
                 f"larger than {MAX_XML_BYTES} bytes: not a VOC annotation")
            return None
        with open(xml_path, "rb") as f:
            text = f.read()
    except OSError as e:
        drop(coco.BAD_ANNOTATION_FILE, f"cannot read: {e.strerror or e}")
        return None
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:  # entity expansion: never needed by VOC
        drop(coco.BAD_ANNOTATION_FILE,
             "has a DOCTYPE/ENTITY declaration (not read: VOC files have none)")
        return None
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        drop(coco.BAD_ANNOTATION_FILE, f"not valid XML: {e}")
        return None
    if root.tag != "annotation":
        drop(coco.BAD_ANNOTATION_FILE,
             f"expected a VOC <annotation> root element, found <{root.tag}>")
        return None
    return root


def _find_image(file_name: str, xml_path: str, folders: list) -> Optional[str]:
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    names = [file_name] if file_name and "/" not in file_name and "\\" not in file_name \
        and file_name not in (".", "..") else []
    names += [stem + ext for ext in image_files.IMAGE_EXTENSIONS]
    for folder in folders:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return os.path.abspath(path)
    return None


def _int(text: Optional[str]) -> Optional[int]:
    try:
        value = int(float(text))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if value > 0 else None


def _object(obj, k: int, width: int, height: int, image_id: int, xml_path: str,
            report: coco.DatasetReport) -> Optional[tuple]:
    """(name, clipped box xyxy, difficult) of one <object>, or None (reported)."""
    at = f"object {k}"
    name = (obj.findtext("name") or "").strip()
    if not name:
        report.add(coco.BAD_BOX, "expected a <name>, found none; object dropped", image_id,
                   file=xml_path, at=at)
        return None
    found = [obj.findtext(f"bndbox/{tag}") for tag in ("xmin", "ymin", "xmax", "ymax")]
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in found)
    except (TypeError, ValueError):
        report.add(coco.BAD_BOX, f"expected <bndbox> with numbers xmin, ymin, xmax, ymax, "
                   f"found {found}; object {name!r} dropped", image_id, file=xml_path, at=at)
        return None
    # VOC pixel indices start at 1: the box's edges are at xmin - 1 and xmax.
    kind, box = records_lib.box_problem(xmin - 1, ymin - 1, xmax, ymax, width, height)
    if kind in (coco.BAD_BOX, coco.BOX_OUTSIDE_IMAGE):
        report.add(kind, f"{box} ({name!r}, bndbox {found}); object dropped", image_id,
                   file=xml_path, at=at)
        return None
    if kind == coco.BOX_CLIPPED:
        report.add(kind, f"bndbox {found} exceeds the {width}x{height} image; clipped to xyxy "
                   f"{[round(float(v), 2) for v in box]}", image_id, file=xml_path, at=at)
    difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
    return name, [float(v) for v in box], difficult
