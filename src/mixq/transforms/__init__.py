"""Quantization-friendly transforms: rewrites that make a model easier to quantize.

=================  =========  ================================================================
name               stage      what it changes
=================  =========  ================================================================
``smooth``         float      activation outliers migrate into the next linear's weights
``equalize``       float      weight ranges balanced across conv / linear pairs through ReLU
``split_outliers`` float      a linear's few huge input channels move to a side path
``adaround``       weights    each weight rounded up or down to minimise the layer's error
``gptq``           weights    each weight group's range clipped, rounding errors compensated
``bias_correct``   weights    each bias corrected by the mean output shift of its rounding
=================  =========  ================================================================

Float transforms keep the float model's outputs (up to float rounding) and add no op
(smoothing on a fork and ``split_outliers`` add a few, said in their records);
weight transforms change the Sim's weights / biases for the quantized model's sake. Use
them through ``mixq.quantize(model, inputs, cfg, transforms=[...], calib=batches)``, the
``transforms:`` key of a YAML config, or `apply_transforms` for the float ones alone. New
transforms register with `register_transform`.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(32, 8)
    >>> sim = mixq.quantize(model, x, "int8", transforms=["equalize", "bias_correct"])
    >>> [t["name"] for t in sim.plan.transforms]
    ['equalize', 'bias_correct']
"""

from mixq.transforms import (  # noqa: F401  (registers them)
    adaround,
    bias_correct,
    equalize,
    gptq,
    outliers,
    smooth,
)
from mixq.transforms.base import (
    TRANSFORMS,
    TransformContext,
    TransformRecord,
    parse_specs,
    register_transform,
)
from mixq.transforms.pipeline import TransformResult, apply_transforms, requested_transforms

__all__ = [
    "TRANSFORMS",
    "TransformContext",
    "TransformRecord",
    "TransformResult",
    "apply_transforms",
    "parse_specs",
    "register_transform",
    "requested_transforms",
]
