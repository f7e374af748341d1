"""Training recipes and retraining, the exact-unlearning reference a forget run is timed against."""

import pytest
import torch

from _helpers.models import tiny_mlp
from prune_unlearn import forget, save
from prune_unlearn.core.models import mlp
from prune_unlearn.errors import FormatError, InputValidationError
from prune_unlearn.experiments.training import Recipe, recorded_recipe, retrain, train_from_spec


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 4, generator=gen)
    return X, (X[:, 0] > X[:, 1]).long() + (X[:, 2] > 0.5).long()


def test_retrain_trains_a_fresh_model_of_the_same_architecture(one_thread):
    X, y = _data()
    recipe = Recipe(lr=0.1, epochs=3, batch_size=16, seed=5)
    model = mlp(4, [8], 3)
    with torch.no_grad():
        model[-1].weight.fill_(7.0)  # the given weights must not leak into the retrained model
    keep = torch.arange(len(y)) >= 10
    result = retrain(model, X[keep], y[keep], recipe)
    reference = train_from_spec(model.prune_architecture, X[keep], y[keep], recipe)
    assert result.seconds > 0 and len(result.history) == 3
    for a, b in zip(result.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(result.model[-1].weight, model[-1].weight)
    # a patched model is retrained from its base's architecture
    patched = forget(model.eval(), X[:3], labels=y[:3], radius=None).model
    again = retrain(patched, X[keep], y[keep], recipe)
    assert type(again.model) is type(reference.model)
    assert torch.equal(again.model(X), reference.model(X))


def test_retrain_needs_a_recorded_architecture():
    X, y = _data()
    with pytest.raises(InputValidationError, match="retrain needs a model built by prune_unlearn .* got a "
                                                   "Sequential, whose architecture is unknown"):
        retrain(tiny_mlp((4, 8, 3)), X, y, Recipe(epochs=1))


def test_recorded_recipe_reads_what_train_wrote(tmp_path):
    recipe = Recipe(lr=0.05, epochs=7, batch_size=8, seed=2, anneal_epochs=1)
    model = mlp(4, [8], 3)
    save(model, tmp_path / "trained.safetensors", info={"dataset": "x", "recipe": recipe.to_dict()})
    assert recorded_recipe(tmp_path / "trained.safetensors") == recipe
    save(model, tmp_path / "plain.safetensors", info={"dataset": "x"})
    assert recorded_recipe(tmp_path / "plain.safetensors") is None
    assert recorded_recipe(tmp_path / "user.pt") is None  # a state dict records no recipe
    save(model, tmp_path / "odd.safetensors", info={"recipe": {**recipe.to_dict(), "warmup": 3}})
    with pytest.raises(FormatError, match="Unknown training-recipe key 'warmup'; a recipe has the keys lr, "):
        recorded_recipe(tmp_path / "odd.safetensors")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
