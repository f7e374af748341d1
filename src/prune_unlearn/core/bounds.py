"""Bound propagation, re-exported from one place: IBP through the prefix ``M_p`` (:mod:`.intervals`),
IBP and CROWN through the Linear/ReLU head ``M_c`` (:mod:`.head_intervals`, :mod:`.crown`), and certified
radii and stable neurons built on them (:mod:`.radius`).
"""

from .crown import CrownBounds, crown_head_bounds, margin_lower_bounds
from .head_intervals import ibp_head_bounds
from .intervals import interval_bounds, interval_feature_box
from .radius import certified_radius, stable_neurons

__all__ = [
    "CrownBounds",
    "certified_radius",
    "crown_head_bounds",
    "ibp_head_bounds",
    "interval_bounds",
    "interval_feature_box",
    "margin_lower_bounds",
    "stable_neurons",
]
