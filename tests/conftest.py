import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch):
    """`make` exports PRUNE_DATA_DIR for benchmarks; tests that want real files name SHARED themselves, so an
    ambient value must not let a "missing files" test find the shared copies."""
    monkeypatch.delenv("PRUNE_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits():
    from prune_unlearn import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_model(digits):
    """FC(256×256) trained briefly on digits (enough for a realistic region structure)."""
    from prune_unlearn.core.models import default_architecture
    from prune_unlearn.experiments.training import Recipe, train_from_spec

    spec = default_architecture("digits", digits.input_dim, digits.num_classes)
    return train_from_spec(spec, digits.X_train, digits.y_train, Recipe(lr=0.1, epochs=15, batch_size=32)).model


@pytest.fixture(scope="session")
def digits_small_model(digits):
    """FC(32×32) on digits: small enough for exact LPs over many regions in tests."""
    from prune_unlearn.core.models import mlp
    from prune_unlearn.experiments.training import Recipe, train_model

    torch.manual_seed(1)
    model = mlp(digits.input_dim, [32, 32], digits.num_classes)
    return train_model(model, digits.X_train, digits.y_train, Recipe(lr=0.1, epochs=20, batch_size=32)).model
