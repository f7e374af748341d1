"""The method's building blocks, tensor in and tensor out.

``split`` cuts a model into ``M_p ⊕ M_c``; ``regions`` computes linear regions and their affine maps;
``bounds`` (interval, CROWN) and ``confusion`` (box / dual / LP margin bounds, Eq. 7) prove claims;
``patches`` holds the support and patch networks and :class:`PatchedModel`; ``domain`` gives the
box the claims live in; ``models`` and ``serialization`` build, save and load models.
"""

from .models import architecture_of, build_model, default_architecture
from .patches import ClassPatchSet, PatchedModel, PatchSet
from .serialization import load, load_info, save
from .split import ModelSplit, split_model

__all__ = ["PatchedModel", "PatchSet", "ClassPatchSet", "ModelSplit", "split_model", "build_model",
           "architecture_of", "default_architecture", "save", "load", "load_info"]
