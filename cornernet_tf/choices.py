"""Allowed values of the config's string options implemented by top-level modules.

This module imports no TensorFlow, unlike the modules that implement the choices:
`cornernet_tf.config` validates a config before TensorFlow is imported (a bad `--set` fails
fast), and it takes the allowed values from here. The implementing modules import the same
tuples, so each list is written once. The options of a subpackage are in that package's
`choices.py` (layers, data, export); the backbones are the table in `backbones/presets.py`.
"""

# config `train.strategy`, implemented by `training.get_strategy`.
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device", "default")
# config `train.mixed_precision`: Keras dtype policies, set by `training.set_precision`.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# config `train.schedule`, implemented by `training.CornerNetSchedule`.
SCHEDULES = ("step", "cosine", "constant")
# config `evaluate.oracle`, implemented by `evaluation.oracle_heads` ("none": the model).
ORACLES = ("none", "heatmaps", "heatmaps+offsets", "all")
# config `demo.ablation`, implemented by `demo.run_demo` ("none": the plain demo).
ABLATIONS = ("none", "corner_pooling")
