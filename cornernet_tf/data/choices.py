"""Allowed values of the data package's string options that a config can set.

This module imports no TensorFlow, unlike the modules that implement the choices:
`cornernet_tf.config` validates a config before TensorFlow is imported (a bad `--set` fails
fast), and it takes the allowed values from here. The implementing modules import the same
tuples, so each list is written once.
"""

# config `data.dataset`, implemented by `pipeline.split_files`: "coco" reads the files
# named in the config, "synthetic" generates the shapes dataset first (data/synthetic.py).
DATASETS = ("coco", "synthetic")

# config `data.format`, implemented by `sources.detect_format` / `sources.load_dataset`:
# how the data.*_annotations paths are read ("auto": from what the path holds).
FORMATS = ("auto", "coco", "voc", "yolo")

# config `data.eval_resize`, implemented by `preprocess.fit_to_input` (see its docstring).
EVAL_RESIZE_MODES = ("resize_pad", "pad127")
