"""Target profiles: what a deployment target runs, per op kind and precision, and what it costs
(`mixq.targets.profile`); how a target fuses ops (`mixq.targets.fusion`)."""

from mixq.targets.fusion import target_fusion_groups
from mixq.targets.loading import fuses_residual_add, load_target
from mixq.targets.profile import BUILTIN_TARGETS, TARGET_VERSION, KindSupport, TargetProfile

__all__ = [
    "BUILTIN_TARGETS",
    "TARGET_VERSION",
    "KindSupport",
    "TargetProfile",
    "fuses_residual_add",
    "load_target",
    "target_fusion_groups",
]
