"""The observer registry, the base class and the min-max observers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from mixq.core.qtypes import QType, qtype

__all__ = [
    "MASK_MAGNITUDE",
    "OBSERVERS",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "make_observer",
    "register_observer",
]

OBSERVERS: dict[str, type[Observer]] = {}
# |x| at or above this is a mask sentinel (-inf, finfo(float32).min), never a range to cover
MASK_MAGNITUDE = float(torch.finfo(torch.float32).max) / 2
_ALIASES = {"entropy": "kl"}
Pair = tuple[torch.Tensor, torch.Tensor]
Range = tuple[float, float]


def register_observer(name: str) -> Callable[[type[Observer]], type[Observer]]:
    """Class decorator that makes an observer available to `make_observer` under ``name``.

    Example:
        >>> @register_observer("absmax")
        ... class AbsMaxObserver(MinMaxObserver):
        ...     def compute_range(self):
        ...         lo, hi = super().compute_range()
        ...         amax = torch.maximum(-lo, hi)
        ...         return -amax, amax
        >>> obs = make_observer("absmax")
        >>> obs.update(torch.tensor([-1.0, 3.0]))
        >>> obs.compute_range()
        (tensor(-3.), tensor(3.))
        >>> del OBSERVERS["absmax"]
    """

    def decorator(cls: type[Observer]) -> type[Observer]:
        if name in OBSERVERS:
            raise ValueError(f"observer {name!r} is already registered by {OBSERVERS[name]}")
        cls.name = name
        OBSERVERS[name] = cls
        return cls

    return decorator


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def make_observer(name: str, **kwargs: Any) -> Observer:
    """Build a registered observer by name (case-insensitive; ``entropy`` means ``kl``).

    Example:
        >>> obs = make_observer("percentile", dtype="uint8", percentile=99.9)
        >>> type(obs).__name__, obs.percentile
        ('PercentileObserver', 99.9)

    Raises:
        ValueError: the name is unknown (the message lists the valid names) or an option is.
    """
    key = canonical_name(name)
    if key not in OBSERVERS:
        valid = ", ".join(sorted([*OBSERVERS, *_ALIASES]))
        raise ValueError(f"unknown observer {name!r}; valid observers are: {valid}")
    return OBSERVERS[key](**kwargs)


class Observer:
    """Base class: ``update`` accumulates statistics, ``compute_range`` reads them out.

    Subclasses implement ``_observe(x)`` (a detached, non-empty float32 batch), ``_range()``
    and ``_clear()``; this class skips empty batches and refuses a range before any data.
    Subclass options are keyword-only.

    Args:
        dtype: precision the range is chosen for (``"int8"``, a `QType`, ...).
        symmetric: whether the grid will be symmetric about zero.
        axis: channel axis for one range per channel, or None for one range per tensor.
        **options: observer-specific options; unknown ones raise ValueError.
    """

    name: ClassVar[str] = ""
    integer_only: ClassVar[bool] = False  # True where the method measures an integer grid

    def __init__(
        self,
        dtype: str | QType = "int8",
        symmetric: bool = False,
        axis: int | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise ValueError(f"observer {self.name!r} got unknown options {sorted(options)}")
        self.dtype = qtype(dtype)
        if self.integer_only and self.dtype.is_floating_point:
            raise ValueError(
                f"observer {self.name!r} searches an integer grid and {self.dtype.name} is a "
                "float precision; use 'minmax' or 'percentile' for it"
            )
        self.symmetric = symmetric
        self.axis = axis
        self.reset()

    def update(self, x: torch.Tensor) -> None:
        """Accumulate statistics from one batch; empty batches are skipped.

        Masked positions are not data: ``±inf`` and values within a factor 2 of the float32
        extremes (what ``x + finfo.min`` or ``masked_fill(-inf)`` leaves in an attention
        mask add) are left out of the statistics (per tensor), or read as 0 (per channel,
        which must keep the shape). NaN is left to the caller to refuse.
        """
        x = x.detach().to(torch.float32)
        masked = x.abs() >= MASK_MAGNITUDE
        if bool(masked.any()):
            x = x[~masked] if self.axis is None else x.masked_fill(masked, 0.0)
        if x.numel() > 0:
            self._observe(x)
            self._batches += 1

    def compute_range(self) -> Pair:
        """``(min_val, max_val)`` as float32: 0-d per tensor, 1-D over ``axis`` per channel."""
        if not self.has_data:
            raise ValueError(
                f"observer {self.name!r} has seen no data; call update(x) on calibration "
                "batches before compute_range()"
            )
        return self._range()

    def reset(self) -> None:
        """Forget everything observed so far."""
        self._batches = 0
        self._clear()

    @property
    def has_data(self) -> bool:
        return self._batches > 0

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> Pair:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError


def _aminmax(x: torch.Tensor, axis: int | None) -> Pair:
    if axis is None:
        lo, hi = torch.aminmax(x)
        return lo, hi
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    lo, hi = torch.aminmax(x.movedim(axis, 0).reshape(x.shape[axis], -1), dim=1)
    return lo, hi


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum, per tensor or per channel along ``axis``."""

    def _clear(self) -> None:
        self.running: Pair | None = None

    def _observe(self, x: torch.Tensor) -> None:
        new = _aminmax(x, self.axis)
        if self.running is None:
            self.running = new
        elif new[0].shape != self.running[0].shape:
            raise ValueError(
                f"axis {self.axis} had {self.running[0].numel()} channels in earlier batches "
                f"and has {new[0].numel()} in a batch of shape {tuple(x.shape)}"
            )
        else:
            self.running = self._merge(self.running, new)

    def _merge(self, old: Pair, new: Pair) -> Pair:
        return torch.minimum(old[0], new[0]), torch.maximum(old[1], new[1])

    def _range(self) -> Pair:
        assert self.running is not None  # has_data guarantees it
        return self.running[0].clone(), self.running[1].clone()


@register_observer("moving_average")
class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min / max; the first batch initialises it.

    ``averaging_constant`` (default 0.01, as PyTorch's MovingAverageMinMaxObserver) weighs
    the newest batch: ``min_val += c * (batch_min - min_val)``.
    """

    def __init__(self, *args: Any, averaging_constant: float = 0.01, **kwargs: Any) -> None:
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        super().__init__(*args, **kwargs)

    def _merge(self, old: Pair, new: Pair) -> Pair:
        c = self.averaging_constant
        return old[0] + c * (new[0] - old[0]), old[1] + c * (new[1] - old[1])
