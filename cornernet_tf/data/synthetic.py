"""The "shapes" dataset: procedurally drawn objects written as a real COCO-format dataset.

The embedded default of the package (configs/quickstart.yaml): small enough to train a
small CornerNet on 2 CPU cores, yet with what makes detection non-trivial:

- 4 classes: rectangle, ellipse, triangle, cross. Only the rectangle has its box corners on
  the object; for the other three the corners lie outside it, the case corner pooling is for.
  Four more kinds can be chosen instead or besides (`classes`, config
  `data.synthetic.classes`): star (5 points), ring (an elliptic annulus), diamond (a rhombus),
  arrow (horizontal, either way), other objects for a dataset of other classes, e.g. to
  fine-tune a model trained on the default 4 (benchmarks/transfer.py);
- sizes from 6 px to 60 % of the image side (log-uniform), aspect ratios 1:2.5 to 2.5:1,
  random colours on gradient + noise backgrounds;
- occlusion: later shapes are drawn over earlier ones; a box is the full extent of its
  object, and objects with less than 30 % of their pixels visible are not annotated;
- truncation: shapes may cross the border; boxes are clipped to the image;
- 0 to `max_objects` objects per image (images without objects are negatives).

Boxes are tight: [x_min, y_min, x_max + 1, y_max + 1] of the object's rasterised pixel mask
(pixel i covers [i, i + 1)), so they equal the drawn pixels exactly. Generation is
deterministic from the seed (numpy Generator; train and val use different child seeds) and
cached: `<output_dir>/manifest.json` holds the parameters and the generator version, and a
matching manifest means the files on disk are reused.

    paths = generate_shapes_dataset("datasets/shapes", 2000, 200, (128, 128), 10, seed=0)
    print(describe(paths.train_annotations))
"""

from __future__ import annotations

import collections
import json
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

from cornernet_tf.config.choices import SHAPE_KINDS
from cornernet_tf.config.schema import ConfigError

CLASS_NAMES = SHAPE_KINDS[:4]  # the default dataset's classes
KINDS = SHAPE_KINDS  # every kind shape_mask draws
GENERATOR_VERSION = 1
MIN_VISIBLE_FRACTION = 0.3  # objects occluded by more than 70 % are not annotated
MIN_SIZE = 6.0  # smallest nominal object side, pixels
MAX_SIZE_FRACTION = 0.6  # largest nominal object side, fraction of the shorter image side
MAX_ASPECT = 2.5
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's size thresholds


class SyntheticPaths(NamedTuple):
    """Where a generated dataset lives (the same keys as DataConfig)."""

    train_annotations: str
    train_images: str
    val_annotations: str
    val_images: str


def synthetic_paths(output_dir: str) -> SyntheticPaths:
    """The layout under `output_dir`: {train,val}/*.png, annotations/instances_{split}.json."""
    return SyntheticPaths(
        os.path.join(output_dir, "annotations", "instances_train.json"),
        os.path.join(output_dir, "train"),
        os.path.join(output_dir, "annotations", "instances_val.json"),
        os.path.join(output_dir, "val"))


def shape_mask(kind: str, params: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterises one shape by testing pixel centres (x + 0.5, y + 0.5).

    Args:
      kind: one of KINDS.
      params: (cx, cy, w, h, a, b): centre and nominal size in pixels, then two shape
        parameters in [0, 1]: triangle apex position along its edge and 1 for an apex at
        the bottom; cross bar thickness fractions (of w for the vertical bar, of h for the
        horizontal one); star inner radius 0.35 + 0.2 a (of the outer) and rotation
        b x 72 degrees; ring inner radius 0.45 + 0.25 a; arrow shaft thickness
        (0.3 + 0.2 a) h and pointing left when b >= 0.5 (the head is 0.4 w long). Ignored
        for rectangle, ellipse and diamond. Every kind lies within the w x h rectangle
        around the centre; the star and the ring are inscribed in its ellipse.
      height, width: image size in pixels.

    Returns:
      [height, width] bool mask, True where the shape covers the pixel centre.
    """
    cx, cy, w, h, a, b = (float(v) for v in params)
    mask = np.zeros((height, width), bool)
    x0, y0 = max(int(np.floor(cx - w / 2)), 0), max(int(np.floor(cy - h / 2)), 0)
    x1, y1 = min(int(np.ceil(cx + w / 2)) + 1, width), min(int(np.ceil(cy + h / 2)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return mask
    # Local window: pixel-centre coordinates relative to the shape's centre.
    dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]  # [1, W']
    dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]  # [H', 1]
    if kind == "rectangle":
        local = (np.abs(dx) <= w / 2) & (np.abs(dy) <= h / 2)
    elif kind == "ellipse":
        local = (dx / (w / 2)) ** 2 + (dy / (h / 2)) ** 2 <= 1.0
    elif kind == "triangle":
        apex_x = -w / 2 + a * w
        sign = -1.0 if b >= 0.5 else 1.0  # apex on top (sign 1) or at the bottom (sign -1)
        vertices = [(apex_x, -sign * h / 2), (-w / 2, sign * h / 2), (w / 2, sign * h / 2)]
        local = _inside_triangle(dx, dy, vertices)
    elif kind == "cross":
        bar_w, bar_h = w * (0.25 + 0.2 * a), h * (0.25 + 0.2 * b)
        inside = (np.abs(dx) <= w / 2) & (np.abs(dy) <= h / 2)
        local = inside & ((np.abs(dx) <= bar_w / 2) | (np.abs(dy) <= bar_h / 2))
    elif kind == "star":
        local = _inside_polygon(dx, dy, star_vertices(w, h, a, b))
    elif kind == "ring":
        r2 = (dx / (w / 2)) ** 2 + (dy / (h / 2)) ** 2
        local = (r2 <= 1.0) & (r2 >= (0.45 + 0.25 * a) ** 2)
    elif kind == "diamond":
        local = np.abs(dx) / (w / 2) + np.abs(dy) / (h / 2) <= 1.0
    elif kind == "arrow":
        head, shaft = 0.4 * w, h * (0.3 + 0.2 * a)
        sx = -1.0 if b >= 0.5 else 1.0  # pointing right (1) or left (-1)
        ux = sx * dx  # along the arrow: the tail at -w/2, the tip at +w/2
        base = w / 2 - head
        in_shaft = (ux >= -w / 2) & (ux <= base) & (np.abs(dy) <= shaft / 2)
        in_head = _inside_triangle(ux, dy, [(base, -h / 2), (w / 2, 0.0), (base, h / 2)])
        local = in_shaft | in_head
    else:
        raise ValueError(f"shape kind: expected one of {KINDS}, found {kind!r}")
    mask[y0:y1, x0:x1] = local
    return mask


def _inside_triangle(dx: np.ndarray, dy: np.ndarray, vertices: list) -> np.ndarray:
    signs = []
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1]):
        signs.append((bx - ax) * (dy - ay) - (by - ay) * (dx - ax))
    return ((signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)) | (
        (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0))


def star_vertices(w: float, h: float, a: float, b: float) -> list:
    """The 10 vertices (x, y) of shape_mask's star, relative to its centre, in order."""
    inner, turn = 0.35 + 0.2 * a, b * 2 * np.pi / 5
    vertices = []
    for k in range(10):
        radius, angle = (1.0 if k % 2 == 0 else inner), -np.pi / 2 + turn + k * np.pi / 5
        vertices.append((radius * w / 2 * np.cos(angle), radius * h / 2 * np.sin(angle)))
    return vertices


def _inside_polygon(dx: np.ndarray, dy: np.ndarray, vertices: list) -> np.ndarray:
    """Even-odd rule for a simple polygon (convex or not): a ray towards +x from each point
    crosses its edges an odd number of times when the point is inside."""
    dx, dy = np.broadcast_arrays(dx, dy)
    inside = np.zeros(dx.shape, bool)
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1]):
        if ay == by:
            continue  # a horizontal edge is never crossed by a horizontal ray
        spans = (ay > dy) != (by > dy)
        inside ^= spans & (dx < ax + (dy - ay) * (bx - ax) / (by - ay))
    return inside


def mask_box(mask: np.ndarray) -> list:
    """Tight [x1, y1, x2, y2] of a non-empty pixel mask (pixel i covers [i, i + 1))."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def render_image(rng: np.random.Generator, image_size: Sequence[int], max_objects: int,
                 classes: Sequence[str] = CLASS_NAMES):
    """Draws one image.

    Args:
      rng: the numpy Generator all randomness comes from.
      image_size: (height, width).
      max_objects: objects drawn are uniform in 0..max_objects.
      classes: the kinds drawn (class i is classes[i]), each equally likely.

    Returns:
      (image, objects): image [H, W, 3] uint8 RGB; objects in drawing order, each a dict
      {class (0-based index into `classes`), box [x1, y1, x2, y2], area (object pixels in the image), visible
      (fraction of those pixels not covered by later shapes), color (RGB), mask [H, W]}.
      Objects with no pixel in the image are not included.
    """
    height, width = int(image_size[0]), int(image_size[1])
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)
    objects = []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        cls = int(rng.integers(len(classes)))
        size = np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE_FRACTION * min(height, width))))
        aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
        params = (rng.uniform(0, width), rng.uniform(0, height), size * np.sqrt(aspect),
                  size / np.sqrt(aspect), rng.uniform(), rng.uniform())
        mask = shape_mask(classes[cls], params, height, width)
        if not mask.any():
            continue
        color = _contrasting_color(rng, image, mask)
        image[mask] = color
        owner[mask] = len(objects)
        objects.append(dict(class_=cls, mask=mask, color=color))
    visible = np.bincount(owner[owner >= 0], minlength=len(objects))
    result = []
    for k, obj in enumerate(objects):
        area = int(obj["mask"].sum())
        result.append({"class": obj["class_"], "box": mask_box(obj["mask"]), "area": area,
                       "visible": float(visible[k]) / area, "color": obj["color"],
                       "mask": obj["mask"]})
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), result


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Linear colour gradient at a random angle plus Gaussian noise, [H, W, 3] float32."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] / width
    ys = np.arange(height, dtype=np.float32)[:, None] / height
    t = np.float32(np.cos(angle)) * xs + np.float32(np.sin(angle)) * ys  # [H, W]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    std = np.float32(rng.uniform(3, 20))
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * std
    return image + noise * rng.uniform(0.5, 1.0, 3).astype(np.float32)


def _contrasting_color(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple:
    """A random RGB colour at least 100 (L1) from the mean colour under the mask."""
    under = image[mask].mean(axis=0)
    color = rng.integers(0, 256, 3)
    for _ in range(10):
        if np.abs(color - under).sum() >= 100:
            break
        color = rng.integers(0, 256, 3)
    return tuple(int(c) for c in color)


def _write_split(rng: np.random.Generator, split: str, image_dir: str, annotation_path: str,
                 num_images: int, image_size: Sequence[int], max_objects: int,
                 classes: Sequence[str]) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    os.makedirs(image_dir, exist_ok=True)
    for name in os.listdir(image_dir):  # stale images of an earlier generation
        if name.startswith(f"{split}_") and name.endswith(".png"):
            os.remove(os.path.join(image_dir, name))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = render_image(rng, image_size, max_objects, classes)
        file_name = f"{split}_{image_id:06d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name), format="PNG",
                                    compress_level=1)
        images.append({"id": image_id, "file_name": file_name,
                       "height": int(image_size[0]), "width": int(image_size[1])})
        for obj in objects:
            if obj["visible"] < MIN_VISIBLE_FRACTION:
                continue
            x1, y1, x2, y2 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["class"] + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": float(obj["area"]), "iscrowd": 0})
    data = {"info": {"description": "cornernet_tf synthetic shapes", "version": GENERATOR_VERSION},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(classes)]}
    os.makedirs(os.path.dirname(annotation_path), exist_ok=True)
    _write_json(annotation_path, data)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def generate_shapes_dataset(output_dir: str, num_train: int, num_val: int,
                            image_size: Sequence[int], max_objects: int,
                            seed: int, classes: Sequence[str] = CLASS_NAMES) -> SyntheticPaths:
    """Writes (or reuses) the shapes dataset in COCO format under `output_dir`.

    Args:
      output_dir: root folder; gets train/, val/, annotations/ and manifest.json.
      num_train, num_val: images per split.
      image_size: (height, width) of every image.
      max_objects: objects drawn per image are uniform in 0..max_objects (fewer are
        annotated when occluded).
      seed: the train split draws from numpy Generator([seed, 0]), val from [seed, 1].
      classes: the kinds drawn, in category order (ids 1, 2, ...): distinct names of KINDS.
        The manifest lists them when they are not the default CLASS_NAMES (the default's
        manifest is the one written before kinds could be chosen, so its caches stay valid).

    Returns:
      SyntheticPaths of the two annotation files and image folders.

    Raises:
      ValueError: `classes` empty, repeated, or not kinds of KINDS.
    """
    classes = tuple(classes)
    if not classes or len(set(classes)) < len(classes) or any(k not in KINDS for k in classes):
        raise ValueError(f"classes: expected distinct names from {', '.join(KINDS)}, "
                         f"found {list(classes)}")
    paths = synthetic_paths(output_dir)
    manifest = {"generator": "cornernet_tf.data.synthetic", "version": GENERATOR_VERSION,
                "num_train": int(num_train), "num_val": int(num_val),
                "image_size": [int(image_size[0]), int(image_size[1])],
                "max_objects": int(max_objects), "seed": int(seed)}
    if classes != CLASS_NAMES:
        manifest["classes"] = list(classes)
    manifest_path = os.path.join(output_dir, "manifest.json")
    if _cached(manifest_path, manifest, paths):
        print(f"synthetic shapes: reusing {output_dir} (manifest matches)", flush=True)
        return paths
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # an interrupted regeneration must not look complete
    for index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([int(seed), index])
        _write_split(rng, split, getattr(paths, f"{split}_images"),
                     getattr(paths, f"{split}_annotations"), count, image_size, max_objects,
                     classes)
    _write_json(manifest_path, manifest)
    print(f"synthetic shapes: wrote {num_train} train + {num_val} val images to {output_dir}",
          flush=True)
    return paths


def _cached(manifest_path: str, manifest: dict, paths: SyntheticPaths) -> bool:
    try:
        with open(manifest_path, "r", encoding="utf-8") as f:
            if json.load(f) != manifest:
                return False
    except (OSError, ValueError):
        return False
    for split, count in (("train", manifest["num_train"]), ("val", manifest["num_val"])):
        folder = getattr(paths, f"{split}_images")
        if not os.path.isfile(getattr(paths, f"{split}_annotations")) or not os.path.isdir(folder):
            return False
        names = set(os.listdir(folder))
        if any(f"{split}_{i:06d}.png" not in names for i in range(1, count + 1)):
            return False
    return True


def is_own(data_config, split: str) -> bool:
    """Whether a split's annotation path is the user's, not the generated dataset's."""
    expected = getattr(synthetic_paths(data_config.synthetic.output_dir), f"{split}_annotations")
    value = getattr(data_config, f"{split}_annotations")
    return bool(value) and os.path.normpath(value) != os.path.normpath(expected)


def ensure_synthetic(data_config) -> Optional[SyntheticPaths]:
    """Generates the synthetic dataset on first use, for the splits that read it.

    Giving a split's data paths means "use these files": a split whose annotation file and
    image folder both differ from `data.synthetic.output_dir`'s layout reads the user's
    files, so `--config=quickstart --set data.train_annotations=my/ann.json --set
    data.train_images=my/images ...` trains the quickstart model on the user's data. A split
    left at the layout uses (and on first use generates) the shapes dataset.

    Args:
      data_config: a `DataConfig`.

    Returns:
      SyntheticPaths when some split reads the generated dataset, else None (nothing is
      generated).

    Raises:
      ConfigError: a split names only one of its two paths (its annotation file and its
        image folder must both be the user's, or both the generated dataset's).
    """
    s = data_config.synthetic
    expected = synthetic_paths(s.output_dir)
    generated_splits = []
    for split in ("train", "val"):
        ann_key, img_key = f"{split}_annotations", f"{split}_images"
        own = [os.path.normpath(getattr(data_config, key) or ".")
               != os.path.normpath(getattr(expected, key)) for key in (ann_key, img_key)]
        if all(own):
            continue
        if any(own):
            mine, generated = (ann_key, img_key) if own[0] else (img_key, ann_key)
            raise ConfigError(
                f"data.{mine}={getattr(data_config, mine)!r} is your file, but "
                f"data.{generated}={getattr(data_config, generated)!r} is still the generated "
                f"shapes dataset's ({s.output_dir}); set both data.{ann_key} and "
                f"data.{img_key} to your {split} split")
        if split == "val" and "train" not in generated_splits:
            continue  # your train split: no validation on shapes (pipeline.validation_split)
        generated_splits.append(split)
    if not generated_splits:
        return None
    return generate_shapes_dataset(s.output_dir, s.num_train, s.num_val, s.image_size,
                                   s.max_objects, s.seed, s.classes)


def describe(annotation_path: str) -> str:
    """A picture-free description of a COCO instances file, for reports.

    Args:
      annotation_path: COCO instances json.

    Returns:
      Several lines: image and object counts, objects per class, the objects-per-image
      histogram, and small/medium/large counts by annotation area (COCO thresholds 32^2
      and 96^2; the box area w*h when an annotation has no `area`).
    """
    with open(annotation_path, "r", encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    per_class = collections.Counter(names.get(a["category_id"], a["category_id"]) for a in anns)
    per_image = collections.Counter(a["image_id"] for a in anns)
    histogram = collections.Counter(per_image.get(im["id"], 0) for im in data["images"])
    areas = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], np.float64)
    sides = np.sqrt(areas) if len(areas) else np.zeros(1)
    return "\n".join([
        f"{annotation_path}: {len(data['images'])} images, {len(anns)} objects",
        "classes: " + ", ".join(f"{names[c]} {per_class.get(names[c], 0)}" for c in sorted(names)),
        "objects per image: " + " ".join(f"{n}:{histogram[n]}" for n in sorted(histogram)),
        f"sizes (area): small <32^2 {int((areas < SMALL_AREA).sum())}, medium "
        f"{int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum())}, large >=96^2 "
        f"{int((areas >= LARGE_AREA).sum())}; sqrt(area) min/median/max "
        f"{sides.min():.1f}/{np.median(sides):.1f}/{sides.max():.1f} px",
    ])
