"""The bottom layer: errors, quantized types, tensor primitives, tables, progress bars and
input validation. Nothing here imports any other part of mixq."""

from mixq.core import primitives
from mixq.core.errors import CalibrationError, CaptureError, ConfigError, ConflictError, MixqError
from mixq.core.qtypes import QTYPES, QType, qtype
from mixq.core.table import Table

__all__ = [
    "QTYPES",
    "CalibrationError",
    "CaptureError",
    "ConfigError",
    "ConflictError",
    "MixqError",
    "QType",
    "Table",
    "primitives",
    "qtype",
]
