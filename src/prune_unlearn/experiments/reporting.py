"""Shared pieces of the experiment writers: the machine description every result records, and table cells."""

from __future__ import annotations

import os
import platform
import statistics

import torch

from .._version import __version__


def machine_description() -> dict:
    import numpy
    import scipy
    import sklearn

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "prune_unlearn": __version__, "torch": torch.__version__,
        "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
    }


def mean_std(values: list[float]) -> str:
    """``mean ± std`` of the values (just the value when there is one), two decimals; "–" when there is none (a
    merged table whose method did not run at that size)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
