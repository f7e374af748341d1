"""Operations: the hash-chained ledger of withdrawal requests a model owner processes over time."""

from .ledger import Ledger

__all__ = ["Ledger"]
