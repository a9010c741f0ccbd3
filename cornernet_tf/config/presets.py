"""The backbones, one row each, and the output-grid arithmetic they share (SPEC.md, Architecture).

Everything that distinguishes `hourglass104`, `hourglass52` and `squeeze` is in `BACKBONES`:
the widths (which a config may override one by one), and what a config cannot change: block
type, up-sampling, stem depth (hence the stride) and the heads' hidden kernel. The model
(`cornernet_tf.modeling.model.CornerNet`) builds from a row; config validation (`cornernet_tf.config.schema`)
checks values against it.

This module imports no TensorFlow: `cornernet_tf.config.schema` validates a config before
TensorFlow is imported (a bad `--set` fails fast), so the table and the grid check live here
and not in `hourglass.py`, which imports Keras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

BLOCK_TYPES = ("residual", "fire")
UPSAMPLE_TYPES = ("nearest", "transpose")


@dataclass(frozen=True)
class BackbonePreset:
    """One backbone's architecture.

    Attributes:
      stacks: hourglass modules (intermediate supervision on each).
      stem_channels: width of the stride-2 7x7 stem conv.
      channels: widths per hourglass level, outer to inner.
      blocks: residual/fire blocks per level, outer to inner (last: the innermost stage).
      head_channels: width of the corner modules and heads.
      pool_channels: width of the two branches fed to corner pooling.
      block: "residual" (Hourglass) or "fire" (CornerNet-Squeeze).
      upsample: "nearest" (x2) or "transpose" (ConvTranspose 4x4/2).
      stem_residuals: stride-2 residual blocks after the stride-2 stem conv.
      head_kernel_size: kernel of each head's hidden conv, 3 (or 1 for Squeeze).
    """

    stacks: int
    stem_channels: int
    channels: tuple[int, ...]
    blocks: tuple[int, ...]
    head_channels: int
    pool_channels: int
    block: str
    upsample: str
    stem_residuals: int
    head_kernel_size: int

    @property
    def stride(self) -> int:
        """Input pixels per output-grid cell: the stem conv and each stem residual halve."""
        return stride_of(self.stem_residuals)


_HOURGLASS_WIDTHS = dict(stem_channels=128, channels=(256, 256, 384, 384, 384, 512),
                         blocks=(2, 2, 2, 2, 2, 4), head_channels=256, pool_channels=128)
_HOURGLASS = dict(block="residual", upsample="nearest", stem_residuals=1, head_kernel_size=3)

BACKBONES: dict[str, BackbonePreset] = {
    "hourglass104": BackbonePreset(stacks=2, **_HOURGLASS_WIDTHS, **_HOURGLASS),
    "hourglass52": BackbonePreset(stacks=1, **_HOURGLASS_WIDTHS, **_HOURGLASS),
    "squeeze": BackbonePreset(
        stacks=2, stem_channels=128, channels=(256, 256, 384, 384, 512), blocks=(2, 2, 2, 2, 4),
        head_channels=256, pool_channels=128, block="fire", upsample="transpose",
        stem_residuals=2, head_kernel_size=1),
}

# The fields a config (or CornerNet's keyword arguments) may override; None keeps the row's.
WIDTH_FIELDS = ("stacks", "stem_channels", "channels", "blocks", "head_channels",
                "pool_channels")


def stride_of(stem_residuals: int) -> int:
    """2 ** (1 + stem_residuals): the stem conv and each stem residual have stride 2."""
    return 2 ** (1 + stem_residuals)


def output_grid(input_size: Sequence[Optional[int]], stride: int) -> tuple[Optional[int], ...]:
    """The heads' grid for an input size: each stride-2 stage maps n -> ceil(n / 2).

    Args:
      input_size: (height, width) in pixels; None entries (dynamic sizes) stay None.
      stride: a power of 2 (4, or 8 for "squeeze").

    Returns:
      (h, w) in output-grid cells, e.g. 511 -> 128 at stride 4, 511 -> 64 at stride 8.
    """
    out = []
    for n in input_size:
        if n is not None:
            for _ in range(stride.bit_length() - 1):  # log2(stride) halvings
                n = (n + 1) // 2
        out.append(n)
    return tuple(out)


def check_grid(input_size: Sequence[Optional[int]], stride: int, levels: int) -> None:
    """Raises when the hourglass cannot halve the output grid `levels` times exactly.

    Every level's skip branch (up1) is added to the up-sampled inner result (up2), so each
    level must halve exactly: the grid must be a multiple of 2 ** levels.

    Args:
      input_size: (height, width) in pixels; None entries are not checked.
      stride: input pixels per output cell.
      levels: down-sampling levels of the hourglass, len(channels) - 1.

    Raises:
      ValueError: says the input size, the grid it gives and the multiple needed.
    """
    multiple = 2 ** levels
    grid = output_grid(input_size, stride)
    if any(g is not None and g % multiple for g in grid):
        shown = "x".join("?" if g is None else str(g) for g in grid)
        raise ValueError(
            f"input size {list(input_size)} gives a {shown} output grid (stride {stride}, each "
            f"stride-2 stage maps n -> ceil(n / 2)), which an hourglass of {levels} "
            f"down-sampling levels cannot halve {levels} times; the output grid must be a "
            f"multiple of {multiple} (e.g. input 511 -> 128 for stride 4)")
