"""The simulated model: a Plan's quantizers inserted into the float model, switchable by name.

`mixq.sim.base.SimBase` holds what both backends share (switches, calibration, fixed ranges,
encodings, profiles, the resolution report, vendor export); `mixq.sim.quantizer` the range
path of every quantizer; `mixq.sim.protocol.SimLike` the typed interface the layers above
read; `mixq.sim.inputs.split_inputs` how user inputs are normalised. `mixq.sim.torch` runs
nn.Modules as a GraphModule with fake-quant nodes, `mixq.sim.onnx` runs ONNX models in ONNX
Runtime with QuantizeLinear / DequantizeLinear / Cast nodes.

Example:
    >>> import torch, mixq
    >>> sim = mixq.quantize(torch.nn.Linear(4, 2), (torch.randn(3, 4),), "int8")
    >>> isinstance(sim, SimBase) and isinstance(sim, SimLike)
    True
"""

from mixq.sim.base import SimBase
from mixq.sim.inputs import split_inputs
from mixq.sim.protocol import SimLike

__all__ = ["SimBase", "SimLike", "split_inputs"]
