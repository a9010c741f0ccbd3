"""Tiny training set-up shared by tests/test_training.py and `train_worker` (subprocesses).

The config is a 64x64 hourglass52-family network on a 16-image synthetic dataset that the
caller generates in `data_dir` (`generate_shapes_dataset(data_dir, 16, 4, (64, 64), 4)`).
TensorFlow is imported inside the functions: `train_worker` must configure the runtime
(logical CPUs, TF_CONFIG) before TensorFlow starts.
"""

from __future__ import annotations


def tiny_overrides(data_dir: str) -> list[str]:
    """--set style overrides: a tiny network and a 16-image synthetic dataset in data_dir."""
    return [
        "model.backbone=hourglass52", "model.num_classes=4", "model.input_size=[64, 64]",
        "model.stacks=1", "model.stem_channels=16", "model.channels=[16, 16, 24]",
        "model.blocks=[1, 1, 1]", "model.head_channels=16", "model.pool_channels=8",
        "data.dataset=synthetic", f"data.synthetic.output_dir={data_dir}",
        f"data.train_annotations={data_dir}/annotations/instances_train.json",
        f"data.train_images={data_dir}/train",
        f"data.val_annotations={data_dir}/annotations/instances_val.json",
        f"data.val_images={data_dir}/val",
        "data.synthetic.num_train=16", "data.synthetic.num_val=4",
        "data.synthetic.image_size=[64, 64]", "data.synthetic.max_objects=4",
        "data.max_objects=8", "data.deterministic=true", "data.augment.crop_border=16",
        "train.batch_size=4", "train.learning_rate=1e-3", "train.schedule=constant",
    ]


def tiny_config(data_dir: str, extra=()):
    from cornernet_tf.config import schema as config_lib
    return config_lib.load_config(None, overrides=tiny_overrides(data_dir) + list(extra))


def fixed_batch(cfg):
    """The first global batch of the deterministic training pipeline, as numpy.

    Images are sorted by object count (most first).
    """
    import numpy as np
    from cornernet_tf.data import pipeline
    ds = pipeline.build_dataset(cfg.data, cfg.model, "train", training=True,
                                batch_size=cfg.train.batch_size)
    images, targets = next(iter(ds))
    images, targets = images.numpy(), {k: v.numpy() for k, v in targets.items()}
    # Most objects first: the two replicas' halves then hold different object counts, so
    # local and global normalisers differ.
    order = np.argsort(-targets["mask"].sum(axis=1), kind="stable")
    return images[order], {k: v[order] for k, v in targets.items()}
