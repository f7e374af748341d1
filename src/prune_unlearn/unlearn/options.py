"""The options of :func:`~prune_unlearn.unlearn.forget.forget`, validated before anything is computed."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._validation import check_choice, check_fraction, check_positive_float, check_positive_int, check_seed, param_error
from ..core.confusion import BOUND_METHODS
from ..core.domain import is_reshape_only
from ..core.neighbourhood import BALL_SPACES
from ..core.patches import PatchedModel
from ..core.split import split_model
from ..errors import InputValidationError
from .neighbourhood import DEFAULT_OUTER, DEFAULT_RADIUS, check_neighbourhood_options, resolve_radius
from .point_strategies import POINT_STRATEGIES
from .targets import FORGET_TARGETS

__all__ = ["ForgetOptions", "STRATEGIES"]

STRATEGIES = tuple(POINT_STRATEGIES)


@dataclass(frozen=True)
class ForgetOptions:
    """How ``forget`` patches (its keywords; see :func:`forget` for each). ``radius`` is the requested one
    (``"auto"`` by default); :meth:`resolved` replaces ``"auto"`` by the radius the run uses (or None)."""

    strategy: str = "per-point"
    bound: str = "box"
    epsilon: float = 0.05
    target: str = "random"
    seed: int = 0
    domain: tuple[Any, Any] = (0.0, 1.0)
    feature_domain: tuple[Any, Any] | None = None
    delta: float = 1.0
    n_clusters: int | None = None
    max_rounds: int = 10
    dual_steps: int = 60
    radius: float | str | None = DEFAULT_RADIUS
    min_radius: float = 2 / 255
    max_radius: float = 16 / 255
    outer: float = DEFAULT_OUTER
    within_region: bool = False
    intermediate: str = "ibp"
    ball_space: str = "input"

    def resolved(self, model=None, head: str | None = None) -> "ForgetOptions":
        """These options with ``radius="auto"`` replaced by what it means for ``model`` (:func:`resolve_radius`)."""
        if self.ball_space == "features":  # feature units: no default radius ("auto" is refused by validate)
            return self
        keeps_balls = self.radius == DEFAULT_RADIUS and self.strategy == "per-point" and self.target != "unseen"
        feature_balls = feature_ball_radius(model) if keeps_balls else None
        if feature_balls is not None:  # a model patched on feature balls keeps its mode, as region-patched ones do
            return replace(self, radius=feature_balls, ball_space="features")
        region_rows_only = (isinstance(model, PatchedModel) and len(model.patches) > 0
                            and not model.has_neighbourhoods)
        radius = resolve_radius(self.radius, self.domain, strategy=self.strategy, target=self.target,
                                feature_domain=self.feature_domain, region_rows_only=region_rows_only,
                                feature_extractor=_behind_feature_extractor(model, head))
        return self if radius == self.radius else replace(self, radius=radius)

    def validate(self, caller: str = "forget") -> None:
        check_choice("strategy", caller, self.strategy, STRATEGIES)
        check_choice("bound", caller, self.bound, BOUND_METHODS)
        check_choice("target", caller, self.target, FORGET_TARGETS)
        if self.target == "unseen" and self.strategy != "per-point":
            raise InputValidationError("target='unseen' works with strategy='per-point' only (each region gets its "
                                       f"own reference output); got strategy={self.strategy!r}.")
        check_choice("ball_space", caller, self.ball_space, tuple(BALL_SPACES))
        if self.ball_space == "features":
            self._validate_feature_balls(caller)
        check_positive_float("epsilon", caller, self.epsilon)
        check_seed(caller, self.seed)
        check_fraction("delta", caller, self.delta)
        check_positive_int("n_clusters", caller, self.n_clusters, allow_none=True)
        check_positive_int("max_rounds", caller, self.max_rounds)
        if self.radius is not None and self.ball_space == "input":
            check_neighbourhood_options(self.radius, self.domain, min_radius=self.min_radius,
                                        max_radius=self.max_radius, outer=self.outer,
                                        within_region=self.within_region, intermediate=self.intermediate,
                                        caller=caller)

    def _validate_feature_balls(self, caller: str) -> None:
        """A feature-space ball needs a number in feature units; its width is checked against the feature box
        once the model is split (:mod:`.neighbourhood_forget`)."""
        ok = (isinstance(self.radius, (int, float, np.floating)) and not isinstance(self.radius, bool)
              and math.isfinite(float(self.radius)) and float(self.radius) > 0)
        if not ok:
            raise param_error("radius", caller, "a finite float > 0 in feature units with ball_space='features'",
                              self.radius, "e.g. a fraction of the median distance between training features; "
                              "'auto' and 'search' are input-space radii.")
        check_neighbourhood_options(float(self.radius), self.domain, min_radius=self.min_radius, max_radius=self.max_radius,
                                    outer=self.outer, within_region=self.within_region,
                                    intermediate=self.intermediate, caller=caller, check_width=False)

    def make_strategy(self):
        return POINT_STRATEGIES[self.strategy].from_options(delta=self.delta, n_clusters=self.n_clusters,
                                                            max_rounds=self.max_rounds)



def feature_ball_radius(model) -> float | None:
    """The radius ``"auto"`` means on a model whose ball rows are all feature-space balls (their largest
    radius: the ledger's next requests get the same kind of ball); None on any other model."""
    if not isinstance(model, PatchedModel) or not model.has_neighbourhoods:
        return None
    rows = model.neighbourhoods
    if not bool((rows.ball_space == BALL_SPACES["features"]).all()):
        return None
    return float(rows.radius.max())


def _behind_feature_extractor(model, head: str | None) -> bool:
    """Whether the patched head sits behind layers that are not a mere reshape (e.g. VGG16's conv layers)."""
    if model is None:
        return False
    try:
        split = model.split if isinstance(model, PatchedModel) else split_model(model, head)
    except Exception:  # noqa: BLE001 - an unsplittable model is refused with its own error by the run itself
        return False
    return not is_reshape_only(split.prefix)
