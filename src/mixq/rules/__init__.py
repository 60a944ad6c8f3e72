"""Rules: what the user asks for (`Config`: a default, setters, ordered requests, Ascend
precision modes) and the resolver that turns it into a Plan against a Graph and a target,
with a report of how every decision was made (`mixq.rules.resolve` documents the order of
precedence)."""

from mixq.rules.config import Config
from mixq.rules.requests import ModelIORequest, PrecisionModeRequest, Request, Rule
from mixq.rules.resolve import Resolution

__all__ = [
    "Config",
    "ModelIORequest",
    "PrecisionModeRequest",
    "Request",
    "Resolution",
    "Rule",
]
