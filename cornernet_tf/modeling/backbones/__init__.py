"""Backbones: Hourglass-104, Hourglass-52 and the CornerNet-Squeeze hourglass."""
