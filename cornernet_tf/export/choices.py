"""Allowed values of the export package's string options that a config can set.

This module imports no TensorFlow, unlike the modules that implement the choices:
`cornernet_tf.config` validates a config before TensorFlow is imported (a bad `--set` fails
fast), and it takes the allowed values from here. The implementing modules import the same
tuples, so each list is written once.
"""

# TFLite conversion modes, implemented by `tflite.convert` (config `export.tflite` also
# takes "none": no TFLite file).
TFLITE_MODES = ("fp32", "fp16", "dynamic_int8", "int8")
