"""Datasets: COCO-format reading, the synthetic shapes default, augmentation, targets, tf.data."""
