"""The library version, in one place (``pyproject.toml`` and every file header read it from here)."""

__version__ = "0.1.0"
