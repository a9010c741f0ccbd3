"""The authors' .pkl/.pth state dicts as `--init_from` sources, converted in memory.

Importing this module registers `authors_source` with `training.init_from` (training sits
below the converter in the stage order and cannot import it); the command line imports it
before training.
"""

from __future__ import annotations

import numpy as np

from cornernet_tf.convert import mapping, torch_reader
from cornernet_tf.convert.coco_labels import COCO_NAMES
from cornernet_tf.convert.job import fitting_config
from cornernet_tf.modeling import weights
from cornernet_tf.training import init_from


def authors_source(path: str, model) -> init_from.Source:
    """An authors' state dict under our variable names and layouts (nothing written).

    Tensors whose authors' name has a variable in `model` are converted to its layout
    (whatever their class count); the others are kept as `authors:<name>`, so that
    `init_from.initialize` reports them as not fitting. The class names are COCO's when
    the heatmap convs have 80 columns (the released files are COCO models).

    Raises:
      InitFromError: the file is not a readable state dict.
    """
    try:
        state = torch_reader.read_state_dict(path)
    except torch_reader.CheckpointError as e:
        raise init_from.InitFromError(f"--init_from={path}: {e}") from None
    ours = {id(v): name for name, v in weights.named_variables(model).items()}
    targets = mapping.variable_map(model)
    arrays, ignored = {}, []
    for canonical, file_name in mapping.canonical_names(state).items():
        if canonical.endswith(mapping.IGNORED_SUFFIX):
            ignored.append(file_name)
            continue
        array = np.asarray(state[file_name])
        if canonical in targets:
            variable, kind = targets[canonical]
            if array.ndim == (1 if kind == mapping.COPY else 4):
                arrays[ours[id(variable)]] = mapping.to_keras(array, kind)
                continue
        arrays["authors:" + file_name] = array  # no variable of ours takes it
    heat = [a for n, a in arrays.items() if init_from.CLASS_VARIABLE.fullmatch(n) and a.ndim == 1]
    class_names = COCO_NAMES if heat and heat[0].shape[0] == len(COCO_NAMES) else None
    return init_from.Source(path, arrays, class_names, fitting_config(mapping.describe(state)),
                            tuple(ignored))


init_from.register_reader(init_from.AUTHORS_SUFFIXES, authors_source)
