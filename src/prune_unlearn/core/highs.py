"""HiGHS helpers shared by the exact LP bounds: a silent solver instance and a dense matrix in CSR form."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["new_highs", "dense_to_csr"]

_HIGHS_LOCK = threading.Lock()


def new_highs():
    """A silent HiGHS instance (its constructor prints a banner on the C-level stdout)."""
    import os
    import sys

    import highspy

    with _HIGHS_LOCK:  # the C-level stdout is process-wide: one redirection at a time
        return _new_highs_quiet(highspy, os, sys)


def _new_highs_quiet(highspy, os, sys):
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            lp = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    lp.setOptionValue("output_flag", False)
    return lp


def dense_to_csr(mat: np.ndarray):
    nz = mat != 0
    starts = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]]).astype(np.int32)
    cols = np.nonzero(nz)[1].astype(np.int32)
    vals = mat[nz].astype(np.float64)
    return starts, cols, vals
