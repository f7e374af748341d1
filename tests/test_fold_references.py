"""K-fold references for target="unseen": each point is answered by the reference that never saw it."""

import pytest
import torch

from prune_unlearn import InputValidationError, fold_references, forget
from prune_unlearn._hashing import points_sha256
from prune_unlearn.core.models import mlp
from prune_unlearn.experiments.training import Recipe, train_model
from prune_unlearn.unlearn.folds import assign_folds, check_folds

pytestmark = pytest.mark.usefixtures("one_thread")


class _Trainer:
    """Trains a small FC net per call and remembers which rows (by input hash) each call saw."""

    def __init__(self):
        self.seen: list[set] = []

    def __call__(self, X, y):
        self.seen.append(set(points_sha256(X)))
        torch.manual_seed(len(self.seen))
        return train_model(mlp(X.shape[1], [16], 10), X, y, Recipe(lr=0.1, epochs=2, batch_size=64)).model


def test_each_point_is_answered_by_the_reference_whose_fold_held_it(digits, digits_small_model):
    X, y = digits.X_train, digits.y_train
    train = _Trainer()
    refs = fold_references(X, y, train, 4, seed=7)
    assert len(refs) == 4 and [r.name for r in refs][0] == "fold 0 of 4 left out"
    assert all(not r.model.training for r in refs)
    fold_of = assign_folds(X, 4, seed=7)
    sizes = torch.bincount(fold_of, minlength=4)
    assert sizes.sum() == len(y) and int(sizes.max() - sizes.min()) <= 1
    hashes = points_sha256(X)
    for k, (ref, seen) in enumerate(zip(refs, train.seen)):
        assert len(ref.seen) == len(y) - int(sizes[k])
        # reference k trained on every row outside fold k and on none inside it
        assert seen == {h for h, f in zip(hashes, fold_of.tolist()) if f != k}
    idx = torch.tensor([3, 50, 400, 901, 1200])
    res = forget(digits_small_model.eval(), X[idx], labels=y[idx], target="unseen", reference=refs,
                 domain=(digits.domain_lower, digits.domain_upper))
    with torch.no_grad():
        out = res.model(X[idx])
        for i, row in zip(idx.tolist(), out):
            k = int(fold_of[i])
            assert not refs[k].saw(hashes[i]) and all(refs[j].saw(hashes[i]) for j in range(4) if j != k)
            expected = refs[k].model(X[i : i + 1])[0]
            assert torch.allclose(row, expected, atol=1e-4 * (1 + expected.abs().max()))


def test_identical_inputs_share_a_fold_and_the_split_is_seeded():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 6, generator=g)
    X[30:] = X[:10]  # ten inputs appear twice
    a, b = assign_folds(X, 5, seed=1), assign_folds(X, 5, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, assign_folds(X, 5, seed=2))
    assert torch.equal(a[30:], a[:10])
    assert len(torch.unique(a)) == 5


@pytest.mark.parametrize("folds, message", [
    (1, r"'folds' parameter of assign_folds must be an integer ≥ 2"),
    (0, r"'folds' parameter of assign_folds must be an integer ≥ 2"),
    (True, r"'folds' parameter of fold_references must be an integer K or a sequence"),
    (13, r"'folds' parameter of assign_folds must be at most the 12 distinct training inputs"),
    ([[0, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9, 10, 11, 12, 13]], r"overlap: row 5 is in fold 1 and in an earlier"),
    ([[0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], r"leave 1 row\(s\) out \(first: \[13\]\)"),
    ([[0, 1, 2, 3, 4, 5, 6], []], r"fold 1 is empty"),
    ([[0, 1, 2, 3, 4, 5, 99], [7, 8, 9, 10, 11, 12, 13]], r"row indices in \[0, 13\]"),
    ([[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13]],
     r"identical inputs in different folds \(rows \[0, 1, 12, 13\]\)"),
    ("3", r"an integer K or a sequence of K index sequences"),
])
def test_bad_folds_are_refused_before_any_training(folds, message):
    X = torch.rand(14, 6, generator=torch.Generator().manual_seed(0))
    X[13], X[12] = X[0], X[1]  # 14 rows, 12 distinct inputs
    train = _Trainer()
    with pytest.raises(InputValidationError, match=message):
        fold_references(X, torch.zeros(14, dtype=torch.int64), train, folds)
    assert train.seen == []  # nothing trained


def test_explicit_disjoint_folds_are_used_as_given():
    X = torch.rand(12, 6, generator=torch.Generator().manual_seed(0))
    folds = [[0, 5, 6, 11], [1, 2, 3], [4, 7, 8, 9, 10]]
    fold_of = check_folds(X, folds)
    assert fold_of.tolist() == [0, 1, 1, 1, 2, 0, 0, 2, 2, 2, 2, 0]
    train = _Trainer()
    refs = fold_references(X, torch.arange(12) % 10, train, folds)
    assert [len(r.seen) for r in refs] == [8, 9, 7]
    hashes = points_sha256(X)
    assert train.seen[1] == {hashes[i] for i in range(12) if i not in folds[1]}
