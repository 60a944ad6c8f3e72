"""The state behind each quantizer of the ONNX Sim: switch, range, scale / zero point.

The ONNX graph holds the arithmetic (QuantizeLinear / DequantizeLinear or Cast); these
records hold what is fed to it. Observing is separate: `OnnxActivationQuantizer.observe`
takes calibration values, `stop_observing` turns them into a scale and zero point.

Example:
    >>> import numpy as np
    >>> from mixq.plan.points import QuantPoint
    >>> q = OnnxActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> q.start_observing()
    >>> q.observe(np.array([-1.0, 2.0], np.float32))
    >>> q.stop_observing()
    >>> enc = q.encoding()
    >>> round(enc.min, 4), round(enc.max, 4), enc.zero_point
    (-1.0, 2.0, [-43])
"""

from __future__ import annotations

import numpy as np
import torch

from mixq.core import primitives as P
from mixq.plan.points import QuantPoint
from mixq.sim.quantizer import ActivationBase, QuantizerBase, WeightBase

__all__ = ["OnnxActivationQuantizer", "OnnxQuantizer", "OnnxWeightQuantizer"]


class OnnxQuantizer(QuantizerBase):
    """Base: `mixq.sim.quantizer.QuantizerBase` plus the ONNX values it is wired to.

    Attributes:
        input_name / output_name: the ONNX values the quantizer reads and writes.
        enabled_input: the bool graph input that switches it (fed at every run).
    """

    def __init__(self, point: QuantPoint) -> None:
        QuantizerBase.__init__(self, point)
        self.scale: torch.Tensor | None = None
        self.zero_point: torch.Tensor | None = None
        self.input_name = ""
        self.output_name = ""
        self.enabled_input = ""


class OnnxActivationQuantizer(OnnxQuantizer, ActivationBase):
    """An activation quantizer: its scale / zero point are graph inputs fed at run time
    (the range path is `mixq.sim.quantizer.ActivationBase`)."""

    def __init__(self, point: QuantPoint, observer: str = "minmax") -> None:
        OnnxQuantizer.__init__(self, point)
        self.init_range(observer)
        self.scale_input = ""
        self.zero_point_input = ""

    def observe(self, x: np.ndarray | torch.Tensor) -> None:
        """One calibration value (an array as ORT returns it); NaN / Inf raise
        `CalibrationError`."""
        value = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        super().observe(value)

    def feeds(self) -> dict[str, np.ndarray]:
        """Scale and zero point as fed to the graph (placeholders before calibration;
        float and dynamic precisions have none)."""
        if not self.qtype.calibrated:
            return {}
        scale = self.scale if self.scale is not None else torch.tensor(1.0)
        zp = self.zero_point if self.zero_point is not None else torch.tensor(0.0)
        return {
            self.scale_input: np.asarray(scale.numpy(), np.float32),
            self.zero_point_input: np.asarray(zp.numpy(), np.int32),
        }


class OnnxWeightQuantizer(OnnxQuantizer, WeightBase):
    """A weight quantizer: min-max ranges from the weight itself, computed once at build.

    When a batch-norm follows the op, the grid is chosen on the folded weight
    ``w * gamma / sqrt(var + eps)`` (what a compiler deploys) and the graph divides the
    dequantized weight by the same factor, as the torch Sim does.
    """

    def quantize(self, w: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
        """Choose scale / zero point for ``w`` (times ``fold``); return its integer values."""
        wf = w * fold if fold is not None else w
        scale, zero_point = self.fit_weight(wf)
        return P.quantize(wf, scale, zero_point, self.qtype, self.point.axis, self.point.block_size)
