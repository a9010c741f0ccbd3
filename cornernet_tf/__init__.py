"""cornernet-tf: CornerNet (Law & Deng, ECCV 2018) in TensorFlow 2 / Keras 3.

Importing the package has no side effects beyond quieting TensorFlow's C++ logging
(when the user has not chosen a level). Heavy modules (TensorFlow) are imported by the
submodules that need them, so `cornernet_tf.config.schema` loads without TensorFlow.
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
