"""Conversion of the authors' trained PyTorch models (princeton-vl/CornerNet, CornerNet-Lite).

`torch_reader` reads a state dict file without PyTorch, `mapping` names every variable of
our model after the authors' tensors, `job` is `--mode=convert`.
"""
