"""Pictures: detections drawn on images, and corner heatmaps laid over images (PNG).

Host-side numpy + Pillow; nothing here runs inside a TF graph.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

# A fixed, readable palette (class id modulo its length).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0))


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Lays a corner heatmap over an image (the picture of the paper's Figure 1).

    Args:
      image: [H, W, 3] uint8 RGB.
      heatmap: [h, w, C] or [h, w] float probabilities in [0, 1] (the max over classes is
        shown), on the output grid; it is resized to the image with nearest neighbours.
      alpha: opacity of the heat colour at probability 1.

    Returns:
      [H, W, 3] uint8 RGB.
    """
    heat = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0)  # a diverged model's NaNs
    if heat.ndim == 3:
        heat = heat.max(axis=-1)
    height, width = image.shape[:2]
    ys = np.minimum((np.arange(height) * heat.shape[0] / height).astype(int), heat.shape[0] - 1)
    xs = np.minimum((np.arange(width) * heat.shape[1] / width).astype(int), heat.shape[1] - 1)
    heat = np.clip(heat[ys][:, xs], 0.0, 1.0)[..., None]
    # black -> red -> yellow ramp
    colour = np.concatenate([np.minimum(2 * heat, 1), np.clip(2 * heat - 1, 0, 1),
                             np.zeros_like(heat)], axis=-1) * 255.0
    weight = alpha * heat
    out = image.astype(np.float32) * (1 - weight) + colour * weight
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_detections(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                    scores: np.ndarray, names: Optional[Sequence[str]] = None,
                    min_score: float = 0.0) -> np.ndarray:
    """Draws boxes with "name score" labels.

    Args:
      image: [H, W, 3] uint8 RGB.
      boxes: [N, 4] float xyxy in pixels of `image`.
      classes: [N] int, 0-based contiguous class ids (index into `names`).
      scores: [N] float.
      names: class names; the id is shown when missing.
      min_score: detections below are not drawn.

    Returns:
      [H, W, 3] uint8 RGB with the boxes drawn.
    """
    keep = [i for i, score in enumerate(np.asarray(scores)) if score >= min_score]
    labels, colours = [], []
    for i in keep:
        cls = int(np.asarray(classes)[i])
        name = names[cls] if names is not None and 0 <= cls < len(names) else str(cls)
        labels.append(f"{name} {float(np.asarray(scores)[i]):.2f}")
        colours.append(PALETTE[cls % len(PALETTE)])
    return draw_boxes(image, np.asarray(boxes).reshape(-1, 4)[keep], labels, colours)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
               colours, widths=2) -> np.ndarray:
    """Draws labelled rectangles.

    Args:
      image: [H, W, 3] uint8 RGB.
      boxes: [N, 4] float xyxy in pixels of `image`.
      labels: [N] text drawn above each box ("" for none).
      colours: one (r, g, b) for every box, or [N] of them.
      widths: line width in pixels, one for every box or [N].

    Returns:
      [H, W, 3] uint8 RGB with the boxes drawn.
    """
    picture = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(picture)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(colours) == 3 and np.isscalar(colours[0]):
        colours = [tuple(colours)] * len(boxes)
    widths = np.broadcast_to(np.asarray(widths, np.int64), (len(boxes),))
    for box, label, colour, width in zip(boxes, labels, colours, widths):
        x1, y1, x2, y2 = [float(v) for v in box]
        draw.rectangle([x1, y1, x2, y2], outline=tuple(colour), width=int(width))
        if not label:
            continue
        tx, ty = x1, max(0.0, y1 - 11)
        draw.rectangle(draw.textbbox((tx, ty), label), fill=tuple(colour))
        draw.text((tx, ty), label, fill=(0, 0, 0))
    return np.asarray(picture)


def save_png(image: np.ndarray, path: str) -> None:
    """Writes [H, W, 3] uint8 RGB to a PNG file."""
    Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
