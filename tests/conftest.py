"""Shared pytest set-up: quiet TensorFlow logs and CPU only, set before any test imports it.

Helpers that several test modules share live in the `tests.support` package (not here as
fixtures: they are plain functions called with arguments, some at import time).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
