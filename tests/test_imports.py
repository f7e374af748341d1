"""The package's import graph reads plainly: no module reaches into another module's private names, and
nothing imports the package ``__init__`` (the version lives in ``_version.py``)."""

import ast
from pathlib import Path

import prune_unlearn

PACKAGE = Path(prune_unlearn.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``from X import ...`` statement in ``module`` refers to."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _problems(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every private-name import and package-``__init__`` import in ``source``, the text of ``module``."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            if target != "prune_unlearn" and not target.startswith("prune_unlearn."):
                continue  # third-party and standard-library imports are not ours to judge
            for alias in node.names:
                name = alias.name
                if target == "prune_unlearn":
                    out.append(f"{module}:{node.lineno} imports {name!r} from the package __init__")
                elif name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    out.append(f"{module}:{node.lineno} imports the private name {name!r} from {target}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prune_unlearn":
                    out.append(f"{module}:{node.lineno} imports the package __init__")
    return out


def test_no_private_cross_module_imports_and_no_init_imports():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    problems = [p for f in files for p in _problems(_module_name(f), f.read_text(), f.name == "__init__.py")]
    assert problems == [], "\n".join(problems)


def test_the_checker_catches_what_it_looks_for():
    """The check above must be able to fail: run it on a made-up module with each kind of import."""
    source = ("from .forget import _solve\n"
              "from ..core.patches import PatchedModel, _KEEP\n"
              "from .. import __version__\n"
              "from prune_unlearn import forget\n"
              "import prune_unlearn\n"
              "from .._version import __version__ as v\n"
              "from numpy import _globals\n")
    got = [line.split(" ", 1)[1] for line in _problems("prune_unlearn.unlearn.probe", source)]
    assert got == [
        "imports the private name '_solve' from prune_unlearn.unlearn.forget",
        "imports the private name '_KEEP' from prune_unlearn.core.patches",
        "imports '__version__' from the package __init__",
        "imports 'forget' from the package __init__",
        "imports the package __init__",
    ]

