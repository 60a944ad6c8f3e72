"""mixq: vendor-neutral mixed-precision quantization for PyTorch and ONNX models.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> x = torch.randn(8, 4)
    >>> sim = mixq.quantize(model, (x,), "int8")
    >>> sim = sim.calibrate([(x,)], progress=False)
    >>> sim(x).shape
    torch.Size([8, 4])
"""

from mixq import analysis, transforms, zoo
from mixq.analysis.quant_analysis import QuantAnalysis
from mixq.api import apply, check, quantize
from mixq.core import primitives
from mixq.core.errors import CalibrationError, CaptureError, ConfigError, ConflictError, MixqError
from mixq.core.qtypes import QTYPES, QType, qtype
from mixq.core.table import Table
from mixq.plan.encodings import Encoding, Encodings
from mixq.plan.plan import OpPlan, Plan
from mixq.rules.config import Config, Granularity, Precision, Request, Scheme
from mixq.search import SearchResult, search
from mixq.targets import TargetProfile, load_target

__version__ = "0.1.0"

__all__ = [
    "QTYPES",
    "CalibrationError",
    "CaptureError",
    "Config",
    "ConfigError",
    "ConflictError",
    "Encoding",
    "Encodings",
    "Granularity",
    "MixqError",
    "OpPlan",
    "Plan",
    "Precision",
    "QType",
    "QuantAnalysis",
    "Request",
    "Scheme",
    "SearchResult",
    "Table",
    "TargetProfile",
    "analysis",
    "apply",
    "check",
    "load_target",
    "primitives",
    "qtype",
    "quantize",
    "search",
    "transforms",
    "zoo",
]
