"""Whether image files can be read by the package's one decoder, `preprocess.decode_image`.

Three levels, from cheap to exact, used by `coco.load_coco(check_images=...)`, the data
pipeline and evaluation:

    header_problem(path, width, height)  # None, or why not: format signature + PIL header
    decode_problems(paths)                # {index: why not}: the decoder itself, in parallel
    decode_problem(path)                  # one file, eagerly, with the decoder's message

The header check reads the first bytes and accepts exactly the formats the decoder
dispatches on (TensorFlow's DecodeImage classifies a file by these signatures and refuses
every other one: TIFF, PPM, ICO, text, empty files), then lets PIL read the header for the
size (and `verify()` the file: PNG chunk CRCs). It costs ~0.2 ms per file; it cannot see
damaged pixel data (a truncated JPEG), which only decoding finds (~1-4 ms per file on one
core, measured in docs/robustness.md). What the header check lets through and the decoder
refuses is dropped, counted and reported by the pipeline (`data/pipeline.py`) and by
evaluation (`evaluation/runner.py`).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from cornernet_tf.data.image_formats import DECODER_FORMATS, DECODER_SIGNATURES, WEBP_CONTAINER

# The file names taken as images when a folder is listed (predict, YOLO image folders).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def decoder_format(head: bytes) -> Optional[str]:
    """The format the decoder would read `head` (a file's first 16 bytes or more) as, or
    None when it refuses the file."""
    for name, offset, signature in DECODER_SIGNATURES:
        if head[offset:offset + len(signature)] == signature and (
                name != "WEBP" or head.startswith(WEBP_CONTAINER)):
            return name
    return None


def header_problem(path: str, width: Optional[int] = None,
                   height: Optional[int] = None) -> Optional[str]:
    """Why the decoder cannot read `path` as far as its header tells, or None.

    Args:
      path: an image file.
      width, height: the size the file must have (e.g. from the json); None: any.

    Returns:
      None when the file has a signature of the decoder's formats and PIL reads its header
      (and, when given, the size matches); else a one-line reason.
    """
    size, problem = read_size(path)
    if problem is None and width is not None and height is not None \
            and size != (width, height):
        return (f"{path} is {size[0]}x{size[1]} (width x height) but the json says "
                f"{width}x{height}")
    return problem


def read_size(path: str) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(width, height) of an image file from its header, or (None, why it is unreadable).

    The file must have a signature of the decoder's formats and PIL must read its header
    (~0.2 ms per file; the pixels are not decoded).
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return None, f"cannot open {path}: {e.strerror or e}"
    if decoder_format(head) is None:
        found = "an empty file" if not head else f"a file starting with {head[:8]!r}"
        return None, f"{path} is not a {DECODER_FORMATS} image ({found})"
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
        return None, f"cannot read {path}: {type(e).__name__}: {e}"
    return (int(size[0]), int(size[1])), None


def decoder_message(error: Exception) -> str:
    """A TensorFlow op error's message without the function-node prefix and op suffix."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]\s*(name: .*)?$", "", text)
    return text.strip() or type(error).__name__


def decode_problem(path: str) -> Optional[str]:
    """None when `preprocess.read_image(path)` succeeds, else the decoder's message."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from cornernet_tf.errors import UserError  # pylint: disable=import-outside-toplevel
    from cornernet_tf.data.images import read_image  # pylint: disable=import-outside-toplevel
    try:
        read_image(path)
    except (tf.errors.OpError, UserError, ValueError) as e:
        return f"cannot decode {path}: {decoder_message(e)}"
    return None


def decode_problems(paths: Sequence[str]) -> dict:
    """{index into paths: the decoder's message} of the files `read_image` cannot decode.

    All files go through the decoder in a parallel tf.data map (C++ threads, the pipeline's
    own op); the failures, usually few, are decoded once more eagerly for their message.

    Args:
      paths: image files.

    Returns:
      {index: message} for each file that fails; {} when all decode.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from cornernet_tf.data.images import read_image  # pylint: disable=import-outside-toplevel
    if not paths:
        return {}
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string)))
    ds = ds.map(lambda i, p: (i, tf.shape(read_image(p))), num_parallel_calls=tf.data.AUTOTUNE)
    decoded = set()
    for indices, _ in ds.ignore_errors().batch(1024):
        decoded.update(int(i) for i in indices.numpy())
    problems = {}
    for i in sorted(set(range(len(paths))) - decoded):
        problems[i] = decode_problem(paths[i]) or f"cannot decode {paths[i]}"
    return problems


def first_decodable(paths: Sequence[str], limit: int = 3) -> tuple[Optional[int], list]:
    """The index of the first file `read_image` decodes, trying them in order.

    Cheap when the data is good (one decode); it tries every file only when none decodes.

    Args:
      paths: image files.
      limit: how many failure messages to keep.

    Returns:
      (index or None when none decodes, the first `limit` failure messages).
    """
    failures = []
    for i, path in enumerate(paths):
        problem = decode_problem(path)
        if problem is None:
            return i, failures
        if len(failures) < limit:
            failures.append(problem)
    return None, failures
