"""Names of the architecture rules a recipe can require or forbid (checked in analysis.py).

Kept apart from analysis.py so that reading a recipe does not import torch."""

RULES = ("depthwise_separable", "dilated", "gap", "maxpool", "avgpool", "strided_conv")
