"""Observers: calibration statistics in, a quantization range out.

An observer accumulates statistics with ``update(x)`` over calibration batches and turns them
into ``(min_val, max_val)`` with ``compute_range()``; `mixq.core.primitives.choose_qparams` turns
that range into a scale and zero point. Observers take the target ``dtype`` and ``symmetric``
flag because the best range depends on the grid it will be quantized to.

``minmax`` and ``moving_average`` work per tensor or per channel (``axis``). The histogram
observers ``percentile``, ``mse``, ``kl`` (alias ``entropy``), ``sqnr`` and ``mix`` work per
tensor on one shared `HistogramObserver` histogram.

Example:
    >>> import torch
    >>> from mixq.observers import make_observer
    >>> obs = make_observer("minmax", dtype="int8")
    >>> obs.update(torch.tensor([-1.0, 0.5, 2.0]))
    >>> obs.compute_range()
    (tensor(-1.), tensor(2.))
"""

from mixq.observers.base import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    make_observer,
    register_observer,
)
from mixq.observers.histogram import (
    HistogramObserver,
    MSEObserver,
    PercentileObserver,
    histogram_mse,
)
from mixq.observers.range_search import KLObserver, MixObserver, SQNRObserver

__all__ = [
    "OBSERVERS",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MixObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "SQNRObserver",
    "histogram_mse",
    "make_observer",
    "register_observer",
]
