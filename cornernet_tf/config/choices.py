"""Allowed values of the config's string options, each list written once.

This module imports no TensorFlow, unlike the modules that implement the choices: the config
is validated before TensorFlow is imported (a bad `--set` fails fast), and it takes the
allowed values from here. The implementing modules import the same tuples. The backbones are
the table in `config/presets.py`.
"""

# config `train.strategy`, implemented by `training.loop.get_strategy`.
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device", "default")
# config `train.mixed_precision`: Keras dtype policies, set by `training.loop.set_precision`.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# config `train.schedule`, implemented by `training.loop.CornerNetSchedule`.
SCHEDULES = ("step", "cosine", "constant")
# config `evaluate.oracle`, implemented by `evaluation.runner.oracle_heads` ("none": the model).
ORACLES = ("none", "heatmaps", "heatmaps+offsets", "all")
# config `demo.ablation`, implemented by `demo.run_demo` ("none": the plain demo).
ABLATIONS = ("none", "corner_pooling")

# config `data.dataset`, implemented by `data.pipeline.split_files`: "coco" reads the files
# named in the config, "synthetic" generates the shapes dataset first (data/synthetic.py).
DATASETS = ("coco", "synthetic")
# config `data.format`, implemented by `data.sources.detect_format` / `load_dataset`: how
# the data.*_annotations paths are read ("auto": from what the path holds).
FORMATS = ("auto", "coco", "voc", "yolo")
# config `data.synthetic.classes`, drawn by `data.synthetic.shape_mask`: the kinds of object
# the shapes generator can draw; the first 4 are the default dataset's classes.
SHAPE_KINDS = ("rectangle", "ellipse", "triangle", "cross", "star", "ring", "diamond", "arrow")
# config `data.eval_resize`, implemented by `data.images.fit_to_input` (see its docstring).
EVAL_RESIZE_MODES = ("resize_pad", "pad127")

# `directional_pool(impl=...)`, `CornerPool(impl=...)`, config `model.corner_pool_impl`:
# what each one is and when "auto" picks which is in modeling/layers/corner_pool.py.
CORNER_POOL_IMPLS = ("auto", "scan", "doubling", "xla")

# TFLite conversion modes, implemented by `export.tflite.convert` (config `export.tflite`
# also takes "none": no TFLite file).
TFLITE_MODES = ("fp32", "fp16", "dynamic_int8", "int8")
