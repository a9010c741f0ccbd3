"""Configuration: the dataclass tree, YAML loading, dotted overrides and validation.

`load_config(path, overrides)` is the public entry (`schema.py`); the allowed values of the
string options are in `choices.py` and the backbone presets in `presets.py`. Nothing here
imports TensorFlow.
"""

from cornernet_tf.config.schema import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
