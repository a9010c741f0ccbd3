"""Tiled inference (cornernet_tf/inference/tiling.py) with a fake detector of known behaviour."""

import numpy as np
import pytest

from cornernet_tf.config.schema import DecodeConfig
from cornernet_tf.inference.tiling import detect_tiled, tile_grid

PARAMS = DecodeConfig(max_detections=100, soft_nms_sigma=0.5, score_threshold=0.001)


def test_tile_grid_covers_the_image_with_the_last_tiles_at_the_border():
    # 300 x 200 image, 128 tiles, overlap 1/4: step 96; rows start at 0, 96 and 172
    # (300 - 128), columns at 0 and 72 (200 - 128)
    tiles = tile_grid(300, 200, (128, 128), overlap=0.25)
    assert tiles == [(y, x, y + 128, x + 128) for y in (0, 96, 172) for x in (0, 72)]
    assert tile_grid(100, 90, (128, 128)) == [(0, 0, 100, 90)]  # fits: one tile
    assert tile_grid(128, 129, (128, 128), overlap=0.0) == [(0, 0, 128, 128), (0, 1, 128, 129)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(300, 300, (128, 128), overlap=1.0)


class FakeDetector:
    """Sees the objects of a 512 x 512 image: in a crop no larger than 128 x 128, every
    object overlapping it, clipped to the crop (a cut object looks like a smaller one); in a
    larger crop (the whole image, shrunk 4x by a real export) only objects of 64+ pixels."""

    def __init__(self, objects):
        self.objects = objects  # [(x1, y1, x2, y2, class, score)] image pixels
        self.origin = (0, 0)  # the crop's top-left, set by the test's wrapper

    def __call__(self, crop):
        h, w = crop.shape[:2]
        oy, ox = self.origin
        rows = []
        for x1, y1, x2, y2, c, s in self.objects:
            bx1, by1, bx2, by2 = max(x1 - ox, 0), max(y1 - oy, 0), min(x2 - ox, w), min(y2 - oy, h)
            if bx2 <= bx1 or by2 <= by1:
                continue
            if max(h, w) > 128 and max(x2 - x1, y2 - y1) < 64:
                continue
            rows.append(([by1 / h, bx1 / w, by2 / h, bx2 / w], c + 1, s))
        boxes = np.zeros((1, 100, 4), np.float32)
        scores = np.zeros((1, 100), np.float32)
        classes = np.zeros((1, 100), np.float32)
        for i, (b, c, s) in enumerate(sorted(rows, key=lambda r: -r[2])):
            boxes[0, i], classes[0, i], scores[0, i] = b, c, s
        return {"detection_boxes": boxes, "detection_scores": scores,
                "detection_classes": classes, "num_detections": np.array([len(rows)], np.int32)}


def _coordinate_image(size=512):
    """Pixels that say where they are: R = y % 256, G = x % 256, B = 16 (y // 256) + x // 256,
    so a detector given a crop (a copy) knows its origin from the crop's first pixel."""
    y, x = np.mgrid[:size, :size]
    return np.stack([y % 256, x % 256, 16 * (y // 256) + x // 256], -1).astype(np.uint8)


def test_small_objects_are_found_once_and_cut_boxes_are_dropped():
    image = _coordinate_image()
    small = [(10, 10, 30, 30, 0, 0.9), (100, 100, 120, 118, 1, 0.8),  # (100..120: in 2 tiles)
             (300, 40, 320, 60, 2, 0.7), (490, 490, 505, 505, 0, 0.6)]
    large = [(200, 200, 330, 300, 1, 0.95)]  # 130 px: no tile holds it whole
    fake = FakeDetector(small + large)
    calls = []

    def detector(crop):
        r, g, b = (int(v) for v in crop[0, 0])
        fake.origin = (r + 256 * (b // 16), g + 256 * (b % 16))
        calls.append(fake.origin)
        return fake(crop)

    det = detect_tiled(detector, image, (128, 128), PARAMS, overlap=0.25)
    # 1 whole-image pass + 5 x 5 tiles (starts 0, 96, 192, 288, 384)
    starts = (0, 96, 192, 288, 384)
    assert calls == [(0, 0)] + [(y, x) for y in starts for x in starts]
    strong = det.scores >= 0.5
    got = sorted((tuple(np.round(b).astype(int)), int(c))
                 for b, c in zip(det.boxes[strong], det.classes[strong]))
    want = sorted(((x1, y1, x2, y2), c) for x1, y1, x2, y2, c, _ in small + large)
    assert got == want  # each object once at full score; no cut piece survived
    # the duplicates of objects seen by several tiles are decayed by soft-NMS (IoU 1:
    # exp(-1 / 0.5) = 0.135 of the score), never kept at full score
    assert np.all(det.scores[~strong] <= 0.95 * np.exp(-1 / 0.5) + 1e-6)
