"""Errors mixq raises on user input. Each says what was wrong and what to do."""

from __future__ import annotations

__all__ = ["CalibrationError", "CaptureError", "ConfigError", "ConflictError", "MixqError"]


class MixqError(Exception):
    """Base class of mixq's errors."""


class ConfigError(MixqError, ValueError):
    """A configuration or plan file / dict is invalid."""


class ConflictError(MixqError, ValueError):
    """Two requests, or a request and the target, cannot both hold; names both sides."""


class CaptureError(MixqError, RuntimeError):
    """The model could not be turned into a graph."""


class CalibrationError(MixqError, ValueError):
    """Calibration data is missing or unusable."""
