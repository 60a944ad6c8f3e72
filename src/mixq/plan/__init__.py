"""The Plan: the resolved precision of every op, the precision types it is made of, where its
quantizers sit (quantization points), what they hold once calibrated (Encodings) and what it
costs (`mixq.plan.cost`)."""

from mixq.plan.encodings import Encoding, Encodings
from mixq.plan.plan import PLAN_VERSION, OpPlan, Plan
from mixq.plan.types import Granularity, Precision, PrecisionLike, Scheme

__all__ = [
    "PLAN_VERSION",
    "Encoding",
    "Encodings",
    "Granularity",
    "OpPlan",
    "Plan",
    "Precision",
    "PrecisionLike",
    "Scheme",
]
