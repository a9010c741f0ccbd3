"""A look at a dataset before training (`--mode=inspect_data`): counts, sizes, a picture.

    python main.py --mode=inspect_data --set data.train_annotations=... --set data.train_images=...

For the train split (and the val split when there is one) it prints and writes into one
folder (default `<model_dir>/data/`):

* `summary.txt`: images, objects and ignore regions; objects per class (and in how many
  images); objects per image (histogram, the busiest images named with their files and how
  many objects `data.max_objects` keeps); box sizes against the network: the side
  sqrt(w * h) as training sees it (random crops at the image's own scale, crop scale 1)
  and as evaluation and predict see it (the whole image fitted into `model.input_size`),
  in input pixels and in output-grid cells, with the boxes below one output cell (their two
  corners fall into the same cell or its neighbour) and above the input counted;
* `box_sizes.png`: the two size histograms, with the output cell and the input size marked;
* `samples.png`: the busiest images and the first others, their boxes drawn with class
  names (ignore regions in white, named "(ignore)").

The folder holds only these files: a folder with other files in it is refused, so nothing
of the user's is written over. The look reads the data as training does (`pipeline.
load_split`, the same problem report) and needs no model and no TensorFlow graph.
"""

from __future__ import annotations

import collections
import os
from typing import Optional, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from cornernet_tf.evaluation import visualize  # noqa: E402
from cornernet_tf.errors import UserError  # noqa: E402

FILES = ("summary.txt", "box_sizes.png", "samples.png")
BUSIEST_SHOWN = 5
IGNORE_COLOUR = (255, 255, 255)  # ignore regions in the samples picture


def box_sides(records: Sequence, input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Box sides sqrt(w * h) in network-input pixels: (training, evaluation).

    Training crops the image at its own scale (crop scale 1: a box keeps its pixel size);
    evaluation and predict fit the whole image into the input (`resize_pad`: scale
    min(in_h / H, in_w / W)).

    Returns:
      ([N] float64, [N] float64) over all objects of `records`.
    """
    in_h, in_w = input_size
    native, fitted = [], []
    for r in records:
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        native.append(side)
        fitted.append(side * min(in_h / r.height, in_w / r.width))
    if not native:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(native), np.concatenate(fitted)


def summarize(records: Sequence, names: Sequence[str], source: str, input_size: Sequence[int],
              stride: float, max_objects: int) -> tuple[str, dict]:
    """The look's text and its numbers.

    Args:
      records: ImageRecords of one split; names: class names (index = class).
      source: the split's annotation path; input_size: (h, w) of the network input;
      stride: input pixels per output-grid cell; max_objects: objects kept per image in
        training.

    Returns:
      (text, {"objects_per_class": {name: n}, "images_per_class": {name: n},
      "objects_per_image": [per record], "busiest": [(count, image id, path)],
      "below_one_cell": (training, evaluation) counts, "above_input": (training,
      evaluation) counts, "stride": input pixels per output cell}).
    """
    per_class = collections.Counter(int(c) for r in records for c in r.classes)
    images_with = collections.Counter(int(c) for r in records for c in set(r.classes.tolist()))
    ignored = sum(len(r.ignore_classes) for r in records)
    counts = np.array([len(r.classes) for r in records], np.int64)
    order = sorted(range(len(records)), key=lambda k: (-counts[k], k))[:BUSIEST_SHOWN]
    busiest = [(int(counts[k]), records[k].image_id, records[k].path) for k in order]
    native, fitted = box_sides(records, input_size)
    below = (int((native < stride).sum()), int((fitted < stride).sum()))
    above = (int((native > min(input_size)).sum()), int((fitted > min(input_size)).sum()))
    total = max(len(native), 1)
    lines = [f"{source}: {len(records)} images, {int(counts.sum())} objects, {ignored} ignore "
             f"regions, {int((counts == 0).sum())} images without objects",
             "objects per class (images with it): " + ", ".join(
                 f"{n} {per_class.get(k, 0)} ({images_with.get(k, 0)})"
                 for k, n in enumerate(names))]
    if len(counts):
        histogram = collections.Counter(counts.tolist())
        lines.append(f"objects per image: min {counts.min()}, median {np.median(counts):g}, "
                     f"max {counts.max()}; histogram " + " ".join(
                         f"{n}:{histogram[n]}" for n in sorted(histogram)))
        over = counts > max_objects
        lines.append(f"data.max_objects={max_objects}: " + (
            f"{int(over.sum())} images have more; {int((counts[over] - max_objects).sum())} "
            f"objects beyond it (in training: corner heatmaps only, no embedding or offset "
            f"targets)" if over.any() else "every object is kept"))
        lines.append("busiest images: " + "; ".join(
            f"{n} objects in image id {i} ({os.path.basename(p)})" for n, i, p in busiest))
    if len(native):
        lines += [
            f"box side sqrt(w*h) in input pixels ({input_size[0]}x{input_size[1]} input, "
            f"output cell = {stride:g} px): training (image at its own scale) min/median/max "
            f"{native.min():.1f}/{np.median(native):.1f}/{native.max():.1f}; evaluation and "
            f"predict (image fitted to the input) {fitted.min():.1f}/"
            f"{np.median(fitted):.1f}/{fitted.max():.1f}",
            f"boxes below one output cell ({stride:g} px): training {below[0]} "
            f"({100 * below[0] / total:.0f}%), evaluation {below[1]} "
            f"({100 * below[1] / total:.0f}%); larger than the input: training {above[0]} "
            f"({100 * above[0] / total:.0f}%), evaluation {above[1]}"]
    numbers = {"objects_per_class": {n: per_class.get(k, 0) for k, n in enumerate(names)},
               "images_per_class": {n: images_with.get(k, 0) for k, n in enumerate(names)},
               "objects_per_image": counts.tolist(), "busiest": busiest,
               "below_one_cell": below, "above_input": above, "stride": stride}
    return "\n".join(lines), numbers


def plot_box_sizes(splits: dict, input_size: Sequence[int], stride: float, path: str) -> str:
    """Histograms of box sides (training and evaluation scale) per split, log-spaced bins.

    Args:
      splits: {split name: (native sides, fitted sides)} from `box_sides`.
    """
    figure, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 3.6), squeeze=False)
    for axis, (split, (native, fitted)) in zip(axes[0], splits.items()):
        every = np.concatenate([native, fitted, [1.0]])
        bins = np.geomspace(max(every.min(), 0.5), max(every.max(), 2 * min(input_size)), 30)
        axis.hist(native, bins=bins, alpha=0.6, label="training (own scale)")
        axis.hist(fitted, bins=bins, alpha=0.6, label="evaluation/predict (fitted)")
        axis.axvline(stride, color="k", linestyle="--", label=f"one output cell ({stride:g} px)")
        axis.axvline(min(input_size), color="r", linestyle=":",
                     label=f"input ({min(input_size)} px)")
        axis.set_xscale("log")
        axis.set_xlabel("box side sqrt(w*h), network-input pixels")
        axis.set_ylabel("objects")
        axis.set_title(split)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def draw_samples(records: Sequence, names: Sequence[str], path: str, count: int = 6,
                 tile: int = 256) -> str:
    """A grid of the busiest images and the first others, boxes drawn (ignore: white)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    counts = [len(r.classes) for r in records]
    busiest = sorted(range(len(records)), key=lambda k: (-counts[k], k))[:count // 2]
    chosen = busiest + [k for k in range(len(records)) if k not in busiest][:count - len(busiest)]
    tiles = []
    for k in chosen:
        r = records[k]
        with Image.open(r.path) as image:
            # scaled (up or down) to the tile before drawing: lines and names stay legible
            scale = tile / max(image.size)
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            picture = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR))
        labels = [names[int(c)] for c in r.classes] + [f"{names[int(c)]} (ignore)"
                                                       for c in r.ignore_classes]
        colours = [visualize.PALETTE[int(c) % len(visualize.PALETTE)] for c in r.classes]
        colours += [IGNORE_COLOUR] * len(r.ignore_classes)
        boxes = np.concatenate([np.asarray(r.boxes).reshape(-1, 4),
                                np.asarray(r.ignore_boxes).reshape(-1, 4)]) * scale
        tiles.append(visualize.draw_boxes(picture, boxes, labels, colours))
    columns = min(3, max(len(tiles), 1))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)] or [[]]
    heights = [max((t.shape[0] for t in row), default=tile) for row in rows]
    grid = np.full((sum(heights), columns * tile, 3), 255, np.uint8)
    top = 0
    for row, height in zip(rows, heights):  # each row as high as its tallest picture
        for x, t in enumerate(row):
            grid[top:top + t.shape[0], x * tile:x * tile + t.shape[1]] = t
        top += height
    visualize.save_png(grid, path)
    return path


def output_folder(path: str) -> str:
    """Creates `path` for the look's files; refuses a folder holding other files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} exists and is not a folder; give another --output")
    if os.path.isdir(path):
        others = sorted(set(os.listdir(path)) - set(FILES))
        if others:
            raise UserError(f"{path} holds files the data look did not write ({others[:5]}); "
                            f"it writes only into a new folder or its own: give another "
                            f"--output")
    os.makedirs(path, exist_ok=True)
    return path


def inspect_data(cfg, output_dir: str, splits: Optional[dict] = None) -> dict:
    """Runs the look on the configured splits and writes its files.

    Args:
      cfg: a resolved Config (data.*, model.input_size, data.max_objects).
      output_dir: the folder (see `output_folder`).
      splits: {name: (records, label_map)}; None: loaded with `pipeline.load_split` (the
        val split only when `pipeline.validation_split` finds one).

    Returns:
      {"text": the summary, "files": the paths written, split name: `summarize` numbers}.
    """
    from cornernet_tf.data import pipeline  # pylint: disable=import-outside-toplevel
    output_folder(output_dir)
    if splits is None:
        splits = {"train": pipeline.load_split(cfg.data, "train", check_images="none")[:2]}
        if pipeline.validation_split(cfg.data) is None:
            splits["val"] = pipeline.load_split(cfg.data, "val", check_images="none",
                                                label_map=splits["train"][1])[:2]
    model = cfg.model
    texts, result, sizes = [], {}, {}
    for name, (records, label_map) in splits.items():
        text, numbers = summarize(records, label_map.names,
                                  getattr(cfg.data, f"{name}_annotations"), model.input_size,
                                  model.stride, cfg.data.max_objects)
        texts.append(f"[{name}] {text}")
        result[name] = numbers
        sizes[name] = box_sides(records, model.input_size)
    files = [os.path.join(output_dir, f) for f in FILES]
    text = "\n".join(texts)
    with open(files[0], "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot_box_sizes(sizes, model.input_size, model.stride, files[1])
    train_records, train_map = splits["train"]
    draw_samples(train_records, train_map.names, files[2])
    result.update(text=text, files=files)
    return result
