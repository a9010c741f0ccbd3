"""The authors' tensor names for every variable of our CornerNet, and the strict assignment.

Names follow princeton-vl/CornerNet-Lite (`core/models/CornerNet.py`, `CornerNet_Squeeze.py`,
`py_utils/modules.py`, `py_utils/utils.py`) without the `module.` prefix their DataParallel
wrapper adds, e.g. `hg.hgs.0.low2.up1.1.conv2.weight`, `tl_modules.1.p_bn1.running_var`,
`tl_heats.1.0.conv.bias`. The original princeton-vl/CornerNet (`models/CornerNet.py`,
`models/py_utils/kp.py`) names the same tensors differently (`kps.0...` for `hg.hgs.0...`,
`tl_cnvs` for `tl_modules`, `tl_regrs` for `tl_offs`); `canonical_names` renames them.

Layouts (PyTorch -> Keras):
- Conv2d weight [O, I, kh, kw] -> Conv2D kernel [kh, kw, I, O];
- depthwise Conv2d (groups = channels, the fire modules' 3x3) [C, 1, kh, kw] ->
  DepthwiseConv2D kernel [kh, kw, C, 1];
- ConvTranspose2d weight [I, O, kh, kw] (Squeeze's up-sampling) -> Conv2DTranspose kernel
  [kh, kw, O, I] (both layers are the adjoint of the same cross-correlation);
- BatchNorm2d weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
  moving_variance (epsilon 1e-5 in both); `num_batches_tracked` only counts training steps
  and is not used;
- the stem conv's input channels are reversed: their pipeline feeds BGR images (OpenCV)
  normalised with BGR mean/std, ours RGB with the same statistics reordered.
"""

from __future__ import annotations

import collections
from typing import Iterator, Mapping

import numpy as np

from cornernet_tf.modeling.backbones.hourglass import (ConvBN, FireModule, HourglassBackbone,
                                                       HourglassModule, ResidualBlock)
from cornernet_tf.modeling.layers.heads import CornerHeads, CornerModule

# Kinds of tensor layout conversion.
CONV = "conv"  # [O, I, kh, kw] -> [kh, kw, I, O]
CONV_BGR = "conv_bgr"  # CONV, then the input channels reversed (BGR -> RGB)
DEPTHWISE = "depthwise"  # [C, 1, kh, kw] -> [kh, kw, C, 1]
TRANSPOSE = "transpose"  # [I, O, kh, kw] -> [kh, kw, O, I]
COPY = "copy"  # biases, BN vectors

IGNORED_SUFFIX = ".num_batches_tracked"

# Original CornerNet repository name -> CornerNet-Lite name, by leading component.
_ORIGINAL_PREFIXES = (("pre.", "hg.pre."), ("kps.", "hg.hgs."), ("cnvs.", "hg.cnvs."),
                      ("cnvs_.", "hg.cnvs_."), ("inters.", "hg.inters."),
                      ("inters_.", "hg.inters_."), ("tl_cnvs.", "tl_modules."),
                      ("br_cnvs.", "br_modules."), ("tl_regrs.", "tl_offs."),
                      ("br_regrs.", "br_offs."))


class MappingError(ValueError):
    """The state dict does not fit the model; the message lists what differs."""


def to_keras(array: np.ndarray, kind: str) -> np.ndarray:
    """One tensor from the PyTorch layout to the Keras one (see the module docstring)."""
    if kind == COPY:
        return array
    if kind in (CONV, TRANSPOSE):  # both: [a, b, kh, kw] -> [kh, kw, b, a]
        return np.transpose(array, (2, 3, 1, 0))
    if kind == CONV_BGR:
        return np.transpose(array, (2, 3, 1, 0))[:, :, ::-1, :]
    if kind == DEPTHWISE:
        return np.transpose(array, (2, 3, 0, 1))
    raise ValueError(f"unknown layout kind {kind!r}")


def _bn(prefix: str, bn) -> Iterator[tuple]:
    yield prefix + ".weight", bn.gamma, COPY
    yield prefix + ".bias", bn.beta, COPY
    yield prefix + ".running_mean", bn.moving_mean, COPY
    yield prefix + ".running_var", bn.moving_variance, COPY


def _conv_bn(conv_name: str, bn_name: str, layer: ConvBN, kind: str = CONV) -> Iterator[tuple]:
    """A ConvBN whose conv and BN the authors name separately."""
    yield conv_name + ".weight", layer.conv.kernel, kind
    yield from _bn(bn_name, layer.bn)


def _convolution(prefix: str, layer: ConvBN, kind: str = CONV) -> Iterator[tuple]:
    """Their `convolution` module (conv, bn, relu)."""
    yield from _conv_bn(prefix + ".conv", prefix + ".bn", layer, kind)


def _merge(prefix: str, layer: ConvBN) -> Iterator[tuple]:
    """Their Sequential(Conv2d 1x1, BatchNorm2d): `.0` and `.1`."""
    yield from _conv_bn(prefix + ".0", prefix + ".1", layer)


def _residual(prefix: str, block: ResidualBlock) -> Iterator[tuple]:
    yield from _conv_bn(prefix + ".conv1", prefix + ".bn1", block.conv1)
    yield from _conv_bn(prefix + ".conv2", prefix + ".bn2", block.conv2)
    if block.skip is not None:
        yield from _merge(prefix + ".skip", block.skip)


def _fire(prefix: str, block: FireModule) -> Iterator[tuple]:
    yield from _conv_bn(prefix + ".conv1", prefix + ".bn1", block.squeeze)
    yield prefix + ".conv_1x1.weight", block.expand_1x1.kernel, CONV
    yield prefix + ".conv_3x3.weight", block.expand_3x3.kernel, DEPTHWISE
    yield from _bn(prefix + ".bn2", block.bn)


def _block(prefix: str, block) -> Iterator[tuple]:
    if isinstance(block, FireModule):
        yield from _fire(prefix, block)
    else:
        yield from _residual(prefix, block)


def _hourglass(prefix: str, module: HourglassModule) -> Iterator[tuple]:
    for part in ("up1", "low1", "low3"):
        for j, block in enumerate(getattr(module, part)):
            yield from _block(f"{prefix}.{part}.{j}", block)
    if isinstance(module.low2[0], HourglassModule):
        yield from _hourglass(prefix + ".low2", module.low2[0])
    else:
        for j, block in enumerate(module.low2):
            yield from _block(f"{prefix}.low2.{j}", block)
    if module.upsample == "transpose":
        yield prefix + ".up2.weight", module.up2.kernel, TRANSPOSE
        yield prefix + ".up2.bias", module.up2.bias, COPY


def _backbone(backbone: HourglassBackbone) -> Iterator[tuple]:
    yield from _convolution("hg.pre.0", backbone.stem[0], CONV_BGR)
    for i, block in enumerate(backbone.stem[1:], start=1):
        yield from _residual(f"hg.pre.{i}", block)
    for i in range(backbone.stacks):
        yield from _hourglass(f"hg.hgs.{i}", backbone.hourglasses[i])
        yield from _convolution(f"hg.cnvs.{i}", backbone.cnvs[i])
    for i in range(backbone.stacks - 1):
        yield from _residual(f"hg.inters.{i}", backbone.inters[i])
        yield from _merge(f"hg.inters_.{i}", backbone.inters_[i])
        yield from _merge(f"hg.cnvs_.{i}", backbone.cnvs_[i])


def _corner_module(prefix: str, module: CornerModule) -> Iterator[tuple]:
    yield from _convolution(prefix + ".p1_conv1", module.p1_conv)
    yield from _convolution(prefix + ".p2_conv1", module.p2_conv)
    yield from _conv_bn(prefix + ".p_conv1", prefix + ".p_bn1", module.p_conv)
    yield from _conv_bn(prefix + ".conv1", prefix + ".bn1", module.skip_conv)
    yield from _convolution(prefix + ".conv2", module.out_conv)


def _heads(corner: str, i: int, heads: CornerHeads) -> Iterator[tuple]:
    for name, (hidden, final) in (("heats", heads.heatmap), ("tags", heads.embedding),
                                  ("offs", heads.offset)):
        prefix = f"{corner}_{name}.{i}"
        yield prefix + ".0.conv.weight", hidden.kernel, CONV
        yield prefix + ".0.conv.bias", hidden.bias, COPY
        yield prefix + ".1.weight", final.kernel, CONV
        yield prefix + ".1.bias", final.bias, COPY


def variable_map(model) -> "collections.OrderedDict[str, tuple]":
    """Every variable of a built CornerNet under the authors' name.

    Args:
      model: a built `cornernet_tf.modeling.model.CornerNet` (hourglass or squeeze backbone).

    Returns:
      OrderedDict: CornerNet-Lite tensor name -> (keras variable, layout kind).

    Raises:
      MappingError: the model has variables this map does not name (a layer added to the
        network without a name here), so no assignment could fill it.
    """
    entries = list(_backbone(model.backbone))
    for i in range(model.stacks):
        entries += _corner_module(f"tl_modules.{i}", model.tl_modules[i])
        entries += _corner_module(f"br_modules.{i}", model.br_modules[i])
        entries += _heads("tl", i, model.tl_heads[i])
        entries += _heads("br", i, model.br_heads[i])
    out = collections.OrderedDict()
    for name, variable, kind in entries:
        if name in out:
            raise MappingError(f"internal: {name} named twice")
        out[name] = (variable, kind)
    named = {id(v) for v, _ in out.values()}
    unnamed = [v.path for v in model.variables if id(v) not in named]
    if unnamed:
        raise MappingError(f"internal: {len(unnamed)} model variables have no authors' name, "
                           f"e.g. {unnamed[:3]}")
    return out


def canonical_names(state: Mapping[str, np.ndarray]) -> "collections.OrderedDict[str, str]":
    """CornerNet-Lite name -> the file's name, for every tensor of `state`.

    Strips the `module.` prefix (DataParallel) when every name has it, and renames the
    original CornerNet repository's names (`kps.`, `tl_cnvs.`, `tl_regrs.`, ...).
    """
    names = list(state)
    strip = bool(names) and all(n.startswith("module.") for n in names)
    original = any((n[len("module."):] if strip else n).startswith("kps.") for n in names)
    out = collections.OrderedDict()
    for name in names:
        canonical = name[len("module."):] if strip else name
        if original:
            for old, new in _ORIGINAL_PREFIXES:
                if canonical.startswith(old):
                    canonical = new + canonical[len(old):]
                    break
        out[canonical] = name
    return out


def describe(state: Mapping[str, np.ndarray]) -> str:
    """What network a state dict is for: 'CornerNet-Squeeze', 'CornerNet', ... ."""
    names = list(canonical_names(state))
    if any(n.startswith("att_modules.") for n in names):
        return "CornerNet-Saccade"
    if any(".conv_3x3." in n for n in names):
        return "CornerNet-Squeeze"
    if any(n.startswith("hg.hgs.") for n in names):
        return "CornerNet"
    return "unknown"


def _listing(names: list, limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def assign(model, state: Mapping[str, np.ndarray], source: str = "the file") -> dict:
    """Fills every variable of `model` from `state`; all or nothing.

    Every tensor must be used exactly once (`num_batches_tracked` excepted) and every
    variable filled with a tensor of its shape, else nothing is assigned.

    Args:
      model: a built CornerNet.
      state: the authors' state dict (file names, `module.` prefix or not).
      source: where `state` came from, for messages.

    Returns:
      dict: "assigned" (variables filled), "ignored" (num_batches_tracked entries).

    Raises:
      MappingError: listing the missing, unexpected and mis-shaped names.
    """
    targets = variable_map(model)
    file_names = canonical_names(state)
    ignored = [n for n in file_names if n.endswith(IGNORED_SUFFIX)]
    given = [n for n in file_names if not n.endswith(IGNORED_SUFFIX)]
    missing = [n for n in targets if n not in file_names]
    unexpected = [file_names[n] for n in given if n not in targets]
    converted, misshaped = {}, []
    for name, (variable, kind) in targets.items():
        if name not in file_names:
            continue
        array = np.asarray(state[file_names[name]])
        value = to_keras(array, kind) if array.ndim == (4 if kind != COPY else 1) else None
        if value is None or tuple(value.shape) != tuple(variable.shape):
            misshaped.append(f"{file_names[name]} {list(array.shape)} (model "
                             f"{list(variable.shape)})")
            continue
        converted[name] = value
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped: {_listing(misshaped, 3)}")
        raise MappingError(f"{source} does not fit the model ({len(targets)} tensors expected, "
                           f"{len(given)} found): " + "; ".join(parts))
    for name, (variable, _) in targets.items():
        variable.assign(converted[name].astype(variable.dtype))
    return {"assigned": len(targets), "ignored": len(ignored)}
