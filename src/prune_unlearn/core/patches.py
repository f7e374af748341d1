"""The patched model ``M_p ⊕ (M_c + Σ_k c_k)``: the base model and every kind of patch row it carries.

Each kind of row lives in its own module: point rows (one per patched linear region, Theorem 1) in
:mod:`.point_patches`, whole-class rows (relaxed supports, Algorithm 2) in :mod:`.class_patches`, certified neighbourhoods (a box
around a forgotten point, issue 11) in :mod:`.neighbourhood`.
:class:`PatchedModel` owns them: one naming of its state, one hash, and methods that return a new
model with rows added or removed.
"""

from __future__ import annotations

import torch
from torch import nn

from .._hashing import state_sha256
from .class_patches import ClassPatchSet, label_lead
from .neighbourhood import NeighbourhoodSet
from .point_patches import BOUND_CODES, PatchSet, stack_preacts
from .split import ModelSplit, split_model

__all__ = ["PatchSet", "ClassPatchSet", "PatchedModel", "BOUND_CODES", "label_lead", "stack_preacts",
           "model_state", "model_state_sha256"]


class PatchedModel(nn.Module):
    """``M_p ⊕ (M_c + Σ_k c_k)``: the base model with patch networks on its head's output.

    A plain ``nn.Module``. ``base`` is the unpatched model (never modified); ``patches`` holds every
    patched linear region (point rows), ``class_patches`` the whole-class supports (class rows), if any,
    and ``neighbourhoods`` the certified neighbourhoods (ball rows, :class:`NeighbourhoodSet`), if any.
    Inputs outside every support get exactly the base model's logits.

    The model owns its state: :meth:`state_dict` (``base.<name>``, ``patches.<field>``,
    ``class_patches.<field>``) is the only naming of its tensors, and every hash of it — the saved
    file's ``tensors_sha256``, the certificate's ``model_sha256``/``patches_sha256``, the ledger's
    ``model_before``/``model_after`` — comes from :meth:`sha256`, :meth:`base_sha256` and
    :meth:`patches_sha256`. Changes never mutate a model: :meth:`with_patches`, :meth:`add_point_rows`
    and :meth:`select_point_rows` return a new one that shares the base and keeps every other kind of row.

    Examples
    --------
    >>> patched = PatchedModel(model, PatchSet(num_hidden, num_classes))      # doctest: +SKIP
    >>> patched.sha256() == load_info("patched.safetensors")["tensors_sha256"]  # doctest: +SKIP
    """

    # Every kind of patch row, by attribute (= state-dict prefix). "patches" is always present (maybe
    # empty); the others are optional. A new kind of row adds one entry here.
    # Row sets are built as ``kind(num_hidden, num_classes, **fields)``; NeighbourhoodSet.from_fields reads its
    # input dimension from its fields.
    ROW_SETS = {"patches": PatchSet, "class_patches": ClassPatchSet, "neighbourhoods": NeighbourhoodSet.from_fields}
    STATE_PREFIXES = ("base.", *(f"{name}." for name in ROW_SETS))

    def __init__(self, base: nn.Module, patches: PatchSet, head: str | None = None,
                 class_patches: "ClassPatchSet | None" = None, neighbourhoods: NeighbourhoodSet | None = None):
        super().__init__()
        self.base = base
        self.patches = patches
        self.class_patches = class_patches
        self.neighbourhoods = neighbourhoods
        self.head = head
        split = split_model(base, head)
        sizes = (sum(split.hidden_sizes), split.num_classes)
        for kind, rows in (("PatchSet", patches), ("ClassPatchSet", class_patches),
                           ("NeighbourhoodSet", neighbourhoods)):
            if rows is not None and (rows.num_hidden, rows.num_classes) != sizes:
                raise ValueError(
                    f"{kind} is for a head with {rows.num_hidden} hidden neurons and {rows.num_classes} "
                    f"classes; this model's head has {sizes[0]} and {sizes[1]}."
                )
        if neighbourhoods is not None and neighbourhoods.input_dim != split.feature_dim:
            raise ValueError(f"NeighbourhoodSet is for head inputs of dimension {neighbourhoods.input_dim}; this "
                             f"model's head takes {split.feature_dim}.")
        object.__setattr__(self, "_split", split)  # shares the base's modules; not a second copy of weights

    @property
    def split(self) -> ModelSplit:
        return self._split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._split.features(x)
        preacts, logits = self._split.head_forward(h)
        out = self.patches.apply(preacts, logits)
        if self.has_class_patches:
            out = self.class_patches.apply(stack_preacts(preacts, logits), out, base_logits=logits)
        if self.has_neighbourhoods:
            out = self.neighbourhoods.apply(h, preacts, out)
        return out

    @property
    def has_class_patches(self) -> bool:
        return self.class_patches is not None and len(self.class_patches) > 0

    @property
    def has_neighbourhoods(self) -> bool:
        return self.neighbourhoods is not None and len(self.neighbourhoods) > 0

    # --- state: one naming, one hash --------------------------------------------------------------

    def patch_state(self) -> dict[str, torch.Tensor]:
        """The tensors the patches add to the base: :meth:`state_dict` without the ``base.`` entries."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def sha256(self) -> str:
        """Hash of the whole state (the saved file's ``tensors_sha256``; the ledger's model hashes)."""
        return state_sha256(self.state_dict())

    def base_sha256(self) -> str:
        """Hash of the base model's state dict (the certificate's ``model_sha256``)."""
        return state_sha256(self.base.state_dict())

    def patches_sha256(self) -> str:
        """Hash of every patch row of every kind (the certificate's ``patches_sha256``)."""
        return state_sha256(self.patch_state())

    @classmethod
    def from_state_dict(cls, base: nn.Module, state: dict[str, torch.Tensor], *, head: str | None = None,
                        num_hidden: int | None = None, num_classes: int | None = None) -> "PatchedModel":
        """Rebuild from :meth:`state_dict` entries on an existing ``base`` (whose weights are loaded from
        the ``base.`` entries). Raises ``ValueError`` naming any unknown key or malformed field."""
        unknown = sorted(k for k in state if not k.startswith(cls.STATE_PREFIXES))
        if unknown:
            raise ValueError(f"the state has keys that belong to no part of a patched model: {unknown[:5]}")
        base_state = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.")}
        if base_state:
            base.load_state_dict(base_state, strict=True)
        split = split_model(base, head)
        n_hidden = sum(split.hidden_sizes) if num_hidden is None else num_hidden
        n_classes = split.num_classes if num_classes is None else num_classes
        rows = {}
        for name, kind in cls.ROW_SETS.items():
            fields = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")}
            if fields or name == "patches":
                rows[name] = kind(n_hidden, n_classes, **fields)
        return cls(base, head=head, **rows)

    @classmethod
    def wrap(cls, model: nn.Module, *, head: str | None = None) -> "PatchedModel":
        """``model`` itself if it is a PatchedModel, else ``model`` as a patched model without rows (the
        starting point that :meth:`add_point_rows` and :meth:`with_patches` add rows to)."""
        if isinstance(model, PatchedModel):
            return model
        split = split_model(model, head)
        wrapped = cls(model, PatchSet(sum(split.hidden_sizes), split.num_classes), head=head)
        wrapped.training = model.training
        return wrapped

    # --- changes: new models that keep every other kind of row ------------------------------------

    _KEEP = object()

    def with_patches(self, patches: PatchSet | None = None, class_patches=_KEEP,
                     neighbourhoods=_KEEP) -> "PatchedModel":
        """A new model on the same base with ``patches``, ``class_patches`` and/or ``neighbourhoods`` replaced
        (the others kept)."""
        keep = PatchedModel._KEEP
        model = PatchedModel(self.base, self.patches if patches is None else patches, head=self.head,
                             class_patches=self.class_patches if class_patches is keep else class_patches,
                             neighbourhoods=self.neighbourhoods if neighbourhoods is keep else neighbourhoods)
        model.training = self.training  # the wrapper's flag only: train() would also switch the shared base
        dev = next(self.base.parameters(), torch.empty(0)).device
        return model.to(dev)

    def add_point_rows(self, rows: PatchSet, *, replace: torch.Tensor | None = None) -> "PatchedModel":
        """A new model whose point patches are the current rows (minus the bool mask ``replace``) then ``rows``."""
        kept = self.patches if replace is None else self.patches.select(~replace.cpu())
        return self.with_patches(PatchSet.concat([kept, rows]))

    def select_point_rows(self, keep: torch.Tensor) -> "PatchedModel":
        """A new model with only the point rows ``keep`` (bool mask or indices); class rows are kept."""
        return self.with_patches(self.patches.select(keep))

    def add_neighbourhood_rows(self, rows: NeighbourhoodSet, *, replace: torch.Tensor | None = None) -> "PatchedModel":
        """A new model whose neighbourhood rows are the current ones (minus the bool mask ``replace``) then ``rows``.
        Adding no rows to a model without neighbourhoods leaves it without (no empty ``neighbourhoods.*`` tensors)."""
        if self.neighbourhoods is None:
            return self.with_patches(neighbourhoods=rows if len(rows) else None)
        kept = self.neighbourhoods if replace is None else self.neighbourhoods.select(~replace.cpu())
        return self.with_patches(neighbourhoods=NeighbourhoodSet.concat([kept, rows]))

    def select_neighbourhood_rows(self, keep: torch.Tensor) -> "PatchedModel":
        """A new model with only the neighbourhood rows ``keep``; every other kind of row is kept.

        A selection that removes the last row removes the kind (``neighbourhoods`` None, as before any row was
        added): undoing every ball then restores the model's state byte for byte, without a trail of empty
        ``neighbourhoods.*`` tensors. A set that was already empty stays as it is (its state is unchanged)."""
        if self.neighbourhoods is None:
            return self.with_patches()
        kept = self.neighbourhoods.select(keep)
        emptied = len(kept) == 0 and len(self.neighbourhoods) > 0
        return self.with_patches(neighbourhoods=None if emptied else kept)

    # --- queries ----------------------------------------------------------------------------------

    @torch.no_grad()
    def covering_region(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each input, the patched region that supports it (-1 if none) and the support value.

        Point patches only; see :meth:`class_support` for whole-class patches.
        """
        preacts, logits = self._split.head_forward(self._split.features(x))
        return self.patches.support(stack_preacts(preacts, logits))

    @torch.no_grad()
    def class_support(self, x: torch.Tensor, *, gated: bool = True) -> torch.Tensor:
        """(B, G) support of each whole-class patch group (zeros without class patches); ``gated=False``:
        on the relaxed regions alone, ignoring the decision gate."""
        preacts, logits = self._split.head_forward(self._split.features(x))
        if self.class_patches is None:
            return logits.new_zeros(logits.shape[0], 0)
        z = stack_preacts(preacts, logits)
        return self.class_patches.group_support(z, logits) if gated else self.class_patches.relaxed_support(z)

    @torch.no_grad()
    def neighbourhood_support(self, x: torch.Tensor) -> torch.Tensor:
        """(B, R) support of every neighbourhood row at each input ((B, 0) without neighbourhood rows)."""
        h = self._split.features(x)
        preacts, logits = self._split.head_forward(h)
        out = logits.new_zeros(logits.shape[0], len(self.neighbourhoods) if self.neighbourhoods is not None else 0)
        if self.has_neighbourhoods:
            rows_b, rows_k, value = self.neighbourhoods.support(h, preacts)
            out[rows_b, rows_k] = value
        return out

    def unpatched(self) -> nn.Module:
        """The base model ``M`` without any patch."""
        return self.base

    def extra_repr(self) -> str:
        return f"head={self.head!r}"


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The named tensors a saved file holds for ``model``: a :class:`PatchedModel`'s :meth:`state_dict`, or a
    plain module's state dict under ``base.``."""
    if isinstance(model, PatchedModel):
        return model.state_dict()
    return {f"base.{k}": v for k, v in model.state_dict().items()}


def model_state_sha256(model: nn.Module) -> str:
    """Hash of :func:`model_state` (a saved file's ``tensors_sha256``), for patched and plain models alike."""
    return state_sha256(model_state(model))
