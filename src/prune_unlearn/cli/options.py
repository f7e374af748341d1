"""Option bundles shared by the ``prune`` commands, in the style of sqlite-utils' ``output_options``.

Every choice comes from the library's own constants (``BOUND_METHODS``, ``STRATEGIES``, ``TARGET_RULES``,
``dataset_names()`` …), so a method added there shows up here and in ``--help`` without an edit. Printing
options (``--json``, ``--silent``) live in :mod:`.output`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click
import torch

from ..core.confusion import BOUND_METHODS
from ..experiments.datasets import dataset_names
from ..experiments.datasets.arrays import is_arrays_path
from ..unlearn.forget import FORGET_TARGETS, STRATEGIES
from ..unlearn.whole_class import INTERMEDIATE_BOUNDS, RADIUS_RULES

__all__ = ["neighbourhood_options", "parse_radius", "IntList", "NameList", "DataName", "ClassTarget", "seed_option",
           "device_option", "data_options", "bound_option",
           "epsilon_option", "forget_options", "relaxed_support_options", "radius_option", "model_path_option",
           "out_folder_options", "read_indices"]


class IntList(click.ParamType):
    """Comma-separated integers, e.g. ``784,256,256,10`` (a bad value is a usage error, exit 2)."""

    name = "ints"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        try:
            return [int(v) for v in str(value).replace(" ", "").split(",") if v]
        except ValueError:
            self.fail(f"comma-separated integers, e.g. 100,200; got {value!r}.", param, ctx)


class NameList(click.ParamType):
    """Comma-separated names, each one of ``choices``."""

    name = "names"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def convert(self, value, param, ctx):
        names = list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")
                                                                      if v.strip()]
        unknown = [n for n in names if n not in self.choices]
        if unknown:
            self.fail(f"{unknown[0]!r} is not one of {', '.join(self.choices)}.", param, ctx)
        return tuple(names)


class DataName(click.ParamType):
    """A data set's name (``dataset_names()``) or the path of a user's own ``.npz`` of arrays."""

    name = "data"

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(dataset_names())

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[" + "|".join(self.choices) + "|FILE.npz]"

    def convert(self, value, param, ctx):
        value = str(value)
        if value in dataset_names() or is_arrays_path(value):
            return value
        self.fail(f"{value!r} is not one of {', '.join(dataset_names())}, nor a .npz file of your own arrays.",
                  param, ctx)


class ClassTarget(click.ParamType):
    """``random`` or a class label (an integer), the label a forgotten class is pushed to."""

    name = "random|label"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "random":
            return value
        if str(value).isdigit():
            return int(value)
        self.fail(f"'random' or a class label (an integer); got {value!r}.", param, ctx)


# The CLI's --radius default, as forget's library default (see docs/design.md, "The default mode").
DEFAULT_CLI_RADIUS = "auto"


def seed_option(f):
    return click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                        help="Random seed (point selection, target labels, clustering, training).")(f)


def _resolve_device(ctx, param, value: str) -> str:
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return value


def device_option(f):
    return click.option("--device", default="auto", show_default=True, callback=_resolve_device,
                        help="Where to train: auto (GPU when present), cpu, cuda, cuda:1, …")(f)


def data_options(f=None, *, required: bool = True, help: str | None = None):  # noqa: A002 - click's word
    """``--data`` (one of the library's data sets) and ``--data-dir``; ``@data_options`` or
    ``@data_options(required=False, help=...)``."""
    def decorate(f):
        f = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Folder with the data set's files (default: $PRUNE_DATA_DIR/<name>; digits and "
                              "mnist5k are built in).")(f)
        return click.option("--data", "data_name", type=DataName(), required=required,
                            help=(help or "The data set.") + f" One of {', '.join(dataset_names())}, or the path of "
                                 "your own .npz (X_train, y_train, optional X_test, y_test, domain_lower, "
                                 "domain_upper; used as given, no re-split).")(f)

    return decorate(f) if f is not None else decorate


def bound_option(f):
    return click.option("--bound", type=click.Choice(BOUND_METHODS), default="box", show_default=True,
                        help="How region claims are proven (all sound; dual/lp give smaller patches).")(f)


def epsilon_option(f):
    return click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
                        help="Proven margin (logits) of the target label on each certified region.")(f)


def forget_options(f):
    """How points are forgotten (``forget``'s keywords), for ``forget`` and ``demo``; the command receives them as
    one dict, ``forget_kwargs``, named as :func:`prune_unlearn.forget` names them."""
    @functools.wraps(f)
    def wrapper(*args, strategy, bound, epsilon, target, delta, clusters, neighbourhood, **kwargs):
        forget_kwargs = {"strategy": strategy, "bound": bound, "epsilon": epsilon, "target": target, "delta": delta,
                         "n_clusters": clusters, **neighbourhood}
        return f(*args, forget_kwargs=forget_kwargs, **kwargs)

    wrapper = neighbourhood_options(wrapper)
    wrapper = click.option("--clusters", type=click.IntRange(min=1), default=None,
                           help="K for the cluster strategy (default ceil(n/10)).")(wrapper)
    wrapper = click.option("--delta", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                           help="Forgotten share to reach (cluster strategy).")(wrapper)
    wrapper = click.option("--target", type=click.Choice(FORGET_TARGETS), default="random", show_default=True,
                           help="random / runner-up: the label the points are pushed to (the paper's targets); "
                                "unseen: answer as a reference model that never saw them (needs --reference).")(wrapper)
    wrapper = bound_option(epsilon_option(wrapper))
    return click.option("--strategy", type=click.Choice(STRATEGIES), default="per-point", show_default=True,
                        help="per-point: Theorem 1 for every point; cluster: Algorithm 1.")(wrapper)


def parse_radius(text, *, param: str = "--radius"):
    """A radius given on the command line: a float or fraction (``2/255``), ``search``, ``auto`` (12/255 of the
    domain's narrowest side; region-only where a ball does not apply) or ``none`` (region-only).
    Whether it is positive, finite and fits the domain is checked by ``forget`` (an ``Error:`` line, exit 1)."""
    t = str(text).strip().lower()
    if t in ("none", "region", "region-only"):
        return None
    if t in ("search", "auto"):
        return t
    try:
        if "/" in t:
            num, den = t.split("/", 1)
            return float(num) / float(den)
        return float(t)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"a float (e.g. 0.01 or 2/255), 'search', 'auto' or 'none'; got {text!r}",
                                 param_hint=param) from None


def neighbourhood_options(f):
    """Certified neighbourhoods (issue 11), for ``forget`` and the ledger's ``process``: the command receives one
    dict, ``neighbourhood``, of :func:`prune_unlearn.forget`'s keywords."""
    @functools.wraps(f)
    def wrapper(*args, radius, min_radius, max_radius, outer, within_region, ball_space, **kwargs):
        neighbourhood = {"radius": parse_radius(radius), "min_radius": parse_radius(min_radius, param="--min-radius"),
                         "max_radius": parse_radius(max_radius, param="--max-radius"), "outer": outer,
                         "within_region": within_region}
        if ball_space != "input":  # only when asked: the ledger records these options in every event
            neighbourhood["ball_space"] = ball_space
        return f(*args, neighbourhood=neighbourhood, **kwargs)

    wrapper = click.option("--ball-space", type=click.Choice(["input", "features"]), default="input",
                           show_default=True,
                           help="Where the balls live: around each input, or around its features (the head's "
                                "input; --radius then in feature units: for heads behind conv layers).")(wrapper)
    wrapper = click.option("--within-region", is_flag=True,
                           help="Confine each neighbourhood to the point's linear region too (region ∩ ball).")(wrapper)
    wrapper = click.option("--outer", type=float, default=0.5, show_default=True,
                           help="Width of the support's outer band, as a multiple of the radius.")(wrapper)
    wrapper = click.option("--max-radius", default="16/255", show_default=True,
                           help="Largest radius of --radius search.")(wrapper)
    wrapper = click.option("--min-radius", default="2/255", show_default=True,
                           help="Smallest radius of --radius search.")(wrapper)
    return click.option("--radius", default=DEFAULT_CLI_RADIUS, show_default=True,
                        help="ℓ∞ radius (input units) of the certified neighbourhood of each point, e.g. 2/255; "
                             "'search' for the model's own CROWN-certified neighbourhood (clamped to "
                             "[--min-radius, --max-radius]); 'auto': 12/255 of the input domain's narrowest side "
                             "(region-only where a ball does not apply: --strategy cluster, --target unseen); "
                             "'none' for region-only (the paper's Theorem 1).")(wrapper)


def relaxed_support_options(f):
    """How whole-class (Algorithm 2) relaxed supports are built: ``forget-class`` and ``bench table5``."""
    f = click.option("--decision-gate/--no-decision-gate", default=True, show_default=True,
                     help="Confine class patches to inputs the base model assigns to the class (other classes' "
                          "predictions never change); --no-decision-gate is the paper's plain relaxed support.")(f)
    f = click.option("--intermediate", type=click.Choice(INTERMEDIATE_BOUNDS), default="crown", show_default=True,
                     help="Hidden-layer bounds of the per-member CROWN calls: full CROWN, or interval bounds "
                          "(CROWN-IBP: ~9x faster, smaller radii, wants a larger --radius-scale).")(f)
    return click.option("--radius-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
                        show_default=True, help="Widening of each member's CROWN-certified ball (more "
                        "generalisation; without the decision gate, more side effects).")(f)


def radius_option(f):
    return click.option("--radius", type=click.Choice(RADIUS_RULES), default="per-member", show_default=True,
                        help="per-member: CROWN bisection per member (Algorithm 2); calibrated: one radius from a "
                             "sample.")(f)


def model_path_option(help: str):  # noqa: A002 - click's word
    """``--model PATH`` (required) with a command-specific help text."""
    return click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
                        help=help)


def out_folder_options(help: str):  # noqa: A002 - click's word
    """``--out FOLDER`` (required) and ``--overwrite``; the folder is written as a whole (:mod:`.paths`)."""
    def decorate(f):
        f = click.option("--overwrite", is_flag=True,
                         help="Replace an existing --out folder that holds files (as a whole; without this flag such "
                              "a folder is refused before any work).")(f)
        return click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                            help=help + " Written as a whole: it appears complete or not at all.")(f)

    return decorate


def read_indices(path: Path, n_train: int) -> torch.Tensor:
    """Training-set indices from a text file (whitespace/comma separated, ``#`` comments)."""
    from ..errors import InputValidationError

    try:
        text = path.read_text()
    except OSError as exc:
        raise InputValidationError(f"Cannot read the indices file {path}: {exc}") from None
    tokens = [t for line in text.splitlines() for t in line.split("#")[0].replace(",", " ").split()]
    try:
        idx = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise InputValidationError(f"The indices file {path} must hold integers; found {bad!r}.") from None
    if not idx:
        raise InputValidationError(f"The indices file {path} holds no indices.")
    out_of_range = [i for i in idx if not 0 <= i < n_train]
    if out_of_range:
        raise InputValidationError(f"Indices must be in [0, {n_train - 1}] (training points); got {out_of_range[:5]}.")
    if len(set(idx)) != len(idx):
        dup = next(i for i in idx if idx.count(i) > 1)
        raise InputValidationError(f"Index {dup} appears more than once in {path}.")
    return torch.tensor(idx, dtype=torch.int64)
