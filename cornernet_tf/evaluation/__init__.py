"""Evaluation: COCO metrics (`metrics.py`), the runner that detects a split and scores it
(`runner.py`), and the analysis pictures (`analysis.py`, `visualize.py`).

`coco_evaluate(ground_truth, detections)` is the public entry (`metrics.py`).
"""

from cornernet_tf.evaluation.metrics import coco_evaluate

__all__ = ["coco_evaluate"]
