"""Allowed values of the layers' string options that a config can set.

This module imports no TensorFlow, unlike the layers themselves: `cornernet_tf.config`
validates a config before TensorFlow is imported (a bad `--set` fails fast), and it takes the
allowed values from here. The layers import the same tuples, so each list is written once.
"""

# `directional_pool(impl=...)`, `CornerPool(impl=...)`, config `model.corner_pool_impl`:
# what each one is and when "auto" picks which is in layers/corner_pool.py.
CORNER_POOL_IMPLS = ("auto", "scan", "doubling", "xla")
