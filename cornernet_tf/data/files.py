"""The one rule for reading an image file, at every entry point.

Regular files only, of at most `max_file_bytes()`, decided by `os.stat` before anything is
opened, then opened with O_NONBLOCK: a FIFO named `pipe.jpg` would block a reader forever,
a link to `/dev/zero` or `/dev/urandom` never ends. The loader (`coco.load_coco`, hence
training and evaluation) checks every image entry with `file_problem`; predict and the
evaluation of exports read through `read_file` (`images.read_image` called eagerly).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from cornernet_tf.config.schema import ExportConfig

# The largest image file read, per pixel of the pixel limit (`export.max_image_pixels`):
# 8 bytes (an uncompressed 16-bit RGBA PNG), plus room for metadata. Larger files cannot be
# images within the limit; nothing bigger is read into memory.
FILE_BYTES_PER_PIXEL = 8
FILE_BYTES_SLACK = 16 << 20


def max_file_bytes(max_pixels: Optional[int] = None) -> int:
    """The size above which an image file is refused unread (see FILE_BYTES_PER_PIXEL);
    max_pixels None: the default of `export.max_image_pixels`."""
    if max_pixels is None:
        max_pixels = ExportConfig.max_image_pixels
    return FILE_BYTES_PER_PIXEL * int(max_pixels) + FILE_BYTES_SLACK


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR,
                       "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def file_problem(path: str, max_bytes: int) -> Optional[str]:
    """Why an image file may not be read, or None: the one rule of every entry point.

    Regular files only (a link to one is fine): a FIFO would block the reader forever and
    a device (`/dev/zero`, `/dev/urandom`) never ends; and at most `max_bytes`. Decided by
    `os.stat`, which neither opens the file nor blocks. Used by the loader
    (`coco.load_coco`, for training and evaluation), and by `read_file` (predict,
    evaluation of exports).

    Returns:
      None, or a one-line reason naming the file ("not found" when it does not exist).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"image file not found: {path}"
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is {_kind(info.st_mode)}, not a regular file; not read"
    if info.st_size > max_bytes:
        return (f"{path} is {info.st_size} bytes, more than the {max_bytes} an image within "
                f"the pixel limit can take ({FILE_BYTES_PER_PIXEL} bytes per pixel of "
                f"export.max_image_pixels, plus {FILE_BYTES_SLACK >> 20} MiB); not read")
    return None


def read_file(path: str, max_bytes: int) -> bytes:
    """The bytes of an image file, read under `file_problem`'s rule.

    The file is checked, opened with O_NONBLOCK (a FIFO swapped in after the check does not
    block the open) and checked again on the open descriptor, then read up to max_bytes.

    Raises:
      OSError: the file breaks the rule (errno EINVAL; the message is the reason) or
        cannot be read (FileNotFoundError when missing).
    """
    problem = file_problem(path, max_bytes)
    if problem is not None:
        if not os.path.lexists(path) or problem.startswith("image file not found"):
            raise FileNotFoundError(errno.ENOENT, "image file not found", path)
        raise OSError(errno.EINVAL, problem)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise OSError(errno.EINVAL, f"{path} changed into {_kind(info.st_mode)} or grew "
                                        f"past {max_bytes} bytes while being opened; not read")
        return f.read(max_bytes + 1)[:max_bytes]
