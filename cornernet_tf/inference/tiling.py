"""Tiled inference: an image much larger than the network input, seen in overlapping tiles.

An export fits the whole image into `model.input_size` (aspect kept): a 2300 x 2500 aerial
photo shrinks 18x for a 128 x 128 network trained on crops at native scale, and its small
objects vanish. `detect_tiled` instead runs the export on tiles of the network input's size
at the image's own scale, plus once on the whole image (for objects larger than a tile),
and merges all boxes with the soft-NMS of the graph (`decode.merge_detections`, the
function the flip and multi-scale tests use):

    tiles  = tile_grid(2472, 2299, (128, 128), overlap=0.25)   # [(y0, x0, y1, x1), ...]
    det    = detect_tiled(detector, image, (128, 128), DecodeConfig(max_detections=100))
    det.boxes   # [N, 4] float64 xyxy image pixels; det.scores [N]; det.classes [N] 0-based

Choices (written down because the issue left them open):
- Tiles are `input_size` pixels (no resize inside a tile), stepping by `(1 - overlap)` of a
  tile; the last row and column are moved back to end at the image border, so every pixel
  is covered and no tile is padded. An object at most `overlap * tile` wide lies whole in
  some tile.
- A tile's box touching one of the tile's inner edges (an edge inside the image, within
  `EDGE_PIXELS`) is dropped: it is most likely an object cut by the tile, which the
  neighbouring tile (or the whole-image pass) sees whole.
- The whole-image pass is always added, so tiling never loses the objects the untiled
  prediction finds among the large ones.
- Detections coming out of the export are already soft-NMS'ed per tile; the merge decays
  the overlaps between tiles (a second decay of what one tile suppressed, as
  `merge_detections` documents) and applies the score floor. It keeps up to the export's
  `max_detections` per window (a large image holds more objects than one network input),
  at most `config.schema.MAX_OBJECTS_CAP` (1024) unless the export's own number is larger
  (`merged_max_detections`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from cornernet_tf.inference import preprocess

# A box within this many pixels of a tile's inner edge is taken as cut by the tile.
EDGE_PIXELS = 2.0


class Detections(NamedTuple):
    boxes: np.ndarray  # [N, 4] float64 xyxy pixels of the whole image
    scores: np.ndarray  # [N] float, descending
    classes: np.ndarray  # [N] int64 0-based


def tile_grid(height: int, width: int, tile: Sequence[int],
              overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering an image.

    Args:
      height, width: the image size.
      tile: (tile height, tile width), the network input size.
      overlap: fraction of a tile shared with its neighbour, in [0, 1).

    Returns:
      [(y0, x0, y1, x1)] row by row; one tile of the whole image when it fits in a tile.

    Raises:
      ValueError: overlap outside [0, 1) or a non-positive size.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap: expected a fraction in [0, 1), found {overlap!r}")
    th, tw = int(tile[0]), int(tile[1])
    if min(th, tw, height, width) < 1:
        raise ValueError(f"tile_grid: sizes must be positive, found image {height}x{width}, "
                         f"tile {th}x{tw}")

    def starts(size: int, side: int) -> list[int]:
        if size <= side:
            return [0]
        step = max(1, int(side * (1.0 - overlap)))
        out = list(range(0, size - side, step))
        return out + [size - side]  # the last one ends at the border

    return [(y, x, min(y + th, height), min(x + tw, width))
            for y in starts(height, th) for x in starts(width, tw)]


def merged_max_detections(max_detections: int, windows: int) -> int:
    """Detections a tiled image keeps: the export's per window, at most the cap (module
    docstring); never fewer than the export's own."""
    from cornernet_tf.config.schema import MAX_OBJECTS_CAP
    return max(min(max_detections * windows, MAX_OBJECTS_CAP), max_detections)


def _inner_edge_cut(boxes: np.ndarray, window: tuple, height: int, width: int) -> np.ndarray:
    """[N] bool: the box (image pixels) touches an edge of the tile that is inside the image."""
    y0, x0, y1, x1 = window
    cut = np.zeros(len(boxes), bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + EDGE_PIXELS
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + EDGE_PIXELS
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - EDGE_PIXELS
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - EDGE_PIXELS
    return cut


def detect_tiled(detector: Callable[[np.ndarray], dict], image: np.ndarray,
                 tile: Sequence[int], decode_params,
                 overlap: float = 0.25) -> Detections:
    """Detections of a large image from overlapping tiles plus the whole image.

    Args:
      detector: uint8 [h, w, 3] -> the serving contract's numpy outputs for batch 1
        (`inference.exported.ExportedDetector`: a SavedModel or a .tflite file).
      image: [H, W, 3] uint8 RGB.
      tile: the tile size (h, w): the export's network input size.
      decode_params: the export's `DecodeConfig` (`predict.read_tiling_params`, from its
        serving.json); the merge uses its `max_detections` (per window:
        `merged_max_detections`), `soft_nms_sigma` and `score_threshold` (the soft-NMS
        floor).
      overlap: fraction of a tile shared with its neighbour.

    Returns:
      Detections in image pixels, merged and sorted by score.
    """
    import tensorflow as tf

    from cornernet_tf.inference.decode import merge_detections, resolved_params
    from cornernet_tf.keys import BOXES, CLASSES, NUM_DETECTIONS, SCORES

    height, width = image.shape[:2]
    windows = tile_grid(height, width, tile, overlap)
    windows = [(0, 0, height, width)] + (windows if len(windows) > 1 else [])
    sets = []
    for window in windows:
        y0, x0, y1, x1 = window
        crop = image[y0:y1, x0:x1]
        boxes, scores, classes, num = preprocess.contract_to_pixels(
            detector(np.ascontiguousarray(crop)), [[y1 - y0, x1 - x0]])
        n = int(num[0])
        boxes = boxes[0, :n] + np.array([x0, y0, x0, y0], np.float64)
        scores, classes = scores[0, :n], classes[0, :n]
        if window != (0, 0, height, width):
            keep = ~_inner_edge_cut(boxes, window, height, width)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        sets.append({BOXES: tf.constant(boxes[None], tf.float32),
                     SCORES: tf.constant(np.asarray(scores, np.float32)[None]),
                     CLASSES: tf.constant(np.asarray(classes, np.int32)[None])})
    params = resolved_params(decode_params)
    keep = merged_max_detections(params.max_detections, len(windows))
    merged = merge_detections(sets, dataclasses.replace(params, max_detections=keep))
    n = int(merged[NUM_DETECTIONS][0])
    return Detections(merged[BOXES][0, :n].numpy().astype(np.float64),
                      merged[SCORES][0, :n].numpy(),
                      merged[CLASSES][0, :n].numpy().astype(np.int64))
